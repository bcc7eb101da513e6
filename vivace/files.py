"""Files vivace writes: where it may write (checked before any heavy work, so a run never fails
late on a bad path), one atomic write, the cleanup of temp files left by killed writers, the
sha256 that bundles and checkpoints carry, a lock for work done once (`waiting_lock`), and user
text made safe for a spreadsheet (`csv_cell`) or a terminal (`printable`).

Every file is written to `.<name>.<pid>.tmp` beside its target and renamed over it, so readers see
the old file or the whole new one. A process killed mid-write leaves its temp file behind; the next
write of the same target (or `remove_stale_temps` on the folder) deletes it once its writer is gone.
A full disk ends the write with `DiskFullError`, which says what was kept.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors import SafetensorError
from torch import Tensor

# `.<name>.<pid>.tmp`, and `.<name>.tmp<pid>` as vivace 0.x wrote checkpoints, bundles and records.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)\.tmp|tmp(?P<old_pid>\d+))$")
STARTED = time.time()  # ~ this process's start: vivace is imported before it writes anything
# The umask, read once at import (reading it means setting it, which would race with threads later).
UMASK = os.umask(0o022)
os.umask(UMASK)
# What a write that ran out of room is told by the OS: errno -> how vivace says it.
DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}
# A spreadsheet runs a cell starting with one of these as a formula (OWASP: "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# C0 controls, DEL and C1 controls: printed raw they move the cursor, recolour, clear or retitle
# the terminal, ring its bell, or split a line in two.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class DiskFullError(RuntimeError):
    """A write of `path` ran out of disk space (errno `code`); the message says what was kept."""

    def __init__(self, path: Path, code: int, then: str = "run the command again"):
        super().__init__(disk_full_message(path, code, then))
        self.path, self.code = path, code


def temp_path(path: Path) -> Path:
    """Where `atomic_write` writes `path` first: `.<name>.<pid>.tmp` in the same folder."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_write(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`, on any exception it is deleted.

    The file gets the mode any file the user writes gets (0666 minus the umask, usually 0644),
    whatever the writer used (safetensors' save_file creates 0600 files). `fsync` flushes the data
    to disk before the rename, so a power cut cannot leave a renamed but empty file. A full disk
    (ENOSPC, EDQUOT, or safetensors' error saying so) raises `DiskFullError`, naming what was kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = temp_path(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~UMASK)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:  # KeyboardInterrupt too: leave nothing half-written behind
        tmp.unlink(missing_ok=True)
        code = disk_full_errno(err)
        if code is not None:
            raise DiskFullError(path, code) from err
        raise


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created), after waiting for the process that holds it.

    For work done once by whichever process comes first, on this machine or on another sharing the
    folder (a cache, a download): the others wait, then find it done. flock on POSIX; elsewhere, and
    where the file system cannot lock (said in a warning), no lock.
    """
    if os.name != "posix":
        yield
        return
    import fcntl  # POSIX only

    with open(path, "a", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as err:  # e.g. a network file system without locks
            warnings.warn(f"cannot lock {path} ({err.strerror}): processes sharing its folder may each do "
                          "the work it guards")
        yield


def disk_full_errno(err: BaseException) -> int | None:
    """ENOSPC or EDQUOT when `err` says the disk (or the quota) is full, else None.

    safetensors raises its own error, with the errno only in its text: "... (os error 28)".
    """
    if isinstance(err, OSError):
        code = err.errno
    elif isinstance(err, SafetensorError):
        found = re.search(r"\(os error (\d+)\)", str(err))
        code = int(found[1]) if found else None
    else:
        return None
    return code if code in DISK_FULL else None


def disk_full_message(path: Path, code: int, then: str) -> str:
    """One line: the file, that the disk is full, what is left (the old file, or nothing), and
    what to do once there is room (`then`)."""
    kept = (f"the previous {path.name} is kept unchanged" if path.exists()
            else f"no {path.name} was written")
    return (f"{path}: cannot write it: {DISK_FULL[code]} ({os.strerror(code)}, errno {code} "
            f"{errno.errorcode[code]}); {kept}; free some space, then {then}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete vivace temp files in `folder` (of target `name`, or all) whose writer is gone.

    A temp file is stale when the process named in it no longer runs on this machine AND the file
    is older than this process. Both, so that a writer still at work is never disturbed: not one
    that runs here, nor one on another machine sharing the folder whose pid happens to be free here.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet: nothing to clean
        return removed
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"] or match["old_pid"])
        try:
            stale = not _pid_alive(pid) and entry.stat(follow_symlinks=False).st_mtime < STARTED
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # its writer finished (or another cleaner won) meanwhile
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (True where that cannot be asked safely)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # Windows' os.kill terminates processes: never probe there
        return True
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the existence and permission check
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def content_hash(text: str, tensors: dict[str, Tensor]) -> str:
    """sha256 hex of `text` and each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
    return h.hexdigest()


def unwritable_reason(folder: Path) -> str | None:
    """Why `folder` cannot be created or written into (None: it can)."""
    folder = Path(folder).expanduser().absolute()
    if folder.exists():
        if not folder.is_dir():
            return "it is a file, not a folder"
        return None if _can_write(folder) else "it is read-only"
    parent = folder.parent
    while not parent.exists():  # the first existing ancestor decides: everything below is created
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    return None if _can_write(parent) else f"parent {parent} is read-only"


def _can_write(folder: Path) -> bool:
    # os.access asks the kernel: it sees permissions, ACLs and read-only mounts (and root's rights).
    return os.access(folder, os.W_OK | os.X_OK)


def ensure_writable_folder(folder: Path, what: str, hint: str = "") -> None:
    """Create `folder` and write a file in it; else ValueError naming `what` (e.g. '--out /x/y') and why."""
    folder = Path(folder)
    reason = unwritable_reason(folder)
    if reason is None:
        # Asking is not enough: some file systems refuse what os.access allows (root on sysfs, say).
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            reason = err.strerror or str(err)
    if reason is not None:
        raise ValueError(f"cannot write to {what}: {reason}" + (f"; {hint}" if hint else ""))


def check_new_file(path: Path, flag: str, overwrite: bool) -> None:
    """Refuse to replace an existing file unless `overwrite`; check its folder can be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: name a file")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists: pass --overwrite to replace it, or {flag} PATH to write elsewhere")
    ensure_writable_folder(path.parent, f"{flag} {path}")


def csv_cell(value: Any) -> Any:
    """`value` as a spreadsheet shows it: text that would start a formula gets a leading `'`
    (OWASP's rule), so a class or file named `=HYPERLINK(...)` stays text; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV file written atomically (`atomic_write`), every cell through `csv_cell`."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        for row in (header, *rows):
            writer.writerow([csv_cell(v) for v in row])
    return path


def printable(text: Any) -> str:
    """`text` with each control character shown as its escape (`\\x1b`, `\\n`): a file or class
    name printed to a terminal cannot clear it, recolour it, set its title or split a line."""
    return CONTROL_CHARS.sub(lambda m: repr(m[0])[1:-1], str(text))
