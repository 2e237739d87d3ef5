"""ODIM_H5 reader and ingest: nominal valid time (root what/date+time, not the scan end), quantity
and scaling from `dataset1/what` when `dataset1/data1/what` lacks them, time step from the
spacing of the frames (not the scan span) — on the four real OPERA composites and on synthetic
files laid out like a national 5-minute composite (issue 16, point 9)."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.readers import get_reader
from convlstm_dist.errors import UserError

# ../shared/data next to the repository (override with CONVLSTM_DIST_DATA, as reference_decoders.py)
DATA = Path(os.environ.get("CONVLSTM_DIST_DATA", Path(__file__).resolve().parents[2].parent / "shared/data"))
OPERA = sorted((DATA / "radar/opera/20180824").glob("T_PAAH21_C_EUOC_*.hdf"))
OPERA_TIMES = [np.datetime64(f"2018-08-24T{hm}:00", "s") for hm in ("18:00", "18:15", "18:30", "18:45")]
needs_opera = pytest.mark.skipif(len(OPERA) != 4, reason="OPERA composites not present")


def odim_ingest(files, url):
    return ingest("odim_hdf5", files, str(url), parallel=False, progress=False)


def opera_decode(path):
    """Independent decoding from the data README: raw float64 × 1 + 0; nodata → NaN, undetect → 0."""
    with h5py.File(path, "r") as f:
        raw = f["dataset1/data1/data"][:]
    return np.where(raw == -9999000.0, np.nan, np.where(raw == -8888000.0, 0.0, raw))


@needs_opera
def test_opera_composites_read_with_nominal_time_and_dataset_level_quantity():
    for path, t in zip(OPERA, OPERA_TIMES):
        data, meta = get_reader("odim_hdf5").read(path)
        # nominal time (what/time 18:00:00, ...), not the scan end (dataset1/what endtime 18:05:00, ...)
        assert meta["time"] == t and meta["time"].dtype == np.dtype("datetime64[s]")
        # quantity RATE lives only in dataset1/what (the files have no dataset1/data1/what)
        assert (meta["variable"], meta["units"]) == ("rain_mmh", "mm/h")
        assert meta["timestep_s"] is None  # the scan span 17:50 → 18:05 is not a step
        assert meta["shape"] == data.shape == (2200, 1900) and data.dtype == np.float32
        assert meta["pixel_size_m"] == 2000.0 and meta["source"] == "ORG:247"
        assert meta["projection"].startswith("+proj=laea +lat_0=55.0 +lon_0=10.0")
        ref = opera_decode(path)
        np.testing.assert_array_equal(np.isnan(data), np.isnan(ref))
        np.testing.assert_allclose(data, ref.astype(np.float32), equal_nan=True)
        assert 0.05 < np.isnan(data).mean() < 0.95 and np.nanmax(data) > 0


@needs_opera
def test_opera_ingest_takes_step_from_the_sequence(tmp_path):
    url = tmp_path / "a.zarr"
    report = odim_ingest(OPERA[::-1], url)  # order of the arguments does not matter
    assert (report.written, report.frames_total, report.created) == (4, 4, True)
    a = open_archive(str(url))
    np.testing.assert_array_equal(a.times, OPERA_TIMES)
    assert a.timestep_s == 900 and a.shape == (4, 2200, 1900) and a.variable == "rain_mmh"
    np.testing.assert_allclose(a.read(2, 3)[0], opera_decode(OPERA[2]).astype(np.float32), equal_nan=True)


# ------------------------------------------------------------------ synthetic national composite
def write_national(path, nominal="20200101155000", scan=("154908", "154927"), data_what=None,
                   root_time=True, quantity="DBZH", shape=(24, 20)):
    """ODIM_H5 composite with the attribute layout of the refused national series: quantity and
    scaling only in `dataset1/what` (plus optional `data_what` in `dataset1/data1/what`), a 19 s
    scan span ending before the nominal time."""
    rng = np.random.default_rng(int(nominal[-6:]))
    raw = rng.integers(1, 255, size=shape).astype(np.uint8)
    raw[0, :3], raw[1, :3] = 255, 0  # nodata, undetect
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = np.bytes_("ODIM_H5/V2_2")
        top = {"object": np.bytes_("COMP"), "version": np.bytes_("H5rad 2.2"), "source": np.bytes_("ORG:999")}
        if root_time:
            top.update(date=np.bytes_(nominal[:8]), time=np.bytes_(nominal[8:]))
        f.create_group("what").attrs.update(top)
        f.create_group("where").attrs.update({"projdef": np.bytes_("+proj=stere +lat_0=90 +lon_0=10"),
                                             "xsize": shape[1], "ysize": shape[0],
                                             "xscale": 1000.0, "yscale": 1000.0})
        d = f.create_group("dataset1")
        d.create_group("what").attrs.update({
            "product": np.bytes_("COMP"), "quantity": np.bytes_(quantity), "gain": 0.5, "offset": -32.0,
            "nodata": 255.0, "undetect": 0.0, "startdate": np.bytes_(nominal[:8]),
            "starttime": np.bytes_(scan[0]), "enddate": np.bytes_(nominal[:8]),
            "endtime": np.bytes_(scan[1])})
        d1 = d.create_group("data1")
        d1.create_dataset("data", data=raw)
        if data_what is not None:
            d1.create_group("what").attrs.update(data_what)
    return raw


@pytest.mark.parametrize("data_what, gain", [(None, 0.5), ({}, 0.5), ({"gain": 0.25}, 0.25)])
def test_national_composite_reads_nominal_time_and_dataset_what(tmp_path, data_what, gain):
    path = tmp_path / "comp.h5"
    raw = write_national(path, data_what=data_what)
    data, meta = get_reader("odim_hdf5").read(path)
    assert meta["time"] == np.datetime64("2020-01-01T15:50:00", "s")  # not 15:49:27 (scan end)
    assert meta["timestep_s"] is None  # not 19 (scan span)
    assert (meta["variable"], meta["units"], meta["source"]) == ("refl_dbz", "dBZ", "ORG:999")
    expect = raw * gain - 32.0  # a data1/what attribute overrides the dataset1/what one
    expect[raw == 0] = -32.0
    expect[raw == 255] = np.nan
    np.testing.assert_allclose(data, expect.astype(np.float32), equal_nan=True)


def test_missing_root_time_falls_back_to_scan_end(tmp_path):
    path = tmp_path / "comp.h5"
    write_national(path, root_time=False)
    assert get_reader("odim_hdf5").read(path)[1]["time"] == np.datetime64("2020-01-01T15:49:27", "s")


def series(tmp_path, hhmm):
    """One file per nominal time HHMM on 2020-01-01, with scan spans of 19 or 20 s ending 33 s early
    (the old reader took those spans as steps and refused the series: "timestep_s: 19 vs 20")."""
    out = []
    for i, hm in enumerate(hhmm):
        end = (np.datetime64(f"2020-01-01T{hm[:2]}:{hm[2:]}:00", "s") - np.timedelta64(33, "s")).item()
        start = end - np.timedelta64(19 + i % 2, "s").item()
        p = tmp_path / f"comp_{hm}.h5"
        write_national(p, nominal=f"20200101{hm}00", scan=(start.strftime("%H%M%S"), end.strftime("%H%M%S")))
        out.append(p)
    return out


def test_national_series_ingests_with_5_minute_step_and_appends_on_grid(tmp_path):
    url = tmp_path / "a.zarr"
    report = odim_ingest(series(tmp_path, ["1600", "1550", "1555"]), url)
    assert (report.written, report.created) == (3, True)
    a = open_archive(str(url))
    assert a.timestep_s == 300
    np.testing.assert_array_equal(a.times, np.array(["2020-01-01T15:50", "2020-01-01T15:55",
                                                     "2020-01-01T16:00"], dtype="datetime64[s]"))
    # appending: a single file on the archive's 5-minute grid (after a gap) is fine ...
    assert odim_ingest(series(tmp_path, ["1610"]), url).written == 1
    # ... one off the grid is refused, naming the file and the step
    with pytest.raises(UserError, match=r"not on the step grid of the archive .*\(300 s from "
                                        r"2020-01-01T15:50:00\).*comp_1612\.h5"):
        odim_ingest(series(tmp_path, ["1612"]), url)
    a = open_archive(str(url))
    assert len(a.times) == 4 and a.timestep_s == 300


def test_new_archive_needs_two_frames_and_a_regular_grid(tmp_path):
    with pytest.raises(UserError, match="only frame.*two or more"):
        odim_ingest(series(tmp_path, ["1550"]), tmp_path / "one.zarr")
    with pytest.raises(UserError, match=r"not on the 300 s step grid.*comp_1607\.h5"):
        odim_ingest(series(tmp_path, ["1550", "1555", "1607"]), tmp_path / "irregular.zarr")
    assert not (tmp_path / "one.zarr").exists() and not (tmp_path / "irregular.zarr").exists()
    # gaps are fine: the step is the smallest spacing
    odim_ingest(series(tmp_path, ["1550", "1555", "1610"]), tmp_path / "gap.zarr")
    assert open_archive(str(tmp_path / "gap.zarr")).timestep_s == 300
