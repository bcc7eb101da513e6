"""The decoded presize cache: every image decoded once, kept whole (aspect ratio and all), in one memmap.

Each image is resized so its shorter side is `presize` (no resample when it already is) and kept
whole up to `max_aspect` (longer side / shorter side; wider images lose the ends of their long
side). Images are stored as `Pictures` store them: landscape at the top-left of a canvas
`presize` tall and as wide as the widest image, a portrait image transposed.

Layout of a cache directory `<root>/<key[:16]>/`:
- `pixels.u8`: raw uint8 array (N, presize, width, 3), RGB, row i = files[i] (zeros if skipped).
- `index.json`: presize, width, max_aspect, n, files, sizes (each (height, width) as seen), ok,
  skipped. Written last and atomically, so a directory without it is an interrupted build and is
  rebuilt.
- `.lock`: held (flock) by the process building the cache; another process building the same one
  (a rank, or a machine sharing the data home) waits, then finds it built.
The key hashes the format version, presize, max_aspect and each file's (absolute path, size,
mtime_ns, inode, ctime_ns), so adding, removing, touching or rewriting a file, or changing either
setting, builds a new cache. The ctime is what catches a rewrite whose size and mtime were kept
(`os.utime` restores an mtime, nothing restores a ctime); chmod and renames change it too, so a
file that was unreadable when the cache was built is decoded again once it is fixed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import stat
import struct
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ..files import atomic_write, ensure_writable_folder, remove_stale_temps, waiting_lock
from ..pictures import Pictures, stored_view

FORMAT_VERSION = 2  # bump when the decoding or the file layout changes: old caches then miss
# Longest side / shortest side kept whole. 3 keeps all but 0.1 % of Imagenette whole (12 of
# 13,394 images are wider; 99 % are under 2.2) and fastai's crops reach the ends of a 3:1
# panorama; the canvas costs at most 3x a centre-square cache, and no more than the widest
# image needs (squares cost 1x). 1 = the centre square (what vivace cached before 2026-12-05).
MAX_ASPECT = 3.0
# The largest presize (and so crop size) vivace accepts, from a flag, config.json or a bundle: a
# 4096 px image at the 3:1 aspect bound is 151 MB decoded. A bound, so an edited file cannot ask
# for gigabytes (a bundle's presize 60000 would allocate 14 GB for one image).
MAX_PRESIZE_PX = 4096
PIXELS_NAME = "pixels.u8"
INDEX_NAME = "index.json"
LOCK_NAME = ".lock"  # flock-ed by the process building the cache
N_NAMED_IN_WARNING = 5  # skipped files named in the skipped-images warning
# Free space asked beyond the pixels file: index.json (a path and a size per image) and slack.
FREE_SPACE_MARGIN_BYTES = 1 << 20
INDEX_BYTES_PER_IMAGE = 512
HEADER_CHUNK = 1024  # files per task when several processes read the headers
RESAMPLE_REDUCING_GAP = 3.0  # Pillow: >= 3 is indistinguishable from a full-resolution resample
# What Pillow raises on bad input (its fuzzers expect these); anything else is a bug and propagates.
DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error)
BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
WHITE = (255, 255, 255, 255)


def load_image_rgb(path: Path, presize: int, max_aspect: float = MAX_ASPECT) -> np.ndarray:
    """Decode `path`, shorter side `presize` px, whole up to `max_aspect`: uint8 (h, w, 3) RGB."""
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; we refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with open_image(path) as img:
                # JPEG only: decode at 1/2, 1/4 or 1/8 scale, keeping both sides >= presize.
                img.draft("RGB", (presize, presize))
                return prepare_image(img, presize, max_aspect)
        except BOMB_ERRORS as exc:
            raise ValueError(
                f"{path}: refused as a possible decompression bomb ({exc}). If you trust this "
                "file, raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) before building."
            ) from exc


def open_image(path: str | Path) -> Image.Image:
    """Image.open, for regular files only: opening a FIFO named `x.png` would wait forever for a writer."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # FileNotFoundError (an OSError) if it is gone
        raise ValueError(f"{path} is not a regular file (a FIFO, socket or device): only image files are read")
    return Image.open(path)


def prepare_image(img: Image.Image, presize: int, max_aspect: float = MAX_ASPECT) -> np.ndarray:
    """An opened image (any mode), shorter side to `presize`, whole up to `max_aspect`: uint8 (h, w, 3) RGB.

    Rotates `img` in place by its EXIF orientation (pass a copy to keep yours unchanged).
    """
    ImageOps.exif_transpose(img, in_place=True)
    return np.asarray(_presized(_to_rgb(img), presize, max_aspect))


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


def presized_shape(width: int, height: int, presize: int, max_aspect: float) -> tuple[int, int]:
    """(width, height) of an image once presized: shorter side `presize`, aspect capped at `max_aspect`."""
    short, long = min(width, height), max(width, height)
    long_px = max(presize, min(round(long * presize / short), int(presize * max_aspect)))
    return (long_px, presize) if width >= height else (presize, long_px)


def _presized(img: Image.Image, presize: int, max_aspect: float) -> Image.Image:
    """Shorter side to `presize`, the longer one centre-cut to `max_aspect`, in one resample of the box."""
    w, h = img.size
    out_w, out_h = presized_shape(w, h, presize, max_aspect)
    scale = min(w, h) / presize  # source pixels per output pixel, the same along both sides
    box_w, box_h = min(w, out_w * scale), min(h, out_h * scale)  # rounding up may pass the edge
    if (out_w, out_h) == (w, h):
        return img  # already presized (imagenette2-160 at presize 160): the file's own pixels
    box = ((w - box_w) / 2, (h - box_h) / 2, (w + box_w) / 2, (h + box_h) / 2)
    return img.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box,
                      reducing_gap=RESAMPLE_REDUCING_GAP)


class ImageCache:
    """A built cache opened read-only: `pixels` (N, P, W, 3) uint8 memmap, `sizes` (N, 2), and its index.

    Per image it holds numpy rows only (pixels, sizes, ok), not the file list: at ImageNet's 1.28 M
    images a list of paths is over 100 MB in every training process. `files` reads it from
    index.json when asked.
    """

    def __init__(self, directory: Path, pixels: np.ndarray, ok: np.ndarray, skipped: list[tuple[Path, str]],
                 sizes: np.ndarray | None = None, max_aspect: float = MAX_ASPECT) -> None:
        self.directory = directory
        self.pixels = pixels
        self.presize = int(pixels.shape[1])
        if sizes is None:  # every image fills the canvas
            sizes = np.tile(np.array(pixels.shape[1:3], dtype=np.int64), (len(pixels), 1))
        self.sizes = sizes  # int64 (N, 2): each image's (height, width) as seen
        self.transposed = sizes[:, 0] > sizes[:, 1]  # portrait images are stored transposed
        self.ok = ok
        self.skipped = skipped
        self.max_aspect = max_aspect

    @classmethod
    def open(cls, directory: Path) -> ImageCache:
        """Open a complete cache directory; ValueError if it is missing, partial or stale."""
        directory = Path(directory)
        index = _read_index(directory)
        n, p, w = index["n"], index["presize"], index["width"]
        pixels_path = directory / PIXELS_NAME
        expected = n * p * w * 3
        if not pixels_path.is_file() or pixels_path.stat().st_size != expected:
            raise ValueError(f"{pixels_path} is missing or not {expected} bytes; delete "
                             f"{directory} and build the cache again")
        pixels = np.memmap(pixels_path, dtype=np.uint8, mode="r", shape=(n, p, w, 3))
        skipped = [(Path(f), reason) for f, reason in index["skipped"]]
        sizes = np.array(index["sizes"], dtype=np.int64).reshape(n, 2)
        return cls(directory, pixels, np.array(index["ok"], dtype=bool), skipped, sizes, index["max_aspect"])

    @property
    def files(self) -> list[Path]:
        """The cached files in row order, read from index.json (not kept: see the class docstring)."""
        if not (self.directory / INDEX_NAME).is_file():
            raise ValueError(f"{self.directory} has no {INDEX_NAME}: this cache was made in memory, its files unknown")
        return [Path(f) for f in _read_index(self.directory)["files"]]

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def width(self) -> int:
        """The canvas width, px: the longest side of any image (presize for squares)."""
        return int(self.pixels.shape[2])

    def __reduce__(self) -> tuple:
        # Pickle as "reopen this directory": a memmap would otherwise pickle all its pixels.
        return (ImageCache.open, (self.directory,))

    def __repr__(self) -> str:
        return (f"ImageCache({len(self)} images, {self.presize}px short side, up to {self.width}px "
                f"long, {len(self.skipped)} skipped, {self.directory})")

    def gather(self, indices: np.ndarray, pin_memory: bool = False) -> Pictures:
        """Rows `indices` as Pictures: a uint8 (B, 3, P, W) canvas with channels_last strides."""
        idx = np.asarray(indices, dtype=np.int64)
        out = torch.empty((len(idx), self.presize, self.width, 3), dtype=torch.uint8, pin_memory=pin_memory)
        # One fancy-index read in file order (page-cache friendly), then one scatter back into
        # batch order: two memcpy passes over the batch, no per-image Python work.
        order = np.argsort(idx, kind="stable")
        out.numpy()[order] = self.pixels[idx[order]]
        # NHWC memory == NCHW channels_last view, no copy
        return Pictures(out.permute(0, 3, 1, 2), torch.from_numpy(self.sizes[idx]),
                        torch.from_numpy(self.transposed[idx]))


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


def cache_key(files: list[Path], presize: int, max_aspect: float = MAX_ASPECT) -> str:
    """sha256 hex of the format version, presize, max_aspect and every file's (path, size, mtime_ns,
    inode, ctime_ns): one stat per file, no reading (see the module docstring)."""
    h = hashlib.sha256(f"vivace-cache {FORMAT_VERSION} {presize} {max_aspect!r}\n".encode())
    for f in files:
        path = os.path.abspath(f)
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}"
        except OSError:  # missing or unreadable: still keyed, and skipped at decode time
            stamp = "missing"
        h.update(f"{path}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def build_cache(files: list[Path], presize: int, cache_dir: Path | None = None,
                workers: int | None = None, progress: bool = True,
                max_aspect: float = MAX_ASPECT) -> ImageCache:
    """Decode `files` once into a presize cache (reused while the files and settings are unchanged)."""
    if not files:
        raise ValueError("build_cache got no files; check the data folder and its extensions")
    if presize < 1:
        raise ValueError(f"presize must be a positive number of pixels, got {presize}")
    if not 1.0 <= max_aspect <= 100.0:
        raise ValueError(f"max_aspect={max_aspect} must be in [1, 100] (longer side / shorter side)")
    in_data_home = cache_dir is None
    hint = "point VIVACE_HOME at a writable folder (the cache goes to $VIVACE_HOME/cache)" if in_data_home else ""
    directory = cache_directory(files, presize, max_aspect, cache_dir)
    cache, _ = _finished_cache(directory)
    if cache is None:
        # Checked here, not up front: a read-only data home whose cache is already built is fine.
        ensure_writable_folder(directory, f"the presize cache {directory.parent}", hint)
        with waiting_lock(directory / LOCK_NAME):  # one builder at a time, the next finds it built
            cache, damage = _finished_cache(directory)  # built by another process while this one waited
            if cache is None:
                if damage:
                    warnings.warn(f"rebuilding the cache: {damage}", stacklevel=2)
                cache = _build(files, presize, directory, workers, progress, max_aspect, in_data_home)
    if cache.skipped:  # said on every run, not only the first: they stay out until fixed
        _warn_skipped(cache.skipped, len(cache), directory)
    return cache


def cache_directory(files: Sequence[Path], presize: int, max_aspect: float = MAX_ASPECT,
                    cache_dir: Path | None = None) -> Path:
    """The folder that holds (or will hold) the cache of `files`: under `cache_dir`, else the data home's cache/."""
    if cache_dir is None:
        from .datasets import data_home  # lazy: datasets pulls in download code we don't need

        cache_dir = data_home() / "cache"
    return Path(cache_dir) / cache_key(files, presize, max_aspect)[:16]


def _finished_cache(directory: Path) -> tuple[ImageCache | None, str]:
    """The complete cache in `directory`, else None and what is wrong with the one there ("": none finished)."""
    if not (directory / INDEX_NAME).is_file():
        return None, ""
    try:
        return ImageCache.open(directory), ""
    except ValueError as exc:  # damaged (e.g. a truncated pixels file): built again
        return None, str(exc)


def _build(files: list[Path], presize: int, directory: Path, workers: int | None, progress: bool,
           max_aspect: float, in_data_home: bool) -> ImageCache:
    """Decode `files` into the cache `directory`: the pixels file, then its index (the mark of a finished build)."""
    paths = [os.path.abspath(f) for f in files]
    n_workers = min(workers or _available_cpus(), len(paths))
    shape = (len(paths), presize, canvas_width(paths, presize, max_aspect, n_workers), 3)
    remove_stale_temps(directory, PIXELS_NAME)  # a killed build's pixels would count as used space
    check_free_space(directory, shape, in_data_home)
    # Decode into a private file, then rename: a process that could not lock the folder
    # (waiting_lock) writes a whole file instead of truncating another's. A build killed here
    # leaves its temp file, deleted by the next build once that process is gone.
    with atomic_write(directory / PIXELS_NAME) as tmp_pixels:
        rows = _decode_all(paths, tmp_pixels, shape, max_aspect, n_workers, progress)
    skipped = [(p, r) for p, (r, _) in zip(paths, rows) if r is not None]
    index = {"version": FORMAT_VERSION, "presize": presize, "width": shape[2], "max_aspect": max_aspect,
             "n": len(paths), "files": paths, "sizes": [size for _, size in rows],
             "ok": [r is None for r, _ in rows], "skipped": skipped}
    with atomic_write(directory / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index), encoding="utf-8")
    return ImageCache.open(directory)


def check_free_space(directory: Path, shape: tuple[int, int, int, int], in_data_home: bool = True) -> None:
    """RuntimeError naming the folder, the bytes needed and free, before the pixels file is written.

    Its pages are written through a memmap: on a full disk the kernel answers with SIGBUS, which
    kills the process without a word (or a decoding worker, leaving its pool waiting).
    """
    needed = int(np.prod(shape)) + shape[0] * INDEX_BYTES_PER_IMAGE + FREE_SPACE_MARGIN_BYTES
    free = shutil.disk_usage(directory).free
    if free < needed:
        where = ("free some, or point VIVACE_HOME at a disk with room (the cache goes to $VIVACE_HOME/cache)"
                 if in_data_home else "free some, or pass a cache_dir on a disk with room")
        raise RuntimeError(f"the presize cache {directory} needs {_mib(needed)} for {shape[0]:,} images at "
                           f"{shape[1]} px, but its disk has {_mib(free)} free: {where}")


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def _available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def canvas_width(paths: list[str], presize: int, max_aspect: float, workers: int = 1) -> int:
    """The longest presized side over `paths`, read from the file headers (no decoding), in `workers`
    processes: one process reads ImageNet's 1.28 M headers in over a minute, before any decoding."""
    if workers <= 1 or len(paths) < 2 * HEADER_CHUNK:
        return _headers_width(paths, presize, max_aspect)
    chunks = [paths[i:i + HEADER_CHUNK] for i in range(0, len(paths), HEADER_CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_match_bomb_limit,
                             initargs=(Image.MAX_IMAGE_PIXELS,)) as pool:
        return max(pool.map(_headers_width, chunks, repeat(presize), repeat(max_aspect)))


def _headers_width(paths: list[str], presize: int, max_aspect: float) -> int:
    """canvas_width in this process."""
    width = presize
    for path in paths:
        try:
            with open_image(path) as img:  # reads the header only
                width = max(width, max(presized_shape(*img.size, presize, max_aspect)))
        except (*DECODE_ERRORS, *BOMB_ERRORS):
            continue  # reported when the decode fails
    return width


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork is fast and inherits the parent's Pillow settings; elsewhere spawn works because the
    worker functions are module-level and the settings are passed on."""
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def _match_bomb_limit(max_image_pixels: int | None) -> None:
    """Pool initializer: the parent's decompression-bomb limit (spawned workers would use the default)."""
    Image.MAX_IMAGE_PIXELS = max_image_pixels


Row = tuple[str | None, tuple[int, int]]  # (why it was skipped or None, (height, width) as seen)


def _decode_all(paths: list[str], pixels_path: Path, shape: tuple[int, int, int, int],
                max_aspect: float, workers: int, progress: bool) -> list[Row]:
    """Decode every path into its row of a fresh pixels file; a (reason, size) per row."""
    n, presize = shape[0], shape[1]
    # w+ creates a sparse zero-filled file: skipped rows and the canvas beyond each image stay black.
    pixels = np.memmap(pixels_path, dtype=np.uint8, mode="w+", shape=shape)
    rows: list[Row] = [(None, (0, 0))] * n
    show = progress and sys.stderr.isatty()
    with tqdm(total=n, desc=f"caching at {presize}px", unit="img", disable=not show) as bar:
        if workers <= 1:
            for i, path in enumerate(paths):
                rows[i] = _decode_row(pixels, i, path, max_aspect)
                bar.update()
        else:
            init_args = (str(pixels_path), shape, Image.MAX_IMAGE_PIXELS)
            chunk = max(1, min(64, n // (workers * 8)))
            jobs = [(i, path, max_aspect) for i, path in enumerate(paths)]
            # An executor, not a multiprocessing.Pool: a Pool replaces a worker that dies (killed,
            # out of memory, SIGBUS) and waits forever for its task; an executor raises.
            try:
                with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker,
                                         initargs=init_args) as pool:
                    for i, row in pool.map(_decode_in_worker, jobs, chunksize=chunk):
                        rows[i] = row
                        bar.update()
            except BrokenProcessPool as err:
                raise RuntimeError(f"a process decoding images into the presize cache {pixels_path.parent} "
                                   f"died ({err}): a full disk or too little memory are the usual causes; "
                                   "--workers 1 decodes in this process") from None
    pixels.flush()
    del pixels
    return rows


def _decode_row(pixels: np.ndarray, i: int, path: str, max_aspect: float) -> Row:
    """Write row i from `path`: (None, its size as seen) on success, (the reason, (0, 0)) if skipped."""
    try:
        image = load_image_rgb(Path(path), pixels.shape[1], max_aspect)
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}", (0, 0)
    stored = stored_view(image)
    # A JPEG decoded at reduced scale may round its long side one pixel past the header's.
    stored = stored[:, :pixels.shape[2]]
    pixels[i, :stored.shape[0], :stored.shape[1]] = stored
    h, w = (stored.shape[1], stored.shape[0]) if image.shape[0] > image.shape[1] else stored.shape[:2]
    return None, (int(h), int(w))


_worker_pixels: np.ndarray | None = None  # per worker process: the memmap opened r+ once


def _init_worker(pixels_path: str, shape: tuple[int, int, int, int], max_image_pixels: int | None) -> None:
    """Pool initializer: open the pixels file for writing, match the parent's bomb limit."""
    global _worker_pixels
    _worker_pixels = np.memmap(pixels_path, dtype=np.uint8, mode="r+", shape=shape)
    _match_bomb_limit(max_image_pixels)


def _decode_in_worker(job: tuple[int, str, float]) -> tuple[int, Row]:
    """Pool task: decode one file straight into the shared memmap, return only its status."""
    i, path, max_aspect = job
    assert _worker_pixels is not None, "_init_worker did not run"
    return i, _decode_row(_worker_pixels, i, path, max_aspect)


def _warn_skipped(skipped: list[tuple[str | Path, str]], n: int, directory: Path) -> None:
    """One warning for the whole cache, on every run: how many files are left out, the first few and why."""
    named = "; ".join(f"{path} ({reason})" for path, reason in skipped[:N_NAMED_IN_WARNING])
    more = len(skipped) - N_NAMED_IN_WARNING
    tail = f"; and {more} more" if more > 0 else ""
    warnings.warn(
        f"skipped {len(skipped)} of {n} images that could not be decoded when the cache was built: "
        f"{named}{tail}. They are left out (ok=False in ImageCache.skipped); fix or delete them (a changed "
        f"file is decoded again), or delete {directory} to retry them all.",
        stacklevel=3,
    )
