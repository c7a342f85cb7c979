"""Where a study keeps its state: a local folder or a URI (pyarrow's filesystems)."""

import json
import os
import textwrap

import pytest

from study.spec import StudyError, load_spec
from study.faults.lock import StudyLock
from study.storage import StudyStorage


def _spec(tmp_path, storage):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(f"study: {{name: s1, storage: '{storage}'}}\n"))
    return load_spec(path)


def test_a_relative_folder_is_resolved_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = StudyStorage(_spec(tmp_path, "studies"))
    assert storage.local == tmp_path.resolve() / "studies" / "s1"
    assert storage.tune == f"{tmp_path.resolve()}/studies/s1/tune"
    assert storage.read("study.json") is None
    storage.write("study.json", "{}")
    assert (tmp_path / "studies" / "s1" / "study.json").read_text() == "{}"


def test_a_file_uri_is_a_local_folder(tmp_path):
    storage = StudyStorage(_spec(tmp_path, (tmp_path / "shared").as_uri()))
    assert storage.local == tmp_path / "shared" / "s1"
    storage.write("a.txt", "x")
    assert storage.read("a.txt") == "x"


def test_an_object_store_uri_keeps_its_scheme(tmp_path):
    spec = _spec(tmp_path, "s3://bucket/studies/")
    assert spec.location == "s3://bucket/studies/s1"


def test_an_object_store_holds_the_snapshot_and_the_lock(tmp_path, monkeypatch, s3_store):
    # The endpoint and credentials come from the AWS variables, as on a cluster node; the spec names the bucket.
    for key, value in s3_store["env"].items():
        monkeypatch.setenv(key, value)
    storage = StudyStorage(_spec(tmp_path, "s3://studies/unit"))
    assert storage.local is None and storage.read("study.json") is None
    storage.write("study.json", "{}")
    assert storage.read("study.json") == "{}"
    with StudyLock(storage) as lock:
        assert json.loads(storage.read("driver.lock"))["pid"] == os.getpid()
        other = StudyLock(storage)
        other.mine = {**other.mine, "host": "another-host"}  # a second driver elsewhere: refused, holder named
        with pytest.raises(StudyError, match=rf"pid {os.getpid()}.*--break-lock"):
            other.acquire()
        assert lock.held
    keys = {
        o["Key"]
        for o in s3_store["client"].list_objects_v2(Bucket="studies", Prefix="unit/")["Contents"]
        if not o["Key"].endswith("/")
    }  # pyarrow writes empty "folder/" markers too
    assert keys == {"unit/s1/study.json"}  # the lock is gone once released
