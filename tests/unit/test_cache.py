"""On-disk array cache: built once per key, shared by concurrent processes, safe against failures."""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from trainables.data import cache
from trainables.data.cache import cached_arrays, default_cache_dir

KEY = {"dataset": "isbi2015", "root": "/data/isbi", "split": "train", "size": [8, 6], "annotator": "mean", "version": 1}


class BadFile(ValueError):
    """Stands in for the loaders' DatasetFormatError, also a ValueError: it must not look like a corrupt cache."""


def _arrays() -> dict[str, np.ndarray]:
    return {
        "images": np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 6) / 7,
        "coords": np.array([[[1.5, 2.25]], [[3.0, 4.75]]]),  # (N, K, 2) float64
        "file": np.array(3, dtype=np.int16),  # a name np.savez(file, **kw) could not take
    }


def _must_not_build() -> dict:
    raise AssertionError("build() called although the arrays are cached")


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name} {a.dtype.str} {a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name])


def _slow_counted_build(counter: Path) -> dict[str, np.ndarray]:
    with counter.open("a") as f:
        f.write("built\n")
    # The sleep widens the race window (a build takes seconds in real use) so that, without the
    # lock, every process would find no npz and build; it does not wait for anything to finish.
    time.sleep(0.3)
    return _arrays()


def _race_worker(cache_dir: str, counter: str, out: str, barrier) -> None:
    barrier.wait(timeout=30)  # all children have imported numpy and this module; now they race
    arrays = cached_arrays(Path(cache_dir), KEY, functools.partial(_slow_counted_build, Path(counter)))
    Path(out).write_text(_checksum(arrays))


def test_stem_is_sha1_of_sorted_json_and_the_json_holds_the_key(tmp_path):
    cached_arrays(tmp_path, KEY, _arrays)
    stem = hashlib.sha1(json.dumps(KEY, sort_keys=True).encode()).hexdigest()[:16]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.json", f"{stem}.lock", f"{stem}.npz"]
    assert json.loads((tmp_path / f"{stem}.json").read_text()) == KEY
    # Key order does not matter and a tuple is the same key as a list.
    reordered = {k: tuple(v) if isinstance(v, list) else v for k, v in reversed(KEY.items())}
    assert cache.cache_stem(reordered) == stem
    with np.load(tmp_path / f"{stem}.npz", allow_pickle=False) as z:  # readable by plain numpy
        assert sorted(z.files) == ["coords", "file", "images"]


def test_first_call_builds_second_reads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return _arrays()

    _assert_same(cached_arrays(tmp_path / "made" / "here", KEY, build), _arrays())  # creates the folder
    _assert_same(cached_arrays(tmp_path / "made" / "here", KEY, _must_not_build), _arrays())
    assert calls == [1]


def test_different_keys_use_different_files(tmp_path):
    a = cached_arrays(tmp_path, KEY, lambda: {"x": np.zeros(3)})
    b = cached_arrays(tmp_path, {**KEY, "split": "test1"}, lambda: {"x": np.ones(3)})
    np.testing.assert_array_equal(a["x"], np.zeros(3))
    np.testing.assert_array_equal(b["x"], np.ones(3))
    assert len(list(tmp_path.glob("*.npz"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    np.testing.assert_array_equal(cached_arrays(tmp_path, KEY, _must_not_build)["x"], np.zeros(3))


def test_concurrent_processes_build_once_and_read_the_same_arrays(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    counter = tmp_path / "builds.txt"
    outs = [tmp_path / f"result-{i}.txt" for i in range(4)]
    procs = [
        ctx.Process(target=_race_worker, args=(str(tmp_path / "cache"), str(counter), str(out), barrier))
        for out in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert counter.read_text().splitlines() == ["built"]
    assert {out.read_text() for out in outs} == {_checksum(_arrays())}


def test_failed_build_leaves_only_the_lock_and_the_error_reaches_the_caller(tmp_path):
    def build():
        raise BadFile("data/isbi/RawImage/TrainingData/001.bmp: not a BMP")

    with pytest.raises(BadFile, match="001.bmp"):
        cached_arrays(tmp_path, KEY, build)
    assert [p.suffix for p in tmp_path.iterdir()] == [".lock"]
    _assert_same(cached_arrays(tmp_path, KEY, _arrays), _arrays())
    _assert_same(cached_arrays(tmp_path, KEY, _must_not_build), _arrays())


def test_unstorable_arrays_are_refused_and_leave_no_temporary(tmp_path):
    with pytest.raises(TypeError, match="'names'.*object"):
        cached_arrays(tmp_path, KEY, lambda: {"names": np.array(["a", None], dtype=object)})
    assert [p.suffix for p in tmp_path.iterdir()] == [".lock"]


def test_truncated_npz_is_rebuilt_with_a_warning(tmp_path):
    cached_arrays(tmp_path, KEY, _arrays)
    npz = tmp_path / f"{cache.cache_stem(KEY)}.npz"
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])  # as if the disk lost the end of the file
    with pytest.warns(RuntimeWarning, match=npz.name):
        got = cached_arrays(tmp_path, KEY, _arrays)
    _assert_same(got, _arrays())
    assert npz.read_bytes() == data
    assert not list(tmp_path.glob("*.tmp"))


def test_stale_temporaries_of_a_killed_builder_are_removed(tmp_path):
    stale = tmp_path / f"{cache.cache_stem(KEY)}.npz.abc123.tmp"
    other = tmp_path / "0123456789abcdef.npz.abc123.tmp"  # another key's builder may still be writing
    stale.write_bytes(b"PK half")
    other.write_bytes(b"PK half")
    cached_arrays(tmp_path, KEY, _arrays)
    assert not stale.exists() and other.exists()


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LANDMARK_STUDY_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("LANDMARK_STUDY_DATA", str(tmp_path / "d"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LANDMARK_STUDY_CACHE")
    assert default_cache_dir() == tmp_path / "d" / "cache"
    monkeypatch.delenv("LANDMARK_STUDY_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "landmark_study" / "cache"
