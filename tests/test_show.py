"""`vivace show` writes the chapter's pictures."""
import numpy as np
import pytest
import torch

from vivace.cli import main
from vivace.show import mixup_figure, show_batch, show_mixup, two_classes

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("what", ["mixup", "batch", "augs"])
def test_show_writes_a_png(what, tiny_folder, tmp_path, capsys):
    out = tmp_path / f"{what}.png"
    args = ["show", what, "--data", str(tiny_folder), "--size", "16", "--presize", "24", "--workers", "1",
            "--out", str(out)]
    assert main(args) == 0
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == PNG
    assert capsys.readouterr().out.strip() == str(out)


def test_mixup_picture_uses_two_classes_and_the_soft_target(tiny_dls):
    fig = show_mixup(tiny_dls, lam=0.7)
    bars = [p.get_width() for p in fig.axes[3].patches]  # the soft target's bars
    assert sorted(bars) == pytest.approx([0.0, 0.3, 0.7])
    assert two_classes(np.array([2, 2, 0, 1])) == (0, 2)
    with pytest.raises(ValueError, match="two classes"):
        two_classes(np.array([1, 1]))
    img = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="lam=1.5"):
        mixup_figure(img, img, 1.5, torch.tensor([1.0]), ["a"], ("a", "a"))


def test_figures_name_imagenette_classes(wordnet_folder):
    from vivace.data import make_dataloaders
    dls = make_dataloaders(wordnet_folder, size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu",
                           workers=1, progress=False)
    names = {"tench", "English springer", "cassette player"}
    mixup = show_mixup(dls, lam=0.7)
    assert {t.get_text() for t in mixup.axes[3].get_yticklabels()} == names
    assert mixup.axes[0].get_title().split(" (")[0] in names
    batch = show_batch(dls, max_n=4)
    assert all(ax.get_title() in names for ax in batch.axes)
