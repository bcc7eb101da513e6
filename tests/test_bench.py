"""The benchmarks at toy sizes, through their runner: they must measure, and record nothing unless asked.

The GPU check, run where there is no GPU: 60 timed batches of 8 need more than the embedded
dataset's 400 training images, so its list repeats.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common
from bench.__main__ import BENCHMARKS

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "benchmarks.json"
NOT_BENCHMARKS = {"__init__", "__main__", "common"}  # the package, the runner, the shared helpers


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=common.bench_env(env) if env is None else env)


def test_the_runner_lists_every_benchmark_module_with_its_description():
    out = run_bench("--help")
    assert out.returncode == 0, out.stderr
    modules = {p.stem for p in (REPO / "bench").glob("*.py")} - NOT_BENCHMARKS
    assert set(BENCHMARKS.values()) == modules  # a new bench/*.py must be added to the runner's list
    for name, module in BENCHMARKS.items():
        source = (REPO / "bench" / f"{module}.py").read_text()
        first_line = re.search(r'^"""(.+)$', source, re.M)[1]
        assert f"  {name}" in out.stdout and first_line in out.stdout, name


@pytest.mark.slow
def test_a_data_benchmark_without_data_exits_with_one_line_saying_how_to_give_it():
    env = {k: v for k, v in common.bench_env().items() if k != common.DATA_ENV}
    out = run_bench("throughput", env=env)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("python -m bench throughput: error:")
    assert "--data PATH" in lines[0] and common.DATA_ENV in lines[0]


def test_an_unknown_benchmark_is_named_in_the_error():
    out = run_bench("no-such-benchmark")
    assert out.returncode == 2
    assert "no-such-benchmark" in out.stderr and "throughput" in out.stderr


@pytest.mark.slow
def test_gpu_check_measures_on_the_cpu_without_recording():
    before = RESULTS.read_bytes()
    out = run_bench("gpu", "--arch", "xresnet18", "--bs", "8", "16", "--size", "32", "--batches", "20",
                    "--switch-bs", "0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA" in out.stdout
    rates = re.findall(r"batch (\d+), compile off: model step ([\d.]+) img/s, end to end ([\d.]+) img/s .*"
                       r"from the host instead: ([\d.]+)", out.stdout)
    assert [r[0] for r in rates] == ["8", "16"], out.stdout
    assert all(float(v) > 0 for r in rates for v in r[1:])
    assert RESULTS.read_bytes() == before


@pytest.mark.slow
def test_throughput_compares_precisions_without_recording_and_reads_data_from_the_environment():
    before = RESULTS.read_bytes()
    embedded = REPO / "vivace" / "data" / "embedded"
    out = run_bench("throughput", "--archs", "xresnet18", "--bs", "4", "--size", "32", "--batches", "1",
                    "--compare-amp", "--compare-stem", env=common.bench_env({common.DATA_ENV: str(embedded)}))
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"fp32 matmul peak: [\d.]+ GFLOP/s", out.stdout), out.stdout
    ratio = re.search(r"ceiling fp32 [\d., ]+ img/s, bf16 autocast [\d., ]+ img/s: bf16 autocast is ([\d.]+)x", out.stdout)
    assert ratio is not None and float(ratio[1]) > 0, out.stdout
    assert re.search(r"widen 0.5, stem_widen 0.5 is [\d.]+x", out.stdout), out.stdout
    assert RESULTS.read_bytes() == before  # xresnet50 figures only


def test_record_notes_the_machine_date_and_precision_of_each_figure(tmp_path):
    results = tmp_path / "benchmarks.json"
    results.write_text('{"old_figure": 1.0, "notes": {"old_figure": "kept", "new_figure": "stale"}}\n')
    common.record(path=results, precision="bf16", new_figure=2.0)
    data = json.loads(results.read_text())
    assert data["old_figure"] == 1.0 and data["new_figure"] == 2.0
    assert data["machine"] == common.cpu_name()
    assert data["measured_on"] == {"new_figure": {"machine": data["machine"], "date": data["date"], "precision": "bf16"}}
    assert data["notes"] == {"old_figure": "kept"}  # a figure measured again drops its old note
    common.record(path=results, notes={"ratio": "a / b"}, ratio=1.5)
    data = json.loads(results.read_text())
    assert "precision" not in data["measured_on"]["ratio"] and data["notes"]["ratio"] == "a / b"
    common.record(stamp=False, path=results, gpu={"device": "elsewhere"})
    assert "gpu" not in json.loads(results.read_text())["measured_on"]  # it carries its own


def test_the_data_folder_comes_from_the_flag_or_the_environment(monkeypatch):
    parser = common.make_parser("example", "An example.")
    monkeypatch.setenv(common.DATA_ENV, "/from/env")
    common.add_data_arg(parser)
    assert parser.parse_args([]).data == Path("/from/env")
    assert parser.parse_args(["--data", "/from/flag"]).data == Path("/from/flag")
    assert common.data_folder("example", Path("/x")) == Path("/x")


def test_accuracy_figures_are_keyed_by_data_and_preset():
    from bench.accuracy import figure_key, summarize
    assert figure_key("imagenette-128-5ep", "../shared/data/imagenette2-160/") == "imagenette160_128_5ep"
    assert figure_key("imagenette-128-5ep", "/data/imagenette2-224") == "imagenette_128_5ep"  # the squares
    runs = [{"preset": "imagenette-speedrun", "data": "/d/imagenette2-160", "accuracy": a, "train_seconds": s}
            for a, s in ((0.86, 600.0), (0.851, 660.0))]
    assert summarize(runs) == {"imagenette160_speedrun_accuracy_mean": 0.8555,
                               "imagenette160_speedrun_runs": [0.86, 0.851],
                               "imagenette160_speedrun_minutes_to_85": 10.5}
    squares = [dict(r, data="/d/imagenette2-224", accuracy=0.84) for r in runs]
    assert summarize(squares)["speedrun_minutes_to_85"] is None  # not every run reached 85 %


def _finished_run(run_dir: Path, accuracy: float, seconds: float, **overrides) -> Path:
    """A run directory as `vivace train` leaves it: config.json and summary.json."""
    from vivace.recipe import make_recipe
    run_dir.mkdir(parents=True)
    recipe = make_recipe("imagenette-speedrun", data="/d/imagenette2-224", **overrides)
    (run_dir / "config.json").write_text(json.dumps(recipe.to_dict()))
    (run_dir / "summary.json").write_text(json.dumps({"seed": 42, "accuracy": accuracy, "train_seconds": seconds,
                                                      "preset": "imagenette-speedrun"}))
    return run_dir


def test_the_speedrun_reference_is_the_squares_preset_timed_once(tmp_path):
    from bench.accuracy import SQUARES_SPEEDRUN, reference_minutes
    reference = _finished_run(tmp_path / "ref", 0.8527, 690.0, **SQUARES_SPEEDRUN)
    assert reference_minutes(None, reference, tmp_path) == {"speedrun_reference_accuracy": 0.8527,
                                                             "speedrun_reference_minutes": 11.5}
    today = _finished_run(tmp_path / "today", 0.85, 600.0)  # today's preset is not the reference
    with pytest.raises(SystemExit, match=r"presize_px=160 \(preset: 224\)"):
        reference_minutes(None, today, tmp_path)


def test_gpu_peers_say_when_their_library_is_missing(monkeypatch, capsys):
    from bench import gpu

    monkeypatch.setattr(gpu.importlib.util, "find_spec", lambda name: None)
    assert gpu.peer_results("xresnet50", 256, 128, 10) == {
        "peer_fastai": "fastai is not installed here: not measured",
        "peer_timm": "timm is not installed here: not measured"}
    assert "peer_timm: timm is not installed here" in capsys.readouterr().out


def test_noisy_label_runs_get_their_own_key(tmp_path):
    from bench.accuracy import figure_key, read_run, summarize
    assert figure_key("imagenette-128-5ep", "/d/imagenette2-160", "noisy_labels_50") == "noisy50_128_5ep"
    assert figure_key("imagenette-128-5ep", "/d/imagenette2-160", "") == "imagenette160_128_5ep"
    run = _finished_run(tmp_path / "n5", 0.86, 3900.0, labels="noisy_imagenette.csv", label_col="noisy_labels_5",
                        valid_col="is_valid")
    assert summarize([read_run(run)]) == {"noisy5_speedrun_accuracy_mean": 0.86, "noisy5_speedrun_runs": [0.86],
                                          "noisy5_speedrun_minutes_to_85": 65.0}  # _finished_run: the speedrun


@pytest.mark.slow
def test_transfer_at_toy_size_trains_every_arm_and_records_nothing(tiny_folder, tmp_path):
    import shutil
    before = RESULTS.read_text()
    data = tmp_path / "four"  # two classes a half: the tiny folder and a copy of its red as "white"
    shutil.copytree(tiny_folder, data)
    for split in ("train", "val"):
        shutil.copytree(data / split / "red", data / split / "white")
    toy = ["arch=xresnet18", "widen=0.25", "size_px=32", "presize_px=40", "valid_size_px=32", "batch_size=4"]
    out = run_bench("transfer", "--data", str(data), "--epochs", "1", "2", "--source-epochs", "1",
                    "--init-arch", "xresnet18", "--out", str(tmp_path), "--set", *toy)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| fine_tune_progressive |" in out.stdout and "loading xresnet18's weights" in out.stdout
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(figures) >= {"transfer_scratch_1ep", "transfer_fine_tune_2ep", "transfer_fine_tune_progressive_2ep"}
    assert ",red," in (tmp_path / "halves" / "second.csv").read_text()  # blue, green | red, white
    assert ",red," not in (tmp_path / "halves" / "first.csv").read_text()
    assert json.loads((tmp_path / "fine_tune-2ep" / "config.json").read_text())["freeze_epochs"] == 1
    assert RESULTS.read_text() == before


@pytest.mark.slow
def test_table_at_toy_size_finds_the_same_split_and_records_nothing(tiny_folder, tmp_path):
    import shutil
    before = RESULTS.read_text()
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    rows = ["path,noisy_labels_0,is_valid"] + [f"{f.relative_to(data).as_posix()},{f.parent.name},{f.parts[-3] == 'val'}"
                                               for f in sorted(data.glob("*/*/*.png"))]
    (data / "noisy_imagenette.csv").write_text("\n".join(rows) + "\n")
    out = run_bench("table", "--data", str(data), "--repeats", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(noisy_imagenette.csv, 36 rows)" in out.stdout and "same split, order and labels: True" in out.stdout
    assert RESULTS.read_text() == before


@pytest.mark.slow
def test_budget_at_toy_size_ends_each_run_on_time_and_records_nothing(tiny_folder, tmp_path):
    before = RESULTS.read_text()
    # At the speedrun's lr (0.2, SGD) one batch of 24 toy images an epoch diverged on CI once in ~21 epochs.
    out = run_bench("budget", "--data", str(tiny_folder), "--budgets", "8s", "--seeds", "0", "--fixed",
                    "--slow", "8s", "--lr", "0.02", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    lrs = {json.loads((d / "config.json").read_text())["lr"] for d in tmp_path.iterdir()}
    assert lrs == {0.02}  # the budgeted, fixed and slow runs alike
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    [run], fixed, [slow] = figures["budget_curve"], figures["budget_fixed"], figures["budget_slow"]
    assert run["budget_s"] == 8.0 and abs(run["late_s"]) <= 5.0
    assert run["arch"] in ("xresnet18 x0.5", "xresnet18 x0.5, stem x0.5")  # one of the budget table's candidates
    assert slow["budget_s"] == 8.0 and abs(slow["late_s"]) <= 5.0  # one thread: on time still
    # Whole epochs beside it: as many as it trained, one fewer while the fixed run took longer than 8 s.
    epochs = sorted(f["epochs"] for f in fixed)
    assert epochs == list(range(epochs[0], max(int(run["epochs"]), 1) + 1))
    last = min(fixed, key=lambda f: f["epochs"])
    assert all(f["budget_s"] == 8.0 for f in fixed) and (last["fits"] or last["epochs"] == 1)
    assert "budget-8s-seed0: budget seed 0: accuracy" in out.stdout and "of 0:08 (" in out.stdout
    assert RESULTS.read_text() == before


def test_the_speedrun_target_by_budget_reads_the_reference_beside_its_seeds(tmp_path):
    from bench.accuracy import SQUARES_SPEEDRUN
    from bench.budget import figures, read_run
    reference = _finished_run(tmp_path / "reference-squares", 0.8527, 600.0, **SQUARES_SPEEDRUN)
    summary = json.loads((reference / "summary.json").read_text())
    (reference / "summary.json").write_text(json.dumps({**summary, "epochs": 12}))
    for seed, accuracy, late_s in ((42, 0.8561, -2.0), (43, 0.8493, -1.5)):
        run = _finished_run(tmp_path / f"speedrun-seed{seed}", accuracy, 478.0, budget_s=480.0)
        (run / "summary.json").write_text(json.dumps({"seed": seed, "accuracy": accuracy, "train_seconds": 480.0,
                                                      "budget_used_s": 480.0 + late_s, "late_s": late_s,
                                                      "epochs_trained": 15.2, "epochs": 16}))
    runs = [read_run(d) for d in sorted(tmp_path.iterdir())]
    found = figures(runs, "cpu")["budget_speedrun"]
    assert found["reference_minutes"] == 10.0 and found["budget_s"] == 480.0
    assert [r["seed"] for r in found["runs"]] == [42, 43] and found["accuracy_mean"] == 0.8527
    assert found["met"] is False  # seed 43 missed 85 %: every seed must reach it
    assert figures(runs[:2], "cpu").get("budget_speedrun", {}).get("met") is True


def test_the_budget_plot_draws_the_curve_and_the_fixed_runs(tmp_path):
    from bench.budget import plot
    curve = [{"budget_s": b, "accuracy": a, "arch": m} for b, a, m in
             ((300, 0.7, "wide"), (300, 0.72, "wide"), (600, 0.8, "wide"), (300, 0.75, "slim stem"))]
    labels = plot(curve, [{"seconds": 280, "accuracy": 0.69}], tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert labels == ["--budget, wide (mean of seeds)", "--budget, slim stem (mean of seeds)",
                      "imagenette-speedrun, whole epochs (at its own time)"]  # a line per model


def test_a_run_counts_as_a_preset_named_after_it_only_when_its_recipe_is_that_preset(tmp_path):
    from bench.accuracy import read_run
    # The speedrun with the noisy preset's fields: trained with flags before the preset had a name.
    noisy = dict(arch="xresnet18", widen=1.0, size_px=128, presize_px=160, valid_size_px=128, valid_crop=0.0,
                 batch_size=64, optimizer="ranger", schedule="flat_cos", pct_start=0.72, lr=8e-3, weight_decay=1e-4,
                 momentum=0.95, act="mish", self_attention=True, max_blur_pool=True, train_crop="square",
                 epochs=5, progressive=0.0, label_smoothing=0.1, labels="noisy_imagenette.csv",
                 label_col="noisy_labels_50", valid_col="is_valid")
    run = _finished_run(tmp_path / "n50", 0.7335, 1800.0, **noisy)
    assert read_run(run, as_preset="imagenette-128-5ep-noisy")["preset"] == "imagenette-128-5ep-noisy"
    other = _finished_run(tmp_path / "other", 0.7, 1800.0, **{**noisy, "batch_size": 32})
    with pytest.raises(SystemExit, match=r"batch_size=32 \(preset: 64\)"):
        read_run(other, as_preset="imagenette-128-5ep-noisy")


@pytest.mark.slow
def test_scale_at_toy_size_makes_builds_and_trains_and_records_nothing(tmp_path):
    before = RESULTS.read_text()
    data = tmp_path / "synth"
    made = run_bench("scale", "make", "--out", str(data), "--train", "300", "--valid", "100")
    assert made.returncode == 0, made.stderr[-3000:]
    assert json.loads(made.stdout)["images"] == 400 and len(list((data / "train").iterdir())) == 1000
    built = run_bench("scale", "build", "--data", str(data), "--counts", "50", "400", "--workers", "1")
    assert built.returncode == 0, built.stderr[-3000:]
    assert [line.split(",")[0] for line in built.stdout.splitlines()] == ["build      50 images", "build     400 images"]
    trained = run_bench("scale", "train", "--data", str(data), "--images-seen", "300", "--runs", str(tmp_path / "runs"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    line = trained.stdout.strip()
    assert line.startswith("train 400 images, 1 epochs (cache index ") and "anonymous memory" in line
    assert float(line.split("anonymous memory ")[1].split(" MiB")[0]) > 50  # torch alone is more: it sampled
    assert RESULTS.read_text() == before
