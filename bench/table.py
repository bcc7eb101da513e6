"""The label-table source against the folder source on the same images: the time to build the loaders, and the same split and order.

Imagenette ships its labels both ways: class folders, and noisy_imagenette.csv (13,394 rows),
whose `noisy_labels_0` column is the clean label. Both build the same cache (it is keyed by the
files, not the labels), so after one warm-up each the difference is the table's reading and
checking. Each is timed `--repeats` times, the best kept.

  python -m bench table --data ../shared/data/imagenette2-160 --record
"""
from __future__ import annotations

import sys
import time

import numpy as np

from bench.common import add_data_arg, data_folder, machine, make_parser, record
from vivace.data import DataLoaders, make_dataloaders

TABLE = "noisy_imagenette.csv"


def build(data: str, table: str) -> tuple[float, DataLoaders]:
    """Seconds to build the loaders (table "" = from the folders), and the loaders."""
    columns = dict(labels=table, label_col="noisy_labels_0", valid_col="is_valid") if table else {}
    start = time.perf_counter()
    dls = make_dataloaders(data, **columns, progress=False)
    return time.perf_counter() - start, dls


def main(argv: list[str]) -> None:
    p = make_parser("table", __doc__)
    add_data_arg(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--record", action="store_true", help="write the figures to docs/benchmarks.json")
    args = p.parse_args(argv)
    data = str(data_folder(p.prog, args.data))
    print(machine())
    build(data, TABLE)  # warm-up: the cache (shared by both), the file system's listing
    folder_s = min(build(data, "")[0] for _ in range(args.repeats))
    table_s, by_table = min((build(data, TABLE) for _ in range(args.repeats)), key=lambda r: r[0])
    _, by_folder = build(data, "")
    same = (by_table.vocab == by_folder.vocab
            and all(np.array_equal(getattr(by_table, s).indices, getattr(by_folder, s).indices)
                    and np.array_equal(getattr(by_table, s).labels, getattr(by_folder, s).labels)
                    for s in ("train", "valid")))
    rows = len(by_table.source.train_files) + len(by_table.source.valid_files)
    print(f"folder source: {folder_s:.2f} s; table ({TABLE}, {rows} rows): {table_s:.2f} s; beyond the folder's: "
          f"{table_s - folder_s:+.2f} s; same split, order and labels: {same}")
    if args.record:
        record(table_source_seconds=round(table_s, 3), folder_source_seconds=round(folder_s, 3),
               table_source_same_split=same)


if __name__ == "__main__":
    main(sys.argv[1:])
