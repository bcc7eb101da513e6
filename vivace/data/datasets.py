"""Datasets by name: download, verify and safely extract them, or use the embedded sample."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..environment import env_folder
from ..files import ensure_writable_folder, waiting_lock
from .names import IMAGENETTE_NAMES, IMAGEWOOF_NAMES


@dataclass(frozen=True)
class DatasetInfo:
    """Where a named dataset lives, its checksum, the folder its archive extracts to, its class names."""

    name: str
    url: str
    md5: str | None  # None: verification is skipped
    size_bytes: int | None
    folder: str  # top-level folder inside the archive
    class_names: dict[str, str] | None = None  # folder (WordNet id) -> what people read (data/names.py)


_BUCKET = "https://s3.amazonaws.com/fast-ai-imageclas"

# Sizes and md5 sums copied from fastai's own registry, fastai/data/checks.txt in
# github.com/fastai/fastai (commit 29be53d7ccaf7405320e2e47db8f35182abeff0a), which fastai
# uses to verify these same URLs.
DATASETS: dict[str, DatasetInfo] = {
    "imagenette": DatasetInfo(
        "imagenette", f"{_BUCKET}/imagenette2.tgz",
        "2c774ecb40005b35d7937d50f5d42336", 1557161267, "imagenette2", IMAGENETTE_NAMES),
    "imagenette-320": DatasetInfo(
        "imagenette-320", f"{_BUCKET}/imagenette2-320.tgz",
        "1f1f74f133caff120e575856659b87a2", 341663724, "imagenette2-320", IMAGENETTE_NAMES),
    "imagenette-160": DatasetInfo(
        "imagenette-160", f"{_BUCKET}/imagenette2-160.tgz",
        "c475f8f7617a200ba35b9facc48443c3", 99003388, "imagenette2-160", IMAGENETTE_NAMES),
    "imagewoof": DatasetInfo(
        "imagewoof", f"{_BUCKET}/imagewoof2.tgz",
        "2cc1c1e36e20cb6fd24ffb978edcb487", 1343715595, "imagewoof2", IMAGEWOOF_NAMES),
    "imagewoof-320": DatasetInfo(
        "imagewoof-320", f"{_BUCKET}/imagewoof2-320.tgz",
        "7a1fd92672a559a85de76e4810a20c21", 328387740, "imagewoof2-320", IMAGEWOOF_NAMES),
    "imagewoof-160": DatasetInfo(
        "imagewoof-160", f"{_BUCKET}/imagewoof2-160.tgz",
        "3559b194123981a540b87132dbda412f", 92612825, "imagewoof2-160", IMAGEWOOF_NAMES),
}

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 30  # per socket operation, not for the whole download
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")


def data_home() -> Path:
    """Where datasets are downloaded and extracted: `$VIVACE_HOME`, else `~/.cache/vivace`."""
    return env_folder("VIVACE_HOME", Path.home() / ".cache" / "vivace")


def embedded_path() -> Path:
    """The small Imagenette sample shipped inside the package (works offline)."""
    return Path(__file__).parent / "embedded"


def download(
    name_or_url: str,
    dest_dir: Path | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch a named dataset's archive (or any http/https/file URL) into `dest_dir`; return its path.

    Args:
        url: overrides a named dataset's address (a mirror or a `file://` copy).
        md5: expected checksum; defaults to the named dataset's, None skips verification.
    """
    info = DATASETS.get(name_or_url)
    if info is not None:
        url = url or info.url
        md5 = md5 or info.md5
    else:
        url = url or name_or_url
    dest = Path(dest_dir) if dest_dir is not None else data_home()
    target = dest / _filename_from_url(url)
    if target.is_file() and (md5 is None or _md5_of(target) == md5):
        return target  # complete by construction: only finished downloads are renamed
    dest.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    hint = _local_copy_hint(info, target)
    try:
        digest = _fetch(url, part, progress)
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"could not download {url} ({err}); {hint}") from err
    if md5 is not None and digest != md5:
        part.unlink(missing_ok=True)
        raise RuntimeError(
            f"checksum mismatch for {url}: md5 {digest}, expected {md5} (corrupt or changed "
            f"file; the partial download was deleted, retry); {hint}"
        )
    os.replace(part, target)
    return target


def _filename_from_url(url: str) -> str:
    """The last path component of `url`, e.g. `imagenette2-320.tgz`."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise ValueError(
            f"{url!r} is neither a known dataset ({', '.join(DATASETS)}) "
            f"nor an http://, https:// or file:// URL"
        )
    name = PurePosixPath(urllib.parse.unquote(parsed.path)).name
    if not name:
        raise ValueError(f"URL {url!r} does not end in a file name, e.g. .../imagenette2-160.tgz")
    return name


def _fetch(url: str, part: Path, progress: bool) -> str:
    """Stream `url` into `part`, hashing on the way (saves a second pass over GBs); return the md5."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(part, "wb") as out:
        total = response.headers.get("Content-Length")
        show = progress and sys.stderr.isatty()
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                  desc=part.name.removesuffix(".part"), disable=not show) as bar:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _md5_of(path: Path) -> str:
    """The md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _local_copy_hint(info: DatasetInfo | None, target: Path) -> str:
    """How to use a copy obtained some other way."""
    if info is None:
        return f"download the file yourself and place it at {target}, or pass --data /path/to/folder"
    return (
        f"place the extracted folder at {data_home() / info.folder} (or the archive at {target}), "
        f"or pass --data /path/to/{info.folder}"
    )


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a .tgz/.tar.gz/.tar/.zip into `target`, refusing entries that would escape it.

    Entries are unpacked in a hidden temporary folder inside `target` and then renamed into
    place, so an interrupted extraction never leaves a complete-looking folder. Returns `target`.
    """
    archive = Path(archive)
    if not archive.name.lower().endswith(_ARCHIVE_SUFFIXES):
        supported = ", ".join(_ARCHIVE_SUFFIXES)
        raise ValueError(f"cannot extract {archive}: supported archives are {supported}")
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        for entry in sorted(tmp.iterdir()):
            if (target / entry.name).exists():
                raise ValueError(
                    f"{target / entry.name} already exists; remove it to extract {archive} again"
                )
        for entry in sorted(tmp.iterdir()):
            os.replace(entry, target / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract_tar(archive: Path, dest: Path) -> None:
    """Check every member first (nothing is written if one is unsafe), then extract."""
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        links = frozenset(_normalized(m.name, archive) for m in members if m.issym())
        for member in members:
            _check_member(member, links, archive)
        # The "data" filter (Python >= 3.10.12 / 3.11.4) re-checks with real paths and drops
        # setuid bits: a second line of defence after the checks above.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)


def _check_member(member: tarfile.TarInfo, links: frozenset[str], archive: Path) -> None:
    """Raise ValueError if extracting `member` could write or point outside the target."""
    _normalized(member.name, archive, links)
    if member.ischr() or member.isblk() or member.isfifo():
        raise ValueError(f"refusing to extract {archive}: {member.name!r} is a device or pipe")
    if member.issym():
        # A symlink's target is relative to the folder that holds the link.
        pointee = str(PurePosixPath(member.name).parent / member.linkname)
    elif member.islnk():
        pointee = member.linkname  # a hard link's target is relative to the archive root
    else:
        return
    _normalized(pointee, archive, links, what=f"link {member.name!r} -> {member.linkname!r}")


def _normalized(name: str, archive: Path, links: frozenset[str] = frozenset(), what: str = "") -> str:
    """`name` without `.` and `..` parts; ValueError if it is absolute, climbs out, or crosses a link.

    Walking part by part matters: `a/../x` is harmless text but escapes when `a` is a symlink,
    so any symlink before the last part is refused, as is `..` above the target.
    """
    what = what or repr(name)
    path = PurePosixPath(name.replace("\\", "/"))  # a Windows-made archive may use backslashes
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"refusing to extract {archive}: {what} is an absolute path")
    parts = [p for p in path.parts if p != "."]
    stack: list[str] = []
    for i, part in enumerate(parts):
        if part == "..":
            if not stack:
                raise ValueError(f"refusing to extract {archive}: {what} climbs out of the target")
            stack.pop()
            continue
        stack.append(part)
        prefix = "/".join(stack)
        if i < len(parts) - 1 and prefix in links:
            raise ValueError(f"refusing to extract {archive}: {what} goes through the symlink {prefix!r}")
    return "/".join(stack) or "."


def _extract_zip(archive: Path, dest: Path) -> None:
    """Check every name first (nothing is written if one is unsafe), then extract."""
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            _normalized(name, archive)
        # zipfile writes symlink entries as small regular files, so links cannot escape here.
        zf.extractall(dest)


def ensure_dataset(name: str, *, progress: bool = True) -> Path:
    """The extracted folder of a named dataset, downloading and extracting it only if missing."""
    info = _dataset_info(name)
    home = data_home()
    folder = home / info.folder
    # An existing folder is trusted: it is how offline users supply their own copy.
    if folder.is_dir():
        return folder
    ensure_writable_folder(home, f"the data home {home}",
                          f"point VIVACE_HOME at a writable folder, or pass --data /path/to/{info.folder}")
    # Machines sharing the data home fetch it once: the others wait, then find the folder.
    with waiting_lock(home / f".{info.folder}.lock"):
        if folder.is_dir():  # fetched by another process while this one waited (extracted whole)
            return folder
        archive = download(name, home, progress=progress)
        safe_extract(archive, home)
    if not folder.is_dir():
        raise RuntimeError(
            f"{archive} did not contain the expected folder {info.folder}/; "
            f"delete the archive and retry, or pass --data /path/to/{info.folder}"
        )
    return folder


def _dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`, or a ValueError listing the known names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def resolve_data(spec: str | Path | None) -> Path:
    """A data folder from a `--data` value: None -> embedded sample, a dataset name, or a path."""
    if spec is None:
        return embedded_path()
    if isinstance(spec, str) and spec in DATASETS:
        return ensure_dataset(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    raise ValueError(
        f"--data {str(spec)!r} is neither a known dataset ({', '.join(DATASETS)}) nor an existing "
        f"path; omit it to use the embedded sample at {embedded_path()}"
    )
