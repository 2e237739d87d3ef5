"""`pysteps:<importer>` readers: MeteoSwiss GIFs, and pysteps' KNMI importer against the native reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist.data.readers import ReadError, get_reader
from convlstm_dist.data.readers_pysteps import parse_reader_options, pysteps_to_contract, time_from_filename
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
    from convlstm_dist.data.readers_pysteps import _pysteps

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


# -- importers of the `radar` extra (pyproj, netCDF4): .[radar] --------------------------------------
FMI = DATA / "fmi" / "20160928"
OPERA = DATA / "opera" / "20180824"


@pytest.mark.skipif(not FMI.is_dir(), reason="shared FMI data not present")
def test_pysteps_fmi_pgm_reads_reflectivity_on_its_stereographic_grid():
    pytest.importorskip("pyproj", reason="the radar extra is not installed: pip install -e '.[radar]'")
    files = sorted(FMI.glob("*_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"))[:2]
    reader = pickle.loads(pickle.dumps(get_reader("pysteps:fmi_pgm")))
    (a, ma), (_, mb) = reader.read(files[0]), reader.read(files[1])
    assert a.shape == (1226, 760) == ma["shape"] and a.dtype == np.float32
    assert ma["variable"] == "refl_dbz" and ma["units"] == "dBZ" and ma["source"] == "FMI"
    assert ma["time"] == np.datetime64("2016-09-28T14:45:00") and mb["time"] - ma["time"] == np.timedelta64(300, "s")
    assert "+proj=stere" in ma["projection"] and abs(ma["pixel_size_m"] - 1000.0) < 1.0
    assert 0.2 < np.isnan(a).mean() < 0.3  # about 24 % of the composite lies outside radar coverage
    assert 20.0 < np.nanmax(a) < 70.0
    assert ma["y"][0] > ma["y"][1] and ma["x"][1] > ma["x"][0]  # row 0 north, columns eastwards
    # the same pixels as the native reader
    b, mn = get_reader("fmi_pgm").read(files[0])
    np.testing.assert_allclose(a, b, atol=1e-4, equal_nan=True)
    assert mn["time"] == ma["time"]


@pytest.mark.skipif(not OPERA.is_dir(), reason="shared OPERA data not present")
def test_pysteps_opera_hdf5_reads_rain_rate_on_the_laea_grid():
    pytest.importorskip("pyproj", reason="the radar extra is not installed: pip install -e '.[radar]'")
    path = OPERA / "T_PAAH21_C_EUOC_20180824180000.hdf"
    # pysteps' data-source table has no OPERA file name pattern: give it
    reader = get_reader("pysteps:opera_hdf5", parse_reader_options(
        ["fn_pattern=T_PAAH21_C_EUOC_%Y%m%d%H%M%S", "timestep_s=900"]))
    data, meta = reader.read(path)
    assert data.shape == (2200, 1900) == meta["shape"] and data.dtype == np.float32
    assert meta["variable"] == "rain_mmh" and meta["units"] == "mm/h" and meta["timestep_s"] == 900
    assert meta["time"] == np.datetime64("2018-08-24T18:00:00")
    assert "+proj=laea" in meta["projection"] and meta["pixel_size_m"] == 2000.0
    assert 0.3 < np.isnan(data).mean() < 0.7 and np.nanmin(data) >= 0.0
    assert np.nanpercentile(data, 99) > 0.1  # it rains somewhere over Europe


def _write_rf3(path: Path, rain: np.ndarray) -> None:
    """A file in the BoM Rainfields3 layout ``import_bom_rf3`` reads (precipitation in mm over 10 min,
    an Albers grid in km, valid/start time): no BoM file is in the shared data."""
    import netCDF4

    ny, nx = rain.shape
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("y", ny)
        ds.createDimension("x", nx)
        proj = ds.createVariable("proj", "i4")
        proj.grid_mapping_name = "albers_conical_equal_area"
        proj.longitude_of_central_meridian = 144.752
        proj.latitude_of_projection_origin = -37.852
        proj.standard_parallel = [-18.0, -36.0]
        x = ds.createVariable("x", "f8", ("x",))
        x.units = "km"
        x[:] = np.arange(nx) * 0.5 - nx / 4
        y = ds.createVariable("y", "f8", ("y",))
        y.units = "km"
        y[:] = ny / 4 - np.arange(ny) * 0.5
        for name, minutes in (("valid_time", 10), ("start_time", 0)):
            v = ds.createVariable(name, "i8")
            v.units = "seconds since 1970-01-01 00:00:00"
            v[:] = int(np.datetime64("2018-06-16T10:00:00", "s").astype(np.int64)) + 60 * minutes
        p = ds.createVariable("precipitation", "f4", ("y", "x"), fill_value=-1.0)
        p.units = "mm"
        p[:] = rain


def test_pysteps_bom_rf3_needs_the_current_file_name_pattern(tmp_path):
    pytest.importorskip("netCDF4", reason="the radar extra is not installed: pip install -e '.[radar]'")
    rain = np.zeros((8, 6), np.float32)
    rain[2:4, 1:3] = 0.5  # mm in 10 min = 3 mm/h
    rain[0, 0] = np.nan   # no data
    path = tmp_path / "66_20180616_101000.prcp-c10.nc"
    _write_rf3(path, np.ma.masked_invalid(rain))
    # pysteps' default pattern is the older ``2_%Y%m%d_%H%M00.prcp-cscn`` naming: the error says what to set
    with pytest.raises(ReadError, match="fn_pattern"):
        get_reader("pysteps:bom_rf3").read(path)
    reader = get_reader("pysteps:bom_rf3", {"fn_pattern": "66_%Y%m%d_%H%M00.prcp-c10", "timestep_s": 600})
    data, meta = reader.read(path)
    assert meta["time"] == np.datetime64("2018-06-16T10:10:00") and meta["timestep_s"] == 600
    assert meta["variable"] == "rain_mmh" and "+proj=aea" in meta["projection"] and meta["pixel_size_m"] == 500.0
    assert data.shape == (8, 6) and np.isnan(data[0, 0])
    np.testing.assert_allclose(data[2:4, 1:3], 3.0, rtol=1e-6)  # mm per 10 min -> mm/h
    assert np.nansum(data) == pytest.approx(4 * 3.0)
