"""ONNX and TorchScript export: the probabilities `predict` gives, and the preprocessing beside as JSON."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import trained_tiny_learner

from vivace.cli import main
from vivace.data.eval_view import EvalView
from vivace.deploy import export_model, preprocess_path
from vivace.inference import Predictor
from vivace.pictures import Pictures

ort = pytest.importorskip("onnxruntime")  # the test extra installs onnx and onnxruntime
onnx = pytest.importorskip("onnx")
PARITY = 1e-4  # the bound on |exported - predict| per probability
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def learn(tiny_folder):
    return trained_tiny_learner(tiny_folder)


@pytest.fixture(scope="module")
def predictor(learn):
    """`predict`'s path on the Learner's model, in fp32 (bf16 autocast on an AMX CPU would differ by ~1e-2)."""
    return Predictor(learn.model, learn.dls.vocab, learn.dls.eval_view, device="cpu", amp="off")


@pytest.fixture(scope="module")
def batch(learn, predictor):
    """The validation images decoded as `predict` decodes them, and the model's input from them."""
    files = learn.dls.source.valid_files
    pictures = Pictures.pack([predictor.decode(f) for f in files])
    return files, pictures, predictor.view.transform()(pictures).contiguous()  # NCHW, as another runtime gives it


@pytest.fixture(scope="module")
def exported(learn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    return {fmt: export_model(learn, folder / f"model.{fmt}", fmt) for fmt in ("onnx", "torchscript")}


def onnx_runner(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["probs"], {"pixels": x.numpy()})[0])


def torchscript_runner(path):
    model = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)
    return run


RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner}


@pytest.fixture(scope="module")
def runners(exported):
    """Each exported model loaded once, in its runtime: a function (B, 3, S, S) -> probabilities."""
    return {fmt: RUNNERS[fmt](exported[fmt][0]) for fmt in exported}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_gives_predicts_probabilities(fmt, runners, predictor, batch):
    files, pictures, x = batch
    expected = torch.stack([p.probs for p in predictor.predict(files)])  # `predict`, image files in
    assert torch.equal(expected, predictor.probs(pictures))  # the same batch as `predict`'s
    got = runners[fmt](x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    diff = (got - expected).abs().max().item()
    print(f"{fmt}: max |p - predict| = {diff:.2e} over {len(files)} images")
    assert diff < PARITY
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_batch_size_is_free(fmt, runners, batch):
    _, _, x = batch
    one_by_one = torch.cat([runners[fmt](x[i:i + 1]) for i in range(3)])
    assert torch.allclose(one_by_one, runners[fmt](x[:3]), atol=1e-6)


def test_flip_tta_and_several_labels_are_built_in(learn, tmp_path, batch):
    files, _, x = batch
    # A Learner of several labels per image, as export sees one (a sigmoid per class; the weights
    # need not have been trained for it to compare the two paths).
    several = SimpleNamespace(model=learn.model, dls=SimpleNamespace(vocab=learn.dls.vocab, multi_label=True,
                                                                     eval_view=learn.dls.eval_view))
    model_path, json_path = export_model(several, tmp_path / "m.onnx", "onnx", tta="flip", thresh=0.3)
    predictor = Predictor(learn.model, learn.dls.vocab, learn.dls.eval_view, device="cpu", amp="off",
                          multi_label=True, thresh=0.3)
    expected = torch.stack([p.probs for p in predictor.predict(files, tta="flip")])
    diff = (onnx_runner(model_path)(x) - expected).abs().max().item()
    print(f"onnx, flip TTA, sigmoid: max |p - predict| = {diff:.2e}")
    assert diff < PARITY
    info = json.loads(json_path.read_text())
    assert info["output"] == {"name": "probs", "shape": ["batch", 3], "tta": "flip", "activation": "sigmoid"}
    assert (info["multi_label"], info["thresh"]) == (True, 0.3)


def test_preprocess_json_reproduces_the_input(exported, learn, batch):
    """Another runtime needs only the JSON: its fields rebuild the exact validation transform."""
    _, pictures, x = batch
    model_path, json_path = exported["onnx"]
    assert json_path == preprocess_path(model_path) == model_path.with_name("model.onnx.preprocess.json")
    info = json.loads(json_path.read_text())
    view = learn.dls.eval_view
    assert info["format"] == "vivace-preprocess" and info["model"] == "model.onnx"
    assert (info["size"], info["presize"], info["crop"], info["square"]) == (16, 24, view.crop, False)
    assert info["normalize"] == view.normalize.as_dict()
    assert info["vocab"] == ["blue", "green", "red"] and info["output"]["activation"] == "softmax"
    assert info["input"] == {"name": "pixels", "shape": ["batch", 3, 16, 16], "dtype": "float32",
                             "layout": "NCHW", "channels": "RGB"}
    assert info["resize_px"] == view.transform().resize.resized
    assert torch.equal(EvalView.from_bundle(info).transform()(pictures).contiguous(), x)
    assert all(isinstance(step, str) for step in info["steps"]) and "24 px" in info["steps"][1]


def test_model_files_carry_the_same_json(exported):
    onnx_path, onnx_json = exported["onnx"]
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["vivace.preprocess"]) == json.loads(onnx_json.read_text())
    ts_path, ts_json = exported["torchscript"]
    extra = {"preprocess.json": ""}
    torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["preprocess.json"]) == json.loads(ts_json.read_text())


def test_export_leaves_the_learner_as_it_was(learn, exported, predictor, batch):
    _, pictures, _ = batch
    learn.model.train()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    export_model(learn, exported["onnx"][0].with_name("again.onnx"), "onnx")
    assert learn.model.training  # exported from a copy: the Learner's model keeps its mode and weights
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())
    assert next(learn.model.parameters()).device.type == "cpu"
    predictor.model.eval()


def test_a_failed_export_leaves_the_old_file_and_no_temp(learn, tmp_path, monkeypatch):
    old = tmp_path / "m.pt"
    old.write_bytes(b"the model being served")

    def fail(*args):
        raise RuntimeError("tracing failed")
    monkeypatch.setattr("vivace.deploy._torchscript_bytes", fail)
    with pytest.raises(RuntimeError, match="tracing failed"):
        export_model(learn, old, "torchscript")
    assert old.read_bytes() == b"the model being served"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no JSON, no temp file


# -- the command --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    code = main(["train", "--data", str(tiny_folder), "--out", str(out), "--epochs", "1", "--size-px", "16",
                 "--presize-px", "24", "--widen", "0.25", "--batch-size", "8", "--workers", "1"])
    assert code == 0
    return out


def test_cli_exports_onnx_beside_the_run_and_refuses_to_overwrite(run_dir, capsys):
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(run_dir / "export.onnx"), str(run_dir / "export.onnx.preprocess.json")]
    onnx.checker.check_model(str(run_dir / "export.onnx"))
    assert json.loads((run_dir / "export.onnx.preprocess.json").read_text())["weights"] == "final"
    before = (run_dir / "export.onnx").read_bytes()
    assert main(["export", str(run_dir), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vivace export: error: {run_dir / 'export.onnx'} already exists: pass --overwrite")
    assert len(err.splitlines()) == 1
    assert (run_dir / "export.onnx").read_bytes() == before
    assert main(["export", str(run_dir), "--format", "onnx", "--overwrite"]) == 0


def test_cli_refuses_when_only_the_json_exists(run_dir, tmp_path, capsys):
    (tmp_path / "m.pt.preprocess.json").write_text("{}")
    assert main(["export", str(run_dir), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 2
    assert "m.pt.preprocess.json already exists" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_cli_torchscript_loads_with_torch_jit(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 0
    info = json.loads((tmp_path / "m.pt.preprocess.json").read_text())
    model = torch.jit.load(str(tmp_path / "m.pt"))
    probs = model(torch.zeros(2, 3, info["size"], info["size"]))
    assert probs.shape == (2, len(info["vocab"])) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    assert info["model_format"] == "torchscript" and info["model"] == "m.pt"


def test_missing_onnx_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    assert main(["export", str(tmp_path / "no-run"), "--format", "onnx"]) == 2
    assert capsys.readouterr().err == ("vivace export: error: --format onnx needs the onnx package: "
                                       "pip install 'vivace[onnx]'\n")


def test_export_help_lists_the_formats(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--format {vivace,onnx,torchscript}" in capsys.readouterr().out
