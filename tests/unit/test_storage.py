"""Where a study keeps its state: a local folder or a URI (pyarrow's filesystems)."""

import textwrap

from study.spec import load_spec
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
