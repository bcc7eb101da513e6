"""The book's inference and interpretation calls: learn.predict, show_results, load_learner,
ClassificationInterpretation, checked against the Learner's own evaluation."""
import shutil

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from conftest import trained_tiny_learner
from vivace.book import ClassificationInterpretation, Learner, accuracy, load_learner
from vivace.data import make_dataloaders
from vivace.data.names import display_names
from vivace.interpret import Interpretation
from vivace.models import create_model

matplotlib.use("Agg")  # headless, as on a server


@pytest.fixture(scope="module")
def learn(tiny_folder):
    """The book's Learner around a model trained one epoch on the tiny folder."""
    tiny = trained_tiny_learner(tiny_folder)
    return Learner(tiny.dls, tiny.model, metrics=accuracy)


@pytest.fixture(scope="module")
def exported(learn, tmp_path_factory):
    return learn.export(tmp_path_factory.mktemp("book_export") / "export.vivace")


# -- learn.predict -----------------------------------------------------------------------
def test_predict_returns_fastais_triple(learn, tiny_folder):
    label, index, probs = learn.predict(tiny_folder / "val" / "green" / "0.png")
    assert isinstance(label, str) and label in learn.dls.vocab
    assert isinstance(index, torch.Tensor) and index.ndim == 0 and index.dtype == torch.int64
    assert probs.shape == (len(learn.dls.vocab),) and probs.dtype == torch.float32
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert label == learn.dls.vocab[index] and int(probs.argmax()) == int(index)


def test_predict_matches_the_learners_own_validation_preds(learn):
    logits, _ = learn.get_preds()
    valid_files = learn.dls.source.valid_files  # in the validation loader's order
    for i in range(0, len(valid_files), 3):  # one image per class
        label, index, probs = learn.predict(str(valid_files[i]))
        torch.testing.assert_close(probs, logits[i].softmax(-1), atol=1e-5, rtol=0)
        assert int(index) == int(logits[i].argmax())


def test_predict_follows_the_square_validation_view(learn):
    """learn.predict shows images as validation does, whatever the view (it once dropped `square`)."""
    resize = learn.dls.valid.transform.resize
    resize.square, resize.crop = True, 0.75
    try:
        logits, _ = learn.get_preds()
        probs = torch.stack([learn.predict(str(f))[2] for f in learn.dls.source.valid_files])
    finally:
        resize.square, resize.crop = False, 1.0
    torch.testing.assert_close(probs, logits.softmax(-1), atol=1e-5, rtol=0)
    assert not torch.allclose(logits, learn.get_preds()[0])  # the view matters on these 40x32 images


def test_predict_takes_a_pil_image(learn, tiny_folder):
    path = tiny_folder / "val" / "blue" / "2.png"
    with Image.open(path) as img:
        from_pil = learn.predict(img)
    from_file = learn.predict(path)
    assert from_pil[0] == from_file[0] and torch.equal(from_pil[1], from_file[1])
    torch.testing.assert_close(from_pil[2], from_file[2])


def test_predict_refuses_a_folder_and_names_a_bad_file(learn, tiny_folder, tmp_path):
    with pytest.raises(ValueError, match="one image"):
        learn.predict(tiny_folder / "val")
    with pytest.raises(ValueError, match="one image"):
        learn.predict([tiny_folder / "val" / "red" / "0.png"])
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        learn.predict(bad)


# -- export and load_learner -----------------------------------------------------------------
def test_load_learner_predicts_as_the_learner(learn, exported, tiny_folder):
    learn_inf = load_learner(exported)
    assert learn_inf.dls.vocab == learn.dls.vocab and learn_inf.dls.c == 3
    for path in sorted((tiny_folder / "val").rglob("*.png"))[::3]:
        label, index, probs = learn_inf.predict(path)
        expected = learn.predict(path)
        assert label == expected[0] and torch.equal(index, expected[1])
        torch.testing.assert_close(probs, expected[2], atol=1e-6, rtol=0)


def test_load_learner_keeps_vivaces_predictor(exported, tiny_folder):
    learn_inf = load_learner(exported)
    preds = learn_inf.predictor.predict(tiny_folder / "val")  # a folder: vivace's Prediction list
    assert len(preds) == 12 and not learn_inf.model.training
    with pytest.raises(ValueError, match="one image"):
        learn_inf.predict(tiny_folder / "val")


# -- ClassificationInterpretation --------------------------------------------------------------
def known_interpretation(learn) -> ClassificationInterpretation:
    """Targets and predictions chosen so the confusion matrix (vocab blue, green, red) is

        actual \\ predicted  blue  green  red
        blue                   2     3     0
        green                  0     1     3
        red                    1     0     4
    """
    pairs = [(0, 0)] * 2 + [(0, 1)] * 3 + [(1, 1)] + [(1, 2)] * 3 + [(2, 0)] + [(2, 2)] * 4
    targets = torch.tensor([a for a, _ in pairs])
    logits = F.one_hot(torch.tensor([p for _, p in pairs]), 3).float() * 4.0
    return ClassificationInterpretation(Interpretation(learn, logits, targets))


def test_confusion_matrix_and_most_confused_on_a_known_matrix(learn):
    interp = known_interpretation(learn)
    cm = interp.confusion_matrix()
    assert isinstance(cm, np.ndarray) and cm.dtype == np.int64
    assert cm.tolist() == [[2, 3, 0], [0, 1, 3], [1, 0, 4]]
    # fastai: (actual, predicted, count), count descending, ties in row order
    assert interp.most_confused() == [("blue", "green", 3), ("green", "red", 3), ("red", "blue", 1)]
    assert interp.most_confused(min_val=2) == [("blue", "green", 3), ("green", "red", 3)]
    assert interp.most_confused(min_val=4) == []


def test_top_losses_are_the_largest_cross_entropies(learn):
    interp = ClassificationInterpretation.from_learner(learn)
    logits, targets = learn.get_preds()
    losses = F.cross_entropy(logits, targets, reduction="none")
    values, indices = interp.top_losses(4)
    assert values.shape == (4,) and (values[:-1] >= values[1:]).all()
    torch.testing.assert_close(values, losses[indices])
    assert float(values[0]) == pytest.approx(float(losses.max()))
    assert len(interp.top_losses()[0]) == len(targets)
    assert interp.confusion_matrix().sum() == len(targets)


def test_interpretation_plots_return_figures(learn, tmp_path):
    interp = ClassificationInterpretation.from_learner(learn)
    fig = interp.plot_confusion_matrix()
    assert isinstance(fig, Figure) and [t.get_text() for t in fig.axes[0].get_xticklabels()] == learn.dls.vocab
    fig = interp.plot_top_losses(5, path=tmp_path / "top.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 5 and (tmp_path / "top.png").stat().st_size > 0
    assert isinstance(interp.plot_confusion_matrix(normalize=True), Figure)
    with pytest.raises(ValueError, match="k=0"):
        interp.plot_top_losses(0)


# -- show_results -----------------------------------------------------------------------------
def test_show_results_titles_actual_then_predicted_in_green_or_red(learn, tmp_path):
    logits, targets = learn.get_preds()
    fig = learn.show_results(max_n=9, path=tmp_path / "results.png")  # 2 validation batches of 8
    assert isinstance(fig, Figure) and len(fig.axes) == 9 and (tmp_path / "results.png").stat().st_size > 0
    vocab = learn.dls.vocab
    for ax, actual, pred in zip(fig.axes, targets.tolist(), logits.argmax(-1).tolist()):
        assert ax.get_title() == f"{vocab[actual]}\n{vocab[pred]}"
        assert ax.title.get_color() == ("green" if actual == pred else "red")
        assert ax.get_images()[0].get_array().shape == (16, 16, 3)


def test_show_results_shows_human_names_of_wordnet_ids(tiny_folder, tmp_path):
    folder = tmp_path / "nette"
    wnids = {"red": "n01440764", "green": "n03028079", "blue": "n03888257"}  # tench, church, parachute
    for split in ("train", "val"):
        for colour, wnid in wnids.items():
            shutil.copytree(tiny_folder / split / colour, folder / split / wnid)
    dls = make_dataloaders(folder, size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu",
                           workers=1, progress=False)
    learn = Learner(dls, create_model("xresnet18", n_out=3, widen=0.25))
    fig = learn.show_results(max_n=3)
    names = display_names(dls.vocab)
    assert names != dls.vocab
    assert all(ax.get_title().split("\n")[0] in names for ax in fig.axes)
    assert learn.predict(folder / "val" / "n01440764" / "0.png")[0] in wnids.values()  # code keeps the ids


def test_show_results_refuses_bad_arguments(learn):
    with pytest.raises(ValueError, match="max_n"):
        learn.show_results(max_n=0)
    with pytest.raises(ValueError, match="ds_idx"):
        learn.show_results(ds_idx=2)
