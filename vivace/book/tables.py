"""fastai's table helpers and factories: `ColReader`, `ColSplitter`, and `ImageDataLoaders`'
`from_folder`, `from_csv` and `from_df`.

`from_csv` and `from_df` hand the table to vivace's own table source (`vivace.data.table`), so
their rows are checked as `vivace train --csv` checks them (a missing file, an empty label, a
duplicate, a path outside the folder: one line naming the row). pandas is needed only to pass a
DataFrame; vivace never imports it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vivace.data.table import TRUE, table_source

from .data import (DEFAULT_SEED, CategoryBlock, DataBlock, DataLoaders, GrandparentSplitter, ImageBlock,
                   RandomSplitter, get_image_files, loaders_for, parent_label, transforms_of)


def cell(row: Any, col: int | str) -> Any:
    """A row's value in column `col`: by position for an int (a DataFrame row, a dict, a tuple), else by name."""
    if isinstance(col, int):
        if hasattr(row, "iloc"):
            return row.iloc[col]
        if isinstance(row, dict):
            return list(row.values())[col]
    return row[col]


class ColReader:
    """fastai's ColReader: `f"{pref}{row[cols]}{suff}"`; a Path `pref` is joined as a folder; with
    `label_delim`, the cell split into a list of labels (for a MultiCategoryBlock)."""

    def __init__(self, cols: int | str, pref: str | Path = "", suff: str = "", label_delim: str | None = None):
        self.cols, self.suff, self.label_delim = cols, suff, label_delim
        self.pref = f"{pref}{os.path.sep}" if isinstance(pref, Path) else pref

    def __call__(self, row: Any) -> str | list[str]:
        value = f"{self.pref}{cell(row, self.cols)}{self.suff}"
        return [v for v in value.split(self.label_delim) if v] if self.label_delim else value


@dataclass(frozen=True)
class ColSplitter:
    """fastai's ColSplitter: the rows whose column `col` is True (or 'True', '1') are the validation set."""

    col: int | str = "is_valid"

    def __call__(self, items: Sequence[Any]) -> tuple[list[int], list[int]]:
        flags = [_is_true(cell(row, self.col), i) for i, row in enumerate(items)]
        return [i for i, v in enumerate(flags) if not v], [i for i, v in enumerate(flags) if v]


def _is_true(value: Any, row: int) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool from a DataFrame
        return bool(value)
    text = str(value).strip().lower()
    if text not in TRUE | {"false", "0", "no"}:
        raise ValueError(f"ColSplitter: row {row} holds {value!r}; the split column must be True or False")
    return text in TRUE


class ImageDataLoaders:
    """fastai's ImageDataLoaders factories; each returns the book's DataLoaders (with `show_batch`)."""

    @staticmethod
    def from_folder(path: str | Path, train: str = "train", valid: str = "valid", valid_pct: float | None = None,
                    seed: int | None = None, vocab: Sequence[str] | None = None, item_tfms: Any = None,
                    batch_tfms: Any = None, bs: int = 64, val_bs: int | None = None,
                    device: str | torch.device | None = None) -> DataLoaders:
        """Images labelled by folder, split by `train`/`valid` folders (or a random `valid_pct`)."""
        splitter = GrandparentSplitter(train, valid) if valid_pct is None else RandomSplitter(valid_pct, seed)
        block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab)), get_items=get_image_files, get_y=parent_label,
                          splitter=splitter, item_tfms=item_tfms, batch_tfms=batch_tfms)
        return block.dataloaders(path, bs, val_bs, device)

    @staticmethod
    def from_df(df: Any, path: str | Path = ".", valid_pct: float = 0.2, seed: int | None = None,
                fn_col: int | str = 0, folder: str | None = None, label_col: int | str = 1,
                valid_col: int | str | None = None, label_delim: str | None = None, item_tfms: Any = None,
                batch_tfms: Any = None, bs: int = 64, val_bs: int | None = None,
                device: str | torch.device | None = None) -> DataLoaders:
        """A DataFrame's rows: file names (under `path`/`folder`) in `fn_col`, labels in `label_col`
        (several per image, split at `label_delim`)."""
        root = Path(path) / folder if folder else Path(path)
        return _table_loaders(root, df, (fn_col, label_col, valid_col, label_delim), valid_pct, seed,
                              (item_tfms, batch_tfms), (bs, val_bs, device))

    @staticmethod
    def from_csv(path: str | Path, csv_fname: str | Path = "labels.csv", valid_col: int | str | None = None,
                 valid_pct: float = 0.2, seed: int | None = None, fn_col: int | str = 0,
                 folder: str | None = None, label_col: int | str = 1, label_delim: str | None = None,
                 item_tfms: Any = None, batch_tfms: Any = None, bs: int = 64, val_bs: int | None = None,
                 device: str | torch.device | None = None) -> DataLoaders:
        """`from_df` for the CSV file `path/csv_fname` (read without pandas)."""
        root = Path(path) / folder if folder else Path(path)
        return _table_loaders(root, Path(path) / csv_fname, (fn_col, label_col, valid_col, label_delim), valid_pct,
                              seed, (item_tfms, batch_tfms), (bs, val_bs, device))


def _table_loaders(root: Path, table: Any, columns: tuple, valid_pct: float, seed: int | None,
                   tfms: tuple[Any, Any], batches: tuple) -> DataLoaders:
    """The table's checked Source (`vivace.data.table`), through the book's transforms."""
    fn_col, label_col, valid_col, label_delim = columns
    presize, aug, norm = transforms_of(*tfms)
    source = table_source(root, table, fn_col=str(fn_col), label_col=str(label_col),
                          valid_col="" if valid_col is None else str(valid_col), label_delim=label_delim or "",
                          valid_pct=valid_pct, seed=DEFAULT_SEED if seed is None else seed)
    return loaders_for(source, presize, aug, norm, *batches)
