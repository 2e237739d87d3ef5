"""Ingest into a local archive: exact values, NaN, timestamps, xarray view, and the ingest rules
(idempotent, append, out of order, duplicates, corrupt files, wrong grid, crash safety)."""

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from convlstm_dist.data.archive import open_archive, summary
from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import sample_files
from convlstm_dist.errors import UserError
from reference_decoders import FMI_DIR, fmi_decode, knmi_decode

KNMI = sample_files()

FMI = sorted(FMI_DIR.glob("*.pgm.gz"))



def knmi_time(path):
    s = Path(path).stem.rsplit("_", 1)[1]
    return np.datetime64(f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[8:10]}:{s[10:12]}:00", "s")


def run(files, url, **kw):
    return ingest("knmi_hdf5", files, str(url), parallel=False, progress=False, **kw)


def snapshot(url):
    """Every file of a local archive with its bytes: 'unchanged' means equal snapshots."""
    root = Path(url)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def knmi_archive(tmp_path_factory):
    url = tmp_path_factory.mktemp("knmi") / "knmi.zarr"
    report = run(KNMI, url, chunks=(16, 256, 256), shards=32)
    assert (report.written, report.frames_total, report.created) == (92, 92, True)
    return str(url)


def test_knmi_values_times_and_nan(knmi_archive):
    a = open_archive(knmi_archive)
    assert a.shape == (92, 765, 700) and a.variable == "rain_mmh" and a.units == "mm/h"
    assert a.timestep_s == 300 and a.time_chunk == 16 and a.times.dtype == np.dtype("datetime64[s]")
    np.testing.assert_array_equal(a.times, [knmi_time(f) for f in KNMI])
    for t in (0, 48, 91):
        ref = knmi_decode(KNMI[t])
        got = a.read(t, t + 1)[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=1e-6, equal_nan=True)
    crop = a.read(40, 60, slice(300, 400), slice(100, 164))
    assert crop.shape == (20, 100, 64) and crop.dtype == np.float32


def test_knmi_stats_match_readme(knmi_archive):
    s = open_archive(knmi_archive).stats
    np.testing.assert_array_equal(s["thresholds"], [0.1, 0.5, 2, 5, 10])
    w = np.average(s["wet_fraction"], axis=0, weights=s["valid_fraction"])
    np.testing.assert_allclose(w[1:4], [0.226, 0.044, 0.0037], atol=6e-4)
    assert abs(np.nanmax(s["max_value"]) - 29.4) < 0.01
    assert s["wet_fraction"].shape == (92, 5) and 0.2 < s["valid_fraction"].mean() < 0.3


def test_xarray_sees_the_format(knmi_archive):
    ds = xr.open_zarr(knmi_archive)
    assert list(ds.data_vars) == ["rain_mmh"]
    assert ds["rain_mmh"].dims == ("time", "y", "x") and ds["rain_mmh"].dtype == np.float32
    assert ds["wet_fraction"].dims == ("time", "threshold")
    assert ds.time.values[0] == np.datetime64("2010-08-26T00:00:00")
    assert ds.attrs["convlstm_dist_format"] == 1 and ds.attrs["zr_a"] == 200.0
    assert ds.attrs["projection"].startswith("+proj=stere") and ds.attrs["pixel_size_m"] == 1000.0
    assert "KNMI" in ds.attrs["attribution"] and ds.attrs["timestep_s"] == 300
    assert ds.y.attrs["units"] == "m" and float(ds.y[0]) == -3650500.0


def test_archive_pickles_and_converts(knmi_archive):
    a = pickle.loads(pickle.dumps(open_archive(knmi_archive)))
    assert a.shape[0] == 92 and pickle.dumps(a) == pickle.dumps(open_archive(knmi_archive))
    np.testing.assert_array_equal(a.to_rain_mmh(np.array([1.0], np.float32)), [1.0])
    s = summary(a)
    assert s["gaps"] == [] and s["frames"] == 92 and s["shards"] == (32, 768, 768)


def test_reingest_append_and_out_of_order(tmp_path):
    url = tmp_path / "a.zarr"
    r = run(KNMI[10:20][::-1], url)                       # reversed input is sorted
    assert r.written == 10
    a = open_archive(url)
    assert list(a.times) == [knmi_time(f) for f in KNMI[10:20]]
    before = snapshot(url)
    r = run(KNMI[10:20], url)
    assert (r.written, r.skipped_present) == (0, 10) and snapshot(url) == before
    r = run(KNMI[15:25], url)                             # overlap: 5 skipped, 5 appended
    assert (r.written, r.skipped_present, r.frames_total) == (5, 5, 15)
    np.testing.assert_allclose(open_archive(url).read(14, 15)[0], knmi_decode(KNMI[24]), equal_nan=True)
    before = snapshot(url)
    with pytest.raises(UserError, match="append-only"):
        run(KNMI[5:8], url)                               # older than the last frame, not present
    assert snapshot(url) == before


def test_duplicates_identical_merge_differing_refused(tmp_path):
    copy = tmp_path / "dup" / KNMI[1].name
    copy.parent.mkdir()
    copy.write_bytes(KNMI[1].read_bytes())
    r = run([KNMI[0], KNMI[1], copy], tmp_path / "a.zarr")
    assert (r.written, r.deduplicated) == (2, 1)
    other = tmp_path / "other" / KNMI[1].name
    other.parent.mkdir()
    other.write_bytes(KNMI[1].read_bytes())
    with h5py.File(other, "r+") as f:
        f["image1/image_data"][0, 0] = 7
    with pytest.raises(UserError, match=f"{KNMI[1]}.*{other}|{other}.*{KNMI[1]}"):
        run([KNMI[1], other], tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()


def test_truncated_file_leaves_archive_unchanged(tmp_path):
    url = tmp_path / "a.zarr"
    run(KNMI[:5], url)
    before = snapshot(url)
    bad = tmp_path / KNMI[6].name
    bad.write_bytes(KNMI[6].read_bytes()[:20000])
    with pytest.raises(UserError, match=bad.name):
        run([KNMI[5], bad, KNMI[7]], url)
    assert snapshot(url) == before


def test_wrong_grid_refused(tmp_path):
    url = tmp_path / "a.zarr"
    run(KNMI[:3], url)
    before = snapshot(url)
    with pytest.raises(UserError, match="variable|shape|projection"):
        ingest("fmi_pgm", FMI[:2], str(url), parallel=False, progress=False)
    assert snapshot(url) == before


def test_reingest_with_different_data_is_reported(tmp_path, capsys):
    url = tmp_path / "a.zarr"
    run(KNMI[:3], url)
    changed = tmp_path / "changed" / KNMI[1].name
    changed.parent.mkdir()
    changed.write_bytes(KNMI[1].read_bytes())
    with h5py.File(changed, "r+") as f:
        f["image1/image_data"][0, 0] = 7
    before = snapshot(url)
    r = run([KNMI[0], changed, KNMI[2]], url)
    assert (r.written, r.skipped_present, r.differing) == (0, 3, [str(changed)])
    assert "different data" in str(r) and str(changed) in str(r)
    assert "DIFFERENT data" in capsys.readouterr().err
    assert snapshot(url) == before                          # the archive keeps its first version


def test_crash_mid_write_keeps_old_length(tmp_path):
    url = tmp_path / "a.zarr"
    run(KNMI[:4], url)

    def crash():
        raise RuntimeError("simulated crash after data write")

    with pytest.raises(UserError, match="simulated crash"):
        run(KNMI[4:8], url, _after_data=crash)
    a = open_archive(url)
    assert a.shape[0] == 4 and len(a.stats["valid_fraction"]) == 4
    assert xr.open_zarr(str(url)).sizes["time"] == 4
    r = run(KNMI[4:8], url)                                # the retry overwrites the stale tail
    assert (r.written, r.frames_total) == (4, 8)
    np.testing.assert_allclose(open_archive(url).read(7, 8)[0], knmi_decode(KNMI[7]), equal_nan=True)


@pytest.mark.skipif(not FMI, reason="FMI data not present")
def test_fmi_whole_event(tmp_path):
    url = tmp_path / "fmi.zarr"
    r = ingest("fmi_pgm", FMI, str(url), parallel=False, progress=False)
    assert r.written == 40
    a = open_archive(url)
    assert a.shape == (40, 1226, 760) and a.variable == "refl_dbz" and a.attrs["zr_a"] == 223.0
    for t in (0, 39):
        np.testing.assert_allclose(a.read(t, t + 1)[0], fmi_decode(FMI[t]), equal_nan=True)
    assert a.times[0] == np.datetime64("2016-09-28T14:45:00") and a.times[-1] == np.datetime64("2016-09-28T18:00:00")
    assert abs(np.nanmax(a.stats["max_value"]) - 57.5) < 1e-6
    rain = a.to_rain_mmh(np.array([23.0]))
    assert abs(rain[0] - (10 ** 2.3 / 223) ** (1 / 1.53)) < 1e-4


def test_parallel_decode_on_ray(tmp_path):
    import ray

    own = not ray.is_initialized()  # reuse a session Ray (conftest ray_local) if one is up
    if own:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(Path("/tmp") / f"ray-ingest-{os.getpid()}"))
    try:
        url = tmp_path / "p.zarr"
        r = ingest("knmi_hdf5", KNMI[:12], str(url), parallel=True, progress=True)
        assert r.written == 12
        bad = tmp_path / KNMI[12].name
        bad.write_bytes(b"not hdf5")
        with pytest.raises(UserError, match=bad.name) as err:
            ingest("knmi_hdf5", [*KNMI[13:16], bad], str(url), parallel=True, progress=False)
        assert "\n" not in str(err.value) and "Traceback" not in str(err.value)  # one line, no Ray trace
        assert open_archive(url).shape[0] == 12
    finally:
        if own:
            ray.shutdown()
