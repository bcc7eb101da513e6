"""Shared fixtures and helpers: a tiny learnable image folder, tiny models, an isolated data home.

Tests marked `slow` (end to end, browser, torchrun, pseudo-terminal) are left out by
`make test-fast` (`pytest -m "not slow"`); `make test` runs them all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

CLASSES = ["red", "green", "blue"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Caches and downloads go to a temporary data home, never the user's."""
    home = tmp_path_factory.mktemp("vivace_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("VIVACE_HOME", str(home))
    torch.set_num_threads(2)
    yield home
    mp.undo()


def make_image_folder(root: Path, n_train: int = 8, n_valid: int = 4, size: tuple[int, int] = (40, 32),
                      seed: int = 0) -> Path:
    """train/<class>/*.png and val/<class>/*.png; each class a noisy dominant colour (learnable)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_valid)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (size[1], size[0], 3))
                pixels[..., c] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny"))


TINY_DATA = dict(size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu", workers=1,
                 progress=False)  # make_dataloaders' keywords for the tiny folders: 3 classes, 16 px crops


def tiny_dataloaders(folder: Path, **overrides):
    """make_dataloaders on a tiny folder with TINY_DATA, changed by `overrides`."""
    from vivace.data import make_dataloaders
    return make_dataloaders(folder, **{**TINY_DATA, **overrides})


@pytest.fixture
def tiny_dls(tiny_folder):
    return tiny_dataloaders(tiny_folder)


def tiny_model(n_out: int = 3) -> nn.Module:
    """A seeded conv -> BN -> pool -> linear model: trains in milliseconds on any input size."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_out))


class SizeSpy(nn.Module):
    """`tiny_model` that records the input side it sees in eval mode (validation, TTA) in `sizes`."""

    def __init__(self):
        super().__init__()
        self.body = tiny_model()
        self.sizes: list[int] = []

    def forward(self, x):
        if not self.training:
            self.sizes.append(x.shape[-1])
        return self.body(x)


def trained_tiny_learner(folder: Path, valid_bs: int = 8):
    """A quarter-width xresnet18 trained one epoch on a tiny folder (fixtures share it)."""
    from vivace.learner import Learner
    from vivace.models import create_model

    dls = tiny_dataloaders(folder, valid_batch_size=valid_bs)
    torch.manual_seed(0)
    learn = Learner(dls, create_model("xresnet18", n_out=len(dls.vocab), widen=0.25))
    learn.fit_one_cycle(1, 1e-2)
    return learn


WORDNET_IDS = {"red": "n01440764", "green": "n02102040", "blue": "n02979186"}  # tench, English springer, cassette player


@pytest.fixture(scope="session")
def wordnet_folder(tiny_folder, tmp_path_factory) -> Path:
    """The tiny folder with Imagenette's class folder names (WordNet ids) instead of colours."""
    import shutil
    root = tmp_path_factory.mktemp("wordnet") / "data"
    shutil.copytree(tiny_folder, root)
    for split in ("train", "val"):
        for colour, wnid in WORDNET_IDS.items():
            (root / split / colour).rename(root / split / wnid)
    return root


def make_multi_label_folder(root: Path, n_train: int = 12, n_valid: int = 6, seed: int = 0) -> Path:
    """images/*.png whose left and right halves each carry a class colour, and labels.csv naming
    both (one label when the halves agree): a small honest multi-label set. Columns: name,
    labels (space-separated), is_valid."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_valid):
        left, right = rng.integers(0, len(CLASSES), 2)
        pixels = rng.integers(0, 90, (32, 40, 3))
        pixels[:, :20, left] += 150
        pixels[:, 20:, right] += 150
        Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,{' '.join(sorted({CLASSES[left], CLASSES[right]}))},{i >= n_train}")
    (root / "labels.csv").write_text("name,labels,is_valid\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def multi_label_folder(tmp_path_factory) -> Path:
    return make_multi_label_folder(tmp_path_factory.mktemp("multi"), n_train=60, n_valid=24)


def train_in_subprocess(recipe: dict, options: dict, kill_at: tuple[int, int] | None = None):
    """`train(make_recipe(**recipe), TrainOptions(**options))` in a fresh process; SIGKILLed after
    (epoch, batch) when `kill_at` is given. Returns the CompletedProcess."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent(f"""
        import os, signal
        from vivace.callbacks import Callback
        from vivace.recipe import TrainOptions, make_recipe
        from vivace.train import train

        class KillAt(Callback):
            order = 100  # after the checkpoint saver
            def after_batch(self, learn):
                if (learn.state.epoch, learn.state.iter) == {kill_at!r}:
                    os.kill(os.getpid(), signal.SIGKILL)

        train(make_recipe(**{recipe!r}), TrainOptions(**{options!r}), cbs=[KillAt()])
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
