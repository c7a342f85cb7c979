"""The study's final table shows the accuracy columns that the trials reported (mm or NME)."""

from types import SimpleNamespace

from study.spec import StudyObjective
from study.tuner import _table


def _result(trial: str, **metrics):
    return SimpleNamespace(
        metrics={"trial_id": trial, "epoch": 2, **metrics}, config={"optim.lr": 1e-3}, path=f"/x/{trial}", error=None
    )


def _spec(metric: str):
    objective = StudyObjective(metric, "min")
    return SimpleNamespace(
        space={"optim.lr": None},
        primary=objective,
        study=SimpleNamespace(objectives=[objective]),
        base={"train": {"epochs": 2}},
    )


def test_face_study_table_has_nme_and_no_mm_columns():
    df = _table(
        [_result("a", **{"val/nme": 5.0, "val/fr": 10.0}), _result("b", **{"val/nme": 4.0, "val/fr": 0.0})],
        _spec("val/nme"),
        {"a": "finished", "b": "stopped early"},
    )
    assert list(df["trial"]) == ["b", "a"]  # best first
    assert list(df["status"]) == ["stopped early", "finished"]
    assert "val/nme" in df and "val/fr" in df and "val/mre_mm" not in df and "val/sdr_2mm" not in df


def test_ceph_study_table_keeps_mm_columns():
    df = _table([_result("a", **{"val/mre_mm": 2.0, "val/sdr_2mm": 60.0, "val/fr": 3.0})], _spec("val/mre_mm"), {})
    assert {"val/mre_mm", "val/sdr_2mm", "val/fr"} <= set(df.columns) and "val/nme" not in df
    assert list(df["status"]) == ["interrupted"]  # nothing recorded its end


def test_table_names_each_trials_configuration_and_repeat():
    first = _result("a", **{"val/mre_mm": 2.0})
    second = _result("b", **{"val/mre_mm": 3.0})
    second.config = {"optim.lr": 1e-3, "config.id": "a", "config.repeat": 1, "train.seed": 1}
    old = _result("c", **{"val/mre_mm": 4.0})  # a study without repeats keys: its own configuration
    df = _table([first, second, old], _spec("val/mre_mm"), {})
    assert list(df.columns[:4]) == ["trial", "config.id", "config.repeat", "status"]
    assert list(zip(df["trial"], df["config.id"], df["config.repeat"])) == [("a", "a", 0), ("b", "a", 1), ("c", "c", 0)]
