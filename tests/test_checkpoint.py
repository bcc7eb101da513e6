import json

import pytest
import torch

from conftest import train_in_subprocess
from vivace.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state

TINY = dict(arch="xresnet18", widen=0.25, size=16, presize=24, epochs=3, bs=4, valid_bs=8, lr=1e-2,
            mixup=0.4, label_smoothing=0.1)


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
    """Train TINY in a fresh process; optionally SIGKILL it after (epoch, batch)."""
    options = {"workers": 1, "out": str(out), "resume": resume, "checkpoint_every_min": every}
    return train_in_subprocess({**TINY, "data": str(folder)}, options, kill_at)


@pytest.mark.slow
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
    from vivace.recipe import TrainOptions, make_recipe
    from vivace.runs import load_run
    from vivace.train import train

    out = tmp_path / "ema"
    recipe = {k: v for k, v in TINY.items() if k not in ("mixup", "label_smoothing")}
    summary = train(make_recipe(**{**recipe, "epochs": 2}, data=str(tiny_folder), ema=0.5),
                    TrainOptions(workers=1, out=str(out)))
    state = load_checkpoint(out / "last.safetensors")
    assert "eval_model" in state
    learn = load_run(out)  # final weights
    assert all(torch.equal(v, state["eval_model"][k]) for k, v in learn.model.state_dict().items())
    assert learn.validate()["accuracy"] == pytest.approx(summary["accuracy"])


def _payload_start(path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 header size, JSON header


def flip_floats(path, n: int = 100) -> None:
    """Flip the sign bit of n float32 values in the tensor data, as a failing disk might."""
    data = bytearray(path.read_bytes())
    start = _payload_start(path)
    for i in range(n):
        data[start + (i * 997 * 4) % (len(data) - start - 4) // 4 * 4 + 3] ^= 0x80
    path.write_bytes(bytes(data))


def forge(path, edit) -> None:
    """Edit a checkpoint's state JSON and store a recomputed checksum, as save_checkpoint does."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from vivace.files import content_hash

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    edit(state)
    meta["state"] = json.dumps(state)
    meta["sha256"] = content_hash(meta["state"], tensors)
    save_file(tensors, str(path), metadata=meta)


def learner_like_state() -> dict:
    return {"position": {"epoch": 2, "batch": 0}, "model": {"w": torch.randn(64, 64)}}


def test_damaged_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, learner_like_state())
    flip_floats(path)
    with pytest.raises(ValueError, match=r"last\.safetensors failed its integrity check .*best\.safetensors"):
        load_checkpoint(path)


def test_checkpoint_without_checksum_still_loads(tmp_path):
    # Checkpoints written before the checksum existed: same layout, no sha256 in the metadata.
    from safetensors.torch import save_file
    from vivace.checkpoint import FORMAT

    skeleton, tensors = flatten_state(learner_like_state())
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "state": json.dumps(skeleton)})
    assert load_checkpoint(path)["position"] == {"epoch": 2, "batch": 0}


@pytest.mark.parametrize("field, value", [("epoch", -1), ("batch", -3), ("epoch", 1.5), ("batch", None)])
def test_bad_position_names_the_file_and_field(tmp_path, field, value):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, learner_like_state())
    forge(path, lambda state: state["position"].update({field: value}))
    with pytest.raises(ValueError, match=rf"{path}: checkpoint field position\.{field} must be an integer >= 0"):
        load_checkpoint(path)


def test_checkpoints_get_the_umask_mode_as_bundles_do(tmp_path):
    from vivace.files import UMASK

    save_checkpoint(tmp_path / "ck.safetensors", learner_like_state())
    assert (tmp_path / "ck.safetensors").stat().st_mode & 0o777 == 0o666 & ~UMASK


@pytest.mark.slow
def test_resume_refuses_a_damaged_checkpoint_and_cleans_stale_temps(tmp_path, tiny_folder, capsys):
    from test_files import dead_pid, plant_temp
    from vivace.cli import main

    out = tmp_path / "run"
    tiny = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "1",
            "--bs", "4", "--valid-bs", "8", "--workers", "1"]
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), *tiny]) == 0
    good = (out / "last.safetensors").read_bytes()
    flip_floats(out / "last.safetensors")
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "failed its integrity check" in err and "Traceback" not in err and len(err.splitlines()) == 1
    (out / "last.safetensors").write_bytes(good)
    stale = plant_temp(out, "last.safetensors", dead_pid())  # a kill during a checkpoint write
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert not stale.exists() and len((out / "log.csv").read_text().splitlines()) == 3
