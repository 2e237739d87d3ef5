"""Archives on a real S3 server (SeaweedFS on loopback): ingest via API and CLI, read-only key,
wrong or missing credentials, unreachable endpoint — all fail fast with clear messages."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import sample_files
from convlstm_dist.errors import UserError
from reference_decoders import FMI_DIR, fmi_decode, knmi_decode

pytestmark = pytest.mark.integration
KNMI = sample_files()
FMI = sorted(FMI_DIR.glob("*.pgm.gz"))



def cli(args, env, timeout=120):
    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "convlstm_dist.cli", *args], env=full, timeout=timeout,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def knmi_s3(s3_server):
    url = s3_server.url("knmi.zarr")
    r = ingest("knmi_hdf5", KNMI, url, s3_server.storage_options(), parallel=False, progress=False, shards=32)
    assert r.written == 92
    return url


def test_knmi_on_s3_values_and_xarray(s3_server, knmi_s3):
    a = open_archive(knmi_s3, s3_server.storage_options(readonly=True))
    assert a.shape == (92, 765, 700) and a.times[-1] == np.datetime64("2010-08-26T07:35:00")
    for t in (0, 91):
        np.testing.assert_allclose(a.read(t, t + 1)[0], knmi_decode(KNMI[t]), equal_nan=True)
    ds = xr.open_zarr(knmi_s3, storage_options=s3_server.storage_options(readonly=True))
    assert ds["rain_mmh"].dims == ("time", "y", "x") and ds.sizes["time"] == 92
    assert ds.attrs["variable"] == "rain_mmh"


def test_reingest_is_a_noop_and_readonly_key_cannot_write(s3_server, knmi_s3):
    r = ingest("knmi_hdf5", KNMI[-5:], knmi_s3, s3_server.storage_options(), parallel=False, progress=False)
    assert (r.written, r.skipped_present) == (0, 5)
    fresh = s3_server.url("ro.zarr")
    with pytest.raises(UserError, match=f"access denied.*write.*{fresh}"):
        ingest("knmi_hdf5", KNMI[:2], fresh, s3_server.storage_options(readonly=True), parallel=False, progress=False)
    with pytest.raises(UserError, match="no archive|nothing found|access denied"):
        open_archive(fresh, s3_server.storage_options())


@pytest.mark.skipif(not FMI, reason="FMI data not present")
def test_fmi_ingest_via_cli_with_env_credentials(s3_server):
    url = s3_server.url("fmi.zarr")
    p = cli(["ingest", "--reader", "fmi_pgm", "--archive", url, "--no-parallel", "--quiet",
             "--chunk-time", "8", "--shard-time", "16", *map(str, FMI)], s3_server.env())
    assert p.returncode == 0, p.stderr
    assert "40 frames written" in p.stdout and s3_server.rw.secret_key not in p.stdout + p.stderr
    a = open_archive(url, s3_server.storage_options(readonly=True))
    assert a.shape == (40, 1226, 760) and a.shards == (16, 1280, 768)
    np.testing.assert_allclose(a.read(20, 21)[0], fmi_decode(FMI[20]), equal_nan=True)
    info = cli(["archive-info", url], s3_server.env(readonly=True))
    assert info.returncode == 0, info.stderr
    assert "2016-09-28T14:45:00 .. 2016-09-28T18:00:00" in info.stdout and "gaps        0" in info.stdout


def test_wrong_secret_and_missing_credentials(s3_server, knmi_s3, tmp_path):
    env = s3_server.env()
    env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-value"
    p = cli(["archive-info", knmi_s3], env)
    assert p.returncode == 2 and "access denied" in p.stderr and "wrong-secret-value" not in p.stderr
    assert "Traceback" not in p.stderr
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "HOME": str(tmp_path),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    p = cli(["archive-info", knmi_s3], env)
    assert p.returncode == 2 and knmi_s3 in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_unreachable_endpoint_fails_fast(s3_server):
    opts = s3_server.storage_options()
    opts["client_kwargs"] = {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}
    t0 = time.monotonic()
    with pytest.raises(UserError, match="cannot reach.*127.0.0.1:9.*s3://b/x.zarr"):
        ingest("knmi_hdf5", KNMI[:2], "s3://b/x.zarr", opts, parallel=False, progress=False)
    assert time.monotonic() - t0 < 10
