import json
from dataclasses import replace

import pytest
import torch

from vivace.build import build_dataloaders, build_learner
from vivace.data import eval_batch_size
from vivace.recipe import PRESETS, RENAMED, Recipe, TrainOptions, for_device, load_recipe, make_recipe, resolve
from vivace.train import train


def test_defaults_validate():
    Recipe().validate()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains(name, tiny_folder, tmp_path):
    """Each preset's options (optimizer, schedule, activation, mixing, resizing) run end to end, and
    the run folder records what ran: the resolved recipe, its description, one log row per epoch."""
    preset = PRESETS[name]
    # A preset for thousands of images a batch (ImageNet's 4,096) takes its rate scaled to batch 8, as
    # the runbook tells a user on fewer GPUs (docs/distributed.md); at 1.7 the tiny run would diverge.
    lr = {"lr": preset.lr * 8 / preset.batch_size} if preset.batch_size >= 1024 else {}
    # A preset's budget is left out here (two epochs, whatever they take): test_budget runs one to its deadline.
    recipe = make_recipe(name, data=str(tiny_folder), size=32, presize=40, epochs=2, bs=8, valid_bs=12,
                         valid_size=40 if preset.valid_size_px else 0, budget_s=0.0, **lr)
    out = tmp_path / name
    summary = train(recipe, TrainOptions(preset=name, workers=1, out=str(out)))
    assert load_recipe(out / "config.json") == resolve(recipe, torch.device("cpu"))
    assert (out / "recipe.txt").read_text().startswith(f"# vivace recipe: preset {name};")
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert summary["epochs"] == 2 and len(rows) == 2 and summary["preset"] == name
    assert f"{summary['accuracy']:.6f}".rstrip("0") in rows[-1]  # the summary is the last epoch's


@pytest.mark.parametrize("field, value, message", [
    ("opt", "lamb", "optimizer='lamb' is not one of"),  # an old name: the message names the field
    ("epochs", 0, "epochs=0 must be >= 1"),
    ("label_smoothing", 1.0, "label_smoothing=1.0 must be in [0, 1)"),
    ("mixup_alpha", -0.1, "mixup_alpha=-0.1 must be >= 0"),
    ("stats", "mine", "stats='mine' must be imagenet, computed, auto, or statistics written mean/std"),
        ("stats", "1,2/0,1", "every std > 0"),
        ("freeze_epochs", 6, "freeze_epochs=6 must be <= epochs=5"),
    ("valid_size_px", 200, "valid_size_px=200 must be in [0, presize_px=160]"),
    ("valid_crop", -0.1, "valid_crop=-0.1 must be in [0, 1]"),
    ("max_aspect", 0.5, "max_aspect=0.5 must be in [1, 100]"),
    ("max_warp", 0.8, "max_warp=0.8 must be in [0, 0.5]"),  # the range TrainAugment checks too
    ("momentum", 1.0, "momentum=1.0 must be in [0, 1)"),
    ("mom", 1.0, "momentum=1.0 must be in [0, 1)"),
    ("lr", float("nan"), "lr=nan must be a finite number in (0, 10]"),
])
def test_validation_names_field_value_and_allowed(field, value, message):
    with pytest.raises(ValueError) as err:
        make_recipe(**{field: value})
    assert message in str(err.value)


def test_valid_size_sets_the_validation_crop_only(tiny_folder):
    dls = build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24, valid_size=24), workers=1)
    x, _ = next(iter(dls.valid))
    assert x.shape[-2:] == (24, 24) and dls.one_batch()[0].shape[-2:] == (16, 16)
    default = build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24), workers=1)
    assert default.valid.size == 16


def test_trivial_augment_reaches_the_training_transform_only(tiny_folder):
    dls = build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24, trivial_augment=True), workers=1)
    assert dls.train.transform.resize.trivial
    assert not hasattr(dls.valid.transform.resize, "trivial")
    plain = build_dataloaders(make_recipe(data=str(tiny_folder), size=16, presize=24), workers=1)
    assert not plain.train.transform.resize.trivial


def test_recipe_momentum_reaches_the_learner(tiny_folder, tmp_path):
    recipe = make_recipe(data=str(tiny_folder), size=16, presize=24, opt="ranger", mom=0.95)
    learn = build_learner(recipe, build_dataloaders(recipe, workers=1), tmp_path)
    assert (learn.optimizer, learn.momentum) == ("ranger", 0.95)


def test_every_field_describes_itself_and_literal_fields_give_the_cli_its_choices():
    import argparse
    import dataclasses

    from vivace.cli import add_recipe_flags
    from vivace.flags import literal_choices

    assert all(f.metadata["help"] for f in dataclasses.fields(Recipe))
    assert literal_choices(Recipe)["optimizer"] == ("sgd", "adamw", "ranger")
    assert literal_choices(Recipe)["data_on_device"] == ("auto", "on", "off")
    parser = argparse.ArgumentParser()
    add_recipe_flags(parser)
    actions = {a.dest: a for a in parser._actions}
    assert actions["amp"].choices == ("auto", "bf16", "fp16", "off") and actions["lr"].choices is None
    assert actions["optimizer"].help.startswith("adamw, sgd (Nesterov) or ranger")
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


@pytest.mark.slow
def test_train_records_the_batch_it_ran(tiny_folder, tmp_path):
    """config.json holds the resolved recipe (cuda_bs 0 on a CPU), so a resume repeats the same batch."""
    out = tmp_path / "run"
    train(make_recipe(data=str(tiny_folder), size=16, presize=24, epochs=1, bs=4, cuda_bs=64),
          TrainOptions(workers=1, out=str(out)))
    saved = load_recipe(out / "config.json")
    assert (saved.batch_size, saved.cuda_batch_size, saved.valid_batch_size) == (4, 0, 0)


# -- fields renamed to carry their units: the old names stay aliases ------------------------
OLD_NAMES = dict(bs=16, cuda_bs=64, valid_bs=32, wd=1e-3, mom=0.8, ema=0.99, mixup=0.2, cutmix=0.5, size=96,
                 presize=128, valid_size=112, max_rotate=5.0, opt="sgd")


def test_old_field_names_set_the_renamed_fields():
    # checkpoint_every: a run setting's old name; csv: fastai's name for the label table (`labels`);
    # budget: the flag as people write it (`--budget 10m`) for the field in seconds (`budget_s`)
    assert set(OLD_NAMES) | {"checkpoint_every", "csv", "budget"} == set(RENAMED)
    old = make_recipe(**OLD_NAMES)
    assert old == make_recipe(**{RENAMED[name]: value for name, value in OLD_NAMES.items()})
    assert (old.batch_size, old.size_px, old.max_rotate_deg, old.optimizer) == (16, 96, 5.0, "sgd")


def test_run_settings_are_not_recipe_fields():
    with pytest.raises(ValueError, match="out, workers: run settings, not recipe fields"):
        make_recipe(out="runs/x", workers=2)


def test_an_old_and_a_new_name_for_one_field_are_refused():
    with pytest.raises(ValueError, match="bs and batch_size name the same field"):
        make_recipe(bs=16, batch_size=32)


def test_a_run_saved_with_the_old_names_loads(tmp_path):
    """config.json as runs before the renames wrote it: every renamed field under its old name."""
    defaults = Recipe().to_dict()
    config = {k: v for k, v in defaults.items() if k not in RENAMED.values()}
    config |= {old: defaults[new] for old, new in RENAMED.items() if new in defaults} | {"bs": 24}
    # ... and the run settings the recipe held then, which never decided what was trained
    config |= {"out": "runs/x", "threads": 2, "preset": "quick", "overwrite": False, "checkpoint_every": 1.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_recipe(tmp_path / "config.json") == replace(Recipe(), batch_size=24)


@pytest.mark.parametrize("flag", ["--bs", "--batch-size"])
def test_old_and_new_flags_parse_to_one_field(flag):
    from vivace.cli import build_parser
    args = build_parser().parse_args(["train", flag, "24", "--size", "96", "--no-flip"])
    assert (args.batch_size, args.size_px, args.flip) == (24, 96, False)


# -- one Recipe that flows through unrenamed ----------------------------------------------------
def _parameters(function) -> set[str]:
    import inspect
    return set(inspect.signature(function).parameters)


def _consumers():
    """Each spec and the functions it configures (their keyword arguments carry its field names)."""
    from vivace.augment import AugmentSpec, TrainAugment
    from vivace.data import DataSpec, make_dataloaders
    from vivace.learner import Learner, StepSpec
    from vivace.losses import LossSpec, make_loss
    from vivace.metrics import MetricSpec, make_metrics
    from vivace.models import MODELS, ModelSpec, XResNet, create_model
    from vivace.optim import OptimizerSpec, make_optimizer
    from vivace.recipe import ScalingSpec, device_batch
    from vivace.schedule import ScheduleSpec
    from vivace.techniques import TechniqueSpec, technique_callbacks
    from vivace.transfer import InitSpec, start_from
    return {DataSpec: [make_dataloaders], AugmentSpec: [TrainAugment], InitSpec: [start_from],
            ModelSpec: [create_model, XResNet, *MODELS.values()],  # arch: create_model's; the rest: every model's
            OptimizerSpec: [Learner, make_optimizer], StepSpec: [Learner], ScheduleSpec: [Learner.fit_schedule],
            LossSpec: [make_loss], MetricSpec: [make_metrics], TechniqueSpec: [technique_callbacks],
            ScalingSpec: [device_batch]}


def test_every_spec_field_is_a_parameter_of_the_same_name_where_it_is_used():
    import dataclasses

    from vivace.models import xresnet18
    from vivace.recipe import SPECS
    consumers = _consumers()
    assert set(consumers) == set(SPECS)
    for spec, functions in consumers.items():
        for f in dataclasses.fields(spec):
            takers = [fn for fn in functions if f.name in _parameters(fn)]
            # A model builder takes the XResNet keywords through **kwargs: XResNet names them.
            assert takers or (f.name in _parameters(functions[1]) and "kwargs" in _parameters(xresnet18)), \
                f"{spec.__name__}.{f.name} is no parameter of {[fn.__name__ for fn in functions]}"
    spec_fields = [f.name for spec in SPECS for f in dataclasses.fields(spec)]
    assert len(spec_fields) == len(set(spec_fields))  # each field in one spec
    assert {f.name for f in dataclasses.fields(Recipe)} == {*spec_fields, "seed"}


def test_a_recipe_hands_each_function_its_spec(tiny_folder, tmp_path):
    """The values, not only the names, arrive: the learner, loss, model and loaders carry the recipe's."""
    from vivace.losses import LabelSmoothingCrossEntropy
    recipe = make_recipe(data=str(tiny_folder), arch="xresnet18", widen=0.25, size_px=16, presize_px=24,
                         batch_size=4, optimizer="sgd", weight_decay=1e-3, momentum=0.8, label_smoothing=0.2,
                         valid_every=2, max_warp=0.1, channels_last=False, ema_decay=0.9)
    learn = build_learner(recipe, build_dataloaders(recipe, workers=1), tmp_path)
    assert (learn.optimizer, learn.weight_decay, learn.momentum, learn.valid_every) == ("sgd", 1e-3, 0.8, 2)
    assert isinstance(learn.loss_func, LabelSmoothingCrossEntropy) and learn.loss_func.eps == 0.2
    assert learn.dls.train.transform.resize.max_warp == 0.1 and learn.dls.train.batch_size == 4
    assert [type(cb).__name__ for cb in learn.cbs].count("EMA") == 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_print_recipe_shows_each_preset_resolved_and_makes_nothing(name, tmp_path, capsys, monkeypatch):
    from vivace.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", name, "--epochs", "3", "--print-recipe"]) == 0
    text = capsys.readouterr().out
    preset = PRESETS[name]
    assert text.startswith(f"# vivace recipe: preset {name}; on cpu, 1 process")
    assert f'arch = "{preset.arch}"' in text and "epochs = 3\n" in text  # the preset, then the flag
    assert 'valid_view = "square"' in text or 'valid_view = "squash"' in text  # auto resolved
    assert f"valid_size_px = {preset.valid_size_px or preset.size_px}" in text
    assert list(tmp_path.iterdir()) == []  # no run folder, no cache


def _outside(f) -> str:
    """A value just outside field `f`'s range."""
    rng = f.metadata["range"]
    return str(rng.low - 1 if rng.high == float("inf") or rng.low > 0 or rng.low_open else rng.high + 1)


def test_every_out_of_range_value_fails_before_any_folder_or_cache(tmp_path, capsys, monkeypatch):
    import dataclasses

    from vivace.cli import main
    from vivace.flags import flag_name
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("VIVACE_HOME", str(home))
    ranged = [f for cls in (Recipe, TrainOptions) for f in dataclasses.fields(cls) if f.metadata.get("range")]
    assert len(ranged) > 25
    for f in ranged:
        value = _outside(f)
        assert main(["train", flag_name(f.name), value, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"{f.name}=" in err and str(f.metadata["range"]) in err, err
    assert not (tmp_path / "run").exists() and not home.exists()


def test_a_preset_on_paper_says_it_is_not_measured_and_what_it_aims_at(capsys):
    from vivace.cli import main
    assert main(["train", "--preset", "imagenet-rn50-16ep", "--print-recipe"]) == 0
    text = capsys.readouterr().out
    assert "# preset imagenet-rn50-16ep is not measured by vivace" in text and "73.8 % top-1 in 14.9 min" in text
    assert "progressive_start = 0.6875" in text and "batch_size = 4096" in text
    assert main(["train", "--preset", "quick", "--print-recipe"]) == 0
    assert "not measured" not in capsys.readouterr().out


def test_an_ema_takes_a_decay_or_a_half_life_not_both(tmp_path, capsys, monkeypatch):
    from vivace.cli import main
    with pytest.raises(ValueError, match="ema_decay=0.9 and ema_half_life=0.1: give one of them"):
        make_recipe(ema_decay=0.9, ema_half_life=0.1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--ema-decay", "0.9", "--ema-half-life", "0.1", "--out", "r"]) == 2
    assert "give one of them" in capsys.readouterr().err and list(tmp_path.iterdir()) == []  # before any folder


def test_a_size_ramp_must_start_before_it_ends():
    with pytest.raises(ValueError, match="progressive_start=0.8 must be below progressive_end=0.75"):
        make_recipe(progressive=0.5, progressive_start=0.8)
