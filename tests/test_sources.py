"""Tests for vivace.data.sources: finding, labelling and splitting image files."""

import os
import tracemalloc
from pathlib import Path

import pytest

from vivace.data.sources import IMAGE_EXTENSIONS, FileList, Source, find_images, label_from_parent, make_source


def touch(root: Path, *relative: str) -> None:
    """Create empty files; sources never opens images, so content does not matter."""
    for rel in relative:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_image_extensions_are_lowercase_with_dot():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp"} == set(IMAGE_EXTENSIONS)


def test_find_images_recursive_sorted_any_case(tmp_path):
    touch(tmp_path, "b/2.PNG", "a/1.jpg", "a/deep/3.JpEg", "c/4.webp", "c/5.BMP", "a/notes.txt", "a/x.gif")
    found = find_images(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a/1.jpg", "a/deep/3.JpEg", "b/2.PNG", "c/4.webp", "c/5.BMP"]


def test_find_images_skips_hidden_folders_and_files(tmp_path):
    touch(tmp_path, "cat/1.jpg", ".git/cat.jpg", "cat/.ipynb_checkpoints/1.jpg", "cat/._1.jpg")
    assert find_images(tmp_path) == [tmp_path / "cat" / "1.jpg"]


def test_find_images_works_under_a_hidden_root(tmp_path):
    # data_home() defaults to ~/.cache/vivace: only folders below the root are filtered.
    touch(tmp_path, ".cache/ds/cat/1.jpg")
    assert len(find_images(tmp_path / ".cache" / "ds")) == 1


def test_label_from_parent():
    assert label_from_parent(Path("/data/train/n01440764/x.JPEG")) == "n01440764"
    assert label_from_parent("dogs/rex.png") == "dogs"


def imagenette_like(root: Path, classes=("cat", "dog", "eel"), n_train=4, n_valid=2) -> None:
    for name in classes:
        touch(root, *[f"train/{name}/{i}.jpg" for i in range(n_train)])
        touch(root, *[f"val/{name}/{i}.jpg" for i in range(n_valid)])


def test_make_source_splits_by_folder(tmp_path):
    imagenette_like(tmp_path)
    touch(tmp_path, "test/cat/9.jpg")  # neither train nor val: ignored
    src = make_source(tmp_path)
    assert isinstance(src, Source)
    assert src.vocab == ["cat", "dog", "eel"]
    assert len(src.train_files) == 12 and len(src.valid_files) == 6
    assert all(f.parent.parent.name == "train" for f in src.train_files)
    assert all(f.parent.parent.name == "val" for f in src.valid_files)
    assert [src.vocab[i] for i in src.train_labels] == [label_from_parent(f) for f in src.train_files]
    assert [src.vocab[i] for i in src.valid_labels] == [label_from_parent(f) for f in src.valid_files]


def test_make_source_custom_split_names(tmp_path):
    for name in ("a", "b"):
        touch(tmp_path, f"training/{name}/1.png", f"validation/{name}/1.png")
    src = make_source(tmp_path, train_name="training", valid_name="validation")
    assert len(src.train_files) == 2 and len(src.valid_files) == 2


def test_make_source_random_split_is_seeded(tmp_path):
    for name in ("cat", "dog"):
        touch(tmp_path, *[f"{name}/{i:02d}.jpg" for i in range(50)])
    first = make_source(tmp_path, valid_pct=0.2, seed=1)
    again = make_source(tmp_path, valid_pct=0.2, seed=1)
    other = make_source(tmp_path, valid_pct=0.2, seed=2)
    assert len(first.valid_files) == 20 and len(first.train_files) == 80
    assert first == again
    assert first.valid_files != other.valid_files
    assert not set(first.train_files) & set(first.valid_files)
    assert first.train_files == sorted(first.train_files)


def test_make_source_train_folder_alone_is_split_at_random(tmp_path):
    imagenette_like(tmp_path)
    src = make_source(tmp_path / "train", valid_pct=0.25)
    assert len(src.train_files) + len(src.valid_files) == 12
    assert len(src.valid_files) == 3


def test_make_source_spaces_and_non_ascii(tmp_path):
    root = tmp_path / "my data ñ 数据"
    touch(root, "train/chaîne à scie/img 1.jpg", "val/chaîne à scie/été 2.jpg")
    touch(root, "train/golf ball/ゴルフ.png", "val/golf ball/b b.png")
    src = make_source(root)
    assert src.vocab == ["chaîne à scie", "golf ball"]
    assert root / "val" / "chaîne à scie" / "été 2.jpg" in src.valid_files
    assert "chaîne à scie" in src.summary()


def test_summary_counts_per_class(tmp_path):
    imagenette_like(tmp_path, classes=("cat", "dog"), n_train=3, n_valid=1)
    touch(tmp_path, "train/cat/extra.jpg")
    lines = make_source(tmp_path).summary().splitlines()
    assert lines[2].split() == ["cat", "4", "1"]
    assert lines[3].split() == ["dog", "3", "1"]
    assert lines[-1].split() == ["total", "7", "2"]


def test_error_missing_root(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as info:
        make_source(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_error_root_is_a_file(tmp_path):
    (tmp_path / "data.tgz").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        make_source(tmp_path / "data.tgz")


def test_error_no_images(tmp_path):
    touch(tmp_path, "cat/readme.txt")
    with pytest.raises(ValueError, match="no images found under"):
        make_source(tmp_path)


def test_error_one_class(tmp_path):
    touch(tmp_path, "train/cat/1.jpg", "val/cat/2.jpg")
    with pytest.raises(ValueError, match=r"only one class \(cat\)"):
        make_source(tmp_path)


def test_error_validation_class_missing_from_training(tmp_path):
    imagenette_like(tmp_path, classes=("cat", "dog"))
    touch(tmp_path, "val/zebra/1.jpg", "val/yak/1.jpg")
    with pytest.raises(ValueError, match="not present in training.*: yak, zebra"):
        make_source(tmp_path)


def test_error_bad_valid_pct(tmp_path):
    touch(tmp_path, "cat/1.jpg", "dog/1.jpg")
    with pytest.raises(ValueError, match="valid_pct=1.5"):
        make_source(tmp_path, valid_pct=1.5)


def test_symlink_loops_list_each_image_once(tmp_path):
    # F1: `ln -s . a/self` and `ln -s ../.. b/up` listed each image ~41 times, silently.
    touch(tmp_path, *(f"train/{c}/{i}.jpg" for c in "ab" for i in range(4)), "val/a/9.jpg", "val/b/9.jpg")
    expected = find_images(tmp_path)
    (tmp_path / "train" / "a" / "self").symlink_to(".")
    (tmp_path / "train" / "b" / "up").symlink_to("../..")
    with pytest.warns(UserWarning, match=r"skipped 2 symlinked folders already visited \(train/a/self, train/b/up\)"):
        assert find_images(tmp_path) == expected
    with pytest.warns(UserWarning, match="symlinked folders"):
        source = make_source(tmp_path)
    assert len(source.train_files) == 8 and len(source.valid_files) == 2


def test_symlinked_folders_and_files_are_followed_once(tmp_path):
    touch(tmp_path / "pool", "cat/1.jpg", "dog/2.jpg")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cat").symlink_to(tmp_path / "pool" / "cat")  # linked into place: followed
    (tmp_path / "data" / "dog").mkdir()
    (tmp_path / "data" / "dog" / "2.jpg").symlink_to(tmp_path / "pool" / "dog" / "2.jpg")
    (tmp_path / "data" / "dog" / "again.jpg").symlink_to(tmp_path / "pool" / "dog" / "2.jpg")
    (tmp_path / "data" / "dog" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # kept: reported at decode
    with pytest.warns(UserWarning, match="skipped 1 symlinked files whose targets were already found"):
        found = find_images(tmp_path / "data")
    assert [p.relative_to(tmp_path / "data").as_posix() for p in found] == ["cat/1.jpg", "dog/2.jpg", "dog/gone.jpg"]


def test_hard_links_stay_separate_images(tmp_path, recwarn):
    touch(tmp_path, "a/1.jpg")
    (tmp_path / "b").mkdir()
    os.link(tmp_path / "a" / "1.jpg", tmp_path / "b" / "1.jpg")
    assert len(find_images(tmp_path)) == 2 and not recwarn.list


def fastai_like(root: Path, valid: str = "valid", classes=("cat", "dog"), n_train=4, n_valid=2) -> None:
    for name in classes:
        touch(root, *[f"train/{name}/{i}.jpg" for i in range(n_train)])
        touch(root, *[f"{valid}/{name}/{i}.jpg" for i in range(n_valid)])


@pytest.mark.parametrize("valid", ["val", "valid"])
def test_validation_folder_val_or_valid_is_the_split(tmp_path, valid):
    fastai_like(tmp_path, valid)
    src = make_source(tmp_path)
    assert len(src.train_files) == 8 and len(src.valid_files) == 4
    assert all(f.parent.parent.name == valid for f in src.valid_files)
    assert src.split_note == f"split: train/ (8 images) and {valid}/ (4 images), 2 classes"


def test_custom_valid_name(tmp_path):
    fastai_like(tmp_path, "test")
    src = make_source(tmp_path, valid_name="test")
    assert all(f.parent.parent.name == "test" for f in src.valid_files) and len(src.valid_files) == 4
    assert src.split_note.startswith("split: train/ (8 images) and test/ (4 images)")


def test_train_without_a_validation_folder_is_an_error_not_a_random_split(tmp_path):
    fastai_like(tmp_path, "test")
    with pytest.raises(ValueError, match=r"has train/ but no validation folder val/ or valid/.*found: test/.*"
                                         r"--valid-name"):
        make_source(tmp_path)


def test_both_val_and_valid_is_an_error(tmp_path):
    fastai_like(tmp_path, "val")
    fastai_like(tmp_path, "valid")
    with pytest.raises(ValueError, match=r"both val/ and valid/.*--valid-name val"):
        make_source(tmp_path)


def test_validation_folder_without_train_is_an_error(tmp_path):
    touch(tmp_path, "valid/cat/1.jpg", "valid/dog/1.jpg", "training/cat/1.jpg")
    with pytest.raises(ValueError, match=r"has valid/ but no train/ beside it"):
        make_source(tmp_path)


def test_missing_custom_valid_name_is_an_error(tmp_path):
    fastai_like(tmp_path, "val")
    with pytest.raises(ValueError, match=r"has train/ but no validation folder holdout/"):
        make_source(tmp_path, valid_name="holdout")


def test_images_outside_the_split_folders_are_counted_as_ignored(tmp_path):
    fastai_like(tmp_path, "val")
    touch(tmp_path, "test/cat/9.jpg", "extra/dog/9.jpg")
    assert make_source(tmp_path).split_note.endswith("2 classes; 2 images outside them ignored")


def test_no_split_folders_note_names_percentage_and_seed(tmp_path):
    for name in ("cat", "dog"):
        touch(tmp_path, *[f"{name}/{i}.jpg" for i in range(10)])
    src = make_source(tmp_path, valid_pct=0.2, seed=7)
    assert src.split_note == (f"no train/val folders in {tmp_path}: random split, 20 % validation, seed 7 "
                              f"(16 train and 4 validation images, 2 classes)")


def test_a_root_named_train_is_not_a_split_folder(tmp_path):
    # `--data imagenette/train`: its classes are one level down, so the split is random.
    fastai_like(tmp_path, "val")
    assert make_source(tmp_path / "train").split_note.startswith("no train/val folders")


def test_images_are_sorted_as_paths_sort_part_by_part(tmp_path):
    # As strings "a-b/x" < "a/x" ('-' < '/'); as Paths a/ comes first, and vivace keeps the Paths' order.
    touch(tmp_path, "a-b/x.jpg", "a/x.jpg", "a.b/y.jpg", "a/a/z.jpg")
    rel = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert rel == [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.glob("**/*.jpg"))]
    assert rel == ["a/a/z.jpg", "a/x.jpg", "a-b/x.jpg", "a.b/y.jpg"]


def test_a_source_holds_its_files_in_a_file_list_that_reads_as_paths(tmp_path):
    touch(tmp_path, "train/cat/1.jpg", "train/dog/2.jpg", "val/cat/3.jpg", "val/dog/4.jpg")
    src = make_source(tmp_path)
    assert isinstance(src.train_files, FileList) and isinstance(src.valid_files, FileList)
    assert src.train_files == [tmp_path / "train/cat/1.jpg", tmp_path / "train/dog/2.jpg"]
    assert list(src.train_files + src.valid_files)[2:] == [tmp_path / "val/cat/3.jpg", tmp_path / "val/dog/4.jpg"]
    assert src.valid_files[1:] == [tmp_path / "val/dog/4.jpg"] and src.valid_files[-1].name == "4.jpg"
    assert list(src.valid_files * 2) == list(src.valid_files) * 2  # as a list does (bench gpu repeats a source)
    assert [tmp_path / "x.jpg"] + src.valid_files == [tmp_path / "x.jpg", *src.valid_files]
    given = Source(tmp_path, ["cat"], [tmp_path / "a.jpg"], [0], [], [])  # lists given are held compactly
    assert isinstance(given.train_files, FileList) and given.train_files[0] == tmp_path / "a.jpg"


def test_a_source_holds_about_its_paths_bytes_per_image_not_a_python_object_each(tmp_path):
    # ImageNet's 1.28 M images: a list of Paths held ~440 bytes each (0.5 GB in every training
    # process); the source now holds the bytes of each path past their common prefix, and a label reference.
    n = 3000
    for i in range(n):
        touch(tmp_path, f"train/c{i % 10}/image_{i:05d}.jpg", *([f"val/c{i % 10}/v_{i:05d}.jpg"] if i < 10 else []))
    path_chars = len(str(tmp_path / "train/c0/image_00000.jpg"))
    tracemalloc.start()
    src = make_source(tmp_path)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(src.train_files) == n
    assert held < n * path_chars, f"{held / n:.0f} bytes per image for {path_chars}-character paths"
