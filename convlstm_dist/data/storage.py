"""Where archives live: local folders or ``s3://bucket/prefix`` on any S3-compatible server.

`storage_options_for(url, endpoint_url)` builds the fsspec/s3fs options from the standard AWS
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
AWS_SHARED_CREDENTIALS_FILE, AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION); local paths need
none (`{}`). A credentials file passed by path (AWS_SHARED_CREDENTIALS_FILE, profile AWS_PROFILE or
`default`) is how a Ray job gets a key without the key itself in its runtime env, which
`ray job list` and the dashboard show.
Credentials never reach logs, error messages or tracked parameters: pass options through
`redact()` before printing or logging them. S3 clients get a short connect timeout and few
retries so a wrong endpoint or key fails within seconds with a message naming the URL and what
to check (`storage_error`, `check_access`); `exists()`, the first request of every command that
opens an archive, has an overall deadline so an endpoint that accepts connections and never
answers fails within ~10 s too. `cancel_pending_io()` (called by the CLI on exit) unwinds requests
still in flight after an error, so they do not print "Exception ignored" tracebacks at exit.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from convlstm_dist.errors import UserError

SECRET_KEYS = ("key", "secret", "token", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "password")
# Timeouts, and why they differ between data and metadata:
# * botocore's read timeout bounds each wait for the next bytes of a response (not a whole download).
#   Data reads (zarr chunks/shards of MBs, from Ray Data tasks, on a real S3 that may stall for a
#   few seconds under load) keep a generous READ_TIMEOUT_S: lowering it would turn a slow but
#   working S3 into failed epochs. Two attempts in all ("standard" retry mode).
# * A silent endpoint (accepts TCP, never answers) then costs READ_TIMEOUT_S x MAX_ATTEMPTS per
#   request, and zarr's open issues several requests: minutes. So the metadata probe `exists()` --
#   the first request of every command that opens an archive -- also has an overall deadline,
#   METADATA_DEADLINE_S (env CONVLSTM_DIST_S3_METADATA_DEADLINE_S for very slow links): a HEAD on
#   a working S3 answers in well under a second, so ~8 s only ever trips on a dead endpoint.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 2
METADATA_DEADLINE_S = 8.0
DEADLINE_ENV = "CONVLSTM_DIST_S3_METADATA_DEADLINE_S"


def metadata_deadline_s() -> float:
    try:
        return max(1.0, float(os.environ.get(DEADLINE_ENV) or METADATA_DEADLINE_S))
    except ValueError:
        return METADATA_DEADLINE_S


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than file:// (s3://, gs://, memory://, ...)."""
    return "://" in str(url) and not str(url).startswith("file://")


def archive_key(url: str, workdir=None) -> str:
    """A comparable identity of an archive URL: a remote URL without its trailing slash, a local path
    resolved (a relative one against ``workdir`` when given)."""
    if is_remote(url):
        return str(url).rstrip("/")
    p = Path(url)
    if not p.is_absolute() and workdir is not None:
        p = Path(workdir) / p
    return str(p.resolve())


def archive_name(url: str) -> str:
    """An archive's file name without ``.zarr``: ``s3://b/x/knmi-20100826.zarr/`` -> ``knmi-20100826``."""
    base = str(url).rstrip("/").rsplit("/", 1)[-1]
    return base[:-5] if base.endswith(".zarr") else base


def storage_options_for(url: str, endpoint_url: str | None = None) -> dict:
    """fsspec storage options for `url`: s3fs options from the AWS environment, {} for local."""
    url = str(url)
    if not url.startswith(("s3://", "s3a://")):
        return {}
    env = os.environ
    opts: dict[str, Any] = {}
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            opts["token"] = env["AWS_SESSION_TOKEN"]
    elif env.get("AWS_SHARED_CREDENTIALS_FILE"):
        try:
            opts.update(credentials_from_file(env["AWS_SHARED_CREDENTIALS_FILE"], env.get("AWS_PROFILE") or "default"))
        except UserError as err:  # say which data needed them
            raise UserError(f"{url}: {err}") from None
    elif env.get("AWS_PROFILE"):
        opts["profile"] = env["AWS_PROFILE"]
    client: dict[str, Any] = {}
    endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    opts["config_kwargs"] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    }
    return opts


def credentials_from_file(path: str, profile: str = "default") -> dict:
    """``{"key", "secret"[, "token"]}`` of ``profile`` in an AWS shared-credentials file (INI text, read
    as text only); ``UserError`` naming the file and the profile when either is missing."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise UserError(f"cannot read the S3 credentials file {path} (AWS_SHARED_CREDENTIALS_FILE): {why}") from None
    section = parser[profile] if parser.has_section(profile) else None
    if section is None or not section.get("aws_access_key_id") or not section.get("aws_secret_access_key"):
        raise UserError(f"no profile [{profile}] with aws_access_key_id and aws_secret_access_key in the S3 "
                        f"credentials file {path} (AWS_SHARED_CREDENTIALS_FILE; the profile is AWS_PROFILE "
                        f"or 'default')")
    out = {"key": section["aws_access_key_id"].strip(), "secret": section["aws_secret_access_key"].strip()}
    if section.get("aws_session_token"):
        out["token"] = section["aws_session_token"].strip()
    return out


def with_fast_fail(options: dict | None, url: str) -> dict:
    """Add short timeouts / few retries to caller-provided s3 options that lack them."""
    opts = dict(options or {})
    if str(url).startswith(("s3://", "s3a://")):
        cfg = dict(opts.get("config_kwargs") or {})
        cfg.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        cfg.setdefault("read_timeout", READ_TIMEOUT_S)
        cfg.setdefault("retries", {"max_attempts": MAX_ATTEMPTS, "mode": "standard"})
        opts["config_kwargs"] = cfg
    return opts


def redact(options: Any) -> Any:
    """A copy of `options` with every credential value replaced by '***' (nested dicts too)."""
    if isinstance(options, dict):
        return {k: ("***" if str(k).lower() in SECRET_KEYS and v else redact(v))
                for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact(v) for v in options)
    return options


def _secrets(options: dict | None) -> list[str]:
    found = []
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            found += _secrets(v)
        elif str(k).lower() in SECRET_KEYS and isinstance(v, str) and v:
            found.append(v)
    return found


def scrub(text: str, options: dict | None) -> str:
    """Remove credential values that occur in `text` (e.g. in a server's error message)."""
    for s in _secrets(options):
        text = text.replace(s, "***")
    return text


def endpoint_of(options: dict | None) -> str:
    opts = options or {}
    return (opts.get("client_kwargs") or {}).get("endpoint_url") or opts.get("endpoint_url") \
        or "the default AWS endpoint"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError",
               "ServerDisconnectedError", "ConnectionError", "ReadTimeoutError", "TimeoutError",
               "ConnectionResetError", "ClientOSError", "ServerTimeoutError", "FSTimeoutError"}
SERVER_BUSY = ("ServiceUnavailable", "SlowDown", "InternalError", "503 Service", "502 Bad Gateway")


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the store could not be reached or was busy -- an outage
    that may end (connection refused/reset, timeout, 502/503) -- rather than a wrong key or a
    missing object."""
    names = {type(e).__name__ for e in _chain(exc)}
    texts = " ".join(str(e) for e in _chain(exc))
    return bool(names & UNREACHABLE) or any(code in texts for code in SERVER_BUSY)


def failed_key(exc: BaseException, options: dict | None = None) -> str | None:
    """The object key a failed request was for, when the client's message names it
    (botocore: ``Could not connect to the endpoint URL: "http://host:port/bucket/key"``)."""
    import re

    endpoint = endpoint_of(options).rstrip("/")
    for e in _chain(exc):
        m = re.search(r'endpoint URL: "([^"]+)"', str(e))
        if m:
            key = m.group(1)
            key = key[len(endpoint):] if key.startswith(endpoint) else key
            return scrub(key.split("?", 1)[0].lstrip("/"), options)
    return None


def storage_error(url: str, options: dict | None, exc: BaseException, action: str = "read") -> UserError:
    """Translate a storage exception into a UserError naming the URL and what to check."""
    names = {type(e).__name__ for e in _chain(exc)}
    texts = " ".join(str(e) for e in _chain(exc))
    detail = scrub(f"{type(exc).__name__}: {exc}", options)[:300]
    if is_unreachable(exc):
        err = UserError(f"cannot reach the storage endpoint {endpoint_of(options)} for {url}: "
                        "check --endpoint-url / AWS_ENDPOINT_URL and that the server is running "
                        f"({detail})")
        err.transient = True  # the store may come back: readers retry these (datasource.read_with_retries)
        err.key, err.endpoint = failed_key(exc, options), endpoint_of(options)
        return err
    if "NoCredentialsError" in names or "Unable to locate credentials" in texts:
        return UserError(f"no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    if names & {"PermissionError"} or any(code in texts for code in (
            "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")):
        return UserError(f"access denied while trying to {action} {url} at {endpoint_of(options)}: "
                         "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that "
                         f"this key is allowed to {action} the bucket ({detail})")
    if names & {"GroupNotFoundError", "NodeNotFoundError"}:
        return UserError(f"no archive at {url} (nothing found there{'' if '://' not in url else ' at ' + endpoint_of(options)})")
    if "NoSuchBucket" in texts:
        return UserError(f"the bucket of {url} does not exist at {endpoint_of(options)}: create it first")
    if names & {"FileNotFoundError"}:
        return UserError(f"nothing found at {url} ({detail})")
    return UserError(f"storage error while trying to {action} {url}: {detail}")


def filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path) for `url`."""
    import fsspec

    opts = with_fast_fail(storage_options, url)
    fs, path = fsspec.core.url_to_fs(str(url), **opts)
    return fs, path


def exists(url: str, storage_options: dict | None = None) -> bool:
    """Whether an archive exists at `url`; storage problems raise a clear UserError.

    Remote URLs answer within `metadata_deadline_s()` or fail: this is the fail-fast probe for an
    endpoint that accepts connections but never answers (see the timeouts above)."""
    from fsspec.exceptions import FSTimeoutError

    deadline = metadata_deadline_s() if is_remote(url) else None
    try:
        fs, path = filesystem(url, storage_options)
        key = path.rstrip("/") + "/zarr.json"
        if deadline is not None and getattr(fs, "async_impl", False):
            # fsspec runs the request under asyncio.wait_for: cancelled cleanly at the deadline
            return bool(fs.exists(key, timeout=deadline))
        return bool(fs.exists(key))
    except UserError:
        raise
    except FSTimeoutError:
        raise UserError(f"the storage endpoint {endpoint_of(storage_options)} did not answer within {deadline:g} s "
                        f"for {url}: check --endpoint-url / AWS_ENDPOINT_URL and that it is an S3 server that "
                        f"is up (on a very slow link raise {DEADLINE_ENV})") from None
    except Exception as exc:  # noqa: BLE001 - translated for the user
        raise storage_error(str(url), storage_options, exc, "read") from None


def cancel_pending_io(timeout_s: float = 2.0) -> int:
    """Cancel storage requests still in flight on zarr's and fsspec's IO event loops and let them unwind.

    After an error, zarr leaves sibling requests of a failed `asyncio.gather` running (e.g. the
    other metadata keys of `open_group` against a refused endpoint). Destroyed at interpreter exit,
    outside their context, each prints an "Exception ignored in: <coroutine StorePath.get>"
    traceback (aiobotocore resets a ContextVar token created in another context). Cancelled here,
    they run their cleanup in their own task. Returns how many were cancelled; imports nothing new."""
    loops = []
    for mod in ("zarr.core.sync", "fsspec.asyn"):
        holder = getattr(sys.modules.get(mod), "loop", None)
        lp = holder[0] if isinstance(holder, list) and holder else None
        if lp is not None and not lp.is_closed() and lp.is_running() and lp not in loops:
            loops.append(lp)

    async def _cancel_all() -> int:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        return len(tasks)

    n = 0
    for lp in loops:
        try:
            n += asyncio.run_coroutine_threadsafe(_cancel_all(), lp).result(timeout_s + 1)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    return n


def ray_storage(storage_path: str, endpoint_url: str | None = None, **fs_options):
    """``(storage_path, pyarrow filesystem or None)`` for Ray's ``RunConfig`` / Tune.

    A local path is created and gets no filesystem; ``s3://`` gets an explicit ``pyarrow.fs.S3FileSystem``
    (and the path loses its scheme) whose endpoint, credentials and region come from
    :func:`storage_options_for`, like every other S3 client of the project.
    ``fs_options``: extra ``S3FileSystem`` arguments (e.g. the write probe's short timeouts)."""
    if not storage_path.startswith("s3://"):
        Path(storage_path).mkdir(parents=True, exist_ok=True)
        return storage_path, None
    import pyarrow.fs as pafs

    opts = storage_options_for(storage_path, endpoint_url)
    client = opts.get("client_kwargs") or {}
    kw = {"access_key": opts.get("key"), "secret_key": opts.get("secret"), "session_token": opts.get("token"),
          "region": client.get("region_name") or "us-east-1", **fs_options}
    endpoint = client.get("endpoint_url")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host, scheme=scheme)
    return storage_path[len("s3://"):], pafs.S3FileSystem(**{k: v for k, v in kw.items() if v is not None})
