"""`pysteps:<importer>` readers: MeteoSwiss GIFs, and pysteps' KNMI importer against the native reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist.data.readers import (ReadError, get_reader, parse_reader_options, pysteps_to_contract,
                                        time_from_filename)
from convlstm_dist.errors import UserError

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "radar"
MCH = DATA / "mch" / "20150515"
KNMI = DATA / "knmi" / "20100826"
needs_data = pytest.mark.skipif(not (MCH.is_dir() and KNMI.is_dir()), reason="shared radar data not present")


def test_options_parse_numbers_booleans_and_strings():
    assert parse_reader_options(["product=AQC", "accutime=5", "zr_a=316.5", "gzipped=true", "x=none"]) == {
        "product": "AQC", "accutime": 5, "zr_a": 316.5, "gzipped": True, "x": None}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_reader_options(["product"])


def test_time_from_filename_patterns():
    assert time_from_filename("AQC151351545F_00005.801.gif", "AQC%y%j%H%M?_00005.801") == \
        np.datetime64("2015-05-15T15:45:00")  # day 135 of 2015
    assert time_from_filename("RAD_NL25_RAP_5min_201008260005.h5", "RAD_NL25_RAP_5min_%Y%m%d%H%M") == \
        np.datetime64("2010-08-26T00:05:00")
    with pytest.raises(ValueError, match="does not match"):
        time_from_filename("other.gif", "AQC%y%j%H%M?_00005.801")


def test_native_readers_take_no_options_and_unknown_importers_are_named():
    with pytest.raises(UserError, match="takes no options"):
        get_reader("knmi_hdf5", {"qty": "ACRR"})
    with pytest.raises(UserError, match="unknown pysteps importer 'nope'"):
        get_reader("pysteps:nope")


def test_metadata_mapping_units_transform_and_orientation():
    field = np.array([[0.0, 1.0], [2.0, np.nan]])
    meta = {"unit": "mm", "accutime": 10.0, "transform": None, "x1": 0.0, "x2": 2.0, "y1": 0.0, "y2": 2.0,
            "xpixelsize": 1.0, "ypixelsize": 1.0, "cartesian_unit": "km", "yorigin": "lower",
            "projection": "+proj=stere +a=6378.137 +b=6356.752", "institution": "X"}
    data, m = pysteps_to_contract(field, meta, np.datetime64("2020-01-01T00:10"), None)
    # mm per 10 min -> mm/h (x6); yorigin lower -> flipped so row 0 is north
    np.testing.assert_array_equal(data, np.array([[12.0, np.nan], [0.0, 6.0]], np.float32))
    assert m["variable"] == "rain_mmh" and m["timestep_s"] == 600 and m["pixel_size_m"] == 1000.0
    assert m["y"].tolist() == [1500.0, 500.0] and m["x"].tolist() == [500.0, 1500.0]
    assert "+a=6378137" in m["projection"] and "+units=m" in m["projection"]
    dbr = {"unit": "mm/h", "transform": "dB", "zerovalue": -15.0, "accutime": 5.0}
    data, m = pysteps_to_contract(np.array([[10.0, -15.0]]), dbr, np.datetime64("2020-01-01"), 300)
    np.testing.assert_allclose(data, [[10.0, 0.0]])
    data, m = pysteps_to_contract(np.array([[30.0]]), {"unit": "dBZ", "transform": "dB"},
                                  np.datetime64("2020-01-01"), 300)
    assert m["variable"] == "refl_dbz" and (m["zr_a"], m["zr_b"]) == (200.0, 1.6) and m["y"] is None
    with pytest.raises(ValueError, match="Box-Cox"):
        pysteps_to_contract(np.zeros((1, 1)), {"unit": "mm/h", "transform": "Box-Cox"}, np.datetime64("2020"), 300)


@needs_data
def test_mch_gif_reads_rain_rate_time_and_grid():
    reader = get_reader("pysteps:mch_gif", parse_reader_options(["product=AQC", "unit=mm", "accutime=5"]))
    reader = pickle.loads(pickle.dumps(reader))  # shipped by name + options to Ray tasks
    path = MCH / "AQC151351545F_00005.801.gif"
    data, meta = reader.read(path)
    assert data.dtype == np.float32 and data.shape == (640, 710) == meta["shape"]
    assert meta["time"] == np.datetime64("2015-05-15T15:45:00") and meta["timestep_s"] == 300
    assert meta["variable"] == "rain_mmh" and meta["units"] == "mm/h" and meta["source"] == "MeteoSwiss"
    assert (meta["zr_a"], meta["zr_b"]) == (316.0, 1.5) and meta["pixel_size_m"] == 1000.0
    assert "+proj=somerc" in meta["projection"]
    assert 0.2 < np.isnan(data).mean() < 0.4  # about 30 % outside radar coverage
    # mm per 5 min straight from pysteps, times 12
    from convlstm_dist.data.readers import _pysteps

    _, pio = _pysteps()
    mm = pio.get_method("mch_gif", "importer")(str(path), product="AQC", unit="mm", accutime=5.0)[0]
    np.testing.assert_allclose(data, 12.0 * mm, rtol=1e-6, equal_nan=True)
    # the defaults (pysteps' own data-source table) give the same result without options
    d2, m2 = get_reader("pysteps:mch_gif").read(path)
    np.testing.assert_array_equal(d2, data)
    assert m2["time"] == meta["time"]
    # pixel centres: 1 km grid of the Swiss oblique Mercator, row 0 north
    assert meta["x"][0] == 255500.0 and meta["y"][0] == 479500.0 and meta["y"][1] < meta["y"][0]


@needs_data
def test_mch_files_get_their_times_from_the_names_and_a_bad_file_is_named():
    reader = get_reader("pysteps:mch_gif")
    files = sorted(MCH.glob("AQC*.gif"))[:3]
    times = [reader.read(f)[1]["time"] for f in files]
    assert np.all(np.diff(np.array(times)).astype(int) == 300)
    with pytest.raises(ReadError, match="fn_pattern"):
        get_reader("pysteps:mch_gif", {"fn_pattern": "XYZ%Y%m%d"}).read(files[0])


@needs_data
def test_pysteps_knmi_matches_the_native_reader():
    files = sorted(KNMI.glob("RAD_NL25_RAP_5min_*.h5"))[:3]
    ps, native = get_reader("pysteps:knmi_hdf5"), get_reader("knmi_hdf5")
    for f in files:
        a, ma = ps.read(f)
        b, mb = native.read(f)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)
        assert ma["time"] == mb["time"] and ma["timestep_s"] == mb["timestep_s"]
        # same grid: the two readers' frames could go into one archive
        for k in ("variable", "units", "zr_a", "zr_b", "projection", "pixel_size_m", "shape", "source"):
            assert ma[k] == mb[k], k
        np.testing.assert_allclose(ma["x"], mb["x"])
        np.testing.assert_allclose(ma["y"], mb["y"])


@needs_data
def test_ingest_with_a_pysteps_reader(tmp_path):
    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.ingest import ingest

    files = sorted(MCH.glob("AQC*.gif"))[:4]
    url = str(tmp_path / "mch.zarr")
    rep = ingest(get_reader("pysteps:mch_gif"), files, url, parallel=False, progress=False)
    assert rep.written == 4
    arc = open_archive(url)
    assert arc.variable == "rain_mmh" and arc.timestep_s == 300 and arc.attrs["source"] == "MeteoSwiss"
    assert "MeteoSwiss" in arc.attrs["attribution"]
    assert str(arc.times[0]) == "2015-05-15T15:45:00"
