import pytest

from hubbub.cli import main
from hubbub.config import ConfigError
from hubbub.simulate.recipe import load_recipe, preset_names


def test_presets_cover_the_known_protocols():
    assert {"anechoic_2spk", "whamr", "librimix", "sparse", "smswsj", "debug"} <= set(preset_names())
    for name in preset_names():
        r = load_recipe(name)
        assert r.name == name
    assert load_recipe("smswsj").mics.count == 6
    assert load_recipe("sparse").speakers.distribution == {2: 0.5, 3: 0.5}  # inherited from librimix, changed
    assert load_recipe("sparse").sample_rate_hz == 16000


def test_content_hash_ignores_sharding_but_not_acoustics():
    a = load_recipe("whamr")
    assert a.content_hash() == load_recipe("whamr", ["samples_per_shard=7"]).content_hash()
    assert a.content_hash() != load_recipe("whamr", ["room.rt60_s=[0.2, 0.3]"]).content_hash()


@pytest.mark.parametrize("override, field_name", [
    ("room.rt60_s=[0.9, 0.3]", "room.rt60_s"),
    ("mics.count=3", "mics.count"),
    ("sample_rate_hz=12345", "sample_rate_hz"),
    ("room.colour=blue", "room.colour"),
    ("noise.kind=folder", "noise.folder"),
    ("targets=[mix, dry]", "targets"),
    ("speakers.distribution={9: 1.0}", "speakers.distribution.9"),
    ("mixing.snr_db=loud", "mixing.snr_db"),
])
def test_bad_recipes_fail_with_the_field_named(override, field_name):
    with pytest.raises(ConfigError) as exc:
        load_recipe("whamr", [override])
    assert exc.value.field == field_name


def test_cli_rejects_a_bad_recipe_before_any_work(tmp_path, capsys):
    out = tmp_path / "corpus"
    code = main(["simulate", "--recipe", "whamr", "--num", "4", "--out", str(out), "--set", "room.rt60_s=[2, 1]"])
    assert code == 2
    assert "room.rt60_s" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_recipe_lists_the_presets():
    with pytest.raises(ConfigError, match="whamr"):
        load_recipe("no-such-recipe")
