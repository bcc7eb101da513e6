import dataclasses
import json
import pickle
import re

import pytest
from conftest import trained_tiny_learner
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vivace
from vivace.checkpoint import save_checkpoint
from vivace.export import FORMAT, VERSION, export_learner, load, read_bundle
from vivace.learner import Learner
from vivace.models import create_model
from vivace.models.xresnet import XResNet


@pytest.fixture(scope="module")
def learn(tiny_folder):
    return trained_tiny_learner(tiny_folder, valid_bs=8)


@pytest.fixture(scope="module")
def bundle(learn, tmp_path_factory):
    return export_learner(learn, tmp_path_factory.mktemp("bundle") / "tiny.vivace")


def _header_len(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")  # safetensors: u64 header size, JSON header, payload


def test_round_trip_predicts_exactly_like_the_learner(learn, bundle):
    predictor = vivace.load(bundle, device="cpu")
    logits, targets = learn.get_preds()
    preds = predictor.predict(learn.dls.source.valid_files)
    probs = torch.stack([p.probs for p in preds])
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)
    assert [p.index for p in preds] == logits.argmax(-1).tolist()


@pytest.mark.parametrize("square", [False, True])
def test_round_trip_keeps_the_validation_centre_crop(learn, tmp_path, square):
    resize = learn.dls.valid.transform.resize
    full_logits, _ = learn.get_preds()
    resize.crop, resize.square = 0.75, square
    try:
        logits, _ = learn.get_preds()
        predictor = load(export_learner(learn, tmp_path / "crop.vivace"), device="cpu")
    finally:
        resize.crop, resize.square = 1.0, False
    assert not torch.allclose(logits, full_logits)  # the crop matters on these images
    assert predictor.view.square == square
    probs = torch.stack([p.probs for p in predictor.predict(learn.dls.source.valid_files)])
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)


def test_bundle_carries_preprocessing(learn, bundle):
    predictor = load(bundle, device="cpu")
    assert predictor.vocab == learn.dls.vocab == ["blue", "green", "red"]
    assert (predictor.size, predictor.view.presize) == (16, 24)
    assert predictor.view.normalize.as_dict() == learn.dls.normalize.as_dict()
    assert predictor.view.bundle_fields() == learn.dls.eval_view.bundle_fields()  # one value, both ends
    assert predictor.tta == "none" and not predictor.model.training


def test_predictions_depend_on_the_stored_statistics(learn, bundle):
    predictor = load(bundle, device="cpu")
    files = learn.dls.source.valid_files[:4]
    with_stats = torch.stack([p.probs for p in predictor.predict(files)])
    predictor.view = dataclasses.replace(predictor.view, normalize=None)
    without = torch.stack([p.probs for p in predictor.predict(files)])
    assert not torch.allclose(with_stats, without, atol=1e-3)


def test_bundle_is_plain_safetensors(bundle):
    with safe_open(str(bundle), framework="pt") as f:
        meta = f.metadata()
        assert any(k.endswith("weight") for k in f.keys())
    assert meta["format"] == FORMAT and meta["version"] == str(VERSION) and len(meta["sha256"]) == 64
    info = json.loads(meta["info"])
    assert info["config"]["layers"] == [2, 2, 2, 2] and info["config"]["widen"] == 0.25
    assert info["normalize"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert (info["size"], info["presize"], info["tta"]) == (16, 24, "none")


def test_loading_never_unpickles(bundle, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load(bundle, device="cpu").vocab == ["blue", "green", "red"]


def test_flipped_payload_byte_is_refused(bundle, tmp_path):
    data = bytearray(bundle.read_bytes())
    start = 8 + _header_len(data)
    data[start + (len(data) - start) // 2] ^= 0xFF
    bad = tmp_path / "flipped.vivace"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="integrity"):
        load(bad)


def test_edited_metadata_is_refused(bundle, tmp_path):
    data = bundle.read_bytes()
    edited = data.replace(b'\\"red\\"', b'\\"rex\\"')  # same length: a sneaky in-place edit
    assert edited != data
    bad = tmp_path / "edited.vivace"
    bad.write_bytes(edited)
    with pytest.raises(ValueError, match="integrity"):
        load(bad)


def test_rewritten_metadata_is_refused(bundle, tmp_path):
    with safe_open(str(bundle), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["info"])
    info["normalize"] = None
    bad = tmp_path / "rewritten.vivace"
    save_file(tensors, str(bad), metadata={**meta, "info": json.dumps(info)})
    with pytest.raises(ValueError, match="integrity"):
        read_bundle(bad)


def test_truncated_bundle_is_refused(bundle, tmp_path):
    data = bundle.read_bytes()
    for n, name in ((len(data) - 100, "short"), (20, "header")):
        bad = tmp_path / f"{name}.vivace"
        bad.write_bytes(data[:n])
        with pytest.raises(ValueError, match="not a readable bundle"):
            load(bad)


def test_foreign_and_future_files_are_refused(bundle, tmp_path):
    with safe_open(str(bundle), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for name, edit, message in (("other", {"format": "something-else"}, "format"),
                                ("future", {"version": "99"}, "version 99")):
        bad = tmp_path / f"{name}.vivace"
        save_file(tensors, str(bad), metadata={**meta, **edit})
        with pytest.raises(ValueError, match=message):
            load(bad)
    checkpoint = tmp_path / "best.safetensors"
    save_checkpoint(checkpoint, {"model": {"w": torch.ones(2)}})
    with pytest.raises(ValueError, match="vivace export"):
        load(checkpoint)
    text = tmp_path / "notes.vivace"
    text.write_text("not a bundle at all")
    with pytest.raises(ValueError, match="not a readable bundle"):
        load(text)
    with pytest.raises(FileNotFoundError, match="vivace export"):
        load(tmp_path / "missing.vivace")


def test_export_refuses_models_it_cannot_rebuild(learn, tmp_path):
    plain = Learner(learn.dls, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)))
    with pytest.raises(ValueError, match="XResNet"):
        export_learner(plain, tmp_path / "x.vivace")
    with pytest.raises(ValueError, match="tta"):
        export_learner(learn, tmp_path / "x.vivace", tta="five-crop")


def test_xresnet_config_rebuilds_the_same_model():
    model = create_model("xresnet50", n_out=7, widen=0.25, act="mish", self_attention=True, blur_pool=True)
    twin = XResNet(**json.loads(json.dumps(model.config)))  # the config survives JSON
    twin.load_state_dict(model.state_dict())
    assert [k for k, _ in twin.named_parameters()] == [k for k, _ in model.named_parameters()]


def test_export_tta_default(learn, tmp_path):
    path = export_learner(learn, tmp_path / "plain.vivace")
    assert load(path).tta == "none"
    assert load(export_learner(learn, tmp_path / "flip.vivace", tta="flip")).tta == "flip"


def forge_bundle(bundle, tmp_path, edit, name="forged.vivace"):
    """A copy of `bundle` with `edit(info, tensors)` applied and its checksum recomputed, as export does."""
    from vivace.files import content_hash

    with safe_open(str(bundle), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["info"])
    info = edit(info, tensors) or info
    meta["info"] = json.dumps(info, sort_keys=True)
    meta["sha256"] = content_hash(meta["info"], tensors)
    path = tmp_path / name
    save_file(tensors, str(path), metadata=meta)
    return path


def _set(key, value):
    def edit(info, tensors):
        target, *rest = key.split(".")
        if rest:
            info[target][rest[0]] = value
        else:
            info[target] = value
    return edit


@pytest.mark.parametrize("edit, field, expected", [
    (_set("normalize.mean", [float("nan"), 0.4, 0.4]), "normalize.mean", "3 finite numbers"),
    (_set("normalize.std", [0.2, 0.2]), "normalize.std", "3 finite numbers"),
    (_set("normalize.std", [0.2, 0.0, 0.2]), "normalize.std", "positive"),
    (_set("normalize", [1, 2]), "normalize", "null or an object"),
    (_set("vocab", ["red", "green"]), "vocab", "3 class names, one per model output"),
    (_set("vocab", ["red", "green", 3]), "vocab", "class names"),
    (_set("vocab", ["red", "red", "blue"]), "vocab", "distinct"),
    (lambda info, t: ["not", "an", "object"], "info", "a JSON object"),
    (_set("size", 0), "size", "an integer >= 1"),
    (_set("presize", "24"), "presize", "an integer >= 1"),
    (_set("presize", 8), "presize", ">= size=16"),
    (_set("crop", float("inf")), "crop", r"a number in \(0, 1\]"),
    (_set("square", "yes"), "square", "true or false"),
    (_set("tta", "five-crop"), "tta", "one of none, flip"),
    (_set("config", None), "config", "a JSON object"),
    (_set("config.n_out", -3), "config.n_out", "an integer >= 1"),
    (_set("arch", "resnet"), "arch", "'xresnet'"),
])
def test_forged_bundle_fields_are_refused(bundle, tmp_path, edit, field, expected):
    # F2, F3, F4: the checksum matches, but the content cannot give correct predictions.
    bad = forge_bundle(bundle, tmp_path, edit)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}: bundle field '{field}' must be .*{expected}.*, got"):
        load(bad)


def test_forged_nan_weights_are_refused(bundle, tmp_path):
    def poison(info, tensors):
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")

    bad = forge_bundle(bundle, tmp_path, poison)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}: bundle weight .* NaN or infinite"):
        load(bad)


@pytest.mark.slow
def test_forged_bundle_through_the_cli_is_one_line(bundle, tmp_path, tiny_folder):
    import subprocess
    import sys

    bad = forge_bundle(bundle, tmp_path, _set("normalize.mean", [float("nan")] * 3))
    image = next((tiny_folder / "val" / "red").iterdir())
    run = subprocess.run([sys.executable, "-m", "vivace", "predict", str(bad), str(image)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("vivace predict: error: ") and "normalize.mean" in run.stderr
    assert len(run.stderr.splitlines()) == 1


def test_bundles_get_the_umask_mode(bundle):
    from vivace.files import UMASK

    assert bundle.stat().st_mode & 0o777 == 0o666 & ~UMASK
