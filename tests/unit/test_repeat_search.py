"""study.repeats: RepeatSearch around a real OptunaSearch (no Ray cluster), its save/restore through
Tune's own SearchGenerator, RepeatASHA's per-configuration rungs, and the spec field."""

from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator

from study.progress import trial_name
from study.repeats import RepeatASHA, RepeatSearch
from study.search import SpaceSampler
from study.space import Param
from study.spec import SpecError, load_spec, trainer_values

SPACE = {"optim.lr": Param("optim.lr", "choice", [0.001, 0.01, 0.1])}


def _search(repeats=3, metrics=("val/mre_mm",), modes=("min",), base_seed=5):
    multi = len(metrics) > 1
    optuna_search = OptunaSearch(
        space=SpaceSampler(SPACE),
        metric=list(metrics) if multi else metrics[0],
        mode=list(modes) if multi else modes[0],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    return RepeatSearch(optuna_search, repeats, base_seed, list(metrics))


def _optuna(search: RepeatSearch) -> optuna.Study:
    return search.searcher._ot_study


def test_each_configuration_is_handed_out_repeats_times_with_its_id_repeat_and_seed():
    search = _search(repeats=3, base_seed=5)
    configs = [search.suggest(f"t{i}") for i in range(6)]
    assert [c["config.id"] for c in configs] == ["t0"] * 3 + ["t3"] * 3
    assert [c["config.repeat"] for c in configs] == [0, 1, 2, 0, 1, 2]
    assert [c["train.seed"] for c in configs] == [5, 6, 7, 5, 6, 7]  # base train.seed + repeat
    assert configs[0]["optim.lr"] == configs[1]["optim.lr"] == configs[2]["optim.lr"]
    assert len(_optuna(search).trials) == 2  # Optuna sampled two configurations, not six trials
    # the trainer gets its own fields only
    assert trainer_values(configs[1]) == {"optim.lr": configs[1]["optim.lr"], "train.seed": 6}


def test_optuna_is_told_the_mean_once_every_repeat_has_ended_leaving_out_failed_ones():
    search = _search(repeats=3)
    for i in range(3):
        search.suggest(f"t{i}")
    search.on_trial_complete("t0", {"val/mre_mm": 4.0})
    search.on_trial_complete("t1", None, error=True)  # failed or diverged: counted, not averaged
    assert _optuna(search).trials[0].state == TrialState.RUNNING  # one repeat still out
    search.on_trial_complete("t2", {"val/mre_mm": 5.0})
    trial = _optuna(search).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(4.5)  # (4 + 5) / 2


def test_a_configuration_whose_repeats_all_failed_is_told_as_failed():
    search = _search(repeats=2)
    search.suggest("t0"), search.suggest("t1")
    search.on_trial_complete("t0", None, error=True)
    search.on_trial_complete("t1", None, error=True)
    assert _optuna(search).trials[0].state == TrialState.FAIL


def test_two_objectives_are_averaged_each():
    search = _search(repeats=2, metrics=("val/mre_mm", "cost/gflops"), modes=("min", "min"))
    search.suggest("t0"), search.suggest("t1")
    search.on_trial_complete("t0", {"val/mre_mm": 3.0, "cost/gflops": 1.0})
    search.on_trial_complete("t1", {"val/mre_mm": 4.0, "cost/gflops": 2.0})
    assert _optuna(search).trials[0].values == pytest.approx([3.5, 1.5])


def test_a_repeat_ending_twice_counts_once():
    search = _search(repeats=2)
    search.suggest("t0"), search.suggest("t1")
    search.on_trial_complete("t0", {"val/mre_mm": 3.0})
    search.on_trial_complete("t0", {"val/mre_mm": 9.0})
    assert _optuna(search).trials[0].state == TrialState.RUNNING


def test_a_half_handed_out_group_is_completed_after_restore(tmp_path):
    # Tune saves the searcher chain as the experiment does: SearchGenerator -> ConcurrencyLimiter ->
    # RepeatSearch (get_state) -> OptunaSearch (its own pickle).
    gen = SearchGenerator(ConcurrencyLimiter(_search(repeats=3), max_concurrent=8))
    first = [gen.searcher.suggest(f"t{i}") for i in range(2)]  # repeats 0 and 1 of configuration t0
    gen.searcher.on_trial_complete("t0", {"val/mre_mm": 2.0})
    gen.save_to_dir(str(tmp_path), session_str="s")

    restored = SearchGenerator(ConcurrencyLimiter(_search(repeats=3), max_concurrent=8))
    restored.restore_from_dir(str(tmp_path))
    repeat = restored.searcher.suggest("t2")
    assert (repeat["config.id"], repeat["config.repeat"], repeat["optim.lr"]) == ("t0", 2, first[0]["optim.lr"])
    search = restored.searcher.searcher
    assert len(_optuna(search).trials) == 1  # no new configuration sampled for the last repeat
    restored.searcher.on_trial_complete("t1", {"val/mre_mm": 3.0})
    restored.searcher.on_trial_complete("t2", {"val/mre_mm": 7.0})
    assert _optuna(search).trials[0].value == pytest.approx(4.0)  # (2 + 3 + 7) / 3
    nxt = restored.searcher.suggest("t3")
    assert (nxt["config.id"], nxt["config.repeat"]) == ("t3", 0)


def _trial(tid, cid):
    return SimpleNamespace(trial_id=tid, config={"config.id": cid})


def test_asha_compares_configurations_on_the_mean_of_their_repeats_at_a_rung():
    asha = RepeatASHA(time_attr="epoch", metric="val/mre_mm", mode="min", max_t=9, grace_period=1, reduction_factor=2)
    trials = {t: _trial(t, c) for t, c in [("a0", "A"), ("a1", "A"), ("b0", "B"), ("b1", "B"), ("c0", "C")]}
    for t in trials.values():
        asha.on_trial_add(None, t)

    def result(t, v):
        return asha.on_trial_result(None, trials[t], {"epoch": 1, "val/mre_mm": v})

    assert result("a0", 2.0) == TrialScheduler.CONTINUE  # nothing to compare with yet
    assert result("a1", 4.0) == TrialScheduler.CONTINUE  # A's mean 3.0; no other configuration yet
    # B: mean so far 5.0 against A's 3.0: the cutoff (median of one value, rf 2) is A's 3.0; stop
    assert result("b0", 5.0) == TrialScheduler.STOP
    # B stopped at the rung: its other repeat stops too, even with a good value
    assert result("b1", 1.0) == TrialScheduler.STOP
    # C: 2.5 against the median of A's 3.0 and B's mean (5 + 1) / 2 = 3.0 -> 3.0; better: go on
    assert result("c0", 2.5) == TrialScheduler.CONTINUE
    # a repeat of a stopped configuration that reports again (a later epoch) stops as well
    assert asha.on_trial_result(None, trials["b1"], {"epoch": 2, "val/mre_mm": 1.0}) == TrialScheduler.STOP


def test_a_late_repeat_of_a_stopped_configuration_trains_up_to_the_rung_then_stops():
    asha = RepeatASHA(
        time_attr="epoch", metric="val/mre_mm", mode="min", max_t=8, grace_period=2, reduction_factor=2
    )  # rungs at epochs 2 and 4
    trials = {t: _trial(t, c) for t, c in [("a0", "A"), ("b0", "B"), ("b1", "B")]}
    for t in trials.values():
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, trials["a0"], {"epoch": 2, "val/mre_mm": 1.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, trials["b0"], {"epoch": 2, "val/mre_mm": 5.0}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, trials["b1"], {"epoch": 1, "val/mre_mm": 0.5}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, trials["b1"], {"epoch": 2, "val/mre_mm": 0.5}) == TrialScheduler.STOP


def test_trial_names_say_configuration_and_repeat():
    assert trial_name("ab12", {"config.id": "x", "config.repeat": 1}, 3, 2) == "ab12 (config 2, repeat 2/3)"
    assert trial_name("ab12", {"config.id": "ab12", "config.repeat": 0}, 1, 1) == "ab12"


QUICK = "search_spaces/quickstart.yaml"


def test_repeats_default_to_one_and_multiply_the_trials():
    assert load_spec(QUICK).study.repeats == 1
    spec = load_spec(QUICK, ["study.repeats=3"])
    assert spec.study.repeats == 3 and spec.total_trials == 12  # 4 configurations × 3


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "study.repeats: must be at least 1 (trainings per configuration, each with its own train.seed), got 0"),
        ("1000", "study.repeats: 1000 is more than 100, which can only be a typo"),
    ],
)
def test_repeats_out_of_range_is_one_clear_error(value, message):
    with pytest.raises(SpecError) as e:
        load_spec(QUICK, [f"study.repeats={value}"])
    assert any(p.endswith(message) for p in e.value.problems), e.value.problems


def test_quickstart_repeats_is_a_grid_of_fixed_vs_adaloss_with_three_seeds():
    spec = load_spec("search_spaces/quickstart_repeats.yaml")
    assert spec.study.repeats == 3 and spec.study.sampler == "grid" and spec.study.scheduler.type == "none"
    assert {p["target.schedule"] for p in spec.grid()} == {"fixed", "adaloss"}
    assert len(spec.grid()) == spec.study.trials == 4 and spec.total_trials == 12


def test_a_study_saved_before_repeats_existed_resumes_unchanged(tmp_path):
    import json

    from study.storage import SNAPSHOT, StudyStorage, check_unchanged

    spec = load_spec(QUICK, [f"study.storage={tmp_path}"])
    storage = StudyStorage(spec)
    resolved = spec.resolved()
    del resolved["study"]["repeats"]  # what a study.json written before study.repeats holds
    storage.write(SNAPSHOT, json.dumps({"source": spec.source, "resolved": resolved}))
    check_unchanged(spec, storage, force=False)  # no "study.repeats: (absent) -> 1"
