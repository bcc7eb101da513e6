import math

import numpy as np
import pytest
from conftest import trained_tiny_learner
import torch
from PIL import Image

from vivace.interpret import Interpretation
from vivace.metrics import accuracy


@pytest.fixture(scope="module")
def learn(tiny_folder):
    return trained_tiny_learner(tiny_folder, valid_bs=5)


@pytest.fixture(scope="module")
def interp(learn) -> Interpretation:
    return Interpretation.from_learner(learn)


def hand_made(learn) -> Interpretation:
    """Labels blue, blue, green, green, red, red; predictions blue, green, green, green, blue, red."""
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    logits = torch.nn.functional.one_hot(preds, 3).float() * 3
    logits[1, 1] = 1.0  # item 1: a milder mistake than item 4
    return Interpretation(learn, logits, targets)


def assert_png_with_content(path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 5 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_confusion_matrix_and_friends(learn):
    interp = hand_made(learn)
    assert interp.confusion_matrix().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert interp.most_confused() == [("blue", "green", 1), ("red", "blue", 1)]
    assert interp.most_confused(min_val=2) == []
    assert interp.per_class_accuracy() == {"blue": 0.5, "green": 1.0, "red": 0.5}
    losses, indices = interp.top_losses(2)
    assert indices.tolist() == [4, 1] and losses[0] > losses[1]


def test_absent_class_has_nan_accuracy(learn):
    interp = Interpretation(learn, torch.eye(3)[[0, 1]], torch.tensor([0, 1]))
    acc = interp.per_class_accuracy()
    assert acc["blue"] == 1.0 and math.isnan(acc["red"])


def test_from_learner_covers_the_validation_set(learn, interp):
    cm = interp.confusion_matrix()
    assert int(cm.sum()) == 12 and cm.sum(dim=1).tolist() == [4, 4, 4]
    assert float(cm.diagonal().sum()) / 12 == pytest.approx(float(accuracy(interp.logits, interp.targets)))
    assert len(interp.top_losses()[0]) == 12


def test_images_are_the_loader_inputs_in_order(learn, interp):
    _, indices = interp.top_losses(4)
    xs = torch.cat([x for x, _ in learn.dls.valid])  # normalized, (12, 3, 16, 16), valid_bs=5: 3 batches
    expected = learn.dls.normalize.decode(xs[indices]).clamp(0, 1)
    assert torch.allclose(interp.images(indices), expected, atol=1e-6)


def test_plots_are_written(interp, tmp_path):
    for path in (interp.plot_confusion_matrix(tmp_path / "cm.png"),
                 interp.plot_confusion_matrix(tmp_path / "cm_norm.png", normalize=True),
                 interp.plot_top_losses(4, tmp_path / "sub" / "top.png"),
                 interp.plot_reliability(tmp_path / "rel.png")):
        assert_png_with_content(path)
    with pytest.raises(ValueError, match="k=0"):
        interp.plot_top_losses(0, tmp_path / "none.png")


def test_plots_and_tables_name_imagenette_classes(wordnet_folder):
    learn = trained_tiny_learner(wordnet_folder)
    interp = hand_made(learn)
    assert interp.vocab == ["n01440764", "n02102040", "n02979186"]  # the ids stay the identity
    names = ["tench", "English springer", "cassette player"]
    ax = interp.confusion_matrix_figure().axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert interp.most_confused() == [("tench", "English springer", 1), ("cassette player", "tench", 1)]
