"""One set of weights: train, evaluate, export and the report score the final weights by default."""
import json
import re

import pytest

from vivace.cli import main
from vivace.data.sources import make_source
from vivace.export import load, read_bundle
from vivace.runs import load_run_weights

TINY = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "2",
        "--bs", "4", "--valid-bs", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_folder):
    out = tmp_path_factory.mktemp("weights") / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), *TINY]) == 0
    return out


def evaluated_accuracy(printed: str) -> float:
    """The accuracy in `vivace evaluate --tta none`'s table row."""
    row = re.search(r"^none\s+\d+\s+([0-9.]+)", printed, re.MULTILINE)
    assert row is not None, printed
    return float(row.group(1))


def test_train_evaluate_and_export_agree_on_the_final_weights(run, tiny_folder, capsys):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights"] == "final"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--tta", "none"]) == 0
    printed = capsys.readouterr().out
    assert "weights: final (last.safetensors, epoch 2)\nsplit: train/ (24 images) and val/ (12 images)" in printed
    assert evaluated_accuracy(printed) == round(summary["accuracy"], 4)

    bundle = run / "export.vivace"
    assert main(["export", str(run), "-o", str(bundle)]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(bundle)  # stdout: the path alone, for scripts
    assert "weights: final (last.safetensors, epoch 2)" in printed.err
    info, _ = read_bundle(bundle)
    assert info["weights"] == "final" and info["epoch"] == 2
    source = make_source(tiny_folder)
    preds = load(bundle, device="cpu").predict_many(source.valid_files, batch_size=8)
    bundle_accuracy = sum(p.index == y for p, y in zip(preds, source.valid_labels)) / len(preds)
    assert bundle_accuracy == pytest.approx(summary["accuracy"])


def test_best_weights_are_accepted_and_named(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run), "--tta", "none", "--weights", "best"]) == 0
    assert re.search(r"weights: best \(best\.safetensors, epoch [12]\)", capsys.readouterr().out)
    bundle = run / "best.vivace"
    assert main(["export", str(run), "-o", str(bundle), "--weights", "best"]) == 0
    assert "weights: best (best.safetensors" in capsys.readouterr().err
    assert read_bundle(bundle)[0]["weights"] == "best"
    # An existing bundle is replaced only when asked.
    assert main(["export", str(run), "-o", str(bundle)]) == 2
    assert "best.vivace already exists: pass --overwrite to replace it, or -o PATH" in capsys.readouterr().err
    assert read_bundle(bundle)[0]["weights"] == "best"
    assert main(["export", str(run), "-o", str(bundle), "--overwrite"]) == 0
    assert read_bundle(bundle)[0]["weights"] == "final"


def test_report_rebuilds_from_the_final_weights_by_default(run, capsys):
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(run / "report.html")
    assert "weights: final (last.safetensors, epoch 2)" in printed.err
    assert main(["report", str(run), "--weights", "best"]) == 0
    assert "weights: best (best.safetensors" in capsys.readouterr().err


def test_load_run_weights_names_the_file_and_refuses_others(run):
    _, weights = load_run_weights(run)
    assert (weights.kind, weights.file, weights.epoch) == ("final", "last.safetensors", 2)
    with pytest.raises(ValueError, match="weights='last' is not one of: final, best"):
        load_run_weights(run, "last")
