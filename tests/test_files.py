"""Tests for vivace.files: writable folders, the one atomic write, stale temp cleanup, file modes, content hash."""
import errno
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from vivace.files import (STARTED, UMASK, atomic_write, check_new_file, content_hash, ensure_writable_folder,
                          remove_stale_temps, unwritable_reason)


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


def read_only(monkeypatch, folder):
    """Make os.access deny writes to `folder`: tests run as root, for whom chmod is no barrier."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if os.fspath(path) == str(folder)
                        else real_access(path, mode))


def test_writable_folders_new_or_existing(tmp_path):
    assert unwritable_reason(tmp_path) is None
    assert unwritable_reason(tmp_path / "new" / "deeper") is None


def test_a_file_where_a_folder_should_be(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert unwritable_reason(f) == "it is a file, not a folder"
    assert unwritable_reason(f / "run") == f"{f} is a file, not a folder"
    with pytest.raises(ValueError, match=f"cannot write to --out {f}/a/b: {f} is a file, not a folder"):
        ensure_writable_folder(f / "a" / "b", f"--out {f / 'a' / 'b'}")


def test_read_only_folder_and_parent(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    assert unwritable_reason(tmp_path) == "it is read-only"
    assert unwritable_reason(tmp_path / "x" / "y") == f"parent {tmp_path} is read-only"


def test_a_refusal_os_access_did_not_foresee(tmp_path, monkeypatch):
    """Some file systems refuse writes os.access allows (root on sysfs): the write itself is tried."""
    def read_only_file_system(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only_file_system)
    with pytest.raises(ValueError, match=f"cannot write to --out {tmp_path}/run: Read-only file system"):
        ensure_writable_folder(tmp_path / "run", f"--out {tmp_path / 'run'}")


def test_ensure_creates_the_folder(tmp_path):
    ensure_writable_folder(tmp_path / "a" / "b", "--out")
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod")
def test_read_only_by_permissions(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert unwritable_reason(locked / "run") == f"parent {locked} is read-only"


def test_check_new_file_refuses_to_replace(tmp_path):
    f = tmp_path / "predictions.csv"
    check_new_file(f, "--csv", overwrite=False)  # absent: fine
    f.write_text("mine")
    with pytest.raises(ValueError, match="already exists: pass --overwrite to replace it, or --csv PATH"):
        check_new_file(f, "--csv", overwrite=False)
    check_new_file(f, "--csv", overwrite=True)
    with pytest.raises(ValueError, match="is a folder"):
        check_new_file(tmp_path, "--csv", overwrite=True)
