"""The samplers a spec names, driven through Optuna's ask-and-tell interface as Ray Tune drives them."""

import pickle
import textwrap

import optuna
import pytest

from study.search import SpaceSampler, distribution, make_sampler, population_size, startup_trials
from study.spec import load_spec

GRID = """\
    study: {name: g, sampler: grid, seed: SEED, trials: 5}
    space:
      target.schedule: {choice: [fixed, adaloss]}
      target.sigma: {choice: [1.0, 2.0, 5.0], when: {target.schedule: fixed}}
      train.batch_size: {quniform: [2, 4, 2]}
    """


def _spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path)


def _ask_all(spec, n, directions=("minimize",)):
    study = optuna.create_study(sampler=make_sampler(spec), directions=list(directions))
    out = []
    for i in range(n):
        trial = study.ask()
        SpaceSampler(spec.space)(trial)
        out.append(dict(trial.params))
        study.tell(trial, [float(i)] * len(directions))  # a grid must not call study.stop() here
    return out


def test_grid_visits_every_conditional_point_once(tmp_path):
    spec = _spec(tmp_path, GRID.replace("SEED", "0"))
    grid = spec.grid()
    assert len(grid) == 8  # (3 σ + adaloss) × 2 batch sizes, not 2 × 3 × 2 = 12
    seen = _ask_all(spec, len(grid))
    key = lambda d: tuple(sorted(d.items()))  # noqa: E731
    assert sorted(map(key, seen)) == sorted(map(key, grid))
    for params in seen:
        assert ("target.sigma" in params) == (params["target.schedule"] == "fixed")


def test_grid_order_follows_the_seed(tmp_path):
    a = _ask_all(_spec(tmp_path, GRID.replace("SEED", "0")), 8)
    b = _ask_all(_spec(tmp_path, GRID.replace("SEED", "0")), 8)
    c = _ask_all(_spec(tmp_path, GRID.replace("SEED", "1")), 8)
    assert a == b and a != c


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsga2"])
def test_samplers_run_a_conditional_multi_objective_space(tmp_path, sampler):
    spec = _spec(
        tmp_path,
        f"""\
        study:
          name: m
          sampler: {sampler}
          trials: 24
          objectives: [{{metric: val/mre_mm, mode: min}}, {{metric: cost/gflops, mode: min}}]
        space:
          target.schedule: {{choice: [fixed, adaloss]}}
          target.sigma: {{uniform: [1.0, 6.0], when: {{target.schedule: fixed}}}}
          optim.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
        """,
    )
    seen = _ask_all(spec, 24, directions=("minimize", "minimize"))
    assert all(("target.sigma" in p) == (p["target.schedule"] == "fixed") for p in seen)
    assert {p["target.schedule"] for p in seen} == {"fixed", "adaloss"}


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "nsga2"])
def test_every_sampler_pickles_after_it_has_sampled(tmp_path, sampler):
    # Tune saves the searcher, sampler included, with pickle (Optuna 5.1's NSGA-II holds a thread lock).
    spec = _spec(
        tmp_path,
        f"""\
        study: {{name: p, sampler: {sampler}, trials: 8,
                 objectives: [{{metric: val/mre_mm, mode: min}}, {{metric: cost/gflops, mode: min}}]}}
        space:
          target.schedule: {{choice: [fixed, adaloss]}}
          optim.lr: {{choice: [1.0e-3, 3.0e-3]}}
        """,
    )
    sampler_obj = make_sampler(spec)
    study = optuna.create_study(sampler=sampler_obj, directions=["minimize", "minimize"])
    for _ in range(6):
        trial = study.ask()
        SpaceSampler(spec.space)(trial)
        study.tell(trial, [trial.params["optim.lr"], 1.0])
    again = pickle.loads(pickle.dumps(sampler_obj))
    trial = study.ask()
    assert set(again.infer_relative_search_space(study, trial)) == set(
        sampler_obj.infer_relative_search_space(study, trial)
    )
    study.sampler = again  # the unpickled sampler goes on sampling the same study
    for _ in range(4):
        trial = study.ask()
        SpaceSampler(spec.space)(trial)
        study.tell(trial, [trial.params["optim.lr"], 1.0])
    assert len(study.trials) == 11


def test_sampler_seed_reproduces_the_draws(tmp_path):
    text = "study: {name: s, seed: 7}\nspace:\n  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
    assert _ask_all(_spec(tmp_path, text), 5) == _ask_all(_spec(tmp_path, text), 5)


def test_short_studies_get_fewer_startup_trials_and_smaller_generations():
    assert [startup_trials(n) for n in (4, 8, 40, 400)] == [2, 2, 10, 10]
    assert [population_size(n) for n in (4, 40, 100, 1000)] == [4, 10, 25, 50]


def test_distribution_is_the_one_each_parameter_is_sampled_from(tmp_path):
    spec = _spec(
        tmp_path,
        """\
        study: {name: d}
        space:
          target.schedule: {choice: [fixed, adaloss]}
          optim.lr: {loguniform: [0.0001, 0.01]}
          loss.alpha: {uniform: [1.0, 3.0]}
          train.batch_size: {quniform: [2, 8, 2]}
          target.sigma: {quniform: [1.0, 3.0, 0.5]}
          train.epochs: {int: [1, 3]}
        """,
    )
    study = optuna.create_study()
    trial = study.ask()
    SpaceSampler(spec.space)(trial)
    assert set(trial.distributions) == set(spec.space)
    for path, p in spec.space.items():
        assert trial.distributions[path] == distribution(p), path
