"""Where vivace writes: checked before any heavy work, so a run never fails late on a bad path."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
