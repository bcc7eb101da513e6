import json
import subprocess
import sys
from pathlib import Path

import pytest

from vivace.cli import build_parser, main, options_from_args, recipe_from_args
from vivace.flags import escape_percent
from vivace.recipe import PRESETS

TINY = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "2",
        "--bs", "4", "--valid-bs", "8", "--workers", "1"]


@pytest.mark.slow
def test_help_texts():
    for argv in (["--help"], ["train", "--help"], ["download", "--help"]):
        out = subprocess.run([sys.executable, "-m", "vivace", *argv], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: vivace" in out.stdout
    train_help = subprocess.run([sys.executable, "-m", "vivace", "train", "--help"], capture_output=True, text=True).stdout
    assert "--label-smoothing" in train_help and "epsilon of label smoothing" in train_help


def test_every_help_renders_its_text():
    """A bare `%` in a flag's help once made argparse print the action's dict instead of the text."""
    import argparse
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert "option_strings" not in text, name
    assert "a random 20 % split" in subparsers.choices["train"].format_help()


def test_flags_map_onto_recipe_and_presets():
    args = build_parser().parse_args(["train", "--preset", "imagenette-128-5ep", "--epochs", "2", "--no-normalize"])
    recipe, options = recipe_from_args(args, options_from_args(args))
    assert recipe.arch == "xse_resnext50" and recipe.epochs == 2 and recipe.normalize is False
    assert options.preset == "imagenette-128-5ep"
    args = build_parser().parse_args(["train", "--workers", "1", "--no-reuse-memory"])
    default, options = recipe_from_args(args, options_from_args(args))
    assert options.preset == "quick" and default.data == "" and default == PRESETS["quick"]
    assert (options.workers, options.reuse_memory) == (1, False)  # a default-True switch can be turned off


def test_train_writes_run_dir(tmp_path, tiny_folder, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "train_loss" in printed and "final accuracy" in printed
    # It ends saying where the run is and what to do next, the folder filled in.
    assert f"run: {out}  (report: {out / 'report.html'})" in printed
    for command in (f"vivace report {out}", f"vivace export {out}", f"vivace predict {out} IMAGE..."):
        assert command in printed
    for name in ("config.json", "log.csv", "summary.json", "losses.png", "schedule.png",
                 "last.safetensors", "best.safetensors"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 epochs
    last = dict(zip(log[0].split(","), log[-1].split(",")))
    assert summary["accuracy"] == pytest.approx(float(last["accuracy"]), abs=1e-6)  # the final epoch's
    assert f"final accuracy: {summary['accuracy']:.4f}" in printed
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_resume_from_cli_continues(tmp_path, tiny_folder):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), *TINY]) == 0
    # --resume reads the run's config: train the same run longer by raising --epochs.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    assert len((out / "log.csv").read_text().splitlines()) == 4


def test_resume_with_nothing_to_resume_starts_a_new_run(tmp_path, tiny_folder, capsys):
    out = tmp_path / "fresh"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), "--resume", *TINY]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert (out / "summary.json").exists()


@pytest.mark.slow
def test_runs_report_mean_and_std(tmp_path, tiny_folder, capsys):
    out = tmp_path / "multi"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), "--runs", "2", *TINY[:-4], "--epochs", "1",
                 "--workers", "1"]) == 0
    assert "±" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"mean", "std"} and len(summary["runs"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/no/such/folder"], "/no/such/folder"),
    (["train", "--arch", "resnet9000"], "arch='resnet9000' is not one of"),
    (["train", "--lr", "-1"], "lr=-1.0 must be in"),
    (["train", "--size", "256", "--presize", "128"], "presize_px=128 must be >= size_px=256"),
    (["train", "--preset", "nope"], "preset='nope'"),
])
def test_errors_are_messages_not_tracebacks(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run directory would land here
    assert main(argv) == 2
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


BAD_CONFIGS = [
    ('{"epochs": 2, "warmup": 0.1, "lr2": 1}', "unknown field(s) lr2, warmup; a recipe's fields are: data,"),
    ("{'epochs': 2}", "not valid JSON (Expecting property name enclosed in double quotes"),
    ('["epochs", 2]', "must hold a JSON object of recipe fields, got list"),
    ('{"epochs": "two"}', "field epochs must be int, got 'two'"),
]
CONFIG_READERS = [["export", "{run}", "-o", "{run}/x.vivace"], ["train", "--out", "{run}", "--resume"]]


def _run_with_config(tmp_path, text: str, command: list[str]) -> tuple[Path, list[str]]:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    return run, [arg.format(run=run) for arg in command]


@pytest.mark.parametrize("text, message", BAD_CONFIGS)
@pytest.mark.parametrize("command", CONFIG_READERS)
def test_bad_config_json_is_one_line_naming_the_file(tmp_path, text, message, command, capsys):
    run, argv = _run_with_config(tmp_path, text, command)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vivace {argv[0]}: error: {run / 'config.json'}: ") and message in err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("case, command", [(0, CONFIG_READERS[0]), (1, CONFIG_READERS[1])])
def test_bad_config_json_from_the_shell_has_no_traceback(tmp_path, case, command):
    text, message = BAD_CONFIGS[case]
    run, argv = _run_with_config(tmp_path, text, command)
    done = subprocess.run([sys.executable, "-m", "vivace", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_load_recipe_round_trips_and_accepts_ints_for_floats(tmp_path):
    from vivace.recipe import Recipe, load_recipe

    path = tmp_path / "config.json"
    recipe = Recipe(epochs=3, lr=0.5, data="x")
    path.write_text(json.dumps({**recipe.to_dict(), "lr": 1}))
    assert load_recipe(path) == Recipe(epochs=3, lr=1.0, data="x")


def test_every_commands_arguments_are_generated_from_dataclass_fields():
    """No hand-written flag: each argument of each command is a field of the Recipe or of the
    command's options class, with that field's help, so `--help` and the code cannot disagree."""
    import argparse
    import dataclasses

    from vivace import options
    from vivace.cli import build_parser
    from vivace.recipe import Recipe, TrainOptions

    classes = [Recipe, TrainOptions, options.RunOptions, options.EvaluateOptions, options.ExportOptions, options.PredictOptions,
               options.LrFindOptions, options.ShowOptions, options.ExperimentOptions, options.DownloadOptions]
    helps: dict[str, list[str]] = {}  # field name -> its help in each class that has it
    for f in (f for cls in classes for f in dataclasses.fields(cls)):
        helps.setdefault(f.name, []).append(f.metadata["help"])
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"train", "lr-find", "download", "evaluate", "experiments", "show", "export",
                             "predict", "report"}
    for name, parser in commands.items():
        for action in parser._actions:
            if action.dest != "help":
                assert any(action.help.startswith(escape_percent(h)) for h in helps.get(action.dest, [])), (name, action.dest)


@pytest.mark.parametrize("typed, meant", [("--mixupalpha", "--mixup-alpha"), ("--epoch", "--epochs"),
                                          ("--lable-smoothing", "--label-smoothing")])
def test_an_unknown_flag_gets_its_commands_usage_and_the_nearest_names(typed, meant, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", typed, "3", "--print-recipe"])  # never an abbreviation of a longer flag
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "usage: vivace train" in err and f"unrecognized arguments: {typed} 3" in err
    assert "did you mean" in err and meant in err.rsplit("did you mean", 1)[1]


def test_train_help_shows_what_a_bare_train_runs():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    quick = PRESETS["quick"]
    assert f"training epochs; >= 1 (default: {quick.epochs})" in text
    assert "With --data and no --preset, these fields default otherwise: size_px 128" in text
