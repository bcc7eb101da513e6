import errno
import os
import tempfile

import pytest

from vivace.outputs import check_new_file, ensure_writable_folder, unwritable_reason


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
