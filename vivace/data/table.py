"""Labels from a table: a CSV file (or a pandas DataFrame) naming each image, its label and its split.

fastai's column choices: `fn_col` (the image path, relative to the data folder; default the
first column), `label_col` (default the second) and `valid_col` (a boolean column: True marks a
validation image; without it a seeded random 20 % is held out, as for a folder). Columns are
given by name or by index ("0", "1", ...). Every row is checked before any cache or training
work, and a bad one is named in one line: a missing file, an empty label, a path that leaves
the data folder, a duplicated image, a split value that is not boolean, a class only in
validation, a CSV that is not UTF-8 or has ragged rows.

The rows are put in the order the folder source uses (sorted paths per split), so the clean
column of a table gives the same split, batches and cache as the folders it describes, and
tables that differ only in their labels (noisy_imagenette.csv's five columns) share one cache.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from .sources import Source, _check_classes, _random_split

TRUE, FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
FIRST_DATA_LINE = 2  # line numbers count the header as line 1, as an editor shows them


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a UTF-8 CSV file; ValueError naming the file when it cannot be read as one."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark from Excel is no column name
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         "save the table as UTF-8 CSV") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read the label table ({err.strerror or err})") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from None
    rows = [row for row in rows if row]  # blank lines carry nothing
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header line and at least one row, found {len(rows)} line(s)")
    return rows[0], rows[1:]


def frame_rows(frame: Any) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a pandas DataFrame, every cell as text (pandas itself is not imported)."""
    header = [str(c) for c in frame.columns]
    return header, [["" if _missing(v) else str(v) for v in row] for row in frame.itertuples(index=False)]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN


def column(header: Sequence[str], choice: str, default: int, what: str, where: str) -> int | None:
    """The index of column `choice` (a name, or an index as digits); "" = `default` (-1: none)."""
    if choice == "":
        return default if default >= 0 else None
    if choice in header:
        return header.index(choice)
    if choice.isdigit() and int(choice) < len(header):
        return int(choice)
    raise ValueError(f"{where}: no column {choice!r} for {what}; the columns are: {', '.join(header)} "
                     f"(or their indices 0-{len(header) - 1})")


def table_source(root: Path, table: str | Path | Any, fn_col: str = "", label_col: str = "", valid_col: str = "",
                 label_delim: str = "", valid_pct: float = 0.2, seed: int = 42) -> Source:
    """A Source from a label table under the data folder `root`; ValueError naming the first bad row.

    With `label_delim` each label cell holds several labels (fastai's MultiCategoryBlock), or none.
    """
    root = Path(root).expanduser()
    if hasattr(table, "itertuples"):
        where, (header, rows) = "the DataFrame", frame_rows(table)
    else:
        path = _table_path(root, Path(table))
        where, (header, rows) = str(path), read_csv(path)
    fn, label = column(header, fn_col, 0, "file names", where), column(header, label_col, 1, "labels", where)
    split = column(header, valid_col, -1, "the split", where)
    files, names, is_valid, lines = _checked_rows(root, rows, header, (fn, label, split), where, label_delim)
    if split is None:
        train_files, valid_files = _random_split(sorted(files), valid_pct, seed)
    else:
        train_files = sorted(f for f, v in zip(files, is_valid) if not v)
        valid_files = sorted(f for f, v in zip(files, is_valid) if v)
    label_of = dict(zip(files, names))
    train_names, valid_names = [label_of[f] for f in train_files], [label_of[f] for f in valid_files]
    if label_delim:
        return _multi_label_source(root, (train_files, train_names), (valid_files, valid_names), lines, where,
                                   _note(where, header[label], split_how(header, split, valid_pct, seed),
                                         len(train_files), len(valid_files)))
    _check_validation_classes(train_names, valid_names, valid_files, lines, where)
    vocab = _check_classes(root, train_names, valid_names)
    index = {name: i for i, name in enumerate(vocab)}
    note = _note(where, header[label], split_how(header, split, valid_pct, seed), len(train_files),
                 len(valid_files))
    return Source(root, vocab, train_files, [index[n] for n in train_names], valid_files,
                  [index[n] for n in valid_names], f"{note}, {len(vocab)} classes)")


def split_how(header: list[str], split: int | None, valid_pct: float, seed: int) -> str:
    return (f"column {header[split]}" if split is not None
            else f"random split, {round(valid_pct * 100, 1):g} % validation, seed {seed}")


def _note(where: str, label: str, split: str, n_train: int, n_valid: int) -> str:
    """The split line, open at the end for the class count."""
    return f"labels: {where}, column {label}; split: {split} ({n_train:,} train and {n_valid:,} validation images"


def _multi_label_source(root: Path, train: tuple[list[Path], list[list[str]]], valid: tuple[list[Path], list[list[str]]],
                        lines: dict[Path, int], where: str, note: str) -> Source:
    """Several labels per image: the vocab is every label in training, each image's a tuple of indices."""
    vocab = sorted({name for names in train[1] for name in names})
    if len(vocab) < 2:
        raise ValueError(f"{where}: the training rows name {len(vocab)} class(es); a classifier needs at least two")
    index = {name: i for i, name in enumerate(vocab)}
    for path, names in zip(*valid):
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"{where} line {lines[path]}: class {unknown[0]!r} ({path.name}) is only in validation; "
                             "give it training rows, or drop it from the table")
    labels = [[tuple(index[n] for n in names) for names in part[1]] for part in (train, valid)]
    n_labels = sum(map(len, labels[0])) / max(len(labels[0]), 1)
    return Source(root, vocab, train[0], labels[0], valid[0], labels[1],
                  f"{note}, {len(vocab)} classes, {n_labels:.2f} labels per training image)", multi_label=True)


def _table_path(root: Path, table: Path) -> Path:
    """The table as given, or else under the data folder (fastai's `from_csv(path, 'labels.csv')`)."""
    path = table.expanduser()
    if not path.is_file() and (root / path).is_file():
        path = root / path
    if not path.is_file():
        raise ValueError(f"label table {table} not found (looked in the current folder and in {root})")
    return path


def _checked_rows(root: Path, rows: list[list[str]], header: list[str], columns: tuple[int, int, int | None],
                  where: str, label_delim: str = "") -> tuple[list[Path], list, list[bool], dict[Path, int]]:
    """Each row's image path, label (with `label_delim`: its labels) and split, checked; ValueError
    naming the first bad row's line."""
    fn, label, split = columns
    files, names, is_valid, seen = [], [], [], {}
    real_root = root.resolve()
    for line, row in enumerate(rows, FIRST_DATA_LINE):
        at = f"{where} line {line}"
        if len(row) != len(header):
            raise ValueError(f"{at}: {len(row)} fields where the header has {len(header)}; quote fields "
                             "that hold commas")
        path = _image_path(root, real_root, row[fn].strip(), at)
        if path in seen:
            raise ValueError(f"{at}: {row[fn]} is listed again (first on line {seen[path]}); give each image once")
        seen[path] = line
        name = row[label].strip()
        if label_delim:  # several labels, or none (an image of no class is a fair multi-label row)
            names.append(sorted({n.strip() for n in name.split(label_delim) if n.strip()}))
        elif not name:
            raise ValueError(f"{at}: the label ({header[label]}) of {row[fn]} is empty")
        else:
            names.append(name)
        files.append(path)
        is_valid.append(_boolean(row[split], header[split], at) if split is not None else False)
    return files, names, is_valid, seen


def _check_validation_classes(train_names: list[str], valid_names: list[str], valid_files: list[Path],
                              lines: dict[Path, int], where: str) -> None:
    """A class no training row has cannot be learned: name the first validation row that has one."""
    known = set(train_names)
    for name, path in zip(valid_names, valid_files):
        if name not in known:
            raise ValueError(f"{where} line {lines[path]}: class {name!r} ({path.name}) is only in validation; "
                             "give it training rows, or drop it from the table")


def _image_path(root: Path, real_root: Path, name: str, at: str) -> Path:
    """`root / name`, refused when absolute, outside `root` (after links) or missing."""
    if not name:
        raise ValueError(f"{at}: the file name is empty")
    relative = Path(name)
    if relative.is_absolute() or not (real_root / relative).resolve().is_relative_to(real_root):
        raise ValueError(f"{at}: {name} is outside the data folder {root}; paths are relative to --data")
    path = root / relative
    if not path.is_file():
        raise ValueError(f"{at}: image {path} not found")
    return path


def _boolean(value: str, name: str, at: str) -> bool:
    text = value.strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise ValueError(f"{at}: the split column {name} holds {value!r}; it must be True or False (or 1 / 0)")
