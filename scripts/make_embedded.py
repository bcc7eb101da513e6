"""Regenerate vivace/data/embedded/: a small, deterministic Imagenette sample shipped in the package.

    python scripts/make_embedded.py --src ../shared/data/imagenette2-224

Takes the first N train and M val images of each class (sorted by file name), resizes them to
`--size` px squares with Lanczos, saves JPEG quality 85 under the original names, writes the
README, and fails if the result exceeds `--max-mb` (it ships inside the wheel).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageOps

from vivace.data.names import IMAGENETTE_NAMES

REPO = Path(__file__).resolve().parent.parent
JPEG_QUALITY = 85
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}

def first_images(folder: Path, count: int) -> list[Path]:
    """The first `count` images in `folder`, sorted by file name (so the sample is reproducible)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < count:
        raise ValueError(f"{folder} has {len(files)} images, fewer than the {count} requested")
    return files[:count]


def shrink(src: Path, dst: Path, size: int) -> None:
    """Centre-crop to a square (a no-op for Imagenette-224) and resize to `size` px with Lanczos."""
    with Image.open(src) as image:
        square = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # optimize=True: lossless Huffman-table tuning, about 5% smaller files at the same quality.
    square.save(dst, "JPEG", quality=JPEG_QUALITY, optimize=True)


def write_readme(dst: Path, src: Path, counts: dict[str, int], size: int) -> None:
    """Describe where the sample comes from, how many images it has, and the class names."""
    rows = "\n".join(f"| `{wnid}` | {name} |" for wnid, name in sorted(IMAGENETTE_NAMES.items()))
    text = f"""# Embedded Imagenette sample

A tiny slice of [Imagenette](https://github.com/fastai/imagenette) (Jeremy Howard, fast.ai; a
10-class subset of ImageNet) so that `vivace` trains and its tests run offline, with no download.

- Source: `{src.name}` (fastai layout, 224 px squares), first images of each class sorted by
  file name; original file names kept.
- Counts: {counts['train']} train + {counts['val']} val images, 10 classes
  ({counts['train'] // 10} train and {counts['val'] // 10} val per class).
- Images: {size}x{size} px, Lanczos resize, JPEG quality {JPEG_QUALITY}.
- Regenerate with `python scripts/make_embedded.py --src /path/to/{src.name}`.

Folders are ImageNet WordNet ids, as in Imagenette:

| folder | class |
|---|---|
{rows}
"""
    (dst / "README.md").write_text(text, encoding="utf-8")


def folder_bytes(folder: Path) -> int:
    """Total bytes of the files under `folder`, as they weigh in a wheel.

    `du -sh` reports more (about 4.2 MB for the default sample) because each small file occupies
    whole 4 KiB disk blocks; `du -sh --apparent-size` matches this number.
    """
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="Imagenette's folder, e.g. imagenette2-224")
    parser.add_argument("--dst", type=Path, default=REPO / "vivace" / "data" / "embedded")
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--size", type=int, default=128, help="output side in px")
    parser.add_argument("--max-mb", type=float, default=4.0, help="fail above this many MB of file bytes")
    args = parser.parse_args()

    counts = {"train": 0, "val": 0}
    for split, per_class in (("train", args.train_per_class), ("val", args.val_per_class)):
        classes = sorted(p for p in (args.src / split).iterdir() if p.is_dir())
        # Only the split folders are replaced, so a mistyped --dst cannot wipe anything else.
        shutil.rmtree(args.dst / split, ignore_errors=True)
        for class_dir in classes:
            for src in first_images(class_dir, per_class):
                shrink(src, args.dst / split / class_dir.name / src.name, args.size)
                counts[split] += 1
    write_readme(args.dst, args.src, counts, args.size)

    total_mb = folder_bytes(args.dst) / 1e6
    print(f"wrote {counts['train']} train + {counts['val']} val images to {args.dst}: {total_mb:.2f} MB")
    if total_mb > args.max_mb:
        sys.exit(f"FAIL: {total_mb:.2f} MB is over the {args.max_mb} MB budget; lower --size or the counts")


if __name__ == "__main__":
    main()
