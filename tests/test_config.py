from dataclasses import dataclass, field

import pytest

from hubbub.config import ConfigError, apply_overrides, from_dict, merge, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    name: str | None = None


def test_overrides_parse_yaml_values_and_round_trip():
    d = apply_overrides({}, ["inner.lr=3e-4", "inner.betas=[0.8, 0.9]", "steps=5", "name=run"])
    cfg = from_dict(Outer, d)
    assert cfg.inner.lr == 3e-4 and cfg.inner.betas == (0.8, 0.9) and cfg.steps == 5 and cfg.name == "run"
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, field_name", [
    ({"inner": {"lr": "fast"}}, "inner.lr"),
    ({"inner": {"betas": [1.0]}}, "inner.betas"),
    ({"steps": 1.5}, "steps"),
    ({"inner": {"nope": 1}}, "inner.nope"),
    ({"inner": 3}, "inner"),
])
def test_errors_name_the_field(data, field_name):
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, data)
    assert exc.value.field == field_name
    assert str(exc.value).startswith(field_name)


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    out = merge(base, {"a": {"c": 3}, "d": [2]})
    assert out == {"a": {"b": 1, "c": 3}, "d": [2]} and base["a"]["c"] == 2


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError):
        apply_overrides({}, ["inner.lr"])


@pytest.mark.parametrize("override", ["room.rt60_s=[nan,nan]", "duration.fixed_s=inf", "mixing.snr_db=[0,nan]",
                                      "mics.radius_m=nan", "splits.train=nan"])
def test_nan_and_inf_in_a_recipe_are_refused_naming_the_field(override):
    from hubbub.simulate import load_recipe

    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{field.split('.')[0]}.*finite"):
        load_recipe("whamr", [override])


@pytest.mark.parametrize("override", ["optim.lr=inf", "schedule.min_lr_ratio=nan"])
def test_nan_and_inf_in_a_training_config_are_refused(override):
    from hubbub.train import load_train_config

    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: must be a finite number"):
        load_train_config("pit_debug", [override])


def test_keeping_no_checkpoint_is_refused():
    from hubbub.train import load_train_config

    with pytest.raises(ConfigError, match="keep_checkpoints: must be >= 1"):
        load_train_config("pit_debug", ["keep_checkpoints=-1"])
