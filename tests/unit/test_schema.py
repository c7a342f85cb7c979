"""study.schema: statuses, divergence read from the exception type, and MLflow filter strings
that a crafted name cannot bend (checked against a real SQLite MLflow store)."""

from __future__ import annotations

import pickle

import pytest
from mlflow.tracking import MlflowClient

from study.schema import ROLE_STUDY, TAG_ROLE, TAG_STUDY, Status, error_outcome, is_diverged, tag_filter
from study.spec import NAME
from trainables.config import Diverged


def test_status_values_are_the_tag_values():
    assert [s.value for s in Status] == ["running", "finished", "stopped early", "diverged", "failed", "interrupted"]
    assert Status("stopped early") is Status.STOPPED_EARLY and Status.FINISHED == "finished"


class _WorkerGroupError(RuntimeError):  # the shape of Train's error: one error per worker rank
    def __init__(self, failures):
        super().__init__("workers failed")
        self.worker_failures = failures


def test_divergence_is_read_from_the_type_also_when_wrapped():
    assert is_diverged(Diverged("train/loss is nan at epoch 3"))
    assert is_diverged(_WorkerGroupError({0: ValueError("x"), 1: Diverged("nan")}))
    wrapped = RuntimeError("trial failed")
    wrapped.cause = Diverged("nan")  # RayTaskError keeps the original as .cause
    assert is_diverged(wrapped)
    assert not is_diverged(RuntimeError("train/loss is nan, Diverged"))  # words are not a type
    assert not is_diverged(None)


def test_error_outcome_reads_the_pickled_error(tmp_path):
    class Trial:
        pickled_error_file = str(tmp_path / "pickled_error.pkl")

    (tmp_path / "pickled_error.pkl").write_bytes(pickle.dumps(Diverged("nan")))
    assert error_outcome(Trial()) == Status.DIVERGED
    (tmp_path / "pickled_error.pkl").write_bytes(pickle.dumps(ValueError("boom")))
    assert error_outcome(Trial()) == Status.FAILED
    Trial.pickled_error_file = None
    assert error_outcome(Trial()) == Status.FAILED


@pytest.mark.parametrize("crafted", ["a' or tags.`study.name` = 'b", "a\\\\", "a`", 'a"'])
def test_a_crafted_name_cannot_match_another_studys_runs(tmp_path, crafted):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("shared")
    for study in ("a", "b", "a-b"):
        client.create_run(exp, tags={TAG_ROLE: ROLE_STUDY, TAG_STUDY: study})
    found = client.search_runs([exp], filter_string=tag_filter(**{TAG_ROLE: ROLE_STUDY, TAG_STUDY: "a"}))
    assert [r.data.tags[TAG_STUDY] for r in found] == ["a"]  # exact: not "a-b"
    assert not NAME.fullmatch(crafted)  # the spec refuses such a name…
    with pytest.raises(ValueError, match="cannot be used in an MLflow filter"):
        tag_filter(**{TAG_STUDY: crafted})  # …and the filter builder would too
