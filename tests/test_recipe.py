import pytest

from vivace.recipe import PRESETS, Recipe, make_recipe
from vivace.train import train


def test_defaults_validate():
    Recipe().validate()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains(name, tiny_folder, tmp_path):
    """Each preset's options (optimizer, schedule, activation, mixing, resizing) run end to end."""
    recipe = make_recipe(name, data=str(tiny_folder), size=32, presize=32, epochs=2, bs=8, valid_bs=12,
                         workers=1, out=str(tmp_path / name))
    assert recipe.preset == name
    summary = train(recipe)
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["epochs"] == 2


@pytest.mark.parametrize("field, value, message", [
    ("opt", "lamb", "opt='lamb' is not one of"),
    ("epochs", 0, "epochs=0 must be >= 1"),
    ("label_smoothing", 1.0, "label_smoothing=1.0 must be in [0.0, 1.0)"),
    ("mixup", -0.1, "mixup=-0.1 must be >= 0"),
    ("stats", "mine", "stats='mine' is not one of"),
])
def test_validation_names_field_value_and_allowed(field, value, message):
    with pytest.raises(ValueError) as err:
        make_recipe(**{field: value})
    assert message in str(err.value)
