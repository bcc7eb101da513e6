"""Files: find images in a folder tree, label them by parent folder, split train/valid."""

from __future__ import annotations

import os
import random
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# Compared against the lower-cased suffix, so `.JPEG` (ImageNet's spelling) matches too.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
N_NAMED_SKIPPED = 3  # skipped folders named in the warning
# A folder with config.json and one of these is a vivace run (`vivace.runs.RUN_RECORDS` is made of
# them): its plots are PNGs, and `--data .` would otherwise read the last run's outputs as a class.
RUN_CONFIG = "config.json"
RUN_MARKERS = ("recipe.txt", "log.csv", "summary.json", "last.safetensors", "best.safetensors")


def find_images(root: Path) -> list[Path]:
    """All image files under `root`, recursively, sorted; hidden folders and files are skipped
    (`find_image_paths`, as Paths)."""
    return [Path(f) for f in find_image_paths(root)]


def find_image_paths(root: Path) -> list[str]:
    """All image files under `root`, recursively, as strings sorted as Paths sort; hidden folders and
    files are skipped. Strings, not Paths: a Path costs ~440 bytes, 0.5 GB at ImageNet's size.

    Symlinks are followed (datasets are often linked into place folder by folder), but each real
    folder is walked once and a symlinked file is dropped when its target is listed already, so a
    link loop (`ln -s . self`, `ln -s ../.. up`) cannot list images many times. Hard links stay:
    they are separate names the user made. Only regular files are listed (opening a FIFO named
    `x.png` waits forever), and a vivace run folder is never read as data. What was skipped is
    said in one warning.
    """
    real, linked, skipped = [], [], Skipped()
    seen_dirs = {_file_id(root)}
    pending = deque([str(root)])
    while pending:  # breadth first, real folders before links: a link loses to a real path
        folder = pending.popleft()
        entries = sorted(_visible_entries(folder), key=lambda e: (e.is_symlink(), e.name))
        for entry in entries:
            if entry.is_dir():  # follows links
                key = _file_id(entry.path)
                if key is not None and key in seen_dirs:
                    skipped.linked_dirs.append(entry.path)
                elif is_run_folder(entry.path):
                    skipped.run_dirs.append(entry.path)
                else:
                    seen_dirs.add(key)
                    pending.append(entry.path)
            elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                if _is_special_file(entry):
                    skipped.special_files.append(entry.path)
                else:
                    (linked if entry.is_symlink() else real).append(entry.path)
    found, skipped.n_duplicates = _drop_linked_duplicates(real, linked)
    _warn_skipped(root, skipped)
    return sorted(found, key=path_order)


def path_order(path: str) -> str:
    """The key that sorts path strings as Paths sort, part by part: the separator below every character."""
    return path.replace(os.sep, "\0")


@dataclass
class Skipped:
    """What `find_images` left out, for its one warning."""

    linked_dirs: list[str] = field(default_factory=list)  # symlinked folders walked already
    run_dirs: list[str] = field(default_factory=list)  # vivace run folders (outputs, not data)
    special_files: list[str] = field(default_factory=list)  # FIFOs, sockets, devices named like images
    n_duplicates: int = 0  # symlinked files whose targets were listed already


def is_run_folder(folder: str | Path) -> bool:
    """A folder holding a vivace run: its config.json and another of its records."""
    return os.path.isfile(os.path.join(folder, RUN_CONFIG)) and any(
        os.path.isfile(os.path.join(folder, name)) for name in RUN_MARKERS)


def _is_special_file(entry: os.DirEntry) -> bool:
    """A FIFO, socket or device: not a regular file (a broken symlink is not special: it is reported
    as unreadable when the cache is built)."""
    return not entry.is_file() and os.path.exists(entry.path)


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


def _warn_skipped(root: Path, skipped: Skipped) -> None:
    """One warning naming what `find_images` left out, and why."""
    linked = []
    if skipped.linked_dirs:
        named = _named(root, skipped.linked_dirs)
        linked.append(f"{len(skipped.linked_dirs)} symlinked folders already visited ({named})")
    if skipped.n_duplicates:
        linked.append(f"{skipped.n_duplicates} symlinked files whose targets were already found")
    parts = [f"{' and '.join(linked)}; each image is used once"] if linked else []
    if skipped.run_dirs:
        parts.append(f"{len(skipped.run_dirs)} vivace run folders ({_named(root, skipped.run_dirs)}): a run's "
                     "outputs are never read as data")
    if skipped.special_files:
        named = _named(root, skipped.special_files)
        parts.append(f"{len(skipped.special_files)} files that are not regular files ({named}: FIFOs, sockets or "
                     "devices); only image files are read")
    if parts:
        warnings.warn(f"{root}: skipped {'; and '.join(parts)}", stacklevel=3)


def _named(root: Path, paths: list[str]) -> str:
    """The first few of `paths`, relative to `root`, and how many more."""
    named = ", ".join(os.path.relpath(p, root) for p in sorted(paths)[:N_NAMED_SKIPPED])
    return named + (f" and {len(paths) - N_NAMED_SKIPPED} more" if len(paths) > N_NAMED_SKIPPED else "")


def label_from_parent(path: Path) -> str:
    """The class name of an image: the name of the folder that holds it."""
    return Path(path).parent.name


class FileList(Sequence[Path]):
    """Paths held as their common prefix and one numpy array of the rest of each: a byte per character
    past the prefix, no Python object per file.

    Measured on 100,000 paths of 55-59 characters: 44 MB as a list of Paths, 2.4 MB as this; at ImageNet's
    1.28 M images that is over 500 MB less in every training process. Reads as a sequence of Paths.
    """

    def __init__(self, paths: Iterable[str | Path] = ()) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._prefix = os.path.commonprefix([min(encoded), max(encoded)]) if encoded else b""
        self._rests = np.array([e[len(self._prefix):] for e in encoded], dtype=bytes)

    def __len__(self) -> int:
        return len(self._rests)

    def __getitem__(self, i):  # int -> Path, slice -> FileList
        if isinstance(i, slice):
            return _file_list_of(self._prefix, self._rests[i])
        return Path(os.fsdecode(self._prefix + self._rests[i]))

    def __iter__(self) -> Iterator[Path]:
        return (Path(os.fsdecode(self._prefix + rest)) for rest in self._rests)

    def __add__(self, other: Iterable[str | Path]) -> FileList:
        other = other if isinstance(other, FileList) else FileList(other)
        parts = [part for part in (self, other) if len(part)]
        prefix = os.path.commonprefix([part._prefix for part in parts]) if parts else b""
        # Each part's prefix beyond the shared one goes back in front of its rests.
        rests = [np.char.add(part._prefix[len(prefix):], part._rests) for part in parts]
        return _file_list_of(prefix, np.concatenate(rests) if rests else self._rests)

    def __radd__(self, other: Iterable[str | Path]) -> FileList:
        return FileList(other) + self

    def __mul__(self, times: int) -> FileList:
        return _file_list_of(self._prefix, np.tile(self._rests, times))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # compared by value, as a list

    def __repr__(self) -> str:
        return f"FileList({len(self)} files{', first ' + str(self[0]) if len(self) else ''})"


def _file_list_of(prefix: bytes, rests: np.ndarray) -> FileList:
    """A FileList over a prefix and an array of the rests already made (a slice, a concatenation)."""
    files = FileList()
    files._prefix, files._rests = prefix, rests
    return files


VALID_NAMES = ("val", "valid")  # Imagenette's and fastai's (GrandparentSplitter) validation folders


@dataclass(frozen=True)
class Source:
    """Image files and integer labels per split; `vocab[label]` is the class name.

    `split_note` says in one line how the split was made and how many images each part holds.
    With `multi_label` each image's label is a tuple of class indices (several, one or none).
    """

    root: Path
    vocab: list[str]
    train_files: FileList  # a list of Paths given is held as a FileList
    train_labels: list[int]
    valid_files: FileList
    valid_labels: list[int]
    split_note: str = ""
    multi_label: bool = False

    def __post_init__(self) -> None:
        # object.__setattr__: the dataclass is frozen; this is its constructor's last step.
        for name in ("train_files", "valid_files"):
            if not isinstance(getattr(self, name), FileList):
                object.__setattr__(self, name, FileList(getattr(self, name)))

    def summary(self) -> str:
        """A table of image counts per class and split."""
        width = max(len("total"), *(len(name) for name in self.vocab))
        lines = [
            f"{self.root}: {len(self.vocab)} classes, "
            f"{len(self.train_files)} train, {len(self.valid_files)} valid",
            f"{'class':<{width}}  {'train':>7}  {'valid':>7}",
        ]
        for index, name in enumerate(self.vocab):
            n_train, n_valid = self.count(self.train_labels, index), self.count(self.valid_labels, index)
            lines.append(f"{name:<{width}}  {n_train:>7}  {n_valid:>7}")
        lines.append(f"{'total':<{width}}  {len(self.train_files):>7}  {len(self.valid_files):>7}")
        return "\n".join(lines)

    def as_multi_label(self) -> Source:
        """The same images with each label a set of one (trained with sigmoids: `--multi-label`)."""
        return replace(self, train_labels=[(i,) for i in self.train_labels],
                       valid_labels=[(i,) for i in self.valid_labels], multi_label=True)

    def count(self, labels: list, index: int) -> int:
        """How many of `labels` name class `index`."""
        return sum(index in label for label in labels) if self.multi_label else labels.count(index)

    def label_array(self, labels: list) -> np.ndarray:
        """int64 (N,) class indices, or for several labels per image float32 (N, C) multi-hot rows."""
        if not self.multi_label:
            return np.asarray(labels, dtype=np.int64)
        hot = np.zeros((len(labels), len(self.vocab)), dtype=np.float32)
        for row, label in enumerate(labels):
            hot[row, list(label)] = 1.0
        return hot


def make_source(
    root: Path | str,
    train_name: str = "train",
    valid_name: str = "",
    valid_pct: float = 0.2,
    seed: int = 42,
) -> Source:
    """Label images by parent folder; split by `<train_name>/` and its validation folder, or at random.

    The split folders are the folders two levels above the images (`train/<class>/x.jpg`, the
    fastai and Imagenette layout). The validation folder is `valid_name`, or "" for `val/` or
    `valid/`; with both folders present the other images are ignored. A tree with a split folder
    but not a usable pair raises ValueError; only a tree with none is split at random
    (a seeded `valid_pct` of all images).
    """
    root = Path(root).expanduser()
    files = _images_or_raise(root)
    # Split and label depend on the folder only: worked out once per folder, so per image nothing
    # is made but a reference (no Path, no string: see FileList).
    folders = {folder: (_split_folder(Path(folder), root), os.path.basename(folder))
               for folder in {os.path.dirname(f) for f in files}}
    split_folders = [folders[os.path.dirname(f)][0] for f in files]
    valid_name = _validation_folder(root, set(split_folders), train_name, valid_name)
    if valid_name:
        train_files = [f for f, g in zip(files, split_folders) if g == train_name]
        valid_files = [f for f, g in zip(files, split_folders) if g == valid_name]
    else:
        train_files, valid_files = _random_split(files, valid_pct, seed)
    train_names = [folders[os.path.dirname(f)][1] for f in train_files]
    valid_names = [folders[os.path.dirname(f)][1] for f in valid_files]
    vocab = _check_classes(root, train_names, valid_names)
    index = {name: i for i, name in enumerate(vocab)}
    return Source(
        root=root,
        vocab=vocab,
        train_files=train_files,
        train_labels=[index[n] for n in train_names],
        valid_files=valid_files,
        valid_labels=[index[n] for n in valid_names],
        split_note=_split_note(root, train_name, valid_name, valid_pct, seed,
                               (len(train_files), len(valid_files), len(files), len(vocab))),
    )


def _split_folder(folder: Path, root: Path) -> str | None:
    """The parent of an image's `folder`, inside `root` (None for images less deep): train in train/cat/."""
    parts = folder.relative_to(root).parts
    return parts[-2] if len(parts) >= 2 else None


def _validation_folder(root: Path, split_folders: set[str | None], train_name: str, valid_name: str) -> str:
    """The validation folder's name beside `train_name`, or "" when the tree has no split folders.

    A missing or ambiguous partner raises: silently splitting at random would train on images
    the folders set aside for validation.
    """
    if valid_name == train_name:
        raise ValueError(f"--valid-name {valid_name} is the training folder: validating on the training images "
                         f"measures nothing; name a folder of other images beside it (val, valid, test)")
    candidates = [valid_name] if valid_name else list(VALID_NAMES)
    found = [name for name in candidates if name in split_folders]
    has_train = train_name in split_folders
    if not has_train and not found:
        if valid_name:
            raise ValueError(f"--valid-name {valid_name}: no {valid_name}/<class>/ images under {root}")
        return ""
    if len(found) > 1:
        raise ValueError(f"{root} has both {found[0]}/ and {found[1]}/: keep one validation folder, "
                         f"or choose one with --valid-name {found[0]}")
    if not has_train:
        raise ValueError(f"{root} has {found[0]}/ but no {train_name}/ beside it: put the training "
                         f"images in {root / train_name}/<class>/")
    if not found:
        for name in candidates:  # there, but none of its images counted: say why
            _check_has_own_images(root / name, root)
        others = sorted(g for g in split_folders if g is not None and g != train_name)
        seen = f" (found: {', '.join(o + '/' for o in others)})" if others else ""
        looked = " or ".join(n + "/" for n in candidates)
        raise ValueError(f"{root} has {train_name}/ but no validation folder {looked} beside it{seen}: "
                         f"add one, or name it with --valid-name NAME")
    return found[0]


def _check_has_own_images(folder: Path, root: Path) -> None:
    """ValueError saying why an existing validation `folder` gave no images: links to images already
    listed (the training images), or no <class>/<image> layout. Nothing when it does not exist."""
    if not folder.is_dir():
        return
    links = _symlinks_in(folder)
    if links:
        shown = ", ".join(f"{os.path.relpath(p, root)} -> {os.readlink(p)}" for p in links[:N_NAMED_SKIPPED])
        raise ValueError(f"{folder}/ has no images of its own: its {len(links)} symlinks ({shown}) lead to images "
                         f"already listed, the training images: validation on them measures nothing; put other "
                         f"images in {folder}/<class>/")
    raise ValueError(f"{folder}/ holds no <class>/<image> files: put the validation images in {folder}/<class>/")


def _symlinks_in(folder: Path) -> list[str]:
    """`folder` if it is a symlink, else the symlinks in its tree (not followed)."""
    if folder.is_symlink():
        return [str(folder)]
    return [os.path.join(parent, name) for parent, dirs, files in os.walk(folder)
            for name in sorted(dirs + files) if os.path.islink(os.path.join(parent, name))]


def _split_note(root: Path, train_name: str, valid_name: str, valid_pct: float, seed: int,
                counts: tuple[int, int, int, int]) -> str:
    """One line: which split was used, with images per part and classes."""
    n_train, n_valid, n_all, n_classes = counts
    if not valid_name:
        return (f"no train/val folders in {root}: random split, {round(valid_pct * 100, 1):g} % validation, "
                f"seed {seed} ({n_train:,} train and {n_valid:,} validation images, {n_classes} classes)")
    ignored = n_all - n_train - n_valid
    rest = f"; {ignored:,} {'image' if ignored == 1 else 'images'} outside them ignored" if ignored else ""
    return (f"split: {train_name}/ ({n_train:,} images) and {valid_name}/ ({n_valid:,} images), "
            f"{n_classes} classes{rest}")


def _images_or_raise(root: Path) -> list[str]:
    """`find_images(root)`, with an actionable error when the folder is missing or has none."""
    if not root.exists():
        raise ValueError(f"data folder {root} does not exist; check the path (or pass a dataset name)")
    if not root.is_dir():
        raise ValueError(
            f"data path {root} is a file, not a folder; extract it first, "
            f"or pass the folder that holds <class>/<image> sub-folders"
        )
    files = find_image_paths(root)
    if not files:
        allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(
            f"no images found under {root}; expected <class>/<image> files with one of "
            f"these extensions: {allowed} (hidden folders are skipped)"
        )
    return files


def _random_split(files: list, valid_pct: float, seed: int) -> tuple[list, list]:
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
