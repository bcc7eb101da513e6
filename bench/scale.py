"""ImageNet-size data on one machine: a synthetic 1,000-class folder, its cache build and training memory.

    python -m bench scale make --out ../scale/synth-100k --train 100000 --valid 10000
    python -m bench scale make --out ../scale/synth-10k --train 10000 --valid 1000
    python -m bench scale build --data ../scale/synth-100k --counts 3000 100000 --workers 1 2 --record
    python -m bench scale train --data ../scale/synth-10k --data ../scale/synth-100k --record
    python -m bench scale train --data ../scale/synth-100k --memory-limit 1G --record

`make` writes train/ and val/ in ImageNet's shape (1,000 `n%08d` class folders of `.JPEG` files,
shorter side 64-96 px, landscape, portrait and square), each image a class colour, a gradient and
blocks of noise, seeded by its index: the same folder on every machine. Nothing here is committed.

`build`: for each count and number of build processes, a fresh process builds the cache of `count`
files spread over the classes into a temporary folder: seconds for the folder scan, the cache key
and the header pass (the canvas width) apart, the build (its header pass and the decode) and its
seconds per 1,000 images, and the peak anonymous memory of the builder and of its decoding processes.

`train`: `vivace train` on each folder, for as many epochs as make 100,000 images seen (a tiny
xresnet18 at 32 px: the data path is measured, not the model), its resident memory sampled: the
anonymous part (RSS less the memory-mapped cache and the page cache) is what must stay flat from
10,000 to 100,000 images, at the same number of steps.
`--memory-limit` runs it inside a memory cgroup smaller than the cache: the memory map pages in.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .common import bench_command, bench_env, data_folder, machine, make_parser, record

N_CLASSES = 1000
SHORT_SIDES = (64, 97)  # shorter side range, px: small JPEGs, so 100,000 fit in ~0.5 GB
# (width, height) ratios and how often: ImageNet is mostly 4:3 landscape, some portrait and square.
ASPECTS = ((4 / 3, 0.55), (3 / 4, 0.2), (1.0, 0.15), (16 / 9, 0.07), (2.0, 0.03))
JPEG_QUALITY = 85
BUILD_PRESIZE = 64
TRAIN_FLAGS = ["--arch", "xresnet18", "--widen", "0.25", "--size-px", "32", "--presize-px", "48",
               "--batch-size", "128", "--valid-every", "0", "--seed", "0"]
# Every training run sees this many images (10 epochs of 10,000, 1 of 100,000): the same steps, so a
# difference in memory is the data's, not a longer run's (allocators grow with the steps taken).
IMAGES_SEEN = 100_000
SAMPLE_EVERY_S = 0.1
MADE = "synthetic.json"  # what `make` wrote, beside train/ and val/
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def class_name(c: int) -> str:
    """A WordNet-shaped folder name: n00000000 ... n00000999."""
    return f"n{c:08d}"


def synthetic_image(index: int) -> Image.Image:
    """Image `index`: its class's colour, a gradient and noise blocks, ImageNet's aspect ratios, seeded."""
    rng = np.random.default_rng(index)
    short = int(rng.integers(*SHORT_SIDES))
    ratios, weights = zip(*ASPECTS)
    ratio = ratios[rng.choice(len(ratios), p=weights)]
    w, h = (round(short * ratio), short) if ratio >= 1 else (short, round(short / ratio))
    colour = np.array([(index % N_CLASSES * k) % 256 for k in (37, 91, 151)], dtype=np.float32)
    ramp = np.linspace(0, 60, w, dtype=np.float32)[None, :, None]
    blocks = rng.integers(0, 70, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    pixels = np.clip(colour * 0.7 + ramp + blocks, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_image(job: tuple[int, str]) -> int:
    """Pool task: write image `index` to `path`; its byte count."""
    index, path = job
    synthetic_image(index).save(path, quality=JPEG_QUALITY)
    return os.path.getsize(path)


def make_folder(out: Path, n_train: int, n_valid: int, workers: int) -> dict:
    """train/ and val/ under `out`, images spread evenly over N_CLASSES class folders."""
    jobs = []
    for split, n, offset in (("train", n_train, 0), ("val", n_valid, 10**8)):
        for c in range(N_CLASSES):
            (out / split / class_name(c)).mkdir(parents=True, exist_ok=True)
        for i in range(n):  # image i of a split is in class i % N_CLASSES: every class gets its share
            c = i % N_CLASSES
            jobs.append((offset + i, str(out / split / class_name(c) / f"{class_name(c)}_{i}.JPEG")))
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(write_image, jobs, chunksize=256))
    made = {"images": len(jobs), "train": n_train, "valid": n_valid, "bytes": total,
            "seconds": round(time.perf_counter() - start, 1)}
    (out / MADE).write_text(json.dumps(made))  # not an image: find_images passes it by
    return made


def spread(files: list[str], count: int) -> list[str]:
    """`count` of `files` taken at an even stride, so a subset covers every class."""
    if count >= len(files):
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]


def build_one(data: Path, count: int, workers: int, presize: int) -> dict:
    """In a fresh process: scan `data`, build the cache of `count` of its files, time each part."""
    from vivace.data.cache import _build, cache_key, canvas_width
    from vivace.data.sources import FileList, find_image_paths

    sampler = MemorySampler(os.getpid())
    sampler.start()
    start = time.perf_counter()
    # As make_source holds them (a FileList), so the builder's memory is vivace's, not a list of Paths'.
    files = FileList(spread(find_image_paths(data / "train") + find_image_paths(data / "val"), count))
    scanned = time.perf_counter()
    cache_key(files, presize)
    keyed = time.perf_counter()
    canvas_width([str(f) for f in files], presize, 3.0, workers)
    headers = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=data.parent) as tmp:
        # _build itself, not build_cache: no lock or reuse, and its own header pass is timed inside.
        cache = _build(files, presize, Path(tmp), workers, False, 3.0, False)
        built = time.perf_counter()
        n_ok, pixels_mb = int(cache.ok.sum()), cache.pixels.nbytes / 1e6
        del cache
    total_s = built - headers  # the build makes its own header pass: timed apart above, counted once
    return {"images": len(files), "workers": workers, "presize": presize, "ok": n_ok,
            "scan_s": round(scanned - start, 2), "key_s": round(keyed - scanned, 2),
            "headers_s": round(headers - keyed, 2), "build_s": round(total_s, 2),
            "s_per_1000": round(1000 * total_s / len(files), 3),
            "per_process_img_s": round(len(files) / total_s / workers, 1),
            "pixels_mb": round(pixels_mb, 1), **sampler.peaks_mib()}


def run_build(data: Path, counts: list[int], workers: list[int], presize: int) -> list[dict]:
    """build_one in a fresh Python for each (count, workers): no cache or memory carried between them."""
    rows = []
    for count in counts:
        for w in workers:
            out = subprocess.run(bench_command("scale", ["_build-one", "--data", str(data), "--count", str(count),
                                                         "--workers", str(w), "--presize", str(presize)]),
                                 env=bench_env(), capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"build {row['images']:>7,} images, {w} process(es): {row['build_s']:7.1f} s, "
                  f"{row['s_per_1000']:.2f} s per 1,000, {row['per_process_img_s']:.0f} img/s per process; "
                  f"scan {row['scan_s']} s, key {row['key_s']} s; peak anonymous memory {row['peak_anon_mib']:.0f} MiB "
                  f"(decoding processes {row['workers_anon_mib']:.0f} MiB; RSS with the mapped pixels "
                  f"{row['peak_rss_mib']:.0f} MiB)", flush=True)
            rows.append(row)
    return rows


def memory_kib(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) of `pid` in KiB, from /proc; (0, 0) once it is gone.

    RssAnon is the process's own memory; VmRSS adds the file pages it maps (the cache's memmap,
    whose pages the kernel drops under pressure), so RSS alone would count the page cache."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
    except OSError:
        return 0, 0
    return int(fields.get("RssAnon", 0)), int(fields.get("VmRSS", 0))


def children(pid: int) -> list[int]:
    """The direct children of `pid` (its decoding processes), from /proc/<pid>/task/*/children."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class MemorySampler(threading.Thread):
    """Samples the anonymous memory and RSS of a process and its children every SAMPLE_EVERY_S: the peaks, KiB."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.anon, self.peak_rss, self.peak_children_anon = pid, [], 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_S):
            anon, rss = memory_kib(self.pid)
            if anon:
                self.anon.append(anon)
            kids = sum(memory_kib(c)[0] for c in children(self.pid))
            self.peak_rss, self.peak_children_anon = max(self.peak_rss, rss), max(self.peak_children_anon, kids)

    def peaks_mib(self) -> dict[str, float]:
        """The peaks, and the median anonymous memory: the steady state of a run that lasts."""
        self.done.set()
        self.join()
        anon = sorted(self.anon) or [0]
        return {"peak_anon_mib": round(anon[-1] / 1024, 1), "median_anon_mib": round(anon[len(anon) // 2] / 1024, 1),
                "peak_rss_mib": round(self.peak_rss / 1024, 1),
                "workers_anon_mib": round(self.peak_children_anon / 1024, 1)}


def limited_cgroup(limit_bytes: int) -> Path:
    """A fresh cgroup-v1 memory group limited to `limit_bytes` (root only): a process moved in is held to it."""
    group = CGROUP_V1 / f"vivace-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
    except OSError as exc:
        raise SystemExit(f"python -m bench scale: error: --memory-limit needs a writable cgroup-v1 memory "
                         f"controller at {CGROUP_V1} (root): {exc}") from None
    return group


def train_one(data: Path, out: Path, limit_bytes: int | None, images_seen: int = IMAGES_SEEN) -> dict:
    """`vivace train` on `data` for `images_seen` images, its memory sampled every SAMPLE_EVERY_S seconds."""
    made = json.loads((data / MADE).read_text())
    epochs = max(1, round(images_seen / made["train"]))
    group = limited_cgroup(limit_bytes) if limit_bytes else None
    # Under a limit, ask for the cache in RAM: it must fall back to the memory map, saying so.
    resident = ["--data-on-device", "on"] if limit_bytes else []
    command = [sys.executable, "-m", "vivace", "train", "--data", str(data), "--out", str(out), *TRAIN_FLAGS,
               "--epochs", str(epochs), *resident]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if group:
        (group / "cgroup.procs").write_text(str(child.pid))  # before it has imported torch
    sampler = MemorySampler(child.pid)
    sampler.start()
    output = child.stdout.read()  # until it exits
    child.wait()
    peaks = sampler.peaks_mib()
    if group:
        failcnt = int((group / "memory.failcnt").read_text())
        group.rmdir()
    if child.returncode:
        raise SystemExit(f"python -m bench scale: vivace train failed on {data}:\n{output[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    data_line = next((line for line in output.splitlines() if line.startswith("data:")), "")
    return {"data": data.name, "images": made["images"], "epochs": epochs, "index_mb": round(index_bytes(data) / 1e6, 2),
            "seconds": round(time.perf_counter() - start, 1), "accuracy": summary.get("accuracy"),
            **peaks,
            **({"memory_limit_mib": limit_bytes / 2**20, "limit_hits": failcnt, "data_line": data_line}
               if group else {})}


def index_bytes(data: Path) -> int:
    """The size of the index.json of the cache `vivace train` built for `data` with TRAIN_FLAGS."""
    from vivace.data.cache import INDEX_NAME, cache_directory
    from vivace.data.sources import make_source

    source = make_source(data)
    presize = int(TRAIN_FLAGS[TRAIN_FLAGS.index("--presize-px") + 1])
    return (cache_directory(source.train_files + source.valid_files, presize) / INDEX_NAME).stat().st_size


def main(argv: list[str]) -> int:
    parser = make_parser("scale", __doc__)
    parser.add_argument("step", choices=("make", "build", "train", "_build-one"))
    parser.add_argument("--out", type=Path, help="make: the folder to write")
    parser.add_argument("--train", type=int, default=100_000, help="make: training images")
    parser.add_argument("--valid", type=int, default=10_000, help="make: validation images")
    parser.add_argument("--data", type=Path, action="append", help="build/train: a folder `make` wrote (train: repeatable)")
    parser.add_argument("--counts", type=int, nargs="+", default=[3000, 100_000], help="build: images per build")
    parser.add_argument("--count", type=int, default=3000, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="build: processes per build")
    parser.add_argument("--presize", type=int, default=BUILD_PRESIZE, help="build: the cache's shorter side, px")
    parser.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "vivace-scale-runs",
                        help="train: where the run folders go")
    parser.add_argument("--images-seen", type=int, default=IMAGES_SEEN,
                        help="train: images each run trains on (epochs = this / its training images)")
    parser.add_argument("--memory-limit", default="", help="train: a memory cgroup limit such as 1G (root)")
    parser.add_argument("--record", action="store_true", help="write the figures to docs/benchmarks.json")
    args = parser.parse_args(argv)
    if args.step == "make":
        if args.out is None:
            parser.error("make needs --out FOLDER")
        print(json.dumps(make_folder(args.out, args.train, args.valid, os.cpu_count() or 1)))
        return 0
    datas = [data_folder("python -m bench scale", d) for d in (args.data or [None])]
    if args.step == "_build-one":
        print(json.dumps(build_one(datas[0], args.count, args.workers[0], args.presize)))
        return 0
    if args.step == "build":
        rows = run_build(datas[0], args.counts, args.workers, args.presize)
        if args.record:
            record(scale_build={"rows": rows, "machine": machine()})
        return 0
    limit = parse_bytes(args.memory_limit) if args.memory_limit else None
    rows = []
    for data in datas:
        out = args.runs / f"{data.name}{'-limited' if limit else ''}"
        shutil.rmtree(out, ignore_errors=True)
        row = train_one(data, out, limit, args.images_seen)
        print(f"train {row['images']:,} images, {row['epochs']} epochs (cache index {row['index_mb']} MB): "
              f"{row['seconds']} s, anonymous memory {row['median_anon_mib']:.1f} MiB "
              f"(median of the run; peak {row['peak_anon_mib']:.1f} MiB), peak RSS {row['peak_rss_mib']:.0f} MiB"
              + (f" (limit {row['memory_limit_mib']:.0f} MiB, hit {row['limit_hits']} times)\n  {row['data_line']}"
                 if limit else ""),
              flush=True)
        rows.append(row)
    if args.record:
        record(**{"scale_train_limited" if limit else "scale_train_memory": {"rows": rows, "machine": machine()}})
    return 0


def parse_bytes(text: str) -> int:
    """'1G', '512M', '2000000' -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
