"""Study specs: YAML -> validated Spec, every problem at once, each naming the file and YAML path."""

import math
import textwrap
from pathlib import Path

import optuna
import pytest

from study.search import SpaceSampler
from study.space import Param
from study.spec import SpecError, load_spec
from trainables.config import TrialConfig
from trainables.metrics import all_metric_names, reported_metrics

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
    return [p[len(prefix) :] for p in e.value.problems]


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
        "target.schedule": Param("target.schedule", "choice", ["fixed", "adaloss"]),
        "target.sigma": Param("target.sigma", "uniform", [2.0, 6.0], when={"target.schedule": ["fixed"]}),
    }
    assert (spec.study.scheduler.type, spec.study.scheduler.grace_period) == ("asha", 3)
    # base: what the YAML says, and the defaults for everything it leaves out
    assert spec.base.optim.lr == 1e-3 and spec.base.train.batch_size == 4
    assert spec.base.train.device == "auto" and spec.base.eval.decode == "argmax"
    assert isinstance(spec.base, TrialConfig)  # a complete, valid trial config
    assert spec.source == str(QUICKSTART) and spec.text == QUICKSTART.read_text()


def test_minimal_spec_gets_defaults(tmp_path):
    spec = load_spec(_write(tmp_path, "study: {name: tiny}\n"))
    assert spec.study.trials == 8 and spec.study.sampler == "tpe" and spec.resources.workers == 1
    # the defaults, and the trainer checkpoints the epochs that improve the study's primary objective
    assert spec.base == TrialConfig.from_dict({"train": {"checkpoint_metric": "val/mre_mm", "checkpoint_mode": "min"}})
    assert spec.space == {}


def test_missing_file(tmp_path):
    assert _problems(tmp_path / "nope.yaml") == ["no such spec file"]
    assert _problems(tmp_path) == ["no such spec file (it is a folder)"]


def test_invalid_yaml_names_the_line(tmp_path):
    p = _one_problem(
        tmp_path,
        """\
        study:
          name: x
         trials: 3
        """,
    )
    assert p.startswith("line 3, column 2: invalid YAML")


def test_a_tab_in_yaml_says_tab_and_use_spaces(tmp_path):
    # PyYAML: "found character '\\t' that cannot start any token". Here a tab sits between the value
    # and its comment on line 3: `  trials: 4<TAB># four`, column 12 (two spaces, "trials:", a space, "4").
    p = _one_problem(tmp_path, "study:\n  name: x\n  trials: 4\t# four\n")
    assert p == (
        "line 3, column 12: invalid YAML: a tab character, where YAML allows only spaces (indentation, "
        "or before a # comment); replace it with spaces"
    )
    # A tab as indentation, the other way a tab breaks a spec: line 2, column 1.
    p = _one_problem(tmp_path, "study:\n\tname: x\n")
    assert p.startswith("line 2, column 1: invalid YAML: a tab character") and "replace it with spaces" in p
    # Any other YAML error keeps PyYAML's own words.
    assert _one_problem(tmp_path, "study: [1, 2\n").startswith("line 2, column 1: invalid YAML: expected ',' or ']'")


def test_a_spec_that_is_not_a_mapping(tmp_path):
    p = _one_problem(tmp_path, "- study\n- space\n")
    assert p.startswith("expected a mapping with sections") and "got list" in p


def test_unknown_section_suggests(tmp_path):
    p = _one_problem(
        tmp_path,
        """\
        study: {name: x}
        spaces:
          optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        """,
    )
    assert p.startswith("spaces: unknown section (did you mean 'space'?)")
    assert "valid sections: study, resources, base, space" in p


def test_study_section_and_name_are_required(tmp_path):
    assert _one_problem(tmp_path, "base: {}\n").startswith("study: missing")
    assert _one_problem(tmp_path, "study: {trials: 2}\n").startswith("study.name: missing")


def test_unknown_study_key_suggests(tmp_path):
    p = _one_problem(tmp_path, "study: {name: x, trails: 3}\n")
    assert p.startswith("study.trails: unknown key (did you mean 'trials'?)")


def test_objective_must_be_a_reported_metric(tmp_path):
    p = _one_problem(
        tmp_path,
        """\
        study:
          name: x
          objectives: [{metric: val/mre_m, mode: min}]
        """,
    )
    assert p.startswith(
        "study.objectives[0].metric: 'val/mre_m' is not reported by the trainer "
        "for data.dataset phantom (scored in mm) (did you mean 'val/mre_mm'?)"
    )
    assert p.endswith("reported: " + ", ".join(reported_metrics("mm")))


def test_objective_of_another_unit_is_not_reported(tmp_path):
    # NME is what faces are scored by; a cephalogram study reports mm, so val/nme would stay empty.
    p = _one_problem(
        tmp_path,
        """\
        study:
          name: x
          objectives: [{metric: val/nme, mode: min}]
        """,
    )
    assert p.startswith(
        "study.objectives[0].metric: 'val/nme' is not reported by the trainer for data.dataset phantom (scored in mm)"
    )


def test_objectives_when_the_dataset_is_searched_may_name_any_unit(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study:
          name: x
          objectives: [{metric: val/nme, mode: min}]
        space:
          data.dataset: {choice: [phantom]}
        """,
        )
    )
    assert spec.primary.metric == "val/nme" and "val/nme" in all_metric_names()


def test_objective_mode_must_be_min_or_max(tmp_path):
    p = _one_problem(
        tmp_path,
        """\
        study:
          name: x
          objectives: [{metric: val/mre_mm, mode: minimize}]
        """,
    )
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
    assert p.startswith(
        "space.optim.lr: expected one of {choice: ... | uniform: ... | loguniform: ... | int: ... "
        "| quniform: ...} (and optionally when: ...)"
    )


def test_list_fields_cannot_be_searched(tmp_path):
    p = _space_problem(tmp_path, "data.input_size: {choice: [[64, 64], [128, 104]]}\n")
    assert p.startswith("space.data.input_size: list-valued fields cannot be searched yet")


def test_valid_space_values_are_coerced(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x}
        space:
          target.sigma: {choice: [1, 2.5]}
          train.epochs: {int: [1, 3]}
          optim.name: {choice: [adam, sgd]}
        """,
        )
    )
    assert spec.space["target.sigma"].args == [1.0, 2.5] and type(spec.space["target.sigma"].args[0]) is float
    assert spec.space["train.epochs"] == Param("train.epochs", "int", [1, 3])
    assert spec.space["optim.name"].args == ["adam", "sgd"]


# --- base ---------------------------------------------------------------------------------


def test_isbi2015_root_that_does_not_exist(tmp_path):
    missing = tmp_path / "no_isbi"
    p = _one_problem(
        tmp_path,
        f"""\
        study: {{name: x}}
        base: {{data: {{dataset: isbi2015, root: {missing}}}}}
        """,
    )
    assert p.startswith("base.data.root: ") and str(missing) in p and "does not exist" in p


def test_base_problems_name_the_base_path(tmp_path):
    ps = _problems(
        _write(
            tmp_path,
            """\
        study: {name: x}
        base:
          optim: {lrr: 0.1}
          model: {name: nope}
        """,
        )
    )
    assert ps[0].startswith("base.optim.lrr: unknown key (did you mean 'lr'?)")
    assert len(ps) == 1  # config_problems runs only on a config that could be built


def test_relative_data_root_is_made_absolute(tmp_path, monkeypatch):
    # Trials run in their own working folders, so a relative root is resolved now, against the cwd.
    monkeypatch.chdir(tmp_path)
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x}
        base: {data: {root: some/phantom}}
        """,
        )
    )
    assert spec.base.data.root == str(tmp_path.resolve() / "some" / "phantom")
    assert Path(spec.base.data.root).is_absolute()
    spec = load_spec(_write(tmp_path, "study: {name: x}\n"), ["base.data.root=other"])
    assert spec.base.data.root == str(tmp_path.resolve() / "other")  # also when set by --set


def test_relative_weights_files_are_made_absolute_and_names_kept(tmp_path, monkeypatch, r18_file):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "r18.pt").write_bytes(r18_file.read_bytes())
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x}
        base:
          model: {name: simple_baseline, backbone: resnet18, weights: w/r18.pt}
          data: {input_size: [64, 64]}
          distill: {type: ed, teacher: w/r18.pt}
        """,
        )
    )
    assert spec.base.model.weights == spec.base.distill.teacher == str(tmp_path.resolve() / "w" / "r18.pt")
    spec = load_spec(_write(tmp_path, "study: {name: x}\nbase: {model: {weights: none}}\n"))
    assert spec.base.model.weights == "none" and spec.base.distill.teacher == ""  # names, not paths: kept


def test_empty_data_root_stays_empty(tmp_path):
    # phantom: "" means "a cache folder keyed by its config"; resolving it would give the cwd.
    spec = load_spec(_write(tmp_path, "study: {name: x}\nbase: {data: {root: ''}}\n"))
    assert spec.base.data.root == ""


# --- all at once, overrides ---------------------------------------------------------------


def test_all_problems_are_reported_at_once_each_with_the_file(tmp_path):
    path = _write(
        tmp_path,
        """\
        study: {name: x, trails: 3}
        resource: {workers: 1}
        space:
          target.sigma: {uniform: [6, 2]}
        """,
    )
    with pytest.raises(SpecError) as e:
        load_spec(path)
    ps = e.value.problems
    assert len(ps) == 3, ps
    assert all(p.startswith(f"{path}: ") for p in ps)
    assert sorted(p.split(": ")[1] for p in ps) == ["resource", "space.target.sigma.uniform", "study.trails"]
    assert str(e.value) == "\n".join(ps)


def test_a_base_problem_does_not_hide_a_space_problem(tmp_path):
    ps = _problems(
        _write(
            tmp_path,
            """\
        study: {name: x}
        base: {optim: {lr: 0}}
        space:
          model.name: {choice: [unet, nope]}
        """,
        )
    )
    assert any(p.startswith("base.optim.lr:") for p in ps)
    assert any(p.startswith("space.model.name.choice: 'nope'") for p in ps)


def test_space_choice_that_breaks_another_field_is_rejected(tmp_path):
    ps = _problems(
        _write(
            tmp_path,
            """\
        study: {name: x}
        space:
          data.dataset: {choice: [phantom, isbi2015]}
        """,
        )
    )
    assert any("data.root" in p for p in ps)


def test_set_overrides_are_yaml_scalars():
    spec = load_spec(
        QUICKSTART, ["study.trials=7", "base.train.epochs=4", "base.optim.lr=1.0e-2", "study.storage=/tmp/elsewhere"]
    )
    assert spec.study.trials == 7
    assert spec.base.train.epochs == 4
    assert spec.base.optim.lr == 0.01
    assert spec.study.storage == "/tmp/elsewhere"
    assert spec.space["optim.lr"].args == [5e-4, 5e-3]  # untouched


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    spec = load_spec(
        _write(tmp_path, "study: {name: x}\nbase: {optim: {lr: 1e-3}}\n"), ["base.optim.weight_decay=1e-5"]
    )
    assert spec.base.optim.lr == 1e-3 and spec.base.optim.weight_decay == 1e-5


def test_set_overrides_are_validated_like_the_file():
    ps = _problems(QUICKSTART, ["study.trials=seven", "base.optim.lrr=1"])
    assert ps[0] == "study.trials: expected int, got str 'seven'"
    assert ps[1].startswith("base.optim.lrr: unknown key (did you mean 'lr'?)")


def test_malformed_set_item():
    ps = _problems(QUICKSTART, ["study.trials", "=5", "study.trials=3"])
    assert ps == [
        "--set 'study.trials': expected path=value, e.g. study.trials=8",
        "--set '=5': expected path=value, e.g. study.trials=8",
    ]


def test_set_through_a_value():
    ps = _problems(QUICKSTART, ["study.name.x=1"])
    assert ps == ["--set study.name.x: 'name' is a value, not a section"]


def test_set_into_an_empty_section(tmp_path):
    spec = load_spec(_write(tmp_path, "study:\n"), ["study.name=x"])
    assert spec.study.name == "x"


# --- the space as an Optuna define-by-run function -------------------------------------------


def test_space_sampler_with_a_real_optuna_study(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x}
        space:
          optim.lr: {loguniform: [5.0e-4, 5.0e-3]}
          target.sigma: {uniform: [2.0, 6.0]}
        """,
        )
    )
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
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x}
        space:
          optim.name: {choice: [adam, sgd]}
          train.epochs: {int: [1, 3]}
        """,
        )
    )
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


# --- conditional spaces (`when:`), quniform, samplers, schedulers, resources -----------------

CONDITIONAL = """\
    study: {name: x, sampler: random}
    base:
      model: {name: simple_baseline, backbone: resnet18, weights: WEIGHTS}
      data: {input_size: [128, 96]}
    space:
      distill.mu: {uniform: [1.0, 4.0], when: {distill.type: [cd, both]}}
      target.schedule: {choice: [fixed, adaloss]}
      target.sigma: {uniform: [1.0, 6.0], when: {target.schedule: fixed}}
      target.adaloss.rho: {uniform: [0.5, 1.0], when: {target.schedule: adaloss}}
      distill.type: {choice: [none, cd, ed, both]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
    """


def test_conditions_are_parsed_and_ordered_before_what_they_gate(tmp_path, r18_file):
    spec = load_spec(_write(tmp_path, CONDITIONAL.replace("WEIGHTS", str(r18_file))))
    assert spec.space["target.sigma"].when == {"target.schedule": ["fixed"]}
    assert spec.space["distill.mu"].when == {"distill.type": ["cd", "both"]}
    order = list(spec.space)
    assert order.index("distill.type") < order.index("distill.mu")
    assert order.index("target.schedule") < order.index("target.sigma")
    assert spec.space["target.sigma"].describe() == "uniform [1.0, 6.0] when target.schedule = fixed"
    assert spec.space["distill.mu"].describe() == "uniform [1.0, 4.0] when distill.type in ['cd', 'both']"


def test_parameters_appear_exactly_when_their_conditions_hold(tmp_path, r18_file):
    spec = load_spec(_write(tmp_path, CONDITIONAL.replace("WEIGHTS", str(r18_file))))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(80):
        trial = study.ask()
        SpaceSampler(spec.space)(trial)
        ps = trial.params
        assert ("target.sigma" in ps) == (ps["target.schedule"] == "fixed")
        assert ("target.adaloss.rho" in ps) == (ps["target.schedule"] == "adaloss")
        assert ("distill.mu" in ps) == (ps["distill.type"] in ("cd", "both"))
        assert "optim.lr" in ps
        seen.add((ps["target.schedule"], ps["distill.type"]))
        study.tell(trial, 0.0)
    assert len(seen) == 8  # every branch was taken


def test_nested_conditions_gate_through_their_parent(tmp_path):
    # loss.alpha is searched when loss.type is ewc; loss.type itself only for fixed σ.
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x, sampler: grid}
        space:
          loss.alpha: {choice: [20.0, 40.0], when: {loss.type: ewc}}
          loss.type: {choice: [mse, ewc], when: {target.schedule: fixed}}
          target.schedule: {choice: [fixed, adaloss]}
        """,
        )
    )
    assert list(spec.space) == ["target.schedule", "loss.type", "loss.alpha"]
    grid = spec.grid()
    assert sorted(map(str, grid)) == sorted(
        map(
            str,
            [
                {"target.schedule": "adaloss"},
                {"target.schedule": "fixed", "loss.type": "mse"},
                {"target.schedule": "fixed", "loss.type": "ewc", "loss.alpha": 20.0},
                {"target.schedule": "fixed", "loss.type": "ewc", "loss.alpha": 40.0},
            ],
        )
    )


def test_when_on_a_parameter_that_is_not_searched(tmp_path):
    p = _space_problem(tmp_path, "target.sigma: {uniform: [1.0, 6.0], when: {target.schedule: fixed}}\n")
    assert p == (
        "space.target.sigma.when.target.schedule: target.schedule is not searched (it is fixed in "
        "base:); a condition must name a `choice` parameter in space:"
    )


def test_when_on_a_range_parameter(tmp_path):
    p = _space_problem(
        tmp_path,
        """\
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        target.sigma: {uniform: [1.0, 6.0], when: {optim.lr: 0.001}}
        """,
    )
    assert p == "space.target.sigma.when.optim.lr: optim.lr is a loguniform range; conditions need a `choice` parameter"


def test_when_value_that_is_never_sampled(tmp_path):
    p = _space_problem(
        tmp_path,
        """\
        target.schedule: {choice: [fixed, adaloss]}
        target.sigma: {uniform: [1.0, 6.0], when: {target.schedule: fxed}}
        """,
    )
    assert (
        p
        == "space.target.sigma.when.target.schedule: 'fxed' is never sampled; target.schedule chooses from ['fixed', 'adaloss']"
    )


def test_conditions_that_form_a_cycle(tmp_path):
    p = _space_problem(
        tmp_path,
        """\
        loss.type: {choice: [mse, ewc], when: {optim.name: adam}}
        optim.name: {choice: [adam, sgd], when: {loss.type: ewc}}
        """,
    )
    assert p == "space.loss.type.when: the conditions form a cycle: loss.type -> optim.name -> loss.type"


def test_misspelt_when_key(tmp_path):
    p = _space_problem(
        tmp_path,
        """\
        target.schedule: {choice: [fixed, adaloss]}
        target.sigma: {uniform: [1.0, 6.0], wehn: {target.schedule: fixed}}
        """,
    )
    assert p.startswith("space.target.sigma.wehn: unknown key (did you mean 'when'?)")


def test_a_choice_value_is_checked_with_its_condition_true(tmp_path):
    # ewc assumes targets in [0, 1]: with target.normalize it breaks, and the message says which value.
    p = _one_problem(
        tmp_path,
        """\
        study: {name: x}
        base: {target: {normalize: true}}
        space:
          target.schedule: {choice: [fixed, adaloss]}
          loss.type: {choice: [mse, ewc], when: {target.schedule: fixed}}
        """,
    )
    assert (
        p
        == "space.loss.type.choice: 'ewc' breaks target.normalize: true needs loss.type mse; ewc assumes targets in [0, 1]"
    )


def test_duplicate_choice_value(tmp_path):
    p = _space_problem(tmp_path, "optim.name: {choice: [adam, sgd, adam]}\n")
    assert p == "space.optim.name.choice[2]: 'adam' is listed twice"


def test_quniform_on_int_and_float_fields(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x}
        space:
          train.batch_size: {quniform: [2, 8, 2]}
          target.sigma: {quniform: [1.0, 2.0, 0.25]}
        """,
        )
    )
    assert spec.space["train.batch_size"].values() == [2, 4, 6, 8]
    assert spec.space["target.sigma"].values() == [1.0, 1.25, 1.5, 1.75, 2.0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        SpaceSampler(spec.space)(trial)
        assert trial.params["train.batch_size"] in (2, 4, 6, 8) and type(trial.params["train.batch_size"]) is int
        assert trial.params["target.sigma"] in (1.0, 1.25, 1.5, 1.75, 2.0)
        study.tell(trial, 0.0)


def test_quniform_range_must_be_a_multiple_of_the_step(tmp_path):
    p = _space_problem(tmp_path, "train.batch_size: {quniform: [2, 9, 2]}\n")
    assert p == "space.train.batch_size.quniform: high - low = 7 is not a multiple of step 2; e.g. [2, 8, 2]"
    p = _space_problem(tmp_path, "target.sigma: {quniform: [1.0, 2.0]}\n")
    assert p == "space.target.sigma.quniform: expected [low, high, step], got [1.0, 2.0]"


def test_unknown_sampler_suggests(tmp_path):
    p = _one_problem(tmp_path, "study: {name: x, sampler: nsga}\n")
    assert (
        p == "study.sampler: unknown 'nsga' (did you mean 'nsga2'?); choose one of ['tpe', 'random', 'grid', 'nsga2']"
    )


def test_grid_needs_finite_distributions(tmp_path):
    p = _one_problem(
        tmp_path,
        """\
        study: {name: x, sampler: grid}
        space:
          optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
          optim.name: {choice: [adam, sgd]}
        """,
    )
    assert p == (
        "space.optim.lr.loguniform: the grid sampler needs finite distributions (choice, int, quniform); "
        "use choice or quniform, or another study.sampler"
    )


def test_grid_that_is_too_large(tmp_path):
    p = _one_problem(
        tmp_path,
        """\
        study: {name: x, sampler: grid}
        space:
          train.seed: {int: [0, 1000]}
          train.batch_size: {int: [1, 1000]}
        """,
    )
    assert p == "study.sampler: grid: the grid has more than 100,000 points; narrow the int/quniform ranges or use tpe"


def test_several_objectives_and_scheduler_default(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study:
          name: x
          objectives:
            - {metric: val/mre_mm, mode: min}
            - {metric: cost/gflops, mode: min}
            - {metric: val/sdr_2mm, mode: max}
        base: {train: {epochs: 30}}
        """,
        )
    )
    assert spec.multi_objective and [o.metric for o in spec.study.objectives] == [
        "val/mre_mm",
        "cost/gflops",
        "val/sdr_2mm",
    ]
    assert spec.study.scheduler.type == "none"  # auto: no early stopping on one of several objectives
    one = load_spec(_write(tmp_path, "study: {name: x}\nbase: {train: {epochs: 30}}\n"))
    assert (one.study.scheduler.type, one.study.scheduler.grace_period, one.study.scheduler.max_t) == ("asha", 3, 30)


def test_asha_max_t_follows_a_searched_epoch_count(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            """\
        study: {name: x, scheduler: {type: asha, grace_period: 2, reduction_factor: 2}}
        space:
          train.epochs: {choice: [4, 12, 8]}
        """,
        )
    )
    s = spec.study.scheduler
    assert (s.type, s.grace_period, s.reduction_factor, s.max_t) == ("asha", 2, 2.0, 8)  # the last listed


def test_duplicate_objective(tmp_path):
    p = _one_problem(
        tmp_path,
        """\
        study:
          name: x
          objectives: [{metric: val/mre_mm, mode: min}, {metric: val/mre_mm, mode: max}]
        """,
    )
    assert p == "study.objectives[1].metric: 'val/mre_mm' is already an objective; give each metric once"


def test_scheduler_problems(tmp_path):
    ps = _problems(
        _write(
            tmp_path,
            """\
        study: {name: x, scheduler: {type: ashaa, grace_period: 20, reduction_factor: 1, patience: 3}}
        base: {train: {epochs: 10}}
        """,
        )
    )
    assert ps == [
        "study.scheduler.patience: unknown key; valid keys: type, grace_period, reduction_factor",
        "study.scheduler.type: unknown 'ashaa' (did you mean 'asha'?); choose one of ['auto', 'none', 'asha']",
        "study.scheduler.reduction_factor: must be > 1, got 1",
    ]
    p = _one_problem(
        tmp_path, "study: {name: x, scheduler: {type: asha, grace_period: 20}}\nbase: {train: {epochs: 10}}\n"
    )
    assert (
        p
        == "study.scheduler.grace_period: 20 epochs is more than train.epochs (10); ASHA could never stop a trial: lower it, or set study.scheduler=none"
    )


def test_fractional_gpus_need_one_worker(tmp_path):
    p = _one_problem(tmp_path, "study: {name: x}\nresources: {workers: 2, gpus_per_worker: 0.5}\n")
    assert p == (
        "resources.gpus_per_worker: a fraction (0.5) needs workers: 1; each DDP worker of a 2-worker "
        "trial needs its own GPU"
    )
    spec = load_spec(_write(tmp_path, "study: {name: x}\nresources: {workers: 1, gpus_per_worker: 0.25}\n"))
    assert spec.resources.per_worker() == {"CPU": 1.0, "GPU": 0.25}


def test_custom_resources(tmp_path):
    spec = load_spec(_write(tmp_path, "study: {name: x}\nresources: {custom: {big_node: 1}}\n"))
    assert spec.resources.per_worker() == {"CPU": 1.0, "big_node": 1.0}
    ps = _problems(_write(tmp_path, "study: {name: x}\nresources: {custom: {GPU: 1, x: -1, y: many}}\n"))
    assert ps == [
        "resources.custom.GPU: set it with gpus_per_worker",
        "resources.custom.x: must be > 0, got -1",
        "resources.custom.y: expected float, got str 'many'",
    ]


def test_resources_the_cluster_cannot_provide():
    from study.cluster import resource_problems
    from study.spec import Resources

    nodes = [{"CPU": 2.0, "memory": 1e9, "node:127.0.0.1": 1.0}, {"CPU": 1.0, "extra_node": 2.0}]
    assert resource_problems(Resources(workers=3), nodes) == []
    assert resource_problems(Resources(workers=4), nodes) == [
        "resources.workers: 4 workers of 1 CPU each, but the cluster holds only 3 at once"
    ]
    assert resource_problems(Resources(cpus_per_worker=3), nodes) == [
        "resources.cpus_per_worker: each worker needs 3 CPU but the largest node has 2 (2 node(s), 3 CPU in all)"
    ]
    assert resource_problems(Resources(gpus_per_worker=1), nodes) == [
        "resources.gpus_per_worker: each worker needs 1 GPU but the largest node has 0 (2 node(s), 0 GPU in all)"
    ]
    assert resource_problems(Resources(custom={"big_box": 1}), nodes) == [
        "resources.custom.big_box: no node of the cluster has a 'big_box' resource; it has CPU, extra_node, memory"
    ]
    assert resource_problems(Resources(custom={"extra_node": 1}), nodes) == []
    assert resource_problems(Resources(workers=2, custom={"extra_node": 1}), nodes) == [
        "resources.workers: 2 workers of 1 CPU + 1 extra_node each, but the cluster holds only 1 at once"
    ]


def test_dry_run_mode_turns_missing_weights_into_warnings(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    path = _write(
        tmp_path,
        """\
        study: {name: x}
        base:
          model: {name: simple_baseline, backbone: resnet18, weights: imagenet}
          data: {input_size: [64, 64]}
        space:
          model.backbone: {choice: [resnet18, resnet34]}
        """,
    )
    assert len(_problems(path)) == 2
    spec = load_spec(path, check_data=False)
    assert len(spec.warnings) == 2 and all("not in the torch hub cache" in w for w in spec.warnings)


def test_dry_run_mode_turns_a_missing_data_root_into_a_warning(tmp_path):
    missing = tmp_path / "ISBI2015"
    path = _write(tmp_path, f"study: {{name: x}}\nbase: {{data: {{dataset: isbi2015, root: {missing}}}}}\n")
    with pytest.raises(SpecError):
        load_spec(path)
    spec = load_spec(path, check_data=False)
    assert len(spec.warnings) == 1
    assert spec.warnings[0].startswith(f"{path}: base.data.root: ") and "does not exist" in spec.warnings[0]
    # other problems stay errors
    with pytest.raises(SpecError):
        load_spec(path, ["base.optim.lr=0"], check_data=False)


def test_resolved_spec_is_plain_data():
    import json

    spec = load_spec(QUICKSTART)
    resolved = spec.resolved()
    assert json.loads(json.dumps(resolved)) == resolved
    assert resolved["space"]["optim.lr"] == {"loguniform": [5e-4, 5e-3]}
    assert resolved["study"]["scheduler"]["type"] in ("asha", "none")


def test_spec_diff_names_each_changed_field():
    from study.storage import spec_diff

    old = load_spec(QUICKSTART).resolved()
    new = load_spec(QUICKSTART, ["base.train.epochs=3", "resources.custom.fast=1"]).resolved()
    new["space"]["optim.lr"] = {"loguniform": [1e-4, 1e-2]}
    del new["space"]["target.sigma"]
    assert spec_diff(old, old) == []
    assert spec_diff(old, new) == [
        "study.scheduler.max_t: 10 -> 3",  # derived from the epochs: ASHA's last rung moves with them
        "base.train.epochs: 10 -> 3",
        "space.optim.lr: loguniform: [0.0005, 0.005] -> loguniform: [0.0001, 0.01]",
        "space.target.sigma: uniform: [2.0, 6.0] when: {'target.schedule': ['fixed']} -> (absent)",
        "resources.custom.fast: (absent) -> 1.0",
    ]


@pytest.mark.parametrize("name", ["farnet", "adaloss", "crosstask"])
def test_shipped_full_size_specs_validate_without_data_or_weights(name, tmp_path, monkeypatch):
    # What `--dry-run` does on a machine with neither the dataset nor the torch hub weights.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    spec = load_spec(REPO / "search_spaces" / f"{name}.yaml", check_data=False)
    assert spec.warnings and all("does not exist" in w or "torch hub cache" in w for w in spec.warnings)
    assert spec.base.data.dataset in ("isbi2015", "300w")


def test_shipped_specs_express_the_papers_comparisons():
    farnet = load_spec(REPO / "search_spaces" / "farnet.yaml", check_data=False)
    assert farnet.base.data.input_size == (800, 640)
    assert [o.metric for o in farnet.study.objectives] == ["val/mre_mm", "val/sdr_2mm", "cost/gflops"]
    assert farnet.space["target.sigma"].when == {"target.schedule": ["fixed"]}
    assert farnet.base.target.sigma_units == "head"  # farnet §3.4: the same σ at both heads, in their own pixels
    assert farnet.space["loss.alpha"].when == {"loss.type": ["ewc"]}
    adaloss = load_spec(REPO / "search_spaces" / "adaloss.yaml", check_data=False)
    assert adaloss.base.model.name == "unet" and adaloss.study.sampler == "grid"
    assert adaloss.space["optim.lr"].args == [1e-3, 1e-4]
    assert {p.get("target.schedule") for p in adaloss.grid()} == {"fixed", "adaloss"}
    crosstask = load_spec(REPO / "search_spaces" / "crosstask.yaml", check_data=False)
    assert (crosstask.base.model.name, crosstask.base.model.backbone) == ("simple_baseline", "resnet50")
    assert crosstask.space["distill.type"].args == ["none", "cd", "ed", "both"]
    assert crosstask.space["distill.mu"].when == {"distill.type": ["cd", "both"]}


def test_a_misspelt_backbone_is_caught_even_for_a_model_without_one(tmp_path):
    p = _space_problem(tmp_path, "model.backbone: {choice: [resnet18, resnet5]}\n")  # base model: unet
    assert p.startswith("space.model.backbone.choice: 'resnet5': unknown 'resnet5'; choose one of [")


def test_faces_cut_by_the_frame_are_a_note_not_an_error(tmp_path, capsys):
    # A 300-W point outside its image (a face the photo's border cuts) refuses nothing: it is one note in
    # spec.notes, printed by `python -m study.run SPEC` as a `note:` line, with or without --dry-run.
    from test_data_checks import _faces_cut_by_the_frame, make_300w

    from study.run import main

    root = make_300w(tmp_path / "300w")
    first = _faces_cut_by_the_frame(root)[0]
    path = _write(
        tmp_path,
        f"""\
        study: {{name: faces, objectives: [{{metric: val/nme, mode: min}}]}}
        base:
          data: {{dataset: 300w, root: {root}, num_landmarks: 68, val_split: common}}
          eval: {{split: ''}}
        space:
          optim.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
        """,
    )
    for check_data in (True, False):
        spec = load_spec(path, check_data=check_data)
        (note,) = spec.notes
        assert note.startswith(
            f"{path}: base.data.root: {root}: 3 landmarks in 2 annotation files lie outside their "
            f"image (faces cut by the photo's border), e.g. {first}; kept:"
        )
        assert spec.warnings == []
    assert main([str(path), "--dry-run"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"note: {note}"]
