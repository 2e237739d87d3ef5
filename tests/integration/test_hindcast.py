"""`convlstm-dist hindcast`: every forecast of a period through Ray Data actors into one CF dataset
(Zarr local and on a real S3 server, NetCDF), equal to the forecasts one at a time; a driver killed
with SIGKILL mid-period and rerun resumes (the forecasts already written are not redone)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.cli import main
from convlstm_dist.config import build_model_from_config, load_config
from convlstm_dist.nowcast.nowcaster import Nowcaster

pytestmark = pytest.mark.integration
pyproj = pytest.importorskip("pyproj")  # the `radar` extra
sys.path.insert(0, str(Path(__file__).parent))
from test_cf_forecast import KNMI_PROJ, STEP_S, projected_archive  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IN_LEN, OUT_LEN, N = 3, 2, 12  # analysis frames 2 .. 11: 10 forecasts


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(None, ["name=tiny", "model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3",
                             "model.patch=4", "model.height=16", "model.width=16",
                             f"data.in_len={IN_LEN}", f"data.out_len={OUT_LEN}"])
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(d, build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm")
    return d


def expected(ckpt, frames, first=IN_LEN - 1):
    """The forecasts one at a time, as `nowcast --at` makes them."""
    nc = Nowcaster.load(ckpt)
    return np.stack([nc.predict(frames[i + 1 - IN_LEN:i + 1], OUT_LEN) for i in range(first, len(frames))])


def check(ds, frames, ckpt):
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds["rain_mmh"].dims == ("forecast_reference_time", "forecast_period", "y", "x")
    assert ds["rain_mmh"].attrs["standard_name"] == "lwe_precipitation_rate"
    assert pyproj.CRS.from_cf(ds["crs"].attrs) == pyproj.CRS(KNMI_PROJ)
    t0 = np.datetime64("2021-06-01T00:00:00")
    want_t = [t0 + i * np.timedelta64(STEP_S, "s") for i in range(IN_LEN - 1, N)]
    np.testing.assert_array_equal(ds["forecast_reference_time"].values, want_t)
    assert ds["time"].shape == (N - IN_LEN + 1, OUT_LEN)
    if "forecast_written" in ds:  # the Zarr keeps its resume markers; the NetCDF is written complete
        assert (ds["forecast_written"].values == 1).all()
    np.testing.assert_allclose(ds["rain_mmh"].values, expected(ckpt, frames), rtol=1e-5, atol=1e-6)  # NaN equal


def test_hindcast_writes_every_forecast_zarr_and_netcdf(ray_local, ckpt, tmp_path, capsys):
    url = tmp_path / "arc.zarr"
    frames, _, _ = projected_archive(url, n=N)
    out = tmp_path / "hc.zarr"
    argv = ["hindcast", "--model", str(ckpt), "--archive", str(url), "--workdir", str(tmp_path / "wd"),
            "--batch-size", "3"]
    rc = main(argv + ["--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "[hindcast] 10 forecasts" in printed.out and "10 written now, 0 resumed" in printed.out
    check(xr.open_zarr(out), frames, ckpt)
    # a second run finds everything written: nothing to do
    rc = main(argv + ["--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0 and "0 written now, 10 resumed" in printed.out, printed.out + printed.err
    # NetCDF: staged under the workdir, converted at the end
    nc_out = tmp_path / "hc.nc"
    rc = main(argv + ["--out", str(nc_out), "--start", "2021-06-01T00:10", "--end", "2021-06-01T00:55"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert list((tmp_path / "wd" / "hindcast").glob("hc-*.staging.zarr"))
    check(xr.open_dataset(nc_out), frames, ckpt)


def test_hindcast_refuses_another_hindcast_at_the_same_out(ray_local, ckpt, tmp_path, capsys):
    url = tmp_path / "arc.zarr"
    projected_archive(url, n=N)
    out = tmp_path / "hc.zarr"
    base = ["hindcast", "--model", str(ckpt), "--archive", str(url), "--workdir", str(tmp_path), "--out", str(out)]
    assert main(base + ["--end", "2021-06-01T00:20"]) == 0
    capsys.readouterr()
    assert main(base + ["--end", "2021-06-01T00:30"]) == 2
    err = capsys.readouterr().err
    assert "holds another hindcast" in err and "choose another --out" in err


def test_hindcast_to_s3(ray_local, s3_server, ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    opts = s3_server.storage_options()
    arc = s3_server.url("hc-archive") + ".zarr"
    frames, _, _ = projected_archive(arc, n=N, storage_options=opts)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    out = s3_server.url("hindcast") + ".zarr"
    rc = main(["hindcast", "--model", str(ckpt), "--archive", arc, "--out", out, "--workdir", str(tmp_path),
               "--batch-size", "4"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert s3_server.rw.secret_key not in printed.out + printed.err
    check(xr.open_zarr(out, storage_options=opts), frames, ckpt)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL whatever the (already killed) driver started: its local Ray."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's own session: any straggler
    except (ProcessLookupError, PermissionError):
        pass


def test_hindcast_resumes_after_the_driver_is_killed(ckpt, tmp_path):
    """The driver is SIGKILLed once its actor has written 4 forecasts (CONVLSTM_FAULT_HINDCAST_KILL_AFTER:
    the actor kills it and writes no more); the same command again forecasts only the rest: the chunks written before the kill are untouched,
    and the result equals the forecasts one at a time."""
    url = tmp_path / "arc.zarr"
    frames, _, _ = projected_archive(url, n=N)
    out = tmp_path / "hc.zarr"
    cmd = [sys.executable, "-m", "convlstm_dist.cli", "hindcast", "--model", str(ckpt), "--archive", str(url),
           "--out", str(out), "--workdir", str(tmp_path / "wd"), "--batch-size", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    first = subprocess.Popen(cmd, cwd=tmp_path, env={**env, "CONVLSTM_FAULT_HINDCAST_KILL_AFTER": "4"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = first.communicate(timeout=400)
    finally:
        _kill_tree(first)
    assert first.returncode == -signal.SIGKILL, log
    import zarr

    done = np.asarray(zarr.open_group(str(out), mode="r")["forecast_written"][:]) == 1
    assert done.sum() == 4, done  # cut off mid-period: the actor's first two batches of 2
    chunks = {r: out / "rain_mmh" / "c" / str(r) / "0" / "0" / "0" for r in np.flatnonzero(done)}
    stamps = {r: p.stat().st_mtime_ns for r, p in chunks.items()}
    time.sleep(0.05)

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
                            start_new_session=True)
    log2 = second.stdout + second.stderr
    assert second.returncode == 0, log2
    k = int(done.sum())
    assert f"resuming {out}: {k} of 10 forecasts already written" in log2, log2
    assert f"{10 - k} written now, {k} resumed" in log2, log2
    assert {r: p.stat().st_mtime_ns for r, p in chunks.items()} == stamps  # not redone
    check(xr.open_zarr(out), frames, ckpt)


def test_hindcast_to_s3_with_a_read_only_key_is_one_clear_error(ray_local, s3_server, ckpt, tmp_path, monkeypatch,
                                                                 capsys):  # noqa: F811
    arc = s3_server.url("hc-ro-archive") + ".zarr"
    projected_archive(arc, n=6, storage_options=s3_server.storage_options())
    for k, v in s3_server.env(readonly=True).items():
        monkeypatch.setenv(k, v)
    out = s3_server.url("hindcast-ro") + ".zarr"
    rc = main(["hindcast", "--model", str(ckpt), "--archive", arc, "--out", out, "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"access denied while trying to write {out}" in err and len(err.strip().splitlines()) == 1, err
    assert s3_server.ro.secret_key not in err
