"""Storage options from the AWS environment; credentials never leak."""

import pytest

from convlstm_dist.data.storage import redact, scrub, storage_error, storage_options_for


def test_local_paths_need_no_options():
    assert storage_options_for("/tmp/x.zarr") == {} and storage_options_for("file:///tmp/x") == {}


def test_s3_options_from_environment(monkeypatch):
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    o = storage_options_for("s3://b/x.zarr")
    assert (o["key"], o["secret"]) == ("AKIDEXAMPLE", "s3cr3t")
    assert o["client_kwargs"] == {"endpoint_url": "http://env:9000", "region_name": "eu-west-1"}
    assert o["config_kwargs"]["connect_timeout"] <= 5
    assert storage_options_for("s3://b/x", endpoint_url="http://cli:1")["client_kwargs"]["endpoint_url"] == "http://cli:1"
    r = redact(o)
    assert r["key"] == r["secret"] == "***" and "s3cr3t" not in repr(r)
    assert r["client_kwargs"]["endpoint_url"] == "http://env:9000"


def test_profile_used_without_keys(monkeypatch):
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_PROFILE", "research")
    o = storage_options_for("s3://b/x")
    assert o["profile"] == "research" and "key" not in o


@pytest.mark.parametrize("exc, expect", [
    (PermissionError("Forbidden"), "access denied"),
    (ConnectionRefusedError("refused"), "cannot reach"),
    (RuntimeError("Unable to locate credentials"), "no S3 credentials"),
])
def test_storage_errors_name_the_url_not_the_secret(exc, expect):
    opts = {"key": "AKID", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://h:1"}}
    err = storage_error("s3://b/x.zarr", opts, exc)
    assert expect in str(err) and "s3://b/x.zarr" in str(err) and "s3cr3t" not in str(err)
    assert scrub("key s3cr3t and AKID", opts) == "key *** and ***"


def _no_aws_keys(monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(k, raising=False)


def test_credentials_file_passed_by_path(monkeypatch, tmp_path):
    """A job gets only the file's path (AWS_SHARED_CREDENTIALS_FILE): the keys come from the file, and
    Ray's S3 filesystem for checkpoints gets the same key."""
    from convlstm_dist.data.storage import ray_storage

    _no_aws_keys(monkeypatch)
    cred = tmp_path / "credentials"
    cred.write_text("[default]\naws_access_key_id = KEYDEFAULT\naws_secret_access_key = secretdefault\n\n"
                    "[other]\naws_access_key_id = KEYOTHER\naws_secret_access_key = secretother\n"
                    "aws_session_token = tok\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(cred))
    o = storage_options_for("s3://b/x.zarr")
    assert (o["key"], o["secret"]) == ("KEYDEFAULT", "secretdefault") and "profile" not in o
    monkeypatch.setenv("AWS_PROFILE", "other")
    o = storage_options_for("s3://b/x.zarr")
    assert (o["key"], o["secret"], o["token"]) == ("KEYOTHER", "secretother", "tok")
    assert "secretother" not in repr(redact(o))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    _, fs = ray_storage("s3://b/runs")
    assert fs is not None  # built with the file's key (pyarrow does not expose it back)
    # keys in the environment win over the file
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    assert storage_options_for("s3://b/x")["key"] == "ENVKEY"


def test_credentials_file_problems_name_the_file_and_profile(monkeypatch, tmp_path):
    from convlstm_dist.errors import UserError

    _no_aws_keys(monkeypatch)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"cannot read the S3 credentials file .*missing"):
        storage_options_for("s3://b/x")
    cred = tmp_path / "credentials"
    cred.write_text("[default]\naws_access_key_id = K\naws_secret_access_key = hushhush\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(cred))
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(UserError, match=r"no profile \[nope\]") as err:
        storage_options_for("s3://b/x")
    assert "hushhush" not in str(err.value) and str(cred) in str(err.value)
