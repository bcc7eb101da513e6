import json
import os
import signal
import socket
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


REPO = Path(__file__).resolve().parents[1]
# The dist_worker recipe (`elastic`) as `vivace train` flags: 3 epochs of a quarter-width xresnet18 at 16 px.
TINY_FLAGS = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "3",
              "--bs", "8", "--valid-bs", "5", "--lr", "1e-2", "--workers", "1"]
SUMMARY_METRICS = ("accuracy", "valid_loss", "nll")


def agent_env(home: Path, **env: str) -> dict[str, str]:
    """A torchrun agent's environment: its machine's data home, one thread, this checkout's vivace
    (the nodes run in folders of their own, where `python -m vivace` would find another)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "VIVACE_HOME": str(home), "PYTHONPATH": path, **env}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_nodes(base: Path, name: str, command: list[str], **env: str) -> list[subprocess.CompletedProcess]:
    """`command` as a job of two machines: two torchrun agents (--nnodes=2, c10d rendezvous on localhost),
    one process each, node i in the folder base/node<i> with the data home base/home<i>. Started
    together; each one's output goes to base/<name><i>.out.log and .err.log (a pipe left unread could fill)."""
    port = free_port()
    agents, logs = [], []
    for node in (0, 1):
        (base / f"node{node}").mkdir(parents=True, exist_ok=True)
        # c10d ranks the agents by (host, pid), not --node-rank: node 0, started first, is global rank 0.
        # is_host: node 0 serves the rendezvous store, as the machine named in --rdzv-endpoint would.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}",
               f"--rdzv-id={name}-{port}", f"--rdzv-conf=is_host={int(node == 0)}", *command]
        out, err = (open(base / f"{name}{node}.{kind}.log", "w") for kind in ("out", "err"))
        logs.append((out, err))
        agents.append(subprocess.Popen(cmd, cwd=base / f"node{node}", stdout=out, stderr=err,
                                       env=agent_env(base / f"home{node}", **env), start_new_session=True))
    try:
        for agent in agents:
            agent.wait(timeout=300)
    finally:
        for agent in agents:
            if agent.poll() is None:  # the job hung: end this agent and its worker
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
        for out, err in logs:
            out.close()
            err.close()
    return [subprocess.CompletedProcess(agent.args, agent.returncode, (base / f"{name}{node}.out.log").read_text(),
                                        (base / f"{name}{node}.err.log").read_text())
            for node, agent in enumerate(agents)]


def train_command(data: Path, out: str, *flags: str) -> list[str]:
    return ["-m", "vivace", "train", "--data", str(data), "--out", out, *flags]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, tiny_folder) -> dict:
    """The summary of the tiny recipe trained by two processes on one machine (torchrun --standalone)."""
    base = tmp_path_factory.mktemp("one_node")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           *train_command(tiny_folder, str(base / "run"), *TINY_FLAGS)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=agent_env(base / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((base / "run" / "summary.json").read_text())


def cache_folders(home: Path) -> list[Path]:
    return [p for p in (home / "cache").iterdir() if p.is_dir()]


def test_two_nodes_each_build_the_cache_in_their_own_home_and_train_as_one_node_does(tmp_path, tiny_folder,
                                                                                      one_node):
    agents = two_nodes(tmp_path, "run", train_command(tiny_folder, str(tmp_path / "run"), *TINY_FLAGS))
    for agent in agents:
        assert agent.returncode == 0, agent.stderr[-3000:]
    for node in (0, 1):
        [cache] = cache_folders(tmp_path / f"home{node}")
        assert (cache / "index.json").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in SUMMARY_METRICS:
        assert summary[key] == one_node[key], key
    assert agents[0].stdout.count("train_loss") == 1 and "train_loss" not in agents[1].stdout  # rank 0 prints


def test_a_resume_needs_the_run_folder_on_rank_0s_node_only(tmp_path, tiny_folder, one_node):
    """`--out run` is relative and each node works in a folder of its own, so only rank 0's node holds
    the run: rank 0 reads the recipe and checkpoint for both, and node 1 never has a run folder."""
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    # dist_worker's `elastic`, same recipe: rank 1 is lost in the second epoch; no restarts.
    cut = two_nodes(tmp_path, "cut", [str(WORKER), str(tiny_folder), ".", "."], ELASTIC="die")
    assert any(agent.returncode != 0 for agent in cut)
    assert (node0 / "run" / "last.safetensors").is_file() and not (node1 / "run").exists()
    resumed = two_nodes(tmp_path, "resume", ["-m", "vivace", "train", "--out", "run", "--resume", "--workers", "1"])
    for agent in resumed:
        assert agent.returncode == 0, agent.stderr[-3000:]
    assert resumed[0].stdout.count("resuming run at epoch 1, batch 0") == 1
    assert not (node1 / "run").exists()
    summary = json.loads((node0 / "run" / "summary.json").read_text())
    for key in SUMMARY_METRICS:
        assert summary[key] == one_node[key], key
    log = (node0 / "run" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "2"]  # epoch 0 trained once
    for node in (0, 1):
        assert len(cache_folders(tmp_path / f"home{node}")) == 1  # each node found its own again
