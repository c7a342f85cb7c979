"""Study specs: YAML -> validated Spec, every problem at once, each naming the file and YAML path."""

import math
import textwrap
from pathlib import Path

import optuna
import pytest

from study.space import SpaceSampler
from study.spec import Param, SpecError, load_spec
from trainables.config import TrialConfig
from trainables.metrics import all_metric_names

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _problems(path: Path, overrides=None) -> list[str]:
    """The problems of a spec that must fail, without the "FILE: " prefix (checked here once)."""
    with pytest.raises(SpecError) as e:
        load_spec(path, overrides)
    prefix = f"{path}: "
    assert all(p.startswith(prefix) for p in e.value.problems), e.value.problems
    return [p[len(prefix):] for p in e.value.problems]


def _one_problem(tmp_path: Path, text: str) -> str:
    ps = _problems(_write(tmp_path, text))
    assert len(ps) == 1, ps
    return ps[0]


# --- loading ------------------------------------------------------------------------------


def test_quickstart_loads():
    spec = load_spec(QUICKSTART)
    assert spec.study.name == "quickstart" and spec.study.trials == 4 and spec.study.concurrency == 2
    assert (spec.primary.metric, spec.primary.mode) == ("val/mre_mm", "min")
    assert spec.space == {
        "optim.lr": Param("optim.lr", "loguniform", [5e-4, 5e-3]),
        "target.sigma": Param("target.sigma", "uniform", [2.0, 6.0]),
    }
    # base: what the YAML says, and the defaults for everything it leaves out
    assert spec.base["optim"]["lr"] == 1e-3 and spec.base["train"]["batch_size"] == 4
    assert spec.base["train"]["device"] == "auto" and spec.base["eval"]["decode"] == "argmax"
    assert TrialConfig.from_dict(spec.base).to_dict() == spec.base  # a complete, valid trial config
    assert spec.source == str(QUICKSTART) and spec.text == QUICKSTART.read_text()


def test_minimal_spec_gets_defaults(tmp_path):
    spec = load_spec(_write(tmp_path, "study: {name: tiny}\n"))
    assert spec.study.trials == 8 and spec.study.sampler == "tpe" and spec.resources.workers == 1
    assert spec.base == TrialConfig().to_dict()
    assert spec.space == {}


def test_missing_file(tmp_path):
    assert _problems(tmp_path / "nope.yaml") == ["no such spec file"]
    assert _problems(tmp_path) == ["no such spec file (it is a folder)"]


def test_invalid_yaml_names_the_line(tmp_path):
    p = _one_problem(tmp_path, """\
        study:
          name: x
         trials: 3
        """)
    assert p.startswith("line 3, column 2: invalid YAML")


def test_a_spec_that_is_not_a_mapping(tmp_path):
    p = _one_problem(tmp_path, "- study\n- space\n")
    assert p.startswith("expected a mapping with sections") and "got list" in p


def test_unknown_section_suggests(tmp_path):
    p = _one_problem(tmp_path, """\
        study: {name: x}
        spaces:
          optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        """)
    assert p.startswith("spaces: unknown section (did you mean 'space'?)")
    assert "valid sections: study, resources, base, space" in p


def test_study_section_and_name_are_required(tmp_path):
    assert _one_problem(tmp_path, "base: {}\n").startswith("study: missing")
    assert _one_problem(tmp_path, "study: {trials: 2}\n").startswith("study.name: missing")


def test_unknown_study_key_suggests(tmp_path):
    p = _one_problem(tmp_path, "study: {name: x, trails: 3}\n")
    assert p.startswith("study.trails: unknown key (did you mean 'trials'?)")


def test_objective_must_be_a_reported_metric(tmp_path):
    p = _one_problem(tmp_path, """\
        study:
          name: x
          objectives: [{metric: val/mre_m, mode: min}]
        """)
    assert p.startswith("study.objectives[0].metric: 'val/mre_m' is not reported by the trainer")
    assert "(did you mean 'val/mre_mm'?)" in p
    assert p.endswith("reported: " + ", ".join(all_metric_names()))


def test_objective_mode_must_be_min_or_max(tmp_path):
    p = _one_problem(tmp_path, """\
        study:
          name: x
          objectives: [{metric: val/mre_mm, mode: minimize}]
        """)
    assert p == "study.objectives[0].mode: expected min or max, got 'minimize'"


# --- space --------------------------------------------------------------------------------


def _space_problem(tmp_path: Path, space_yaml: str) -> str:
    return _one_problem(tmp_path, "study: {name: x}\nspace:\n" + textwrap.indent(textwrap.dedent(space_yaml), "  "))


def test_space_path_that_does_not_exist_suggests(tmp_path):
    p = _space_problem(tmp_path, "optim.lrr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    assert p == "space.optim.lrr: no such trial-config field (did you mean 'optim.lr'?)"


def test_space_path_to_a_section_is_not_a_field(tmp_path):
    p = _space_problem(tmp_path, "optim: {choice: [1, 2]}\n")
    assert p.startswith("space.optim: no such trial-config field")


def test_inverted_uniform_range_says_swap(tmp_path):
    p = _space_problem(tmp_path, "target.sigma: {uniform: [6, 2]}\n")
    assert p == "space.target.sigma.uniform: low 6 > high 2; swap them"


def test_empty_uniform_range(tmp_path):
    p = _space_problem(tmp_path, "target.sigma: {uniform: [2, 2]}\n")
    assert p.startswith("space.target.sigma.uniform: low 2 == high 2")


@pytest.mark.parametrize("low", [0, -1.0e-3])
def test_loguniform_needs_a_positive_low(tmp_path, low):
    p = _space_problem(tmp_path, f"optim.lr: {{loguniform: [{low}, 1.0e-2]}}\n")
    assert p == f"space.optim.lr.loguniform: low must be > 0 for a log scale, got {low}"


def test_int_range_needs_integers(tmp_path):
    p = _space_problem(tmp_path, "train.epochs: {int: [1.5, 3]}\n")
    assert p == "space.train.epochs.int: low must be an integer, got 1.5"


def test_uniform_on_an_int_field_is_rejected(tmp_path):
    p = _space_problem(tmp_path, "train.epochs: {uniform: [1, 3]}\n")
    assert p.startswith("space.train.epochs.uniform: train.epochs is a int; uniform needs a float field")


def test_choice_values_must_have_the_field_type(tmp_path):
    p = _space_problem(tmp_path, "train.batch_size: {choice: [4, '8']}\n")
    assert p == "space.train.batch_size.choice[1]: expected int, got str '8' (the type of train.batch_size)"


def test_choice_of_an_unknown_registry_name(tmp_path):
    p = _space_problem(tmp_path, "model.name: {choice: [unet, nope]}\n")
    assert p.startswith("space.model.name.choice: 'nope': unknown 'nope'; choose one of [")
    assert "'unet'" in p


def test_range_end_invalid_for_the_field(tmp_path):
    # config_problems says sigma must be > 0: the low end of the range breaks it, the high end does not.
    p = _space_problem(tmp_path, "target.sigma: {uniform: [-1, 2]}\n")
    assert p == "space.target.sigma.uniform: -1.0: must be > 0, got -1.0"


def test_unknown_distribution(tmp_path):
    p = _space_problem(tmp_path, "optim.lr: {normal: [0, 1]}\n")
    assert p.startswith("space.optim.lr: expected one of {choice: ... | uniform: ... | loguniform: ... | int: ...}")


def test_list_fields_cannot_be_searched(tmp_path):
    p = _space_problem(tmp_path, "data.input_size: {choice: [[64, 64], [128, 104]]}\n")
    assert p.startswith("space.data.input_size: list-valued fields cannot be searched yet")


def test_valid_space_values_are_coerced(tmp_path):
    spec = load_spec(_write(tmp_path, """\
        study: {name: x}
        space:
          target.sigma: {choice: [1, 2.5]}
          train.epochs: {int: [1, 3]}
          optim.name: {choice: [adam, sgd]}
        """))
    assert spec.space["target.sigma"].args == [1.0, 2.5] and type(spec.space["target.sigma"].args[0]) is float
    assert spec.space["train.epochs"] == Param("train.epochs", "int", [1, 3])
    assert spec.space["optim.name"].args == ["adam", "sgd"]


# --- base ---------------------------------------------------------------------------------


def test_isbi2015_root_that_does_not_exist(tmp_path):
    missing = tmp_path / "no_isbi"
    p = _one_problem(tmp_path, f"""\
        study: {{name: x}}
        base: {{data: {{dataset: isbi2015, root: {missing}}}}}
        """)
    assert p.startswith("base.data.root: ") and str(missing) in p and "does not exist" in p


def test_base_problems_name_the_base_path(tmp_path):
    ps = _problems(_write(tmp_path, """\
        study: {name: x}
        base:
          optim: {lrr: 0.1}
          model: {name: nope}
        """))
    assert ps[0].startswith("base.optim.lrr: unknown key (did you mean 'lr'?)")
    assert len(ps) == 1  # config_problems runs only on a config that could be built


def test_relative_data_root_is_made_absolute(tmp_path, monkeypatch):
    # Trials run in their own working folders, so a relative root is resolved now, against the cwd.
    monkeypatch.chdir(tmp_path)
    spec = load_spec(_write(tmp_path, """\
        study: {name: x}
        base: {data: {root: some/phantom}}
        """))
    assert spec.base["data"]["root"] == str(tmp_path.resolve() / "some" / "phantom")
    assert Path(spec.base["data"]["root"]).is_absolute()
    spec = load_spec(_write(tmp_path, "study: {name: x}\n"), ["base.data.root=other"])
    assert spec.base["data"]["root"] == str(tmp_path.resolve() / "other")  # also when set by --set


def test_empty_data_root_stays_empty(tmp_path):
    # phantom: "" means "a cache folder keyed by its config"; resolving it would give the cwd.
    spec = load_spec(_write(tmp_path, "study: {name: x}\nbase: {data: {root: ''}}\n"))
    assert spec.base["data"]["root"] == ""


# --- all at once, overrides ---------------------------------------------------------------


def test_all_problems_are_reported_at_once_each_with_the_file(tmp_path):
    path = _write(tmp_path, """\
        study: {name: x, trails: 3}
        resource: {workers: 1}
        space:
          target.sigma: {uniform: [6, 2]}
        """)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    ps = e.value.problems
    assert len(ps) == 3, ps
    assert all(p.startswith(f"{path}: ") for p in ps)
    assert sorted(p.split(": ")[1] for p in ps) == ["resource", "space.target.sigma.uniform", "study.trails"]
    assert str(e.value) == "\n".join(ps)


def test_a_base_problem_does_not_hide_a_space_problem(tmp_path):
    ps = _problems(_write(tmp_path, """\
        study: {name: x}
        base: {optim: {lr: 0}}
        space:
          model.name: {choice: [unet, nope]}
        """))
    assert any(p.startswith("base.optim.lr:") for p in ps)
    assert any(p.startswith("space.model.name.choice: 'nope'") for p in ps)


def test_space_choice_that_breaks_another_field_is_rejected(tmp_path):
    ps = _problems(_write(tmp_path, """\
        study: {name: x}
        space:
          data.dataset: {choice: [phantom, isbi2015]}
        """))
    assert any("data.root" in p for p in ps)


def test_set_overrides_are_yaml_scalars():
    spec = load_spec(QUICKSTART, ["study.trials=7", "base.train.epochs=2", "base.optim.lr=1.0e-2",
                                  "study.storage=/tmp/elsewhere"])
    assert spec.study.trials == 7
    assert spec.base["train"]["epochs"] == 2
    assert spec.base["optim"]["lr"] == 0.01
    assert spec.study.storage == "/tmp/elsewhere"
    assert spec.space["optim.lr"].args == [5e-4, 5e-3]  # untouched


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    spec = load_spec(_write(tmp_path, "study: {name: x}\nbase: {optim: {lr: 1e-3}}\n"), ["base.optim.weight_decay=1e-5"])
    assert spec.base["optim"]["lr"] == 1e-3 and spec.base["optim"]["weight_decay"] == 1e-5


def test_set_overrides_are_validated_like_the_file():
    ps = _problems(QUICKSTART, ["study.trials=seven", "base.optim.lrr=1"])
    assert ps[0] == "study.trials: expected int, got str 'seven'"
    assert ps[1].startswith("base.optim.lrr: unknown key (did you mean 'lr'?)")


def test_malformed_set_item():
    ps = _problems(QUICKSTART, ["study.trials", "=5", "study.trials=3"])
    assert ps == ["--set 'study.trials': expected path=value, e.g. study.trials=8",
                  "--set '=5': expected path=value, e.g. study.trials=8"]


def test_set_through_a_value():
    ps = _problems(QUICKSTART, ["study.name.x=1"])
    assert ps == ["--set study.name.x: 'name' is a value, not a section"]


def test_set_into_an_empty_section(tmp_path):
    spec = load_spec(_write(tmp_path, "study:\n"), ["study.name=x"])
    assert spec.study.name == "x"


# --- the space as an Optuna define-by-run function -------------------------------------------


def test_space_sampler_with_a_real_optuna_study():
    spec = load_spec(QUICKSTART)
    sample = SpaceSampler(spec.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lrs = []
    for _ in range(100):
        trial = study.ask()
        assert sample(trial) is None  # OptunaSearch reads the suggestions off the trial
        assert set(trial.params) == {"optim.lr", "target.sigma"}
        lr, sigma = trial.params["optim.lr"], trial.params["target.sigma"]
        assert 5e-4 <= lr <= 5e-3 and 2.0 <= sigma <= 6.0
        lrs.append(lr)
        study.tell(trial, 0.0)
    dists = study.trials[0].distributions
    assert dists["optim.lr"] == optuna.distributions.FloatDistribution(5e-4, 5e-3, log=True)
    assert dists["target.sigma"] == optuna.distributions.FloatDistribution(2.0, 6.0, log=False)
    # Log scale: half the draws land below the geometric midpoint sqrt(5e-4 * 5e-3) = 1.58e-3;
    # a linear draw lands there (1.58e-3 - 5e-4) / 4.5e-3 = 24% of the time (mean 24 of 100, sd 4.3).
    assert sum(lr < math.sqrt(5e-4 * 5e-3) for lr in lrs) >= 37


def test_space_sampler_choice_and_int(tmp_path):
    spec = load_spec(_write(tmp_path, """\
        study: {name: x}
        space:
          optim.name: {choice: [adam, sgd]}
          train.epochs: {int: [1, 3]}
        """))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        SpaceSampler(spec.space)(trial)
        assert trial.params["optim.name"] in ("adam", "sgd")
        assert trial.params["train.epochs"] in (1, 2, 3) and type(trial.params["train.epochs"]) is int
        seen.add((trial.params["optim.name"], trial.params["train.epochs"]))
        study.tell(trial, 0.0)
    assert study.trials[0].distributions["optim.name"] == optuna.distributions.CategoricalDistribution(["adam", "sgd"])
    assert study.trials[0].distributions["train.epochs"] == optuna.distributions.IntDistribution(1, 3)
    assert len(seen) > 3  # both names and several epoch counts are drawn
