"""`convlstm-dist nowcast` writes CF-1.8 forecasts: Zarr and NetCDF, local and on a real S3 server
(SeaweedFS on loopback); the CRS comes back through ``pyproj.CRS.from_cf``; an archive without a CRS
writes no grid_mapping and says so. NetCDF is written with the netCDF4 engine (h5netcdf if netCDF4
is missing)."""

import numpy as np
import pytest
import xarray as xr

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.cli import main
from convlstm_dist.config import build_model_from_config, load_config
from convlstm_dist.data import units as U
from convlstm_dist.data.archive import GridSpec, append_frames, create_archive
from synthetic import T0, make_archive, rain_frames

pytestmark = pytest.mark.integration
pyproj = pytest.importorskip("pyproj")  # the `radar` extra
IN_LEN, OUT_LEN, STEP_S, H, W = 3, 2, 300, 40, 36
KNMI_PROJ = "+proj=stere +lat_0=90 +lon_0=0.0 +lat_ts=60.0 +a=6378137 +b=6356752 +x_0=0 +y_0=0 +units=m"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(None, ["name=tiny", "model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3",
                             "model.patch=4", "model.height=16", "model.width=16",
                             f"data.in_len={IN_LEN}", f"data.out_len={OUT_LEN}"])
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(d, build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm")
    return d


def projected_archive(url, n=8, storage_options=None):
    """A rain archive on a 1 km polar-stereographic grid (the KNMI projection), NaN top rows."""
    frames = rain_frames(n, H, W)
    y = -3650500.0 - 1000.0 * np.arange(H)
    x = 500.0 + 1000.0 * np.arange(W)
    grid = GridSpec(variable="rain_mmh", units="mm/h", zr_a=200.0, zr_b=1.6, projection=KNMI_PROJ,
                    pixel_size_m=1000.0, timestep_s=STEP_S, source="synthetic", shape=(H, W), y=y, x=x)
    create_archive(str(url), grid, storage_options, chunks=(8, H, W))
    times = (T0 + np.arange(n) * np.timedelta64(STEP_S, "s")).astype("datetime64[s]").astype(np.int64)
    append_frames(str(url), storage_options, frames, times, U.frame_stats(frames, U.wet_thresholds("rain_mmh")))
    return frames, y, x


def check_cf(ds, frames, y, x, n_out=OUT_LEN, crs=True):
    """Everything issue 24 asks of a CF forecast, on an opened dataset."""
    assert ds.attrs["Conventions"] == "CF-1.8"
    rain = ds["rain_mmh"]
    assert rain.dims == ("forecast_reference_time", "forecast_period", "y", "x")
    assert rain.shape == (1, n_out, H, W)
    assert rain.attrs["standard_name"] == "lwe_precipitation_rate" and rain.attrs["units"] == "mm h-1"
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate" and ds["x"].attrs["units"] == "m"
    assert ds["y"].attrs["standard_name"] == "projection_y_coordinate" and ds["y"].attrs["units"] == "m"
    np.testing.assert_array_equal(ds["y"].values, y)
    np.testing.assert_array_equal(ds["x"].values, x)
    assert ds["forecast_reference_time"].attrs["standard_name"] == "forecast_reference_time"
    assert ds["forecast_period"].attrs["standard_name"] == "forecast_period"
    assert ds["time"].attrs["standard_name"] == "time"
    analysis = T0 + (len(frames) - 1) * np.timedelta64(STEP_S, "s")
    assert ds["forecast_reference_time"].values[0] == analysis
    leads = ds["forecast_period"].values
    lead_min = leads / np.timedelta64(1, "m") if np.issubdtype(leads.dtype, np.timedelta64) else leads
    np.testing.assert_allclose(lead_min, [5.0 * (k + 1) for k in range(n_out)])
    np.testing.assert_array_equal(ds["time"].values[0], [analysis + (k + 1) * np.timedelta64(STEP_S, "s")
                                                         for k in range(n_out)])
    values = rain.values
    # no data stays no data: the archive's NaN top rows are NaN in every lead (Eulerian model)
    np.testing.assert_array_equal(np.isnan(values[0]), np.repeat(np.isnan(frames[-1])[None], n_out, 0))
    if crs:
        assert rain.attrs["grid_mapping"] == "crs"
        assert pyproj.CRS.from_cf(ds["crs"].attrs) == pyproj.CRS(KNMI_PROJ)
    else:
        assert "grid_mapping" not in rain.attrs and "crs" not in ds


@pytest.mark.parametrize("fmt, name", [("netcdf", "fc.nc"), ("zarr", "fc.zarr")])
def test_nowcast_writes_cf_dataset(ckpt, tmp_path, capsys, fmt, name):
    url = tmp_path / "knmi-like.zarr"
    frames, y, x = projected_archive(url)
    out = tmp_path / name
    rc = main(["nowcast", "--model", str(ckpt), "--archive", str(url), "--out", str(out), "--format", fmt,
               "--workdir", str(tmp_path)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert f"[nowcast] {fmt} {out}" in printed.out and "no grid_mapping" not in printed.out
    ds = xr.open_dataset(out, engine="zarr" if fmt == "zarr" else None)
    check_cf(ds, frames, y, x)
    assert (tmp_path / "fc.png").stat().st_size > 1000  # the figure beside the dataset


def test_archive_without_crs_writes_no_grid_mapping_and_says_so(ckpt, tmp_path, capsys):
    url = tmp_path / "nocrs.zarr"
    frames = make_archive(url, n=6, h=H, w=W, step_s=STEP_S)  # projection "synthetic", pixel-index y/x
    rc = main(["nowcast", "--model", str(ckpt), "--archive", str(url), "--workdir", str(tmp_path)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "[nowcast] no grid_mapping in the dataset: the grid has pixel-index coordinates" in printed.out
    ds = xr.open_zarr(tmp_path / "forecast" / "forecast.zarr")  # default: under --workdir
    assert "crs" not in ds and "grid_mapping" not in ds["rain_mmh"].attrs
    assert ds.attrs["grid_mapping_note"].startswith("no grid_mapping")
    assert ds["x"].attrs["units"] == "1" and "standard_name" not in ds["x"].attrs
    assert np.array_equal(np.isnan(ds["rain_mmh"].values[0, 0]), np.isnan(frames[5]))


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_nowcast_cf_to_s3(s3_server, ckpt, tmp_path, monkeypatch, capsys, fmt):  # noqa: F811
    opts = s3_server.storage_options()
    arc = s3_server.url("cf-archive") + ".zarr"
    frames, y, x = projected_archive(arc, storage_options=opts)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    out = s3_server.url("forecast") + (".nc" if fmt == "netcdf" else ".zarr")
    rc = main(["nowcast", "--model", str(ckpt), "--archive", arc, "--out", out, "--workdir", str(tmp_path)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert f"[nowcast] {fmt} {out}" in printed.out
    assert "secret" not in printed.out.lower() and s3_server.rw.secret_key not in printed.out + printed.err
    if fmt == "zarr":
        ds = xr.open_zarr(out, storage_options=opts)
    else:
        import fsspec

        local = tmp_path / "got.nc"
        fs, path = fsspec.core.url_to_fs(out, **opts)
        fs.get_file(path, str(local))
        ds = xr.open_dataset(local)
    check_cf(ds, frames, y, x)
    assert list((tmp_path / "forecast").glob("*.png")), "the figure of a remote forecast goes under --workdir"
