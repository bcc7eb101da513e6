"""Labels from a table (vivace.data.table): columns by name or index, the split, and one-line errors."""
import csv

import pytest
import torch

from vivace.cli import main
from vivace.data import data_source, make_dataloaders
from vivace.data.table import table_source

from conftest import CLASSES, TINY_DATA, tiny_model


def write_table(path, rows, header=("path", "label", "is_valid")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def folder_rows(folder, shuffled=True):
    """The tiny folder as table rows (path, label, is_valid), in a scrambled order."""
    rows = [(f"{split}/{c}/{i}.png", c, str(split == "val"))
            for split, n in (("train", 8), ("val", 4)) for c in CLASSES for i in range(n)]
    return rows[::-1] if shuffled else rows


def test_the_clean_table_gives_the_folder_sources_split_order_and_first_loss(tiny_folder, tmp_path):
    table = write_table(tmp_path / "labels.csv", folder_rows(tiny_folder))
    by_table = data_source(tiny_folder, labels=table, valid_col="is_valid")
    by_folder = data_source(tiny_folder)
    for part in ("train_files", "train_labels", "valid_files", "valid_labels", "vocab"):
        assert getattr(by_table, part) == getattr(by_folder, part), part
    losses, caches = [], []
    for labels in (table, ""):
        dls = make_dataloaders(tiny_folder, **TINY_DATA, labels=labels, valid_col="is_valid" if labels else "")
        x, y = dls.one_batch()
        losses.append(torch.nn.functional.cross_entropy(tiny_model()(x), y).item())
        caches.append(dls.cache.directory)
    assert losses[0] == losses[1]
    assert caches[0] == caches[1]  # one cache: it is keyed by the files, which are the same


def test_columns_by_name_or_index_and_a_random_split_without_a_valid_column(tiny_folder, tmp_path):
    rows = [(lab, "x", p) for p, lab, _ in folder_rows(tiny_folder)]  # label first, path third
    table = write_table(tmp_path / "t.csv", rows, header=("label", "junk", "file"))
    by_name = table_source(tiny_folder, table, fn_col="file", label_col="label")
    by_index = table_source(tiny_folder, table, fn_col="2", label_col="0")
    assert by_name == by_index and by_name.vocab == sorted(CLASSES)
    assert len(by_name.valid_files) == round(36 * 0.2) and "random split, 20 % validation, seed 42" in by_name.split_note


def test_noisy_columns_share_the_files_and_differ_in_labels(tiny_folder, tmp_path):
    rows = [(p, lab, lab if i % 4 else CLASSES[(CLASSES.index(lab) + 1) % 3], v)
            for i, (p, lab, v) in enumerate(folder_rows(tiny_folder))]
    table = write_table(tmp_path / "noisy.csv", rows, header=("path", "clean", "noisy", "is_valid"))
    clean = table_source(tiny_folder, table, label_col="clean", valid_col="is_valid")
    noisy = table_source(tiny_folder, table, label_col="noisy", valid_col="is_valid")
    assert clean.train_files == noisy.train_files and clean.train_labels != noisy.train_labels


def test_a_dataframe_is_a_table(tiny_folder):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(folder_rows(tiny_folder), columns=["path", "label", "is_valid"])
    frame["is_valid"] = frame["is_valid"] == "True"  # a real boolean column
    source = table_source(tiny_folder, frame, valid_col="is_valid")
    assert source.valid_files == data_source(tiny_folder).valid_files and "the DataFrame" in source.split_note


BAD_TABLES = {
    "missing file": ([("train/red/0.png", "red", "False"), ("train/red/99.png", "red", "False")],
                     "line 3: image .*train/red/99.png not found"),
    "empty label": ([("train/red/0.png", " ", "False")], "line 2: the label \\(label\\) of train/red/0.png is empty"),
    "escapes": ([("../tiny/train/red/0.png", "red", "False")], "line 2: ../tiny/train/red/0.png is outside the data folder"),
    "absolute": ([("/etc/passwd", "red", "False")], "line 2: /etc/passwd is outside the data folder"),
    "duplicated": ([("train/red/0.png", "red", "False"), ("train/red/1.png", "red", "False"),
                    ("train/red/0.png", "red", "False")], "line 4: train/red/0.png is listed again \\(first on line 2\\)"),
    "not boolean": ([("train/red/0.png", "red", "maybe")], "line 2: the split column is_valid holds 'maybe'"),
    "only in validation": ([("train/red/0.png", "red", "False"), ("train/green/0.png", "green", "False"),
                            ("val/blue/0.png", "blue", "True")], "line 4: class 'blue' \\(0.png\\) is only in validation"),
    "ragged": ([("train/red/0.png", "red", "False", "extra")], "line 2: 4 fields where the header has 3"),
    "no column": ([("train/red/0.png", "red", "False")], "no column 'split' for the split"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_a_bad_table_is_one_line_naming_the_row_before_any_work(case, tiny_folder, tmp_path, capsys, monkeypatch):
    rows, message = BAD_TABLES[case]
    table = write_table(tmp_path / "bad.csv", rows)
    home = tmp_path / "home"
    monkeypatch.setenv("VIVACE_HOME", str(home))
    valid_col = "split" if case == "no column" else "is_valid"
    assert main(["train", "--data", str(tiny_folder), "--csv", str(table), "--valid-col", valid_col,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "run").exists() and not home.exists()  # no run folder, no cache


def test_unreadable_tables_say_why(tiny_folder, tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\ntrain/red/0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv: not UTF-8 text \\(byte 0xe9"):
        table_source(tiny_folder, latin)
    empty = write_table(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="needs a header line and at least one row"):
        table_source(tiny_folder, empty)
    with pytest.raises(ValueError, match="label table nowhere.csv not found"):
        table_source(tiny_folder, "nowhere.csv")


def test_a_table_under_the_data_folder_is_found_by_name(tiny_folder, tmp_path):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(tiny_folder, root)
    write_table(root / "labels.csv", folder_rows(root))
    assert table_source(root, "labels.csv", valid_col="is_valid").valid_files == data_source(root).valid_files


@pytest.mark.slow
def test_train_with_csv_flags_records_the_table_and_resumes(tiny_folder, tmp_path, capsys):
    import json
    table = write_table(tmp_path / "labels.csv", folder_rows(tiny_folder))
    out = tmp_path / "run"
    tiny = ["--arch", "xresnet18", "--widen", "0.25", "--size-px", "16", "--presize-px", "24", "--epochs", "1",
            "--batch-size", "4", "--workers", "1"]
    assert main(["train", "--data", str(tiny_folder), "--csv", str(table), "--label-col", "label",
                 "--valid-col", "is_valid", "--out", str(out), *tiny]) == 0
    assert "labels: " in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["labels"], config["label_col"], config["valid_col"]) == (str(table), "label", "is_valid")
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0  # the table comes back with it
    assert len((out / "log.csv").read_text().splitlines()) == 3


def test_table_flags_without_a_table_or_with_a_valid_folder_are_refused(tiny_folder, capsys):
    assert main(["train", "--data", str(tiny_folder), "--valid-col", "is_valid"]) == 2
    assert "pass it with --csv" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_folder), "--csv", "t.csv", "--valid-name", "val"]) == 2
    assert "give the table a valid_col" in capsys.readouterr().err


# -- the book's names ------------------------------------------------------------------------
def test_book_from_csv_from_df_and_from_folder_agree(tiny_folder, tmp_path):
    pandas = pytest.importorskip("pandas")
    from vivace.book import ImageDataLoaders, Resize
    write_table(tmp_path / "labels.csv", folder_rows(tiny_folder))
    import shutil
    root = tmp_path / "data"
    shutil.copytree(tiny_folder, root)
    write_table(root / "labels.csv", folder_rows(root))
    kw = dict(item_tfms=Resize(16), bs=4)
    by_csv = ImageDataLoaders.from_csv(root, "labels.csv", valid_col="is_valid", **kw)
    frame = pandas.read_csv(root / "labels.csv")
    by_df = ImageDataLoaders.from_df(frame, root, valid_col="is_valid", **kw)
    by_folder = ImageDataLoaders.from_folder(root, valid="val", **kw)
    for dls in (by_csv, by_df):
        assert dls.source.valid_files == by_folder.source.valid_files and dls.vocab == by_folder.vocab
        assert dls.source.train_labels == by_folder.source.train_labels
    assert hasattr(by_csv, "show_batch") and by_csv.one_batch()[0].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="line 2: image .* not found"):
        ImageDataLoaders.from_df(frame.assign(path="nope.png"), root, **kw)


def test_col_reader_and_col_splitter_in_a_data_block(tiny_folder):
    pandas = pytest.importorskip("pandas")
    from vivace.book import CategoryBlock, ColReader, ColSplitter, DataBlock, ImageBlock, Resize
    frame = pandas.DataFrame(folder_rows(tiny_folder, shuffled=False), columns=["name", "label", "is_valid"])
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader(0, pref=tiny_folder),
                      get_y=ColReader("label"), splitter=ColSplitter(), item_tfms=Resize(16))
    source = block.source(frame)
    assert sorted(source.valid_files) == data_source(tiny_folder).valid_files  # the same images (in row order)
    assert ColReader(1, suff="!")({"a": "x", "b": "y"}) == "y!" and ColReader("a")({"a": "x"}) == "x"
    with pytest.raises(ValueError, match="row 0 holds 'maybe'"):
        ColSplitter("v")([{"v": "maybe"}])
