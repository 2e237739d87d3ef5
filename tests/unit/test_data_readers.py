"""Readers: registry, KNMI/FMI against an independent decoding (per the data READMEs), ODIM round
trip, corrupt files, unit conversions."""

import gzip

import h5py
import numpy as np
import pytest

from convlstm_dist.data import units as U
from convlstm_dist.data.readers import METADATA_KEYS, ReadError, get_reader, list_readers
from convlstm_dist.errors import UserError

from convlstm_dist.data.shipped import SAMPLE_DIR
from reference_decoders import FMI_DIR, fmi_decode, knmi_decode

KNMI = SAMPLE_DIR / "knmi"
FMI = FMI_DIR
KNMI_FILE = KNMI / "RAD_NL25_RAP_5min_201008260400.h5"
FMI_FILE = FMI / "201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
needs_data = pytest.mark.skipif(not KNMI.exists() or not FMI.exists(), reason="radar data not present")



def test_unknown_reader_lists_valid_ones():
    with pytest.raises(UserError, match="knmi_hdf5.*odim_hdf5") as err:
        get_reader("nope")
    assert "nope" in str(err.value)
    assert {"knmi_hdf5", "fmi_pgm", "odim_hdf5"} <= set(list_readers())


@needs_data
@pytest.mark.parametrize("reader, path, decode, variable, units, time, nan_share", [
    ("knmi_hdf5", KNMI_FILE, knmi_decode, "rain_mmh", "mm/h", "2010-08-26T04:00:00", (0.7, 0.8)),
    ("fmi_pgm", FMI_FILE, fmi_decode, "refl_dbz", "dBZ", "2016-09-28T14:45:00", (0.2, 0.3)),
])
def test_reader_matches_independent_decoding(reader, path, decode, variable, units, time, nan_share):
    data, meta = get_reader(reader).read(path)
    ref = decode(path)
    assert data.dtype == np.float32 and data.shape == ref.shape == meta["shape"]
    np.testing.assert_array_equal(np.isnan(data), np.isnan(ref))
    np.testing.assert_allclose(data, ref, rtol=1e-6, equal_nan=True)
    assert nan_share[0] < np.isnan(data).mean() < nan_share[1]
    assert set(meta) == set(METADATA_KEYS)
    assert (meta["variable"], meta["units"], meta["timestep_s"]) == (variable, units, 300)
    assert meta["time"] == np.datetime64(time, "s") and meta["time"].dtype == np.dtype("datetime64[s]")
    assert len(meta["y"]) == data.shape[0] and len(meta["x"]) == data.shape[1]
    assert meta["y"][0] > meta["y"][-1]  # row 0 is north
    assert abs(meta["pixel_size_m"] - 1000) < 1


@needs_data
@pytest.mark.parametrize("reader, path", [("knmi_hdf5", KNMI_FILE), ("fmi_pgm", FMI_FILE)])
def test_truncated_file_names_the_file(tmp_path, reader, path):
    bad = tmp_path / path.name
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.compress(gzip.decompress(raw)[:50_000])
    else:
        raw = raw[: len(raw) // 2]
    bad.write_bytes(raw)
    with pytest.raises(ReadError, match=str(bad.name)):
        get_reader(reader).read(bad)


def write_odim(path, quantity="DBZH", gain=0.5, offset=-32.0, nodata=255, undetect=0, shape=(40, 30)):
    rng = np.random.default_rng(0)
    raw = rng.integers(1, 255, size=shape).astype(np.uint8)
    raw[0, :5] = nodata
    raw[1, :5] = undetect
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = np.bytes_("ODIM_H5/V2_2")
        w = f.create_group("what")
        w.attrs.update({"object": np.bytes_("COMP"), "version": np.bytes_("H5rad 2.2"),
                        "date": np.bytes_("20200101"), "time": np.bytes_("120500"),
                        "source": np.bytes_("ORG:247")})
        wh = f.create_group("where")
        wh.attrs.update({"projdef": np.bytes_("+proj=laea +lat_0=55 +lon_0=10 +ellps=WGS84"),
                         "xsize": shape[1], "ysize": shape[0], "xscale": 2000.0, "yscale": 2000.0})
        d = f.create_group("dataset1")
        d.create_group("what").attrs.update({"product": np.bytes_("COMP"), "startdate": np.bytes_("20200101"),
                                             "starttime": np.bytes_("120000"), "enddate": np.bytes_("20200101"),
                                             "endtime": np.bytes_("120500")})
        d1 = d.create_group("data1")
        d1.create_dataset("data", data=raw)
        d1.create_group("what").attrs.update({"quantity": np.bytes_(quantity), "gain": gain, "offset": offset,
                                              "nodata": float(nodata), "undetect": float(undetect)})
    return raw


@pytest.mark.parametrize("quantity, variable, gain, offset, undetect_value", [
    ("DBZH", "refl_dbz", 0.5, -32.0, -32.0),
    ("RATE", "rain_mmh", 0.1, 0.0, 0.0),
])
def test_odim_round_trip(tmp_path, quantity, variable, gain, offset, undetect_value):
    path = tmp_path / "comp.h5"
    raw = write_odim(path, quantity, gain, offset)
    data, meta = get_reader("odim_hdf5").read(path)
    expect = raw * gain + offset
    expect[raw == 0] = undetect_value
    expect[raw == 255] = np.nan
    np.testing.assert_allclose(data, expect.astype(np.float32), equal_nan=True)
    assert np.isnan(data[0, :5]).all()
    assert meta["variable"] == variable and meta["time"] == np.datetime64("2020-01-01T12:05:00", "s")
    assert meta["timestep_s"] is None and meta["pixel_size_m"] == 2000.0 and meta["y"] is None
    assert meta["projection"].startswith("+proj=laea")


def test_odim_unsupported_quantity(tmp_path):
    path = tmp_path / "vrad.h5"
    write_odim(path, "VRADH")
    with pytest.raises(ReadError, match="vrad.h5.*VRADH"):
        get_reader("odim_hdf5").read(path)


def test_dbz_rain_round_trip_and_thresholds():
    r = np.array([0.1, 1.0, 10.0, np.nan], dtype=np.float32)
    dbz = U.rain_mmh_to_dbz(r, 223.0, 1.53)
    np.testing.assert_allclose(U.dbz_to_rain_mmh(dbz, 223.0, 1.53), r, rtol=1e-5, equal_nan=True)
    assert abs(U.rain_mmh_to_dbz(np.array([1.0]), 200, 1.6)[0] - 23.0103) < 1e-3
    with pytest.raises(UserError, match="Z-R"):
        U.to_rain_mmh(dbz, "refl_dbz", None, None)
    with pytest.raises(UserError, match="intensity"):
        U.to_rain_mmh(r, "intensity", None, None)
    assert len(U.wet_thresholds("intensity")) == len(U.wet_thresholds("rain_mmh")) == 5


def test_frame_stats_counts_valid_pixels_only():
    f = np.array([[[np.nan, 0.0], [1.0, 6.0]], [[np.nan, np.nan], [np.nan, np.nan]]], dtype=np.float32)
    s = U.frame_stats(f, np.array([0.5, 5.0]))
    np.testing.assert_allclose(s["valid_fraction"], [0.75, 0.0])
    np.testing.assert_allclose(s["wet_fraction"], [[2 / 3, 1 / 3], [0, 0]])
    assert s["max_value"][0] == 6.0 and np.isnan(s["max_value"][1])
