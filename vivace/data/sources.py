"""Files: find images in a folder tree, label them by parent folder, split train/valid."""

from __future__ import annotations

import os
import random
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

# Compared against the lower-cased suffix, so `.JPEG` (ImageNet's spelling) matches too.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
N_NAMED_SKIPPED = 3  # skipped folders named in the warning


def find_images(root: Path) -> list[Path]:
    """All image files under `root`, recursively, sorted; hidden folders and files are skipped.

    Symlinks are followed (datasets are often linked into place folder by folder), but each real
    folder is walked once and a symlinked file is dropped when its target is listed already, so a
    link loop (`ln -s . self`, `ln -s ../.. up`) cannot list images many times. Hard links stay:
    they are separate names the user made. What was skipped is said in one warning.
    """
    real, linked, skipped_dirs = [], [], []
    seen_dirs = {_file_id(root)}
    pending = deque([str(root)])
    while pending:  # breadth first, real folders before links: a link loses to a real path
        folder = pending.popleft()
        entries = sorted(_visible_entries(folder), key=lambda e: (e.is_symlink(), e.name))
        for entry in entries:
            if entry.is_dir():  # follows links
                key = _file_id(entry.path)
                if key is not None and key in seen_dirs:
                    skipped_dirs.append(entry.path)
                else:
                    seen_dirs.add(key)
                    pending.append(entry.path)
            elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                (linked if entry.is_symlink() else real).append(entry.path)
    found, n_duplicates = _drop_linked_duplicates(real, linked)
    _warn_skipped(root, skipped_dirs, n_duplicates)
    return sorted(Path(f) for f in found)


def _visible_entries(folder: str) -> list[os.DirEntry]:
    """The entries of `folder` not hidden: no .git, .ipynb_checkpoints, macOS `._foo.jpg` forks."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError:  # unreadable (permissions) or gone: skipped, as os.walk did
        return []


def _drop_linked_duplicates(real: list[str], linked: list[str]) -> tuple[list[str], int]:
    """`real` plus each symlinked file whose target is not listed yet; and how many were dropped."""
    if not linked:  # the usual case: no stat per file
        return real, 0
    seen = {_file_id(f) for f in real}
    kept = list(real)
    for f in sorted(linked):
        key = _file_id(f)
        if key is None or key not in seen:  # a broken link stays: the cache reports it as unreadable
            kept.append(f)
            seen.add(key)
    return kept, len(real) + len(linked) - len(kept)


def _file_id(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` points to, equal for every path to one real file; None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _warn_skipped(root: Path, skipped_dirs: list[str], n_duplicate_files: int) -> None:
    """One warning naming the folders walked once already and counting files listed once already."""
    parts = []
    if skipped_dirs:
        named = ", ".join(os.path.relpath(d, root) for d in sorted(skipped_dirs)[:N_NAMED_SKIPPED])
        more = f" and {len(skipped_dirs) - N_NAMED_SKIPPED} more" if len(skipped_dirs) > N_NAMED_SKIPPED else ""
        parts.append(f"{len(skipped_dirs)} symlinked folders already visited ({named}{more})")
    if n_duplicate_files:
        parts.append(f"{n_duplicate_files} symlinked files whose targets were already found")
    if parts:
        warnings.warn(f"{root}: skipped {' and '.join(parts)}; each image is used once", stacklevel=3)


def label_from_parent(path: Path) -> str:
    """The class name of an image: the name of the folder that holds it."""
    return Path(path).parent.name


@dataclass(frozen=True)
class Source:
    """Image files and integer labels per split; `vocab[label]` is the class name."""

    root: Path
    vocab: list[str]
    train_files: list[Path]
    train_labels: list[int]
    valid_files: list[Path]
    valid_labels: list[int]

    def summary(self) -> str:
        """A table of image counts per class and split."""
        width = max(len("total"), *(len(name) for name in self.vocab))
        lines = [
            f"{self.root}: {len(self.vocab)} classes, "
            f"{len(self.train_files)} train, {len(self.valid_files)} valid",
            f"{'class':<{width}}  {'train':>7}  {'valid':>7}",
        ]
        for index, name in enumerate(self.vocab):
            n_train = self.train_labels.count(index)
            n_valid = self.valid_labels.count(index)
            lines.append(f"{name:<{width}}  {n_train:>7}  {n_valid:>7}")
        lines.append(f"{'total':<{width}}  {len(self.train_files):>7}  {len(self.valid_files):>7}")
        return "\n".join(lines)


def make_source(
    root: Path | str,
    train_name: str = "train",
    valid_name: str = "val",
    valid_pct: float = 0.2,
    seed: int = 42,
) -> Source:
    """Label images by parent folder; split by `<root>/<train_name>|<valid_name>/` or at random.

    When images sit under both `<train_name>/<class>/` and `<valid_name>/<class>/` (the fastai
    and Imagenette layout) those folders define the split and images elsewhere are ignored;
    otherwise a seeded random `valid_pct` of all images is held out.
    """
    root = Path(root).expanduser()
    files = _images_or_raise(root)
    grandparents = [f.parent.parent.name for f in files]
    if train_name in grandparents and valid_name in grandparents:
        train_files = [f for f, g in zip(files, grandparents) if g == train_name]
        valid_files = [f for f, g in zip(files, grandparents) if g == valid_name]
    else:
        train_files, valid_files = _random_split(files, valid_pct, seed)
    train_names = [label_from_parent(f) for f in train_files]
    valid_names = [label_from_parent(f) for f in valid_files]
    vocab = _check_classes(root, train_names, valid_names)
    index = {name: i for i, name in enumerate(vocab)}
    return Source(
        root=root,
        vocab=vocab,
        train_files=train_files,
        train_labels=[index[n] for n in train_names],
        valid_files=valid_files,
        valid_labels=[index[n] for n in valid_names],
    )


def _images_or_raise(root: Path) -> list[Path]:
    """`find_images(root)`, with an actionable error when the folder is missing or has none."""
    if not root.exists():
        raise ValueError(f"data folder {root} does not exist; check the path (or pass a dataset name)")
    if not root.is_dir():
        raise ValueError(
            f"data path {root} is a file, not a folder; extract it first, "
            f"or pass the folder that holds <class>/<image> sub-folders"
        )
    files = find_images(root)
    if not files:
        allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(
            f"no images found under {root}; expected <class>/<image> files with one of "
            f"these extensions: {allowed} (hidden folders are skipped)"
        )
    return files


def _random_split(files: list[Path], valid_pct: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded random `valid_pct` of `files`; both parts keep their sorted order."""
    if not 0.0 < valid_pct < 1.0:
        raise ValueError(f"valid_pct={valid_pct} must be strictly between 0 and 1, e.g. 0.2")
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    # At least one validation image, so metrics are defined even on tiny folders.
    n_valid = max(1, round(len(files) * valid_pct))
    valid_set = set(order[:n_valid])
    train = [f for i, f in enumerate(files) if i not in valid_set]
    valid = [f for i, f in enumerate(files) if i in valid_set]
    return train, valid


def _check_classes(root: Path, train_names: list[str], valid_names: list[str]) -> list[str]:
    """The sorted vocab; raise when there is one class or validation has classes training lacks."""
    train_classes = set(train_names)
    classes = train_classes | set(valid_names)
    if len(classes) < 2:
        raise ValueError(
            f"only one class ({next(iter(classes))}) found under {root}; a classifier needs at "
            f"least two: put each class's images in its own sub-folder, e.g. {root}/cat/, {root}/dog/"
        )
    missing = sorted(set(valid_names) - train_classes)
    if missing:
        raise ValueError(
            f"validation classes not present in training under {root}: {', '.join(missing)}; "
            f"add training images for them or remove them from validation (with a random split, "
            f"a class with very few images can land only in validation: try another seed)"
        )
    return sorted(classes)
