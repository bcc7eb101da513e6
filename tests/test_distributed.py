import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vivace.distributed import World
from vivace.recipe import Recipe
from vivace.runs import load_run

pytestmark = pytest.mark.slow  # torchrun: processes that each import torch and train
WORKER = Path(__file__).with_name("dist_worker.py")


def launch(base: Path, folder: Path, restarts: int = 0, **env: str) -> subprocess.CompletedProcess:
    # --standalone: torchrun binds a free port itself. A port found free here and passed on could
    # be taken by another process (other tests running at the same time) before torchrun binds it.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={restarts}", str(WORKER), str(folder), str(base), str(base)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_folder):
    base = tmp_path_factory.mktemp("dist")
    result = launch(base, tiny_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return base, result


def test_a_dead_rank_fails_the_others_instead_of_hanging(tmp_path, tiny_folder):
    result = launch(tmp_path, tiny_folder, DIE_RANK="1", VIVACE_DIST_TIMEOUT="60")
    assert result.returncode != 0
    assert "exitcode  : 3" in result.stderr  # torchrun names the rank that died


def test_a_silent_rank_fails_the_others_after_dist_timeout_s(tmp_path, tiny_folder):
    timeout_s = 8
    start = time.monotonic()
    result = launch(tmp_path, tiny_folder, STALL_RANK="1", STALL_TIMEOUT_S=str(timeout_s))
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    # Rank 0's one-line error (torchrun then prints its own summary, naming the failed rank).
    [line] = [line for line in result.stderr.splitlines() if line.startswith("vivace train: error: rank 0:")]
    # Usually at rank 0's first collective ("Timed out waiting 8000ms"); on a very busy machine
    # rank 1 may join so late that the rendezvous itself times out ("Timed out after 8 seconds").
    assert "Timed out" in line and "--dist-timeout-s" in line
    assert "[rank0]:" not in result.stderr  # no traceback from rank 0
    # Far below the 1,800 s default; the margin covers start-up and the cache on a busy machine.
    assert elapsed < timeout_s + 150


def test_weights_identical_across_ranks(two_ranks):
    base, _ = two_ranks
    w0, w1 = load_file(str(base / "weights0.safetensors")), load_file(str(base / "weights1.safetensors"))
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], torch.zeros_like(w0[k])) for k in w0)


def test_shards_are_disjoint_and_cover_the_training_set(two_ranks):
    base, _ = two_ranks
    r0, r1 = (json.loads((base / f"rank{r}.json").read_text()) for r in (0, 1))
    for epoch in ("0", "1"):
        a, b = set(r0["seen"][epoch]), set(r1["seen"][epoch])
        assert not a & b
        # 24 training images, per-rank batch 4: every image is drawn exactly once per epoch.
        assert a | b == set(r0["all_train"])
    assert r0["seen"]["0"] != r0["seen"]["1"]  # reshuffled each epoch


def test_distributed_validation_equals_single_process(two_ranks):
    base, _ = two_ranks
    r0 = json.loads((base / "rank0.json").read_text())
    learn = load_run(base / "out0")  # one process, rank 0's final weights
    single = learn.validate()
    assert single["accuracy"] == pytest.approx(r0["metrics"]["accuracy"])
    assert single["valid_loss"] == pytest.approx(r0["metrics"]["valid_loss"], rel=1e-5)
    assert len(learn.get_preds()[1]) == 12  # the whole validation set, once


def test_only_rank0_wrote_files_and_printed(two_ranks):
    base, result = two_ranks
    assert (base / "out0" / "summary.json").exists() and (base / "out0" / "last.safetensors").exists()
    assert not (base / "out1").exists()
    assert result.stdout.count("train_loss") == 1  # one table header: rank 0 only
    assert result.stdout.count("split: train/ (24 images) and val/ (12 images)") == 1


def test_a_fine_tune_from_a_run_trains_the_same_weights_on_every_rank(two_ranks, tmp_path, tiny_folder):
    source = two_ranks[0] / "out0"  # a finished run: its weights and classes
    result = launch(tmp_path, tiny_folder, FINE_TUNE_FROM=str(source))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"init: {source} (xresnet18, 3 classes) -> head kept (same classes)") == 1
    w0, w1 = load_file(str(tmp_path / "weights0.safetensors")), load_file(str(tmp_path / "weights1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    start = load_run(source).model.state_dict()
    assert any(not torch.equal(w0[k], start[k].contiguous()) for k in w0)  # it trained


def test_a_worker_lost_mid_epoch_restarts_and_resumes_by_itself(tmp_path, tiny_folder):
    """torchrun --max-restarts: the restarted workers go on from the last checkpoint with no
    --resume typed, and the run ends as one never interrupted."""
    whole = launch(tmp_path / "whole", tiny_folder, ELASTIC="run")
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = launch(tmp_path / "cut", tiny_folder, restarts=1, ELASTIC="die")
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert "(exitcode: 9) local_rank: 1" in cut.stderr  # the lost worker, as torchrun reports it before restarting
    assert cut.stdout.count(f"resuming {tmp_path / 'cut' / 'run'} at epoch 1, batch 0") == 1
    a, b = (json.loads((tmp_path / name / "run" / "summary.json").read_text()) for name in ("whole", "cut"))
    for key in ("accuracy", "valid_loss", "nll"):
        assert a[key] == b[key], key
    log = (tmp_path / "cut" / "run" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "2"]  # epoch 0 trained once, not twice


# -- several machines, simulated by two torchrun agents on this one (one process each) --

@pytest.mark.parametrize("local_rank, order", [(0, ["cache", "barrier"]), (1, ["barrier", "cache"])])
def test_each_machines_first_process_builds_its_cache_before_the_one_barrier(monkeypatch, local_rank, order):
    """Global rank 1 as the first process of a second machine builds its cache without waiting for rank 0's
    (the machines build at the same time); as rank 0's machine's second process it waits, then finds it."""
    from vivace import build
    calls = []
    monkeypatch.setattr(build.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(build, "make_dataloaders", lambda **kwargs: calls.append("cache"))
    build.build_dataloaders(Recipe(data="unused"), World(rank=1, world_size=2, local_rank=local_rank))
    assert calls == order
