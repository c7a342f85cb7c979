"""The trial config: one typed tree, dotted paths, and problems that name the path and the fix."""

import pytest

from trainables.config import (
    ConfigError,
    DataConfig,
    TrialConfig,
    apply_overrides,
    field_type,
    flatten,
    leaf_paths,
)
from trainables.data.phantom import PhantomConfig
from trainables.registry import config_problems


def _problems(d: dict, prefix: str = "") -> list[str]:
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_dict(d, prefix=prefix)
    return e.value.problems


# --- from_dict --------------------------------------------------------------------------


def test_empty_or_none_gives_the_defaults():
    for d in (None, {}):
        cfg = TrialConfig.from_dict(d)
        assert cfg == TrialConfig()
    cfg = TrialConfig.from_dict(None)
    assert (cfg.model.name, cfg.optim.lr, cfg.train.epochs, cfg.data.input_size) == ("unet", 1e-3, 10, (128, 104))
    assert cfg.data.phantom == PhantomConfig()


def test_nested_values_are_set_and_siblings_keep_defaults():
    cfg = TrialConfig.from_dict(
        {
            "optim": {"lr": 3e-4},
            "data": {"dataset": "phantom", "phantom": {"num_train": 5, "seed": 7}},
        }
    )
    assert cfg.optim.lr == 3e-4 and cfg.optim.name == "adam"  # sibling untouched
    assert cfg.data.phantom.num_train == 5 and cfg.data.phantom.seed == 7  # two levels down
    assert cfg.data.phantom.num_test1 == PhantomConfig().num_test1
    assert cfg.train == TrialConfig().train  # untouched section


def test_lists_become_tuples_at_every_depth():
    cfg = TrialConfig.from_dict({"data": {"input_size": [64, 48], "phantom": {"image_size": [96, 80]}}})
    assert cfg.data.input_size == (64, 48) and isinstance(cfg.data.input_size, tuple)
    assert cfg.data.phantom.image_size == (96, 80) and isinstance(cfg.data.phantom.image_size, tuple)


def test_tuple_fields_check_length_and_item_type():
    assert _problems({"data": {"input_size": [64]}}) == ["data.input_size: expected a list of 2 ints, got [64]"]
    # the item path is named, with its index
    assert _problems({"data": {"input_size": [64.0, 48]}}) == ["data.input_size[0]: expected int, got float 64.0"]
    assert _problems({"data": {"input_size": "64x48"}})[0].startswith("data.input_size: expected a list of 2")


def test_int_is_accepted_for_a_float_field_and_becomes_float():
    cfg = TrialConfig.from_dict({"optim": {"lr": 1}, "target": {"sigma": 2}})
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.target.sigma == 2.0 and type(cfg.target.sigma) is float


def test_bool_and_str_are_rejected_for_numbers():
    # YAML `yes`/`true` parses as bool, and bool is an int subclass in Python: it must not sneak in.
    assert _problems({"optim": {"lr": True}}) == ["optim.lr: expected float, got bool True"]
    assert _problems({"train": {"epochs": False}}) == ["train.epochs: expected int, got bool False"]
    assert _problems({"train": {"epochs": "3"}}) == ["train.epochs: expected int, got str '3'"]
    assert _problems({"optim": {"lr": "1e-3"}}) == ["optim.lr: expected float, got str '1e-3'"]
    assert _problems({"train": {"epochs": 2.5}}) == ["train.epochs: expected int, got float 2.5"]


def test_unknown_key_names_the_dotted_path_and_suggests():
    (p,) = _problems({"optim": {"lrr": 0.1}})
    assert p.startswith("optim.lrr: unknown key")
    assert "(did you mean 'lr'?)" in p
    assert "valid keys: name, lr, weight_decay" in p


def test_unknown_key_at_every_depth():
    (top,) = _problems({"modle": {}})
    assert top.startswith("modle: unknown key (did you mean 'model'?)")
    (deep,) = _problems({"data": {"phantom": {"seeed": 1}}})
    assert deep.startswith("data.phantom.seeed: unknown key (did you mean 'seed'?)")


def test_unknown_key_without_a_close_match_still_lists_valid_keys():
    (p,) = _problems({"optim": {"zzzz": 1}})
    assert "did you mean" not in p
    assert p == "optim.zzzz: unknown key; valid keys: name, lr, weight_decay"


def test_prefix_is_prepended_to_every_path():
    # The spec validator builds `base:` with prefix "base." so errors point into the YAML.
    (p,) = _problems({"optim": {"lrr": 1}}, prefix="base.")
    assert p.startswith("base.optim.lrr: unknown key")


def test_a_section_that_is_not_a_mapping():
    assert _problems({"optim": 3}) == ["optim: expected a mapping, got 3"]
    assert _problems([1, 2]) == ["config: expected a mapping, got [1, 2]"]


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_dict(
            {
                "optim": {"lrr": 1e-3, "lr": "fast"},
                "data": {"phantom": {"seeed": 1}, "input_size": [1]},
                "modle": {},
            }
        )
    ps = e.value.problems
    assert len(ps) == 5
    assert [p.split(":")[0] for p in ps] == ["optim.lrr", "optim.lr", "data.phantom.seeed", "data.input_size", "modle"]
    assert str(e.value) == "\n".join(ps)  # the exception text is the problems, one per line


# --- flatten / apply_overrides / field_type ------------------------------------------------


def test_flatten_gives_dotted_leaf_keys():
    flat = flatten(TrialConfig.from_dict({"optim": {"lr": 3e-4}}))
    assert flat["optim.lr"] == 3e-4
    assert flat["data.phantom.seed"] == 0
    assert flat["data.input_size"] == [128, 104]  # plain lists (MLflow params, YAML)
    assert set(flat) == set(leaf_paths())  # one vocabulary: every leaf, nothing else
    assert not any(isinstance(v, dict) for v in flat.values())


def test_flatten_of_a_plain_dict():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_apply_overrides_sets_dotted_paths_on_a_copy():
    d = {"optim": {"lr": 1e-3, "name": "adam"}, "train": {"epochs": 10}}
    out = apply_overrides(d, {"optim.lr": 0.5, "train.seed": 3, "model.name": "unet"})
    assert out == {
        "optim": {"lr": 0.5, "name": "adam"},
        "train": {"epochs": 10, "seed": 3},
        "model": {"name": "unet"},
    }  # missing sections are created
    assert d == {"optim": {"lr": 1e-3, "name": "adam"}, "train": {"epochs": 10}}  # input untouched
    out["optim"]["name"] = "sgd"
    assert d["optim"]["name"] == "adam"  # nested dicts are copies, not shared


def test_apply_overrides_does_not_share_lists_with_the_input():
    d = {"data": {"input_size": [128, 104]}}
    out = apply_overrides(d, {"optim.lr": 0.1})
    out["data"]["input_size"].append(8)
    assert d["data"]["input_size"] == [128, 104]


def test_apply_overrides_through_a_value_is_an_error():
    with pytest.raises(ConfigError) as e:
        apply_overrides({"optim": 3}, {"optim.lr": 0.1})
    assert e.value.problems == ["optim.lr: 'optim' is a value, not a section"]


def test_apply_overrides_then_from_dict_round_trips():
    base = TrialConfig().to_dict()
    cfg = TrialConfig.from_dict(apply_overrides(base, {"optim.lr": 0.02, "data.phantom.seed": 4}))
    assert cfg.optim.lr == 0.02 and cfg.data.phantom.seed == 4
    assert flatten(cfg) == {**flatten(TrialConfig()), "optim.lr": 0.02, "data.phantom.seed": 4}


def test_field_type_of_leaves_sections_and_missing_paths():
    assert field_type("optim.lr") is float
    assert field_type("train.epochs") is int
    assert field_type("model.name") is str
    assert field_type("data.phantom.seed") is int  # nested section
    assert field_type("data.input_size") == tuple[int, int]
    assert field_type("data") is None  # a section is not a leaf
    assert field_type("data.phantom") is None
    assert field_type("optim.nope") is None
    assert field_type("nope") is None
    assert field_type("optim.lr.extra") is None  # below a leaf
    assert field_type("root", DataConfig) is str  # another root


# --- config_problems ---------------------------------------------------------------------


def test_defaults_have_no_problems():
    assert config_problems(TrialConfig()) == []


def test_unknown_registry_name_lists_the_valid_names():
    from trainables.registry import OPTIMIZERS

    ps = config_problems(TrialConfig.from_dict({"optim": {"name": "adamm"}}))
    assert ps == [f"optim.name: unknown 'adamm'; choose one of {sorted(OPTIMIZERS)}"]
    assert "'adam'" in ps[0] and "'sgd'" in ps[0]
    (p,) = config_problems(TrialConfig.from_dict({"model": {"name": "nope"}}))
    assert p.startswith("model.name: unknown 'nope'; choose one of [") and "'unet'" in p


def test_input_size_must_be_multiples_of_8():
    (p,) = config_problems(TrialConfig.from_dict({"data": {"input_size": [100, 104]}}))
    assert p.startswith("data.input_size: [100, 104] must be positive multiples of 8")
    assert config_problems(TrialConfig.from_dict({"data": {"input_size": [96, 64]}})) == []
    (p,) = config_problems(TrialConfig.from_dict({"data": {"input_size": [0, 64]}}))
    assert p.startswith("data.input_size: [0, 64]")  # 0 is a multiple of 8 but not positive


def test_lr_must_be_positive():
    for lr in (0, -1e-3):
        assert config_problems(TrialConfig.from_dict({"optim": {"lr": lr}})) == [
            f"optim.lr: must be > 0, got {float(lr)}"
        ]


def test_speed_and_checkpoint_fields_say_what_is_allowed():
    def problems(**train):
        return config_problems(TrialConfig.from_dict({"train": train}))

    assert (
        problems(
            precision="bf16",
            channels_last=True,
            threads=2,
            checkpoint_every=10,
            checkpoint_metric="val/sdr_2mm",
            checkpoint_mode="max",
        )
        == []
    )
    assert problems(precision="fp8") == ["train.precision: unknown 'fp8'; choose one of ['bf16', 'fp16', 'fp32']"]
    assert problems(threads=-1) == ["train.threads: must be ≥ 0 (0 = the default), got -1"]
    assert problems(checkpoint_every=-2) == ["train.checkpoint_every: must be ≥ 0 (0 = the default), got -2"]
    assert problems(checkpoint_mode="lowest") == ["train.checkpoint_mode: expected min or max, got 'lowest'"]
    (p,) = problems(checkpoint_metric="val/mre")
    assert p.startswith("train.checkpoint_metric: 'val/mre' is not reported every epoch (did you mean 'val/mre_mm'?)")
    # test/* is reported once, after the last epoch: it cannot pick epochs to keep.
    (p,) = problems(checkpoint_metric="test/mre_mm")
    assert p.startswith("train.checkpoint_metric: 'test/mre_mm' is not reported every epoch")
    # Faces are scored in NME: no mm metric there.
    faces = TrialConfig.from_dict(
        {"data": {"dataset": "300w", "root": "/nonexistent"}, "train": {"checkpoint_metric": "val/mre_mm"}}
    )
    (p,) = [p for p in config_problems(faces) if p.path == "train.checkpoint_metric"]
    assert p.startswith("train.checkpoint_metric: 'val/mre_mm' is not reported every epoch")


def test_several_config_problems_are_listed_together():
    cfg = TrialConfig.from_dict({"model": {"name": "nope"}, "data": {"input_size": [100, 104]}, "optim": {"lr": 0}})
    assert [p.split(":")[0] for p in config_problems(cfg)] == ["model.name", "data.input_size", "optim.lr"]


def test_isbi2015_root_that_does_not_exist(tmp_path):
    missing = tmp_path / "no_such_isbi"
    (p,) = config_problems(TrialConfig.from_dict({"data": {"dataset": "isbi2015", "root": str(missing)}}))
    assert p.startswith("data.root: ") and str(missing) in p and "does not exist" in p


def test_isbi2015_root_must_be_given():
    (p,) = config_problems(TrialConfig.from_dict({"data": {"dataset": "isbi2015"}}))
    assert p.startswith("data.root: isbi2015 needs the dataset folder")


def test_isbi2015_root_without_the_layout(tmp_path):
    # An existing but empty folder: both top-level folders of the layout are named.
    ps = config_problems(TrialConfig.from_dict({"data": {"dataset": "isbi2015", "root": str(tmp_path)}}))
    assert len(ps) == 2 and all(p.startswith("data.root: ") for p in ps)
    assert "RawImage" in ps[0] and "AnnotationsByMD" in ps[1]
