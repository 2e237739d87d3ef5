"""Independent decodings of the radar samples, written from the data READMEs (not from our readers)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

# The shared data sit next to the checkout: <repo>/../shared/data (CONVLSTM_DIST_DATA overrides).
DATA_DIR = Path(os.environ.get("CONVLSTM_DIST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
FMI_DIR = DATA_DIR / "radar/fmi/20160928"


def knmi_decode(path):
    """KNMI HDF5 → mm/h (12 × mm per 5 min; PV 65535 = no data)."""
    with h5py.File(path, "r") as f:
        pv = f["image1/image_data"][:]
    return 12.0 * np.where(pv == 65535, np.nan, pv / 100.0)


def fmi_decode(path):
    """FMI PGM.gz → dBZ ((DN − 64) / 2; DN 255 = no data)."""
    with gzip.open(path, "rb") as fh:
        dn = np.array(Image.open(fh))
    return np.where(dn == 255, np.nan, (dn.astype(float) - 64.0) / 2.0)
