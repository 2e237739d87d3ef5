"""One writer at a time per archive: a lock beside the archive (``<archive>.lock``).

Every write to an archive (create + append) happens while holding :func:`writer_lock`, and the
whole "read what is there → decide what to write → write → commit" sequence runs under it, so two
concurrent ingests serialise: the second waits (up to ``timeout_s``), then sees the first one's
frames. What is never possible is both reading the same length and overwriting each other.

* **Local paths**: ``fcntl.flock`` on ``<archive>.lock``. The kernel releases it when the holder
  dies (SIGKILL included), so a crashed ingest never blocks the next one. The file is removed on
  release; a waiter that locked a file someone else just removed notices (inode check) and retries.
* **S3 (and other fsspec stores)**: a lock *object* created with a conditional put
  (``If-None-Match: *``, supported by AWS S3 and SeaweedFS), so exactly one creator wins. The holder
  rewrites it every ``HEARTBEAT_S`` seconds. A waiter that sees the object's ETag unchanged for
  ``STALE_S`` seconds of its *own* clock (no cross-host clock comparison) treats the holder as dead,
  deletes the lock and competes for it again. Before committing, the holder checks that the lock
  object is still its own (:meth:`WriterLock.verify`) and refuses to commit otherwise.
  A lease held by a live process is never taken: the lock object names its holder (host, boot id,
  pid and the pid's start time), and a waiter on the same machine that finds that process still
  running keeps waiting however late its heartbeat is (a stopped or swapped-out writer). Holders on
  other machines cannot be checked; for them the unrenewed ETag is the only sign of death.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from convlstm_dist.data.storage import filesystem, is_remote, storage_error
from convlstm_dist.errors import UserError

HEARTBEAT_S = float(os.environ.get("CONVLSTM_LOCK_HEARTBEAT_S", "10"))
STALE_S = float(os.environ.get("CONVLSTM_LOCK_STALE_S", "60"))
DEFAULT_TIMEOUT_S = 600.0
POLL_S = 0.25


def lock_url(archive_url: str) -> str:
    return str(archive_url).rstrip("/") + ".lock"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22): with the boot
    id it tells a live holder from a later process that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "boot": _boot_id(),
            "start": _start_ticks(os.getpid())}


def holder_alive(info: dict | None) -> bool | None:
    """True: the holder is a running process on this machine; False: it ran here and is gone;
    None: it cannot be told from here (another machine, or a holder that did not record its start)."""
    if not info or info.get("host") != socket.gethostname() or not info.get("boot") \
            or info.get("boot") != _boot_id() or not info.get("start"):
        return None
    return _start_ticks(int(info.get("pid") or 0)) == info["start"]


def _describe(info: dict | None) -> str:
    if not info:
        return "another writer"
    return f"process {info.get('pid')} on {info.get('host')} (since {info.get('since')})"


class WriterLock:
    """A held lock; :meth:`verify` raises if it was lost (S3 only; a flock cannot be lost)."""

    def __init__(self, url: str):
        self.url = url

    def verify(self) -> None:  # pragma: no cover - overridden
        pass

    def release(self) -> None:  # pragma: no cover - overridden
        pass


class _LocalLock(WriterLock):
    def __init__(self, url: str, path: Path, fd: int):
        super().__init__(url)
        self.path, self.fd = path, fd

    def release(self) -> None:
        import fcntl

        try:
            os.unlink(self.path)  # while still holding it: waiters re-check the inode and retry
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _acquire_local(archive_url: str, timeout_s: float) -> _LocalLock:
    import fcntl

    path = Path(lock_url(archive_url).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_local_info(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise UserError(f"the archive {archive_url} is being written by {_describe(info)}; "
                                f"waited {timeout_s:.0f} s for it (--lock-timeout): try again when it "
                                "has finished") from None
            if not waited:
                print(f"waiting for {_describe(info)} to finish writing {archive_url} ...", flush=True)
                waited = True
            time.sleep(POLL_S)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file after we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode())
        return _LocalLock(archive_url, path, fd)


def _read_local_info(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None


class _ObjectLock(WriterLock):
    def __init__(self, url: str, fs, path: str, info: dict):
        super().__init__(url)
        self.fs, self.path, self.info = fs, path, info
        self.lost: str | None = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="archive-lock-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        n = 0
        while not self._stop.wait(HEARTBEAT_S):
            n += 1
            try:
                current = json.loads(self.fs.cat_file(self.path))
                if current.get("token") != self.info["token"]:
                    self.lost = f"taken over by {_describe(current)}"
                    return
                self.fs.pipe_file(self.path, json.dumps({**self.info, "beat": n}).encode())
            except FileNotFoundError:
                self.lost = "removed by someone else"
                return
            except Exception:  # noqa: BLE001 - a transient storage error: try again next beat
                continue

    def verify(self) -> None:
        try:
            current = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            current = None
        if self.lost or not current or current.get("token") != self.info["token"]:
            raise UserError(f"lost the write lock on {self.url} ({self.lost or 'lock object replaced'}): "
                            "nothing was committed; run the same command again")

    def release(self) -> None:
        self._stop.set()
        self._beat.join(timeout=5)
        try:
            current = json.loads(self.fs.cat_file(self.path))
            if current.get("token") == self.info["token"]:
                self.fs.rm_file(self.path)
        except (FileNotFoundError, ValueError):
            pass


def _acquire_object(archive_url: str, storage_options: dict | None, timeout_s: float) -> _ObjectLock:
    fs, path = filesystem(lock_url(archive_url), storage_options)
    info = _holder()
    deadline = time.monotonic() + timeout_s
    seen: tuple[str | None, float] | None = None  # (etag of the holder's object, first seen at)
    waited = live_noted = False
    while True:
        try:
            fs.pipe_file(path, json.dumps(info).encode(), mode="create")
            fs.invalidate_cache()
            return _ObjectLock(archive_url, fs, path, info)
        except (FileExistsError, OSError) as exc:
            if not _is_precondition(exc):
                raise
        fs.invalidate_cache()
        try:
            stat = fs.info(path)
            holder = json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            continue  # released between our put and our look: try again
        etag = stat.get("ETag") or stat.get("etag") or str(stat.get("LastModified"))
        now = time.monotonic()
        if seen is None or seen[0] != etag:
            seen = (etag, now)
        elif now - seen[1] >= STALE_S and holder_alive(holder):
            if not live_noted:  # a live writer whose heartbeat is late (stopped, swapped out): never taken
                print(f"the write lock on {archive_url} has not been renewed for {STALE_S:.0f} s, but its holder "
                      f"{_describe(holder)} is still running on this machine: waiting for it, not taking over",
                      flush=True)
                live_noted = True
        elif now - seen[1] >= STALE_S:
            gone = " (no longer running on this machine)" if holder_alive(holder) is False else ""
            print(f"the write lock on {archive_url} held by {_describe(holder)}{gone} has not been renewed "
                  f"for {STALE_S:.0f} s: treating that writer as dead and taking over", flush=True)
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass
            seen = None
            continue
        if now >= deadline:
            raise UserError(f"the archive {archive_url} is being written by {_describe(holder)}; "
                            f"waited {timeout_s:.0f} s for it (--lock-timeout): try again when it has "
                            f"finished (a lock left by a killed writer expires after {STALE_S:.0f} s)")
        if not waited:
            print(f"waiting for {_describe(holder)} to finish writing {archive_url} ...", flush=True)
            waited = True
        time.sleep(POLL_S * 4)


def _is_precondition(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, FileExistsError) or "PreconditionFailed" in text or "pre-conditions" in text \
        or "412" in text


@contextmanager
def writer_lock(archive_url: str, storage_options: dict | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S):
    """Hold the archive's writer lock for the duration of the block (see the module doc)."""
    try:
        lock = (_acquire_object(archive_url, storage_options, timeout_s) if is_remote(archive_url)
                else _acquire_local(archive_url, timeout_s))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage problems become a clear message
        raise storage_error(archive_url, storage_options, exc, "write") from None
    try:
        yield lock
    finally:
        lock.release()
