"""Start from a model (--init): every kind of source, the head kept or replaced, mismatches refused,
statistics inherited, and fastai's fine_tune: a frozen body, spread rates, the right phase on resume."""
from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import CLASSES, tiny_dataloaders, train_in_subprocess
from vivace.callbacks import Callback
from vivace.export import export_learner, read_bundle
from vivace.learner import BATCH_NORMS, Learner
from vivace.models import create_model, layer_groups, xresnet18
from vivace.normalize import format_stats, imagenet_stats, parse_stats
from vivace.recipe import TrainOptions, make_recipe, resolve
from vivace.runs import load_run
from vivace.train import train
from vivace.transfer import inherited_stats, read_source, start_from

SOURCE_STATS = "0.5,0.4,0.3/0.25,0.2,0.15"  # not ImageNet's, so inheriting them shows
TINY_RECIPE = dict(arch="xresnet18", widen=0.25, size_px=16, presize_px=24, batch_size=4, valid_batch_size=8,
                   lr=1e-2, epochs=1)


def small_model(n_out: int = 3, seed: int = 1, widen: float = 0.25) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("xresnet18", n_out=n_out, widen=widen)


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_folder) -> dict[str, Path]:
    """A tiny trained run (statistics given, not ImageNet's), its bundle, and its weights as plain files."""
    root = tmp_path_factory.mktemp("source")
    run = root / "run"
    train(make_recipe(data=str(tiny_folder), stats=SOURCE_STATS, **TINY_RECIPE), TrainOptions(workers=1, out=str(run)))
    learn = load_run(run)
    state = {k: v.contiguous() for k, v in learn.model.state_dict().items()}
    paths = {"run": run, "bundle": export_learner(learn, root / "model.vivace"), "checkpoint": run / "last.safetensors",
             "safetensors": root / "weights.safetensors", "pt": root / "weights.pt", "pth": root / "wrapped.pth"}
    save_file(state, str(paths["safetensors"]))
    torch.save(state, paths["pt"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, paths["pth"])  # DDP-style
    return paths


def source_weights(source) -> dict[str, torch.Tensor]:
    return read_bundle(source["bundle"])[1]


@pytest.mark.parametrize("kind, described", [
    ("run", "xresnet18, 3 classes"), ("bundle", "xresnet18, 3 classes"), ("checkpoint", "xresnet18, 3 classes"),
    ("safetensors", "state dict, 3 outputs"), ("pt", "state dict, 3 outputs"), ("pth", "state dict, 3 outputs")])
def test_every_kind_of_source_gives_the_same_weights(source, kind, described):
    model = small_model()
    note = start_from(model, str(source[kind]), "final", CLASSES_SORTED)
    assert note.startswith(f"init: {source[kind]} ({described}) -> head kept") and note.endswith(", 3 classes")
    expected = source_weights(source)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


CLASSES_SORTED = sorted(CLASSES)  # a folder source's vocabulary: blue, green, red


def test_best_weights_of_a_run_are_its_best_checkpoint(source):
    assert read_source(source["run"], "best").path == source["run"] / "best.safetensors"
    assert read_source(source["run"]).path == source["run"] / "last.safetensors"


def test_another_vocabulary_replaces_the_head_and_keeps_the_body(source):
    model = small_model(n_out=5)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("11.")}
    note = start_from(model, str(source["bundle"]), "final", ["a", "b", "c", "d", "e"])
    assert note == f"init: {source['bundle']} (xresnet18, 3 classes) -> head replaced, 5 classes"
    expected = source_weights(source)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fresh_head.items())  # as initialised
    assert all(torch.equal(v, expected[k]) for k, v in state.items() if not k.startswith("11."))


def test_the_same_classes_in_another_order_keep_the_head_rows_by_name(source, tiny_folder, tmp_path):
    learn = load_run(source["run"])
    learn.dls.vocab = ["red", "blue", "green"]  # the source's outputs in this order
    bundle = export_learner(learn, tmp_path / "reordered.vivace")
    model = small_model()
    note = start_from(model, str(bundle), "final", CLASSES_SORTED)  # blue, green, red
    assert "head kept (same classes, rows reordered by name)" in note
    weight = learn.model.state_dict()["11.weight"]
    torch.testing.assert_close(model.state_dict()["11.weight"], weight[[1, 2, 0]], rtol=0, atol=0)


def test_a_state_dict_with_another_number_of_outputs_gets_a_new_head(source):
    note = start_from(small_model(n_out=4), str(source["pt"]), "final", ["a", "b", "c", "d"])
    assert note.endswith("-> head replaced, 4 classes")


def test_another_architecture_is_refused_naming_the_first_tensors(source):
    with pytest.raises(ValueError) as err:
        start_from(small_model(widen=0.5), str(source["bundle"]), "final", CLASSES_SORTED)
    message = str(err.value)
    assert "does not fit this xresnet18" in message and "first: " in message and "--arch" in message
    assert "0.0.weight is (32, 3, 3, 3) in the file" not in message  # the stem does not widen
    assert "4.0.convpath.0.0.weight is (16, 64, 3, 3) in the file, (32, 64, 3, 3) in the model" in message
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"does not fit this xresnet34: \d+ tensors differ, first: missing 4\.2\."):
        start_from(create_model("xresnet34", n_out=3, widen=0.25), str(source["bundle"]), "final", CLASSES_SORTED)


class NotATensor:
    pass


def test_pickled_objects_are_refused_and_never_run(source, tmp_path):
    state = torch.load(source["pt"], weights_only=True)
    cases = {"objects.pt": {"model": state, "config": NotATensor()}, "module.pt": small_model()}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match="pickled Python objects besides tensors"):
            start_from(small_model(), str(tmp_path / name), "final", CLASSES_SORTED)


def test_unreadable_and_missing_sources_say_what_to_pass(tmp_path, source):
    (tmp_path / "junk.pt").write_bytes(b"not weights at all")
    with pytest.raises(ValueError, match="is not a PyTorch or safetensors weights file"):
        start_from(small_model(), str(tmp_path / "junk.pt"), "final", CLASSES_SORTED)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        start_from(small_model(), str(tmp_path / "junk.safetensors"), "final", CLASSES_SORTED)
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        start_from(small_model(), str(tmp_path / "no_tensors.pt"), "final", CLASSES_SORTED)
    with pytest.raises(FileNotFoundError, match="no such file or folder; pass an export bundle, a run folder"):
        read_source(tmp_path / "nowhere")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(source["run"] / "config.json", unfinished)
    with pytest.raises(FileNotFoundError, match=r"no last.safetensors \(final weights\): it has not finished an epoch"):
        read_source(unfinished)


def test_statistics_come_from_the_source_unless_given(source):
    cpu = torch.device("cpu")
    for kind in ("run", "bundle", "checkpoint"):
        assert resolve(make_recipe(init=str(source[kind])), cpu).stats == format_stats(*parse_stats(SOURCE_STATS))
    assert inherited_stats(str(source["safetensors"])) == format_stats(*imagenet_stats)  # a file names none
    assert resolve(make_recipe(init=str(source["bundle"]), stats="imagenet"), cpu).stats == "imagenet"
    assert resolve(make_recipe(), cpu).stats == "imagenet"
    resolved = resolve(make_recipe(init=str(source["bundle"]), freeze_epochs=1), cpu)
    assert resolved.init == str(source["bundle"].resolve()) and resolved.schedule == "fine_tune"


# -- fine_tune -----------------------------------------------------------------------------------
class Snapshots(Callback):
    """Keeps the weights after each epoch and each batch's (epoch, lr of every optimizer group)."""

    def __init__(self):
        self.weights, self.lrs = [], []

    def after_batch(self, learn):
        self.lrs.append((learn.state.epoch, [g["lr"] for g in learn.opt.param_groups]))

    def after_epoch(self, learn):
        self.weights.append({k: v.clone() for k, v in learn.model.named_parameters()})


def batch_norm_names(model: nn.Module) -> set[str]:
    return {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, BATCH_NORMS)
            for p, _ in m.named_parameters(recurse=False)}


def test_fine_tune_freezes_the_body_but_batchnorm_then_spreads_the_rates(tiny_folder):
    dls = tiny_dataloaders(tiny_folder)
    model = small_model()
    start = {k: v.clone() for k, v in model.named_parameters()}
    spy = Snapshots()
    learn = Learner(dls, model, optimizer="adamw", splitter=layer_groups, cbs=[spy])
    learn.fine_tune(1, base_lr=1e-2, freeze_epochs=1, lr_mult=100)
    head, bns = {n for n, _ in model.named_parameters() if n.startswith("11.")}, batch_norm_names(model)
    frozen, unfrozen = spy.weights
    for name, value in frozen.items():
        moved = not torch.equal(value, start[name])
        assert moved == (name in head or name in bns), name  # the body waits; the head and BatchNorm train
    assert any(not torch.equal(unfrozen[n], frozen[n]) for n in frozen if n not in head | bns)  # then it trains
    for epoch, mults in ((0, [0.1, 0.1, 1.0]), (1, [0.01, 0.1, 1.0])):  # slice(lr), then slice(lr/100, lr)
        for _, lrs in (row for row in spy.lrs if row[0] == epoch):
            head_lr = lrs[-1]
            assert lrs == pytest.approx([head_lr * m for m in mults for _ in range(2)])
    peak_unfrozen = max(lrs[-1] for epoch, lrs in spy.lrs if epoch == 1)
    assert peak_unfrozen == pytest.approx(1e-2 / 2, rel=0.05)  # fastai halves the base rate after unfreezing
    assert all(p.requires_grad for p in model.parameters())


def test_without_a_splitter_fine_tune_freezes_nothing_as_fastai(tiny_folder):
    learn = Learner(tiny_dataloaders(tiny_folder), small_model())
    learn.freeze()
    assert all(p.requires_grad for p in learn.model.parameters()) and len(learn.layer_groups()) == 1


def test_a_learning_rate_slice_spreads_over_the_layer_groups(tiny_folder):
    learn = Learner(tiny_dataloaders(tiny_folder), small_model(), splitter=layer_groups)
    learn.fit(1, slice(1e-5, 1e-3))
    assert [g["lr"] for g in learn.opt.param_groups] == pytest.approx([1e-5, 1e-5, 1e-4, 1e-4, 1e-3, 1e-3])


def test_train_from_a_run_records_where_it_started_and_exports_its_statistics(source, tiny_folder, tmp_path, capsys):
    out = tmp_path / "tuned"
    recipe = make_recipe(data=str(tiny_folder), init=str(source["run"]), **{**TINY_RECIPE, "epochs": 2},
                         freeze_epochs=1)
    train(recipe, TrainOptions(workers=1, out=str(out)))
    printed = capsys.readouterr().out
    assert f"init: {source['run'].resolve()} (xresnet18, 3 classes) -> head kept (same classes), 3 classes" in printed
    saved = load_run(out)
    config = (out / "config.json").read_text()
    assert f'"init": "{source["run"].resolve()}"' in config and '"schedule": "fine_tune"' in config
    recipe_txt = (out / "recipe.txt").read_text()
    assert "fine_tune: parameter groups stem, body, head" in recipe_txt and "epoch 1, frozen" in recipe_txt
    info, _ = read_bundle(export_learner(saved, tmp_path / "tuned.vivace"))
    mean, std = parse_stats(SOURCE_STATS)
    assert info["normalize"] == {"mean": mean, "std": std}  # predicts as it trained


# -- the book ------------------------------------------------------------------------------------
def test_vision_learner_from_pretrained_weights_freezes_saves_and_loads(source, tiny_folder, tmp_path, capsys):
    from vivace.book import cnn_learner, vision_learner
    dls = tiny_dataloaders(tiny_folder, normalize=False)
    learn = vision_learner(dls, partial(xresnet18, widen=0.25), pretrained=source["bundle"], path=tmp_path)
    assert "head kept (same classes)" in capsys.readouterr().out
    assert dls.normalize is not None and dls.normalize.mean == parse_stats(SOURCE_STATS)[0]  # fastai adds them
    body_params = [p for _, part in learn.layer_groups()[:-1] for m in part.modules()
                   if not isinstance(m, BATCH_NORMS) for p in m.parameters(recurse=False)]
    assert not any(p.requires_grad for p in body_params)  # frozen, as fastai's vision_learner
    learn.unfreeze()
    assert all(p.requires_grad for p in body_params)
    learn.fine_tune(1, 1e-3, freeze_epochs=1)  # fastai's: 1 frozen epoch, then 1
    assert len(learn.recorder.rows) == 2
    saved = learn.save("stage1")
    assert saved == tmp_path / "models" / "stage1.safetensors"
    assert read_source(saved).vocab == dls.vocab and read_source(saved).stats == parse_stats(SOURCE_STATS)
    other = cnn_learner(dls, partial(xresnet18, widen=0.25), path=tmp_path)
    assert other.load("stage1") is other
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), learn.model.state_dict().values()))
    with pytest.raises(ValueError, match="downloads no pretrained weights"):
        vision_learner(dls, "xresnet18", pretrained=True)


# -- resume and torchrun -------------------------------------------------------------------------
def run_fine_tune(folder: Path, init: Path, out: Path, kill_at=None, resume: bool = False, every: float = 0.0):
    """A 3-epoch fine-tune (1 frozen) in a fresh process; optionally SIGKILLed after (epoch, batch)."""
    recipe = {**TINY_RECIPE, "epochs": 3, "freeze_epochs": 1, "data": str(folder), "init": str(init)}
    options = {"workers": 1, "out": str(out), "resume": resume, "checkpoint_every_min": every}
    return train_in_subprocess(recipe, options, kill_at)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, every", [((0, 3), 1e-9), ((1, 1), 0.0)], ids=["in-the-frozen-epoch",
                                                                                 "after-unfreezing"])
def test_a_resumed_fine_tune_resumes_in_its_phase(source, tiny_folder, tmp_path, kill_at, every):
    full = run_fine_tune(tiny_folder, source["run"], tmp_path / "full")
    assert full.returncode == 0, full.stderr
    killed = run_fine_tune(tiny_folder, source["run"], tmp_path / "cut", kill_at=kill_at, every=every)
    assert killed.returncode == -9
    resumed = run_fine_tune(tiny_folder, source["run"], tmp_path / "cut", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "init:" not in resumed.stdout  # the weights come from the checkpoint
    a, b = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("full", "cut"))
    assert (a["accuracy"], a["valid_loss"]) == (b["accuracy"], b["valid_loss"])
    strip_time = lambda run: [line.rsplit(",", 1)[0] for line in (tmp_path / run / "log.csv").read_text().splitlines()]
    assert strip_time("full") == strip_time("cut") and len(strip_time("full")) == 4


@pytest.mark.slow
def test_cli_fine_tunes_a_run_on_other_classes_then_exports_and_predicts(source, wordnet_folder, tmp_path, capsys):
    from vivace.cli import main
    tiny = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--bs", "4", "--workers", "1"]
    out = tmp_path / "tuned"
    args = ["train", "--data", str(wordnet_folder), "--init", str(source["run"]), "--init-weights", "best",
            "--freeze-epochs", "1", "--epochs", "2", "--lr-mult", "10", "--out", str(out), *tiny]
    assert main([*args, "--print-recipe"]) == 0
    printed = capsys.readouterr().out
    assert f'init = "{source["run"].resolve()}"' in printed and 'schedule = "fine_tune"  # asked: "one_cycle"' in printed
    assert "epoch 2, unfrozen (optimizer started afresh): peak lr stem 0.00015, body 0.000474, head 0.0015" in printed
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"init: {source['run'].resolve()} (xresnet18, 3 classes) -> head replaced, 3 classes" in printed
    assert "fine_tune: parameter groups" in (out / "report.html").read_text()
    bundle = tmp_path / "tuned.vivace"
    assert main(["export", str(out), "-o", str(bundle)]) == 0
    image = next((wordnet_folder / "val").glob("*/*.png"))
    assert main(["predict", str(bundle), str(image)]) == 0
    assert any(wnid in capsys.readouterr().out for wnid in ("n01440764", "n02102040", "n02979186", "tench"))


def test_a_body_without_a_head_loads_and_gets_a_new_head(source, tmp_path):
    body = {k: v for k, v in torch.load(source["pt"], weights_only=True).items() if not k.startswith("11.")}
    save_file(body, str(tmp_path / "body.safetensors"))
    note = start_from(small_model(), str(tmp_path / "body.safetensors"), "final", CLASSES_SORTED)
    assert note.endswith("-> head new (the file has none), 3 classes")


def test_a_run_to_resume_does_not_need_its_source_any_more(source, tiny_folder, tmp_path):
    from vivace.runs import check_before_start
    out = tmp_path / "tuned"
    out.mkdir()
    shutil.copy(source["run"] / "last.safetensors", out)  # as if it had trained an epoch, then lost its source
    recipe = make_recipe(data=str(tiny_folder), init=str(tmp_path / "moved-away"), **TINY_RECIPE)
    check_before_start(recipe, out, resume=True)  # its weights are in its checkpoint
    with pytest.raises(FileNotFoundError, match="moved-away: no such file or folder"):
        check_before_start(recipe, tmp_path / "new")


def test_a_source_that_does_not_fit_stops_the_run_before_its_folder_exists(source, tiny_folder, tmp_path):
    from vivace.runs import check_before_start
    (tmp_path / "junk.pt").write_text("junk\n")  # torch.load raises a KeyError on this one
    for init, error in ((source["bundle"], "does not fit this xresnet18"), (tmp_path / "junk.pt", "KeyError")):
        recipe = make_recipe(data=str(tiny_folder), init=str(init), **{**TINY_RECIPE, "widen": 0.5})
        with pytest.raises(ValueError, match=error):
            check_before_start(recipe, tmp_path / "never")
        assert not (tmp_path / "never").exists()
