"""Everything about where a study runs that can be checked before Ray starts: the storage, the
tracking URI and the cluster address. One line per problem, all at once; nothing is written
(a local storage is probed with a temporary file that is removed again).

    problems = preflight(spec, tracking_uri="http://user:pw@127.0.0.1:5000", address=None)
    # ["--tracking-uri http://user:***@127.0.0.1:5000: MLflow tracking server does not answer (...)"]

Credentials in a URI are never printed, logged or saved: `redact` shows them as ***, and a
tracking URI's user:password moves to MLflow's own variables (MLFLOW_TRACKING_USERNAME/PASSWORD)
so that the URI the study keeps (and Ray pickles with its state) has none.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from study.spec import Spec

ADDRESS_TIMEOUT_S = 5.0  # a Ray head that does not accept a TCP connection in this long is not there
STORE_TIMEOUT_S = 15.0  # an object store that does not answer in this long is unreachable
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
# SQLAlchemy's default driver per database, and the pip package that brings it.
DB_DRIVERS = {
    "postgresql": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
    "mssql": ("pyodbc", "pyodbc"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
}


def redact(uri: str) -> str:
    """The URI with any password shown as ***: http://user:***@host:5000/."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None and not (parts.username and "@" in parts.netloc):
        return uri
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}"))


def strip_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without user:password, user, password)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), parts.username, parts.password


def preflight(spec: Spec, tracking_uri: str | None, address: str | None) -> list[str]:
    """What stops the study from running here, one line each (empty: go ahead)."""
    return (
        storage_problems(spec)
        + tracking_problems(tracking_uri)
        + optuna_storage_problems(spec)
        + address_problems(address)
    )


def optuna_storage_problems(spec: Spec) -> list[str]:
    url = spec.study.optuna_storage
    if url in ("", "none"):
        return []
    shown = f"study.optuna_storage {redact(url)}"
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        return [
            f"{shown}: expected '' (a journal file in the study folder), 'none' or a database URL "
            f"(sqlite:///PATH, postgresql://..., mysql://...)"
        ]
    if scheme in DB_DRIVERS and importlib.util.find_spec(DB_DRIVERS[scheme][0]) is None:
        return [
            f"{shown}: the database driver {DB_DRIVERS[scheme][0]!r} is not installed; "
            f"pip install '{DB_DRIVERS[scheme][1]}'"
        ]
    if "@" in urlsplit(url).netloc and urlsplit(url).password:
        return [
            f"{shown}: a password in the spec would be saved with it; use a URL without one (e.g. a "
            f"~/.pgpass file or PGPASSWORD)"
        ]
    return []


def storage_problems(spec: Spec) -> list[str]:
    storage = spec.study.storage
    where = f"study.storage {redact(storage)}"
    if "://" in storage and not storage.startswith("file://"):
        parts = urlsplit(storage)
        if "@" in parts.netloc:
            return [
                f"{where}: credentials in the storage URI would be saved in Ray's state; give them through "
                f"the usual variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) instead"
            ]
        return _object_store_problems(spec.location, where)
    folder = Path(spec.location)
    for part in folder.parts:
        if len(part.encode()) > 255:
            return [f"{where}: the folder name {part[:40]!r}… is longer than 255 bytes"]
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"{where}: {existing} is a file, not a folder; the study's state needs a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{where}: {existing} is not writable by this user; choose another --storage"]
    try:  # permissions can lie (read-only mounts, full disks): write and remove a probe
        fd, probe = tempfile.mkstemp(prefix=".landmark-study-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return [f"{where}: cannot write in {existing} ({e.strerror or e}); choose another --storage"]
    return []


def _object_store_problems(uri: str, where: str) -> list[str]:
    """Reach the object store with the credentials the environment gives, within STORE_TIMEOUT_S."""
    import pyarrow.fs  # lazy: only object-store studies need it here

    def probe() -> None:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        bucket = path.split("/", 1)[0]
        info = fs.get_file_info(bucket)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(f"bucket {bucket!r} does not exist")

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=STORE_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        return [f"{where}: no answer in {STORE_TIMEOUT_S:g} s; check the endpoint and the network"]
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError/ArrowInvalid with the store's reason
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return [f"{where}: not reachable with the credentials in the environment ({first[:300]})"]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return []


def tracking_problems(uri: str | None) -> list[str]:
    """A given tracking URI (or MLFLOW_TRACKING_URI): a supported scheme, its driver, a server that answers."""
    flag = "--tracking-uri" if uri else "MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return []  # the default: a SQLite file in the study storage, checked with the storage
    shown = f"{flag} {redact(uri)}"
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme == "file" or not scheme:
        return [f"{shown}: MLflow 3's file store is deprecated; use sqlite:///PATH/mlflow.db or a server's http:// URI"]
    if scheme.split("+")[0] not in TRACKING_SCHEMES:
        return [f"{shown}: unsupported scheme {scheme!r}; use one of {', '.join(TRACKING_SCHEMES)}"]
    if scheme in DB_DRIVERS or scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        module, package = DB_DRIVERS.get(scheme, (None, None))
        if module is None:
            return [f"{shown}: unknown database driver {scheme!r}; use one of {', '.join(sorted(DB_DRIVERS))}"]
        if importlib.util.find_spec(module) is None:
            return [f"{shown}: the database driver {module!r} is not installed; pip install '{package}'"]
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        parent = Path(path).parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            return [f"{shown}: {parent} is not writable; choose another place for the SQLite file"]
    if scheme in ("http", "https"):
        from dashboards.publish import check_reachable  # lazy: MLflow's client is imported only to talk to a server

        try:
            check_reachable(uri)
        except ConnectionError as e:
            return [f"{flag}: {e}"]
    return []


def use_tracking_credentials(uri: str) -> str:
    """Move user:password from a tracking URI to MLFLOW_TRACKING_USERNAME/PASSWORD (MLflow's own
    variables for HTTP basic auth); -> the URI without them, which is safe to print and save."""
    bare, user, password = strip_credentials(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return bare


def address_problems(address: str | None) -> list[str]:
    """A --address (or RAY_ADDRESS) must accept a TCP connection within ADDRESS_TIMEOUT_S:
    ray.init would otherwise retry "Failed to connect to GCS" for minutes."""
    flag = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return []
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return [
            f"{flag} {address}: expected HOST:PORT (the head's GCS port, 6379 by default), 'auto' or ray://HOST:PORT"
        ]
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        return [
            f"{flag} {address}: no Ray cluster answers there ({why}); start one with `ray start --head`, "
            f"or leave out --address for a local Ray"
        ]
    if address.startswith("ray://") or not cluster_wants_token(hostport):
        return []
    token, where = ray_token()
    if token is None:
        return [
            f"{flag} {address}: the Ray cluster there wants its token (Ray's token authentication); give it "
            f"with RAY_AUTH_TOKEN=..., RAY_AUTH_TOKEN_PATH=FILE or the head's ~/.ray/auth_token copied here"
        ]
    if cluster_wants_token(hostport, token):
        return [
            f"{flag} {address}: the Ray cluster there refuses the token in {where}; give the head's "
            f"(its ~/.ray/auth_token, or the RAY_AUTH_TOKEN it was started with)"
        ]
    return []


# Ray's token authentication (on by default for `ray start --head` in Ray 2.60): where a client finds the
# token, in Ray's own order.
TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def ray_token() -> tuple[str | None, str]:
    """(the token this machine would send a Ray cluster, where it was found), or (None, '')."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(TOKEN_FILE)):
        if path and Path(path).expanduser().is_file():
            return Path(path).expanduser().read_text().strip(), path
    return None, ""


def cluster_wants_token(hostport: str, token: str | None = None, timeout_s: float = ADDRESS_TIMEOUT_S) -> bool:
    """Whether the Ray GCS at HOST:PORT refuses a request without (or with this) token: one gRPC call
    (its cluster id, an empty message), answered at once. Without this check ray.init retries for
    20-30 s, its warnings on the console, and then fails without a word about the token."""
    import grpc  # Ray's own dependency; imported here, so that a study without --address never needs it

    with grpc.insecure_channel(hostport) as channel:
        call = channel.unary_unary(
            "/ray.rpc.NodeInfoGcsService/GetClusterId",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            call(b"", timeout=timeout_s, metadata=[("authorization", f"Bearer {token}")] if token else [])
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.UNAUTHENTICATED
    return False
