"""Reads of a streamed archive retry while the store is unreachable (data.read_retries), and only then."""

from __future__ import annotations

import pytest

from convlstm_dist.data.archive import Archive
from convlstm_dist.data.datasource import open_with_retries, read_with_retries, retry_delays
from convlstm_dist.data.storage import failed_key, is_unreachable, storage_error
from convlstm_dist.errors import UserError

OPTS = {"key": "AKIAEXAMPLE", "secret": "s3cr3t-value",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:8333", "region_name": "us-east-1"}}


def _refused():
    from botocore.exceptions import EndpointConnectionError

    try:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:8333/bkt/a.zarr/rain/c/3/0/1")
    except EndpointConnectionError as exc:
        return storage_error("s3://bkt/a.zarr", OPTS, exc, "read")


def test_unreachable_store_is_transient_and_names_the_key():
    err = _refused()
    assert err.transient and err.key == "bkt/a.zarr/rain/c/3/0/1" and err.endpoint == "http://127.0.0.1:8333"
    assert is_unreachable(ConnectionRefusedError("refused"))
    assert not is_unreachable(PermissionError("AccessDenied"))
    assert failed_key(ValueError("nothing here")) is None
    denied = storage_error("s3://bkt/a.zarr", OPTS, PermissionError("AccessDenied"), "read")
    assert not getattr(denied, "transient", False)


def test_retries_ride_out_an_outage_and_note_it():
    calls, notes, waits = [], [], []
    import convlstm_dist.data.datasource as ds

    def read():
        calls.append(1)
        if len(calls) <= 3:
            raise _refused()
        return "frames"

    orig = ds._note
    ds._note = lambda name, line: notes.append(line)
    try:
        assert read_with_retries(read, "frames 0..9 of s3://bkt/a.zarr", retries=6, sleep=waits.append) == "frames"
    finally:
        ds._note = orig
    assert len(calls) == 4 and waits == [1.0, 2.0, 4.0]
    assert "retry 1/6 in 1 s" in notes[0] and "key bkt/a.zarr/rain/c/3/0/1" in notes[0]
    assert notes[-1].startswith("[data] storage answered again: read frames 0..9")


def test_outage_past_the_budget_names_endpoint_and_key_not_the_secret():
    def read():
        raise _refused()

    with pytest.raises(UserError) as info:
        read_with_retries(read, "frames 0..9 of s3://bkt/a.zarr", retries=2, sleep=lambda s: None)
    msg = str(info.value)
    assert "cannot reach the storage endpoint http://127.0.0.1:8333 while reading frames 0..9" in msg
    assert "(key bkt/a.zarr/rain/c/3/0/1)" in msg and "after 3 tries" in msg and "data.read_retries (now 2)" in msg
    assert "s3cr3t-value" not in msg and "AKIAEXAMPLE" not in msg


def test_other_errors_are_not_retried():
    calls = []

    def read():
        calls.append(1)
        raise UserError("access denied while trying to read s3://bkt/a.zarr")

    with pytest.raises(UserError, match="access denied"):
        read_with_retries(read, "frames", retries=6, sleep=lambda s: None)
    assert len(calls) == 1


def test_default_budget_covers_a_45_s_outage():
    assert sum(retry_delays(6)) == 45 and retry_delays(0) == []


class _ArchiveWhileTheStoreComesBack:
    """An archive whose store refuses the first ``down`` opens (what a read task in a fresh worker
    process meets when it starts during an outage)."""

    url = "s3://bkt/a.zarr"

    def __init__(self, down: int):
        self.down, self.opens = down, 0

    @property
    def time_chunk(self):
        self.opens += 1
        if self.opens <= self.down:
            raise _refused()
        return 12

    @property
    def shape(self):
        return (40, 64, 64)


def test_opening_an_archive_in_a_read_task_rides_out_an_outage(monkeypatch):
    """CI 2026-12-05: a read task first touched the archive's metadata (outside the retried frame
    reads) while the store was down; the run restarted from a checkpoint and then stopped."""
    import convlstm_dist.data.datasource as ds

    notes, waits = [], []
    monkeypatch.setattr(ds, "_note", lambda name, line: notes.append(line))
    arc = _ArchiveWhileTheStoreComesBack(down=2)
    assert open_with_retries(arc, retries=6, sleep=waits.append) is arc
    assert arc.opens == 3 and waits == [1.0, 2.0]
    assert "while reading the metadata of s3://bkt/a.zarr" in notes[0]
    assert notes[-1].startswith("[data] storage answered again: read the metadata of s3://bkt/a.zarr")
    with pytest.raises(UserError, match="still unreachable after 2 tries"):
        open_with_retries(_ArchiveWhileTheStoreComesBack(down=5), retries=1, sleep=lambda s: None)


def test_a_real_archive_on_a_refusing_endpoint_is_a_transient_error_until_it_opens():
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = {"key": "AKIAEXAMPLE", "secret": "s3cr3t-value",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}
    arc = Archive("s3://bkt/a.zarr", opts)
    with pytest.raises(UserError) as info:
        open_with_retries(arc, retries=0, sleep=lambda s: None)
    assert "cannot reach the storage endpoint" in str(info.value) and "s3cr3t-value" not in str(info.value)
    with pytest.raises(UserError) as again:  # nothing half-open was kept: the next access tries the store again
        arc.time_chunk
    assert getattr(again.value, "transient", False)
