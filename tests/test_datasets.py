"""Tests for vivace.data.datasets: downloads against a local server, safe extraction, resolution."""

import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vivace.data import datasets
from vivace.data.datasets import (
    DATASETS,
    DatasetInfo,
    data_home,
    download,
    embedded_path,
    ensure_dataset,
    resolve_data,
    safe_extract,
)
from vivace.data.sources import make_source

FOLDER = "imagenette2-160"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "vivace home"
    monkeypatch.setenv("VIVACE_HOME", str(path))
    return path


@pytest.fixture
def tarball(tmp_path) -> tuple[Path, str]:
    """A small .tgz laid out like Imagenette, and its md5."""
    tree = tmp_path / "tree" / FOLDER
    for rel in ("train/cat/1.jpg", "train/dog/1.jpg", "val/cat/2.jpg", "val/dog/2.jpg"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(rel.encode() * 100)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / f"{FOLDER}.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=FOLDER)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tarball):
    """Serve the tarball's folder over HTTP on 127.0.0.1 at a random port; yield the base URL."""
    handler = functools.partial(QuietHandler, directory=str(tarball[0].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval keeps shutdown (and so each test) fast.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_url():
    """A URL on a port nothing listens on: connecting fails at once, like being offline."""
    with socket.socket() as sock:
        # Held bound (never listening) for the whole test: a port released at once could be
        # taken by another process on a busy machine, and the "offline" download would connect.
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/{FOLDER}.tgz"


def use_url(monkeypatch, url: str, md5: str | None) -> None:
    """Point the imagenette-160 entry at a test URL."""
    monkeypatch.setitem(DATASETS, "imagenette-160", DatasetInfo("imagenette-160", url, md5, None, FOLDER))


def test_registry_entries():
    names = {"imagenette", "imagenette-320", "imagenette-160", "imagewoof", "imagewoof-320", "imagewoof-160"}
    assert set(DATASETS) == names
    for name, info in DATASETS.items():
        assert info.name == name
        assert info.url == f"https://s3.amazonaws.com/fast-ai-imageclas/{info.folder}.tgz"
        assert info.md5 is None or len(info.md5) == 32 and int(info.md5, 16) >= 0
    assert DATASETS["imagenette-320"].folder == "imagenette2-320"


def test_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("VIVACE_HOME", str(tmp_path / "x"))
    assert data_home() == tmp_path / "x"
    monkeypatch.delenv("VIVACE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_home() == tmp_path / ".cache" / "vivace"


def test_download_http(home, tarball, server, tmp_path):
    archive, md5 = tarball
    got = download(f"{server}/{archive.name}", tmp_path / "dl", md5=md5, progress=False)
    assert got == tmp_path / "dl" / archive.name
    assert got.read_bytes() == archive.read_bytes()
    assert not list(got.parent.glob("*.part"))


def test_download_file_url_defaults_to_data_home(home, tarball):
    archive, md5 = tarball
    got = download(archive.as_uri(), md5=md5, progress=False)
    assert got == home / archive.name and got.read_bytes() == archive.read_bytes()


def test_download_bad_checksum(home, tarball, server):
    with pytest.raises(RuntimeError, match="checksum mismatch") as info:
        download(f"{server}/{tarball[0].name}", md5="0" * 32, progress=False)
    assert "--data" in str(info.value)
    assert not any(home.iterdir())  # neither the file nor the .part is left behind


def test_download_offline_names_local_copy(home, closed_url):
    with pytest.raises(RuntimeError, match="could not download") as info:
        download("imagenette-160", url=closed_url, progress=False)
    message = str(info.value)
    assert str(home / FOLDER) in message and "--data" in message


def test_download_skips_existing_verified_file(home, tarball, closed_url):
    archive, md5 = tarball
    home.mkdir()
    (home / archive.name).write_bytes(archive.read_bytes())
    assert download(closed_url, md5=md5, progress=False) == home / archive.name


def test_download_rejects_non_url():
    with pytest.raises(ValueError, match="neither a known dataset"):
        download("not-a-dataset", progress=False)


def test_ensure_dataset_downloads_and_extracts(home, tarball, server, monkeypatch):
    use_url(monkeypatch, f"{server}/{tarball[0].name}", tarball[1])
    folder = ensure_dataset("imagenette-160", progress=False)
    assert folder == home / FOLDER
    assert (folder / "val" / "dog" / "2.jpg").is_file()
    assert not list(home.glob(".extract-*"))
    assert make_source(folder).vocab == ["cat", "dog"]


def test_processes_sharing_a_data_home_fetch_a_dataset_once(home, tarball, server, monkeypatch):
    """Two machines' first processes on one data home: the second waits for the first's lock, then
    finds the folder. Threads here: each opens the lock file itself."""
    use_url(monkeypatch, f"{server}/{tarball[0].name}", tarball[1])
    fetching, calls, found = threading.Event(), [], []
    real = datasets.download

    def slow(*args, **kwargs) -> Path:
        calls.append(args)
        fetching.set()
        time.sleep(0.3)  # the second process arrives meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "download", slow)
    first = threading.Thread(target=lambda: found.append(ensure_dataset("imagenette-160", progress=False)))
    first.start()
    fetching.wait(timeout=30)
    second = ensure_dataset("imagenette-160", progress=False)
    first.join(timeout=30)
    assert len(calls) == 1
    assert found == [second] == [home / FOLDER]


def test_ensure_dataset_existing_folder_skips_download(home, closed_url, monkeypatch):
    use_url(monkeypatch, closed_url, None)
    (home / FOLDER).mkdir(parents=True)
    assert ensure_dataset("imagenette-160") == home / FOLDER


def test_ensure_dataset_offline(home, closed_url, monkeypatch):
    use_url(monkeypatch, closed_url, None)
    with pytest.raises(RuntimeError, match=f"place the extracted folder at .*{FOLDER}"):
        ensure_dataset("imagenette-160", progress=False)


def test_ensure_dataset_bad_checksum(home, tarball, server, monkeypatch):
    use_url(monkeypatch, f"{server}/{tarball[0].name}", "f" * 32)
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        ensure_dataset("imagenette-160", progress=False)
    assert not (home / FOLDER).exists()


def test_ensure_dataset_unknown_name():
    with pytest.raises(ValueError, match="known datasets: imagenette"):
        ensure_dataset("imagenet-21k")


def make_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    """Write a .tar whose members are given as TarInfo (regular files get a few bytes)."""
    with tarfile.open(path, "w") as tar:
        for info in members:
            data = b"data" if info.isfile() else None
            info.size = len(data) if data else 0
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "members, reason",
    [
        ([file_member("ok/a.txt"), file_member("../evil.txt")], "climbs out"),
        ([file_member("ok/../../evil.txt")], "climbs out"),
        ([file_member("/tmp/evil.txt")], "absolute path"),
        ([link_member("ok/link", "../../etc")], "climbs out"),
        ([link_member("ok/link", "/etc/passwd")], "absolute path"),
        ([link_member("ok/hard", "../outside.txt", tarfile.LNKTYPE)], "climbs out"),
        # Each link stays inside on paper; together they escape: "b" -> "a/.." -> "./..".
        ([link_member("a", "."), link_member("b", "a/.."), file_member("b/evil.txt")], "symlink"),
        ([link_member("ok", "."), file_member("ok/../../evil.txt")], "symlink"),
    ],
)
def test_safe_extract_refuses_escapes(tmp_path, members, reason):
    archive = make_tar(tmp_path / "bad.tar", members)
    target = tmp_path / "out"
    with pytest.raises(ValueError, match=reason):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_allows_links_inside(tmp_path):
    members = [
        file_member("d/a.txt"),
        link_member("d/link", "a.txt"),
        link_member("d/hard", "d/a.txt", tarfile.LNKTYPE),
    ]
    target = safe_extract(make_tar(tmp_path / "ok.tar", members), tmp_path / "out")
    assert (target / "d" / "link").read_bytes() == b"data"
    assert (target / "d" / "hard").read_bytes() == b"data"


def test_safe_extract_zip(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("ds/train/cat/1.jpg", b"x")
    assert (safe_extract(good, tmp_path / "out") / "ds" / "train" / "cat" / "1.jpg").is_file()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(ValueError, match="climbs out"):
        safe_extract(bad, tmp_path / "out2")


def test_safe_extract_interrupted_leaves_nothing(tarball, tmp_path):
    truncated = tmp_path / "cut.tgz"
    truncated.write_bytes(tarball[0].read_bytes()[:-200])
    target = tmp_path / "out"
    with pytest.raises((tarfile.TarError, EOFError, OSError)):
        safe_extract(truncated, target)
    assert list(target.iterdir()) == []  # no half-extracted folder, no leftover temp folder


def test_safe_extract_existing_entry_and_bad_suffix(tarball, tmp_path):
    target = tmp_path / "out"
    safe_extract(tarball[0], target)
    with pytest.raises(ValueError, match="already exists"):
        safe_extract(tarball[0], target)
    with pytest.raises(ValueError, match="supported archives"):
        safe_extract(tmp_path / "data.rar", target)


def test_resolve_data(home, tmp_path, monkeypatch, closed_url):
    assert resolve_data(None) == embedded_path()
    assert resolve_data(tmp_path) == tmp_path
    assert resolve_data(str(tmp_path)) == tmp_path
    use_url(monkeypatch, closed_url, None)
    (home / FOLDER).mkdir(parents=True)
    assert resolve_data("imagenette-160") == home / FOLDER
    with pytest.raises(ValueError, match="imagenette, imagenette-320.*imagewoof-160"):
        resolve_data("no/such/folder")


def test_embedded_dataset():
    src = make_source(embedded_path())
    assert len(src.vocab) == 10 and src.vocab[0] == "n01440764"
    assert len(src.train_files) == 400 and len(src.valid_files) == 100
    assert all(src.train_labels.count(i) == 40 and src.valid_labels.count(i) == 10 for i in range(10))
    with Image.open(src.train_files[0]) as image:
        assert image.size == (128, 128) and image.mode == "RGB"
    readme = (embedded_path() / "README.md").read_text(encoding="utf-8")
    assert "English springer" in readme and "parachute" in readme
    total = sum(p.stat().st_size for p in embedded_path().rglob("*") if p.is_file())
    assert total < 4_000_000
    assert datasets.embedded_path().name == "embedded"
