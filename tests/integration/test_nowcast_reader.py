"""`nowcast --reader NAME FILES…` on the shared radar files, full grid, no archive: the latest in_len
frames are decoded by the ingest readers, and the forecast is NaN exactly where the model has no
observed source (FMI: the last frame's coverage, Eulerian; KNMI: that coverage carried along the
Lagrangian model's motion). The no-data masks are computed from the independent reference decoders."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.cli import main
from convlstm_dist.config import build_model_from_config, load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_decoders import DATA_DIR, FMI_DIR, fmi_decode, knmi_decode  # noqa: E402

pytestmark = pytest.mark.integration
pyproj = pytest.importorskip("pyproj")  # the `radar` extra
KNMI_DIR = DATA_DIR / "radar/knmi/20100826"
IN_LEN, OUT_LEN = 3, 2


def tiny(tmp_path, frame="eulerian"):
    cfg = load_config(None, ["model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4",
                             "model.height=16", "model.width=16", f"data.in_len={IN_LEN}",
                             f"data.out_len={OUT_LEN}", f"model.frame={frame}"])
    return save_checkpoint(tmp_path / frame, build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm")


@pytest.mark.skipif(not FMI_DIR.is_dir(), reason=f"shared FMI sample not found at {FMI_DIR}")
def test_fmi_full_grid_from_raw_files_is_nan_exactly_outside_coverage(tmp_path, capsys):
    files = sorted(FMI_DIR.glob("*.pgm.gz"))
    given = files[-6:]
    random.Random(0).shuffle(given)  # any order, more files than needed: the latest 3 are used
    out = tmp_path / "fmi.nc"
    rc = main(["nowcast", "--model", str(tiny(tmp_path)), "--reader", "fmi_pgm", *map(str, given),
               "--out", str(out), "--workdir", str(tmp_path)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    ds = xr.open_dataset(out)
    fc = ds["rain_mmh"].values[0]
    assert fc.shape == (OUT_LEN, 1226, 760)
    last = fmi_decode(files[-1])  # 201609281800, the latest file
    assert ds["forecast_reference_time"].values[0] == np.datetime64("2016-09-28T18:00")
    no_data = np.isnan(last)
    assert 0.2 < no_data.mean() < 0.3  # about a quarter of the composite is outside radar coverage
    for k in range(OUT_LEN):
        np.testing.assert_array_equal(np.isnan(fc[k]), no_data)
    assert f"{100 * no_data.mean():.1f}% no data" in printed.out
    from convlstm_dist.data.readers_pgm import FMI_PROJ

    assert pyproj.CRS.from_cf(ds["crs"].attrs) == pyproj.CRS(FMI_PROJ)
    assert ds["rain_mmh"].attrs["units"] == "mm h-1"


@pytest.mark.skipif(not KNMI_DIR.is_dir(), reason=f"shared KNMI sample not found at {KNMI_DIR}")
def test_knmi_lagrangian_full_grid_is_nan_where_the_advected_source_has_no_data(tmp_path, capsys):
    import torch

    from convlstm_dist.data.quantity import rain_to_norm
    from convlstm_dist.models import lagrangian_source_valid
    from convlstm_dist.nowcast.nowcaster import pad_to_patch

    files = sorted(KNMI_DIR.glob("*.h5"))[-IN_LEN:]
    out = tmp_path / "knmi.zarr"
    rc = main(["nowcast", "--model", str(tiny(tmp_path, "lagrangian")), "--reader", "knmi_hdf5", *map(str, files),
               "--out", str(out), "--workdir", str(tmp_path)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    fc = xr.open_zarr(out)["rain_mmh"].values[0]
    frames = np.stack([knmi_decode(f) for f in files]).astype(np.float32)
    H, W = frames.shape[1:]
    assert fc.shape == (OUT_LEN, H, W)
    valid = np.isfinite(frames)
    x = pad_to_patch(np.where(valid, rain_to_norm(np.nan_to_num(frames)), 0.0)[None, :, None].astype(np.float32), 4)
    v_last = np.pad(valid[-1], [(0, x.shape[-2] - H), (0, x.shape[-1] - W)])[None]
    source = lagrangian_source_valid(torch.as_tensor(x), torch.as_tensor(v_last), OUT_LEN).numpy()[0, :, :H, :W]
    np.testing.assert_array_equal(np.isfinite(fc), source)
    # the advected coverage differs from the last frame's: the motion moved the no-data edge
    assert (source != valid[-1][None]).any()


@pytest.mark.parametrize("argv, message", [
    ([], "nowcast needs --archive URL, or --reader NAME FILES"),
    (["--reader", "fmi_pgm"], "--reader needs radar FILES"),
    (["--reader", "fmi_pgm", "--archive", "x.zarr", "f.pgm.gz"], "leave out --archive and --at"),
    (["--reader", "fmi_pgm", "NOFILE"], "input file(s) not found: NOFILE"),
    (["--reader", "fmi_pgm", "LAST"], "too few frames: the model needs 3 input frames, 1 file(s) give 1"),
])
def test_reader_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    last = sorted(FMI_DIR.glob("*.pgm.gz"))[-1] if FMI_DIR.is_dir() else "missing"
    argv = [str(last) if a == "LAST" else str(tmp_path / "absent.pgm.gz") if a == "NOFILE" else a for a in argv]
    message = message.replace("NOFILE", str(tmp_path / "absent.pgm.gz"))
    rc = main(["nowcast", "--model", str(tiny(tmp_path)), *argv, "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "forecast").exists()  # nothing written
