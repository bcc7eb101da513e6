"""The decoded presize cache: every image decoded once, stored as its centre square, in one memmap.

Layout of a cache directory `<root>/<key[:16]>/`:
- `pixels.u8`: raw uint8 array (N, presize, presize, 3), RGB, row i = files[i] (zeros if skipped).
- `index.json`: presize, n, files, ok, skipped. Written last and atomically, so a directory
  without it is an interrupted build and is rebuilt.
The key hashes the format version, presize and each file's (absolute path, size, mtime_ns), so
adding, removing or touching a file, or changing presize, builds a new cache.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from tqdm import tqdm

from ..files import atomic_write
from ..outputs import ensure_writable_folder

FORMAT_VERSION = 1  # bump when the decoding or the file layout changes: old caches then miss
PIXELS_NAME = "pixels.u8"
INDEX_NAME = "index.json"
N_NAMED_IN_WARNING = 5  # skipped files named in the post-build warning
RESAMPLE_REDUCING_GAP = 3.0  # Pillow: >= 3 is indistinguishable from a full-resolution resample
# What Pillow raises on bad input (its fuzzers expect these); anything else is a bug and propagates.
DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error)
BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
WHITE = (255, 255, 255, 255)


def load_image_rgb(path: Path, presize: int) -> np.ndarray:
    """Decode `path` to its centre square, `presize` px a side: uint8 (presize, presize, 3) RGB."""
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; we refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                # JPEG only: decode at 1/2, 1/4 or 1/8 scale, keeping both sides >= presize.
                img.draft("RGB", (presize, presize))
                return prepare_image(img, presize)
        except BOMB_ERRORS as exc:
            raise ValueError(
                f"{path}: refused as a possible decompression bomb ({exc}). If you trust this "
                "file, raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) before building."
            ) from exc


def prepare_image(img: Image.Image, presize: int) -> np.ndarray:
    """An opened image (any mode) to its centre square: uint8 (presize, presize, 3) RGB.

    Rotates `img` in place by its EXIF orientation (pass a copy to keep yours unchanged).
    """
    ImageOps.exif_transpose(img, in_place=True)
    return np.asarray(_centre_square(_to_rgb(img), presize))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency over white, 16/32-bit greys scaled (not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode in HIGH_BIT_DEPTH_MODES:
        return _high_bit_depth_to_l(img).convert("RGB")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit int) grey to 8-bit L, mapping the 16-bit range 0..65535 onto 0..255."""
    a = np.asarray(img).astype(np.float32)
    # "I" images are usually 16-bit data widened; wider data is scaled by its own maximum.
    top = max(65535.0, float(a.max()))
    return Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")


def _centre_square(img: Image.Image, presize: int) -> Image.Image:
    """Shorter side to `presize`, longer side centre-cropped, in one resample of the crop box."""
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return img.resize((presize, presize), Image.Resampling.LANCZOS, box=box,
                      reducing_gap=RESAMPLE_REDUCING_GAP)


class ImageCache:
    """A built cache opened read-only: `pixels` (N, P, P, 3) uint8 memmap plus its index."""

    def __init__(self, directory: Path, pixels: np.ndarray, files: list[Path], ok: np.ndarray,
                 skipped: list[tuple[Path, str]]) -> None:
        self.directory = directory
        self.pixels = pixels
        self.presize = int(pixels.shape[1])
        self.files = files
        self.ok = ok
        self.skipped = skipped

    @classmethod
    def open(cls, directory: Path) -> ImageCache:
        """Open a complete cache directory; ValueError if it is missing, partial or stale."""
        directory = Path(directory)
        index = _read_index(directory)
        n, p = index["n"], index["presize"]
        pixels_path = directory / PIXELS_NAME
        expected = n * p * p * 3
        if not pixels_path.is_file() or pixels_path.stat().st_size != expected:
            raise ValueError(f"{pixels_path} is missing or not {expected} bytes; delete "
                             f"{directory} and build the cache again")
        pixels = np.memmap(pixels_path, dtype=np.uint8, mode="r", shape=(n, p, p, 3))
        files = [Path(f) for f in index["files"]]
        skipped = [(Path(f), reason) for f, reason in index["skipped"]]
        return cls(directory, pixels, files, np.array(index["ok"], dtype=bool), skipped)

    def __len__(self) -> int:
        return len(self.files)

    def __reduce__(self) -> tuple:
        # Pickle as "reopen this directory": a memmap would otherwise pickle all its pixels.
        return (ImageCache.open, (self.directory,))

    def __repr__(self) -> str:
        return (f"ImageCache({len(self)} images, {self.presize}px, "
                f"{len(self.skipped)} skipped, {self.directory})")

    def gather(self, indices: np.ndarray, pin_memory: bool = False) -> Tensor:
        """Rows `indices` as a uint8 (B, 3, P, P) tensor with channels_last strides."""
        idx = np.asarray(indices, dtype=np.int64)
        p = self.presize
        out = torch.empty((len(idx), p, p, 3), dtype=torch.uint8, pin_memory=pin_memory)
        # One fancy-index read in file order (page-cache friendly), then one scatter back into
        # batch order: two memcpy passes over the batch, no per-image Python work.
        order = np.argsort(idx, kind="stable")
        out.numpy()[order] = self.pixels[idx[order]]
        return out.permute(0, 3, 1, 2)  # NHWC memory == NCHW channels_last view, no copy


def _read_index(directory: Path) -> dict:
    """The parsed index.json of `directory`; ValueError if absent or from another format."""
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise ValueError(f"{directory} has no {INDEX_NAME}: the build was interrupted or never "
                         "ran; build_cache rebuilds it")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if index.get("version") != FORMAT_VERSION:
        raise ValueError(f"{index_path} has format version {index.get('version')}, this vivace "
                         f"reads {FORMAT_VERSION}; delete {directory} and build again")
    return index


def cache_key(files: list[Path], presize: int) -> str:
    """sha256 hex of the format version, presize and every file's (path, size, mtime_ns)."""
    h = hashlib.sha256(f"vivace-cache {FORMAT_VERSION} {presize}\n".encode())
    for f in files:
        path = os.path.abspath(f)
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # missing or unreadable: still keyed, and skipped at decode time
            size, mtime = -1, -1
        h.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def build_cache(files: list[Path], presize: int, cache_dir: Path | None = None,
                workers: int | None = None, progress: bool = True) -> ImageCache:
    """Decode `files` once into a presize cache (reused while the files are unchanged)."""
    if not files:
        raise ValueError("build_cache got no files; check the data folder and its extensions")
    if presize < 1:
        raise ValueError(f"presize must be a positive number of pixels, got {presize}")
    hint = ""
    if cache_dir is None:
        from .datasets import data_home  # lazy: datasets pulls in download code we don't need

        cache_dir = data_home() / "cache"
        hint = "point VIVACE_HOME at a writable folder (the cache goes to $VIVACE_HOME/cache)"
    directory = Path(cache_dir) / cache_key(files, presize)[:16]
    if (directory / INDEX_NAME).is_file():
        try:
            return ImageCache.open(directory)
        except ValueError as exc:  # damaged (e.g. a truncated pixels file): build it again
            warnings.warn(f"rebuilding the cache: {exc}", stacklevel=2)
    # Checked here, not up front: a read-only data home whose cache is already built is fine.
    ensure_writable_folder(directory, f"the presize cache {cache_dir}", hint)
    paths = [os.path.abspath(f) for f in files]
    n_workers = min(workers or _available_cpus(), len(paths))
    # Decode into a private file, then rename: two processes building the same key (say, DDP
    # ranks) each write a whole file instead of truncating each other's. A build killed here
    # leaves its temp file, deleted by the next build once that process is gone.
    with atomic_write(directory / PIXELS_NAME) as tmp_pixels:
        reasons = _decode_all(paths, tmp_pixels, presize, n_workers, progress)
    skipped = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    index = {"version": FORMAT_VERSION, "presize": presize, "n": len(paths), "files": paths,
             "ok": [r is None for r in reasons], "skipped": skipped}
    with atomic_write(directory / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index), encoding="utf-8")
    if skipped:
        _warn_skipped(skipped, len(paths))
    return ImageCache.open(directory)


def _available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _decode_all(paths: list[str], pixels_path: Path, presize: int, workers: int,
                progress: bool) -> list[str | None]:
    """Decode every path into its row of a fresh pixels file; returns a reason per skipped row."""
    n = len(paths)
    # w+ creates a sparse zero-filled file: skipped rows stay black.
    pixels = np.memmap(pixels_path, dtype=np.uint8, mode="w+", shape=(n, presize, presize, 3))
    reasons: list[str | None] = [None] * n
    show = progress and sys.stderr.isatty()
    with tqdm(total=n, desc=f"caching at {presize}px", unit="img", disable=not show) as bar:
        if workers <= 1:
            for i, path in enumerate(paths):
                reasons[i] = _decode_row(pixels, i, path, presize)
                bar.update()
        else:
            # fork is fast and inherits the parent's Pillow settings; elsewhere spawn works
            # because the worker functions are module-level and the settings are passed on.
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            init_args = (str(pixels_path), n, presize, Image.MAX_IMAGE_PIXELS)
            chunk = max(1, min(64, n // (workers * 8)))
            with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
                jobs = [(i, path, presize) for i, path in enumerate(paths)]
                for i, reason in pool.imap_unordered(_decode_in_worker, jobs, chunksize=chunk):
                    reasons[i] = reason
                    bar.update()
    pixels.flush()
    del pixels
    return reasons


def _decode_row(pixels: np.ndarray, i: int, path: str, presize: int) -> str | None:
    """Write row i from `path`; the reason it was skipped, or None on success."""
    try:
        pixels[i] = load_image_rgb(Path(path), presize)
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_worker_pixels: np.ndarray | None = None  # per worker process: the memmap opened r+ once


def _init_worker(pixels_path: str, n: int, presize: int, max_image_pixels: int | None) -> None:
    """Pool initializer: open the pixels file for writing, match the parent's bomb limit."""
    global _worker_pixels
    _worker_pixels = np.memmap(pixels_path, dtype=np.uint8, mode="r+",
                               shape=(n, presize, presize, 3))
    Image.MAX_IMAGE_PIXELS = max_image_pixels  # spawned workers would otherwise use the default


def _decode_in_worker(job: tuple[int, str, int]) -> tuple[int, str | None]:
    """Pool task: decode one file straight into the shared memmap, return only its status."""
    i, path, presize = job
    assert _worker_pixels is not None, "_init_worker did not run"
    return i, _decode_row(_worker_pixels, i, path, presize)


def _warn_skipped(skipped: list[tuple[str, str]], n: int) -> None:
    """One warning for the whole build: how many files were skipped, the first few and why."""
    named = "; ".join(f"{path} ({reason})" for path, reason in skipped[:N_NAMED_IN_WARNING])
    more = len(skipped) - N_NAMED_IN_WARNING
    tail = f"; and {more} more" if more > 0 else ""
    warnings.warn(
        f"skipped {len(skipped)} of {n} images that could not be decoded: {named}{tail}. "
        "They are marked ok=False in the cache (see ImageCache.skipped); fix or delete them.",
        stacklevel=3,
    )
