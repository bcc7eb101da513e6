import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vivace.cli import main
from vivace.data import make_dataloaders
from vivace.export import export_learner, load
from vivace.inference import Prediction, Predictor
from vivace.learner import Learner
from vivace.models import create_model
from vivace.pictures import Pictures


@pytest.fixture(scope="module")
def bundle(tiny_folder, tmp_path_factory):
    dls = make_dataloaders(tiny_folder, size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu",
                           workers=1, progress=False)
    torch.manual_seed(0)
    learn = Learner(dls, create_model("xresnet18", n_out=3, widen=0.25))
    learn.fit_one_cycle(1, 1e-2)
    return export_learner(learn, tmp_path_factory.mktemp("bundle") / "tiny.vivace")


@pytest.fixture(scope="module")
def predictor(bundle) -> Predictor:
    return load(bundle, device="cpu")


@pytest.fixture
def mixed_folder(tiny_folder, tmp_path):
    """Two good images and three bad ones: corrupt PNG, zero-byte JPEG, text named .jpg."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((tiny_folder / "val" / "red").glob("*.png"))[:2]
    for i, f in enumerate(good):
        shutil.copy(f, folder / f"good{i}.png")
    (folder / "corrupt.png").write_bytes(good[0].read_bytes()[:60])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    return folder


def test_single_file(predictor, tiny_folder):
    pred = predictor.predict(tiny_folder / "val" / "red" / "0.png")
    assert isinstance(pred, Prediction) and pred.ok
    assert pred.label == predictor.vocab[pred.index] == pred.top(1)[0][0]
    assert pred.probs.shape == (3,) and float(pred.probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_pil_image_matches_its_file(predictor, tiny_folder):
    path = tiny_folder / "val" / "green" / "1.png"
    from_file = predictor.predict(str(path))
    with Image.open(path) as img:
        from_pil = predictor.predict(img)
        assert img.size == (40, 32)  # the caller's image is left as it was
    assert torch.equal(from_file.probs, from_pil.probs)
    grey = predictor.predict(Image.open(path).convert("LA"))  # any mode is converted to RGB
    assert grey.ok and grey.probs.shape == (3,)


def test_list_and_folder(predictor, tiny_folder):
    files = sorted((tiny_folder / "val").rglob("*.png"))
    listed = predictor.predict(files)
    folder = predictor.predict(tiny_folder / "val")
    assert isinstance(folder, list) and len(folder) == len(files) == 12
    assert [p.path for p in folder] == [str(f) for f in files]
    assert torch.allclose(torch.stack([p.probs for p in listed]), torch.stack([p.probs for p in folder]))


def test_batch_size_does_not_change_results(predictor, tiny_folder):
    files = sorted((tiny_folder / "val").rglob("*.png"))
    one = torch.stack([p.probs for p in predictor.predict(files, batch_size=1)])
    many = torch.stack([p.probs for p in predictor.predict(files, batch_size=5)])
    assert torch.allclose(one, many, atol=1e-5)


def test_bad_images_are_reported_and_the_rest_go_on(predictor, mixed_folder):
    preds = predictor.predict(mixed_folder)
    by_name = {p.path.rsplit("/", 1)[1]: p for p in preds}
    assert sorted(by_name) == ["corrupt.png", "empty.jpg", "good0.png", "good1.png", "notes.jpg"]
    assert [n for n, p in by_name.items() if p.ok] == ["good0.png", "good1.png"]
    for name in ("corrupt.png", "empty.jpg", "notes.jpg"):
        assert name in by_name[name].error and by_name[name].as_dict()["error"]
    alone = predictor.predict(mixed_folder / "good1.png")
    assert torch.allclose(by_name["good1.png"].probs, alone.probs)
    mixed_list = predictor.predict([mixed_folder / "missing.png", Image.open(mixed_folder / "good0.png")])
    assert not mixed_list[0].ok and mixed_list[1].ok


def test_a_single_bad_image_raises(predictor, mixed_folder):
    with pytest.raises(ValueError, match="cannot read image"):
        predictor.predict(mixed_folder / "notes.jpg")


def test_flip_tta_averages_the_mirror_image(predictor, tiny_folder):
    path = tiny_folder / "val" / "blue" / "2.png"
    image = predictor.decode(path)  # (h, w, 3) as the cache stores it
    mirror = np.ascontiguousarray(image[:, ::-1])
    expected = (predictor.probs(Pictures.pack([image])) + predictor.probs(Pictures.pack([mirror]))) / 2
    flipped = predictor.predict(path, tta="flip")
    assert torch.allclose(flipped.probs, expected[0], atol=1e-6)
    assert not torch.allclose(flipped.probs, predictor.predict(path).probs, atol=1e-6)


def test_bad_arguments(predictor, tmp_path):
    with pytest.raises(ValueError, match="tta"):
        predictor.predict([], tta="five-crop")
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict([], batch_size=0)
    with pytest.raises(ValueError, match="no images"):
        predictor.predict(tmp_path)


def test_cli_predict_json(bundle, tiny_folder, capsys):
    files = [str(tiny_folder / "val" / c / "0.png") for c in ("red", "blue")]
    assert main(["predict", str(bundle), *files, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    objs = [json.loads(line) for line in lines]
    assert [o["path"] for o in objs] == files
    for o in objs:
        assert set(o["probs"]) == {"red", "green", "blue"} and o["label"] == next(iter(o["probs"]))
        assert sum(o["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_cli_predict_text_topk_and_tta(bundle, tiny_folder, capsys):
    path = str(tiny_folder / "val" / "red" / "0.png")
    assert main(["predict", str(bundle), path, "--topk", "2", "--tta"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(path + ": ") and len(out) == 3


def test_cli_predict_folder_writes_csv(bundle, mixed_folder, tmp_path, capsys):
    out_csv = tmp_path / "out" / "preds.csv"
    assert main(["predict", str(bundle), str(mixed_folder), "--csv", str(out_csv)]) == 0
    captured = capsys.readouterr()
    assert str(out_csv) in captured.out and "2 of 5 images" in captured.out
    assert captured.err.count("cannot read image") == 3
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 5 and sum(1 for r in rows if r["error"]) == 3
    ok = [r for r in rows if not r["error"]]
    assert all(float(r["prob"]) == float(r[r["label"]]) for r in ok)


def test_cli_predict_exit_codes(bundle, mixed_folder, tmp_path, capsys):
    bad = [str(mixed_folder / n) for n in ("corrupt.png", "empty.jpg", "notes.jpg")]
    assert main(["predict", str(bundle), *bad, str(mixed_folder / "good0.png")]) == 0
    assert main(["predict", str(bundle), *bad]) == 1
    assert capsys.readouterr().err.count("cannot read image") == 6
    tampered = tmp_path / "tampered.vivace"
    tampered.write_bytes(bundle.read_bytes()[:-10])
    assert main(["predict", str(tampered), bad[0]]) == 2
    assert "not a readable bundle" in capsys.readouterr().err


def test_predict_text_names_imagenette_classes_and_json_keeps_ids(wordnet_folder, tmp_path, capsys):
    dls = make_dataloaders(wordnet_folder, size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu",
                           workers=1, progress=False)
    learn = Learner(dls, create_model("xresnet18", n_out=3, widen=0.25))
    bundle = export_learner(learn, tmp_path / "wordnet.vivace")
    image = str(sorted((wordnet_folder / "val" / "n01440764").glob("*.png"))[0])
    assert main(["predict", str(bundle), image, "--topk", "3"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("tench", "English springer", "cassette player"))
    assert "n01440764" not in text.replace(image, "")  # the id only in the image's own path
    assert main(["predict", str(bundle), image, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] in ("n01440764", "n02102040", "n02979186")
    assert set(row["probs"]) == {"n01440764", "n02102040", "n02979186"}
    assert row["name"] == {"n01440764": "tench", "n02102040": "English springer",
                           "n02979186": "cassette player"}[row["label"]]


def test_cli_predict_never_replaces_a_csv_silently(bundle, mixed_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "predictions.csv"  # the default --csv, in the working directory
    mine.write_text("the user's own file\n")
    assert main(["predict", str(bundle), str(mixed_folder)]) == 2
    err = capsys.readouterr().err
    assert "predictions.csv already exists" in err and "--overwrite" in err and "--csv PATH" in err
    assert "cannot read image" not in err  # refused before predicting anything
    assert mine.read_text() == "the user's own file\n"
    assert main(["predict", str(bundle), str(mixed_folder), "--overwrite"]) == 0
    assert mine.read_text().startswith("path,label,prob,error")
