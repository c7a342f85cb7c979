"""On-disk cache of arrays, built once per key and shared by the processes on one node.

Several Ray trials on a node start at the same moment and would each decode and resize the same
images. `cached_arrays` lets the first one build the arrays and the rest read them:

    key = {"dataset": "isbi2015", "root": "/data/isbi", "split": "train", "size": [800, 640],
           "annotator": "mean", "version": 1}
    arrays = cached_arrays(default_cache_dir(), key, build)   # build() -> {"images": (N, H, W), ...}

What is keyed: everything that changes the arrays must be in the key, and nothing else. The key
is a JSON-serialisable dict; its file stem is the first 16 hex digits of
sha1(json.dumps(key, sort_keys=True)), so dict order does not matter and tuples equal lists.
Bump a "version" entry when the build code changes what it produces. The key does not see the
source files' contents: if the images under `root` are replaced in place, clear the cache.

Files in the cache folder, per key:
    <stem>.npz    the arrays (the np.savez format, uncompressed; read with allow_pickle=False)
    <stem>.json   the key, for humans
    <stem>.lock   the lock file; it stays (deleting a lock file others may hold is a race)

Locking: a process takes an exclusive fcntl.flock on <stem>.lock (blocking), looks for the npz,
and builds only if it is absent, so exactly one process builds and the others wait and then
read. The npz is written to a temporary file in the same folder, fsynced, and os.replace'd into
place, so a reader never sees half a file; a process that finds the npz reads it without the
lock. flock works between processes on a local filesystem. On NFS it depends on the mount: with
Linux NFSv4 (and NFSv3 with the lock manager) flock is emulated by byte-range locks and holds
across hosts; with `nolock`, or on some other network filesystems, it is local to one host or
does nothing, and two processes may both build. That wastes time but is still safe, since each
write is an atomic replace of identical content. Point LANDMARK_STUDY_CACHE at a local disk
when you can.

A corrupt npz (a crash of the disk, not of the writer, which cannot leave one) is found when it
is loaded, removed under the lock and rebuilt, with a RuntimeWarning naming the file.

To clear the cache, delete the folder (`rm -r "$(python -c 'from trainables.data.cache import
default_cache_dir; print(default_cache_dir())')"`) while no trial is running; or delete one
key's <stem>.* files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

# What a damaged npz raises from np.load or from reading a member.
_CORRUPT = (zipfile.BadZipFile, ValueError, EOFError, OSError)


def default_cache_dir() -> Path:
    """LANDMARK_STUDY_CACHE, else LANDMARK_STUDY_DATA/cache, else ~/.cache/landmark_study/cache."""
    if os.environ.get("LANDMARK_STUDY_CACHE"):
        return Path(os.environ["LANDMARK_STUDY_CACHE"]).expanduser()
    if os.environ.get("LANDMARK_STUDY_DATA"):
        return Path(os.environ["LANDMARK_STUDY_DATA"]).expanduser() / "cache"
    return Path.home() / ".cache" / "landmark_study" / "cache"


def cache_stem(key: Mapping) -> str:
    """First 16 hex digits of sha1(json.dumps(key, sort_keys=True))."""
    return hashlib.sha1(_key_json(key).encode()).hexdigest()[:16]


def cached_arrays(
    cache_dir: Path, key: Mapping, build: Callable[[], Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays stored under `key` in `cache_dir`, calling build() once per key if absent.

    Exceptions from build() reach the caller unchanged and leave no npz or temporary file.
    Returns in-memory arrays (no open files, no memory maps).
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_stem(key)
    npz = cache_dir / f"{stem}.npz"

    # Fast path, no lock: os.replace makes the npz appear whole or not at all.
    with contextlib.suppress(*_CORRUPT):  # a corrupt file is dealt with under the lock
        arrays = _load(npz)
        if arrays is not None:
            return arrays

    with locked(cache_dir / f"{stem}.lock"):
        try:
            arrays = _load(npz)
        except _CORRUPT as e:
            warnings.warn(
                f"{npz}: unreadable cache file ({e!r}); removing it and rebuilding", RuntimeWarning, stacklevel=2
            )
            npz.unlink(missing_ok=True)
            arrays = None
        if arrays is not None:
            return arrays
        # Under the lock nobody else writes this stem's temporaries: clear any a killed process left.
        for stale in cache_dir.glob(f"{stem}.*.tmp"):
            stale.unlink(missing_ok=True)
        arrays = _checked(build(), npz)
        write_atomic(npz, lambda f: _write_npz(f, arrays))
        text = json.dumps(json.loads(_key_json(key)), sort_keys=True, indent=2) + "\n"
        write_atomic(cache_dir / f"{stem}.json", lambda f: f.write(text.encode()))
        return arrays


def _key_json(key: Mapping) -> str:
    try:
        return json.dumps(key, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cache key {key!r}: not JSON-serialisable ({e}); use str, numbers, lists and dicts") from None


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive flock on the file at path (created if absent, never deleted) for the with-block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed, or when the process dies
        yield
    finally:
        os.close(fd)


def _load(npz: Path) -> dict[str, np.ndarray] | None:
    """The arrays in npz, read into memory; None if there is no file; _CORRUPT errors if damaged."""
    try:
        z = np.load(npz, allow_pickle=False)
    except FileNotFoundError:
        return None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError("not an npz archive")
    with z:
        return {name: z[name] for name in z.files}


def _checked(arrays, npz: Path) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise TypeError(f"{npz}: build() returned {type(arrays).__name__}; it must return a dict of arrays")
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{npz}: build() returned array name {name!r}; names must be non-empty strings")
        out[name] = np.asarray(value)
        if out[name].dtype.hasobject:
            raise TypeError(
                f"{npz}: array {name!r} has dtype {out[name].dtype}; the cache stores plain numeric "
                f"arrays only (it loads with allow_pickle=False)"
            )
    return out


def _write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    # What np.savez writes (a stored zip of NAME.npy members), without its keyword clash: np.savez
    # cannot take an array named "file" or "allow_pickle".
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def write_atomic(path: Path, write: Callable) -> None:
    """Write via a temporary file in the same folder, fsync it, and os.replace it onto path."""
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False)
    try:
        with tmp as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp.name)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not every filesystem allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
