"""`vivace experiments chapter7` end to end on the tiny folder, its table, and `vivace evaluate`."""
import contextlib
import csv
import io
from dataclasses import replace

import pytest

from vivace.callbacks import Callback
from vivace.cli import main
from vivace.experiments import CHAPTER7, Step, chapter7, fit_progressive, format_table, slug, summarize
from vivace.files import csv_cell
from vivace.recipe import make_recipe
from vivace.build import build_dataloaders, build_learner
from vivace.runs import load_run
from vivace.tta import evaluate

TINY = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "2",
        "--bs", "4", "--workers", "1"]
NAMES = [s.name for s in CHAPTER7]


@pytest.fixture(scope="module")
def experiment(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("chapter7")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["experiments", "chapter7", "--data", str(tiny_folder), *TINY, "--out", str(out)])
    return rc, out, stdout.getvalue()


@pytest.mark.slow
def test_table_csv_and_plot(experiment):
    rc, out, printed = experiment
    assert rc == 0
    table = printed[printed.index("technique"):]
    assert [line.split("  ")[0].strip() for line in table.splitlines()[2:2 + len(NAMES)]] == NAMES
    rows = list(csv.DictReader(open(out / "results.csv")))
    # The chapter's "+ normalize" begins as a spreadsheet formula would: the CSV quotes it (OWASP's rule, F15).
    assert [r["technique"] for r in rows] == [csv_cell(name) for name in NAMES] and rows[1]["technique"][0] == "'"
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["nll"]) > 0 and 0 <= float(r["ece"]) <= 1
        assert float(r["seconds"]) > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "+ TTA" in (out / "table.md").read_text()
    trained = [slug(s.name) for s in CHAPTER7 if not s.tta]
    assert all((out / name / "run0" / "config.json").is_file() for name in trained)
    assert not (out / "tta").exists()  # TTA trains nothing


@pytest.mark.slow
def test_evaluate_a_run_with_every_tta(experiment, capsys):
    _, out, _ = experiment
    assert main(["evaluate", str(out / "normalize" / "run0"), "--tta", "all", "--size", "24"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "weights: final (last.safetensors, epoch 2)"  # which weights, then the split
    lines = lines[2:]
    assert lines[0].split()[:3] == ["tta", "size", "accuracy"]
    assert [line.split()[:2] for line in lines[1:]] == [["none", "16"], ["none", "24"], ["augment", "24"],
                                                        ["flip", "24"], ["five-crop", "24"]]
    assert main(["evaluate", str(out / "normalize" / "run0"), "--size", "99"]) == 2  # above the presize


@pytest.mark.slow
@pytest.mark.parametrize("view", [None, "square"])
def test_evaluate_on_another_central_crop(experiment, capsys, view):
    _, out, _ = experiment
    run = out / "normalize" / "run0"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--tta", "none", "--crop", "0.5"] + (["--view", view] if view else [])) == 0
    printed = float(capsys.readouterr().out.strip().splitlines()[3].split()[2])  # below weights, split, header
    learn = load_run(run, valid_crop=0.5, **({"valid_view": view} if view else {}))
    assert learn.dls.valid.transform.resize.square == (view == "square")
    assert printed == pytest.approx(evaluate(learn, "none")["accuracy"], abs=1e-4)  # printed to 4 places
    assert main(["evaluate", str(run), "--crop", "1.5"]) == 2  # not a fraction


def test_fit_progressive_trains_half_then_full_size(tiny_folder, tmp_path):
    class Shapes(Callback):
        def __init__(self):
            self.shapes = []

        def transform_batch(self, learn, x, y):
            self.shapes.append(x.shape[-1])
            return x, y
    recipe = make_recipe(data=str(tiny_folder), arch="xresnet18", widen=0.25, size=16, presize=24, epochs=3, bs=4)
    spy = Shapes()
    learn = build_learner(recipe, build_dataloaders(replace(recipe, size_px=8), workers=1), tmp_path, extra_cbs=[spy])
    fit_progressive(learn, recipe, workers=1)
    assert spy.shapes == [8] * 6 + [16] * 12  # epochs // 2 at half size, the rest at full size
    assert learn.dls.valid.size == 16


def test_summary_mean_std_and_table_with_several_runs():
    rows = [{"technique": "a", "run": i, "seed": i, "accuracy": acc, "nll": 1.0, "ece": 0.1, "seconds": 2.0}
            for i, acc in enumerate((0.5, 0.7))]
    summary = summarize(rows + [{**rows[0], "technique": "b"}])
    assert summary[0]["accuracy"] == pytest.approx(0.6) and summary[0]["accuracy_std"] == pytest.approx(0.1414, abs=1e-4)
    assert summary[1]["runs"] == 1 and summary[1]["accuracy_std"] == 0.0
    assert "0.6000 ± 0.1414" in format_table(summary)


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="epochs=1"):
        chapter7(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="arch="):
        chapter7(tmp_path, arch="resnet9000")
    with pytest.raises(ValueError, match="runs=0"):
        chapter7(tmp_path, runs=0)
    with pytest.raises(ValueError, match="previous step"):
        chapter7(tmp_path, steps=[Step("tta first", tta=True)], epochs=2)
    assert slug("+ mixup + label smoothing, 2x epochs") == "mixup-label-smoothing-2x-epochs"
