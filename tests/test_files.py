"""Tests for vivace.files: the one atomic write, stale temp cleanup, file modes, content hash."""
import os
import subprocess
import sys

import pytest
import torch

from vivace.files import STARTED, UMASK, atomic_write, content_hash, remove_stale_temps


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def plant_temp(folder, name: str, pid: int, age_s: float = 3600.0, old_style: bool = False):
    """A temp file as a writer with `pid` leaves it, last written `age_s` before this process began."""
    tmp = folder / (f".{name}.tmp{pid}" if old_style else f".{name}.{pid}.tmp")
    tmp.write_bytes(b"half a file")
    os.utime(tmp, (STARTED - age_s, STARTED - age_s))
    return tmp


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with atomic_write(path) as tmp:
        assert tmp == tmp_path / f".a.txt.{os.getpid()}.tmp"
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the rename
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_atomic_write_keeps_the_old_file_on_error(tmp_path, error):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(error):
        with atomic_write(path, fsync=True) as tmp:
            tmp.write_text("half")
            raise error()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_write_gives_the_umask_mode(tmp_path):
    path = tmp_path / "private-writer.bin"
    with atomic_write(path) as tmp:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))  # as safetensors' save_file does
    assert path.stat().st_mode & 0o777 == 0o666 & ~UMASK


def test_stale_temps_of_dead_writers_are_removed(tmp_path):
    pid = dead_pid()
    stale = [plant_temp(tmp_path, "last.safetensors", pid), plant_temp(tmp_path, "log.csv", pid, old_style=True)]
    mine = plant_temp(tmp_path, "best.safetensors", os.getpid())  # this process: a write in progress
    fresh = plant_temp(tmp_path, "config.json", pid, age_s=-60)  # written after this process began
    other = tmp_path / ".notes.tmp"
    other.write_text("not ours")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert not any(p.exists() for p in stale) and mine.exists() and fresh.exists() and other.exists()


def test_stale_temps_of_live_writers_stay(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp = plant_temp(tmp_path, "pixels.u8", writer.pid)
        assert remove_stale_temps(tmp_path) == [] and tmp.exists()
    finally:
        writer.kill()
        writer.wait()


def test_atomic_write_cleans_its_targets_stale_temps_only(tmp_path):
    pid = dead_pid()
    own = plant_temp(tmp_path, "index.json", pid)
    neighbour = plant_temp(tmp_path, "pixels.u8", pid)
    with atomic_write(tmp_path / "index.json") as tmp:
        tmp.write_text("{}")
    assert not own.exists() and neighbour.exists()


def test_content_hash_covers_text_names_and_bytes():
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}
    digest = content_hash("{}", tensors)
    assert digest == content_hash("{}", {k: v.clone() for k, v in reversed(tensors.items())})
    flipped = {**tensors, "w": tensors["w"].clone()}
    flipped["w"][1, 2] = -5.0
    assert len({digest, content_hash("{ }", tensors), content_hash("{}", flipped),
                content_hash("{}", {"v": tensors["w"], "b": tensors["b"]})}) == 4
