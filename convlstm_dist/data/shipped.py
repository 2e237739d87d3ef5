"""Sample data shipped in the package (see convlstm_dist/sample_data/ATTRIBUTION.md).

`sample_files()` -> the 92 KNMI 5-min radar files (2010-08-26 00:00–07:35 UTC) for the demo,
read with reader `knmi_hdf5`. `mnist_images_path()` -> the MNIST test images for Moving MNIST.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
SAMPLE_READER = "knmi_hdf5"


def sample_files() -> list[Path]:
    """The shipped KNMI radar files, sorted by time."""
    files = sorted((SAMPLE_DIR / "knmi").glob("RAD_NL25_RAP_5min_*.h5"))
    if not files:
        raise FileNotFoundError(f"no sample radar files under {SAMPLE_DIR / 'knmi'}")
    return files


def mnist_images_path() -> Path:
    return SAMPLE_DIR / "mnist" / "t10k-images-idx3-ubyte.gz"
