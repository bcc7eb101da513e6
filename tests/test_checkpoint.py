import json
import subprocess
import sys
import textwrap

import pytest
import torch

from vivace.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state

TINY = dict(arch="xresnet18", widen=0.25, size=16, presize=24, epochs=3, bs=4, valid_bs=8, lr=1e-2,
            workers=1, mixup=0.4, label_smoothing=0.1)


def test_flatten_round_trip():
    state = {"a": torch.arange(3), "b": [1, {"c": torch.ones(2)}], 3: "x", "n": None}
    skeleton, tensors = flatten_state(state)
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = unflatten_state(skeleton, tensors)
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"][1]["c"], torch.ones(2))
    assert back[3] == "x" and back["n"] is None


def test_save_is_atomic_and_loads(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"w": torch.randn(2, 2), "epoch": 1})
    save_checkpoint(path, {"w": torch.zeros(2, 2), "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp files left


def test_foreign_and_missing_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.safetensors")


def run_training(tmp_path, folder, out, kill_at=None, resume=False, every=0.0):
    """Train in a fresh process; optionally SIGKILL it after (epoch, batch)."""
    recipe = {**TINY, "data": str(folder), "out": str(out), "resume": resume, "checkpoint_every": every}
    script = textwrap.dedent(f"""
        import os, signal
        from vivace.callbacks import Callback
        from vivace.recipe import make_recipe
        from vivace.train import train

        class KillAt(Callback):
            order = 100  # after the checkpoint saver
            def after_batch(self, learn):
                if (learn.epoch, learn.iter) == {kill_at!r}:
                    os.kill(os.getpid(), signal.SIGKILL)

        train(make_recipe(**{recipe!r}), cbs=[KillAt()])
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("every", [0.0, 1e-9])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_folder, every):
    full = run_training(tmp_path, tiny_folder, tmp_path / "full")
    assert full.returncode == 0, full.stderr
    killed = run_training(tmp_path, tiny_folder, tmp_path / "cut", kill_at=(1, 2), every=every)
    assert killed.returncode == -9
    ck = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    assert ck["position"] == ({"epoch": 1, "batch": 3} if every else {"epoch": 1, "batch": 0})
    resumed = run_training(tmp_path, tiny_folder, tmp_path / "cut", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "cut" / "summary.json").read_text())
    for key in ("accuracy", "valid_loss", "nll"):
        assert a[key] == b[key]
    log_a = (tmp_path / "full" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    strip_time = lambda lines: [line.rsplit(",", 1)[0] for line in lines]
    assert strip_time(log_a) == strip_time(log_b) and len(log_a) == 4


def test_ema_run_exports_the_evaluated_weights(tmp_path, tiny_folder):
    from vivace.recipe import make_recipe
    from vivace.train import load_run, train

    out = tmp_path / "ema"
    recipe = {k: v for k, v in TINY.items() if k not in ("mixup", "label_smoothing")}
    summary = train(make_recipe(**{**recipe, "epochs": 2}, data=str(tiny_folder), out=str(out), ema=0.5))
    state = load_checkpoint(out / "last.safetensors")
    assert "eval_model" in state
    learn = load_run(out)  # final weights
    assert all(torch.equal(v, state["eval_model"][k]) for k, v in learn.model.state_dict().items())
    assert learn.validate()["accuracy"] == pytest.approx(summary["accuracy"])
