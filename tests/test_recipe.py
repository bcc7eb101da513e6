import json
from dataclasses import replace

import pytest
import torch

from vivace.recipe import PRESETS, RENAMED, Recipe, for_device, load_recipe, make_recipe
from vivace.train import eval_batch_size, train


def test_defaults_validate():
    Recipe().validate()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains(name, tiny_folder, tmp_path):
    """Each preset's options (optimizer, schedule, activation, mixing, resizing) run end to end."""
    recipe = make_recipe(name, data=str(tiny_folder), size=32, presize=40, epochs=2, bs=8, valid_bs=12,
                         workers=1, out=str(tmp_path / name),
                         valid_size=40 if PRESETS[name].valid_size_px else 0)
    assert recipe.preset == name
    summary = train(recipe)
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["epochs"] == 2


@pytest.mark.parametrize("field, value, message", [
    ("opt", "lamb", "opt='lamb' is not one of"),
    ("epochs", 0, "epochs=0 must be >= 1"),
    ("label_smoothing", 1.0, "label_smoothing=1.0 must be in [0.0, 1.0)"),
    ("mixup_alpha", -0.1, "mixup_alpha=-0.1 must be >= 0"),
    ("stats", "mine", "stats='mine' is not one of"),
    ("valid_size_px", 200, "valid_size_px=200 must be in [0, presize_px=160]"),
    ("valid_crop", -0.1, "valid_crop=-0.1 must be in [0.0, 1.0]"),
    ("max_aspect", 0.5, "max_aspect=0.5 must be in [1.0, 100.0]"),
    ("momentum", 1.0, "momentum=1.0 must be in [0.0, 1.0)"),
    ("mom", 1.0, "momentum=1.0 must be in [0.0, 1.0)"),  # an old name: the message names the field
    ("lr", float("nan"), "lr=nan must be a finite number in (0.0, 10.0]"),
])
def test_validation_names_field_value_and_allowed(field, value, message):
    with pytest.raises(ValueError) as err:
        make_recipe(**{field: value})
    assert message in str(err.value)


def test_valid_size_sets_the_validation_crop_only(tiny_folder):
    from vivace.train import build_dataloaders
    dls = build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24, valid_size=24, workers=1))
    x, _ = next(iter(dls.valid))
    assert x.shape[-2:] == (24, 24) and dls.one_batch()[0].shape[-2:] == (16, 16)
    default = build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24, workers=1))
    assert default.valid.size == 16


def test_trivial_augment_reaches_the_training_transform_only(tiny_folder):
    from vivace.train import build_dataloaders
    dls = build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24, workers=1, trivial_augment=True))
    assert dls.train.transform.resize.trivial
    assert not hasattr(dls.valid.transform.resize, "trivial")
    assert not build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24, workers=1)).train.transform.resize.trivial


def test_recipe_mom_reaches_the_learner(tiny_folder, tmp_path):
    from vivace.train import build_dataloaders, build_learner
    recipe = make_recipe(data=str(tiny_folder), size=16, presize=24, workers=1, opt="ranger", mom=0.95)
    assert build_learner(recipe, build_dataloaders(recipe), tmp_path).mom == 0.95


def test_every_field_describes_itself_and_literal_fields_give_the_cli_its_choices():
    import argparse
    import dataclasses

    from vivace.cli import add_recipe_flags
    from vivace.flags import literal_choices

    assert all(f.metadata["help"] for f in dataclasses.fields(Recipe))
    assert literal_choices(Recipe)["opt"] == ("sgd", "adamw", "ranger")
    assert literal_choices(Recipe)["data_on_device"] == ("auto", "on", "off")
    parser = argparse.ArgumentParser()
    add_recipe_flags(parser)
    actions = {a.dest: a for a in parser._actions}
    assert actions["amp"].choices == ("auto", "bf16", "fp16", "off") and actions["lr"].choices is None
    assert actions["opt"].help.startswith("adamw, sgd (Nesterov) or ranger")
    with pytest.raises(SystemExit):
        parser.parse_args(["--opt", "adam"])


CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("opt, lr_scaling, expected_lr", [
    ("ranger", "auto", 8e-3 * 2),  # sqrt of 4x the batch
    ("adamw", "sqrt", 8e-3 * 2),
    ("sgd", "auto", 8e-3 * 4),  # linear
    ("ranger", "linear", 8e-3 * 4),
    ("sgd", "off", 8e-3),
])
def test_cuda_batch_scales_the_learning_rate(opt, lr_scaling, expected_lr):
    recipe = make_recipe(opt=opt, cuda_batch_size=128, lr_scaling=lr_scaling)
    recipe = replace(recipe, batch_size=32, lr=8e-3)
    on_gpu = for_device(recipe, CUDA)
    assert (on_gpu.batch_size, on_gpu.cuda_batch_size) == (128, 0) and on_gpu.lr == pytest.approx(expected_lr)
    assert for_device(on_gpu, CUDA) == on_gpu  # resolved once: a resumed run does not scale again


def test_cpu_and_explicit_bs_keep_the_batch(monkeypatch):
    recipe = replace(make_recipe(), batch_size=32, lr=8e-3, cuda_batch_size=128)
    on_cpu = for_device(recipe, CPU)
    assert (on_cpu.batch_size, on_cpu.lr, on_cpu.cuda_batch_size) == (32, 8e-3, 0)
    monkeypatch.setitem(PRESETS, "gpu", Recipe(batch_size=32, cuda_batch_size=128))
    assert for_device(make_recipe("gpu"), CUDA).batch_size == 128
    explicit = make_recipe("gpu", batch_size=48)  # --batch-size is the batch on every device
    assert for_device(explicit, CUDA).batch_size == 48 and for_device(explicit, CUDA).lr == explicit.lr


def test_evaluation_batch_defaults_per_device():
    assert eval_batch_size(32, CPU) == 128 and eval_batch_size(256, CPU) == 128
    assert eval_batch_size(32, CUDA) == 128 and eval_batch_size(256, CUDA) == 512


def test_train_records_the_batch_it_ran(tiny_folder, tmp_path):
    """config.json holds the resolved recipe (cuda_bs 0 on a CPU), so a resume repeats the same batch."""
    out = tmp_path / "run"
    train(make_recipe(data=str(tiny_folder), size=16, presize=24, epochs=1, bs=4, workers=1, cuda_bs=64,
                      out=str(out)))
    saved = load_recipe(out / "config.json")
    assert (saved.batch_size, saved.cuda_batch_size, saved.valid_batch_size) == (4, 0, 0)


# -- fields renamed to carry their units: the old names stay aliases ------------------------
OLD_NAMES = dict(bs=16, cuda_bs=64, valid_bs=32, wd=1e-3, mom=0.8, ema=0.99, mixup=0.2, cutmix=0.5, size=96,
                 presize=128, valid_size=112, max_rotate=5.0, checkpoint_every=2.0)


def test_old_field_names_set_the_renamed_fields():
    assert set(OLD_NAMES) == set(RENAMED)
    old = make_recipe(**OLD_NAMES)
    assert old == make_recipe(**{RENAMED[name]: value for name, value in OLD_NAMES.items()})
    assert (old.batch_size, old.size_px, old.max_rotate_deg, old.checkpoint_every_min) == (16, 96, 5.0, 2.0)


def test_an_old_and_a_new_name_for_one_field_are_refused():
    with pytest.raises(ValueError, match="bs and batch_size name the same field"):
        make_recipe(bs=16, batch_size=32)


def test_a_run_saved_with_the_old_names_loads(tmp_path):
    """config.json as runs before the renames wrote it: every renamed field under its old name."""
    defaults = Recipe().to_dict()
    config = {k: v for k, v in defaults.items() if k not in RENAMED.values()}
    config |= {old: defaults[new] for old, new in RENAMED.items()} | {"bs": 24}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_recipe(tmp_path / "config.json") == replace(Recipe(), batch_size=24)


@pytest.mark.parametrize("flag", ["--bs", "--batch-size"])
def test_old_and_new_flags_parse_to_one_field(flag):
    from vivace.cli import build_parser
    args = build_parser().parse_args(["train", flag, "24", "--size", "96", "--no-flip"])
    assert (args.batch_size, args.size_px, args.flip) == (24, 96, False)
