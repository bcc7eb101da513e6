"""Shared fixtures: a tiny learnable image folder and an isolated data home."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


@pytest.fixture
def tiny_dls(tiny_folder):
    from vivace.data import make_dataloaders
    return make_dataloaders(tiny_folder, size=16, presize=24, bs=4, valid_bs=8, seed=0, device="cpu",
                            workers=1, progress=False)


def trained_tiny_learner(folder: Path, valid_bs: int = 8):
    """A quarter-width xresnet18 trained one epoch on a tiny folder (fixtures share it)."""
    from vivace.data import make_dataloaders
    from vivace.learner import Learner
    from vivace.models import create_model

    dls = make_dataloaders(folder, size=16, presize=24, bs=4, valid_bs=valid_bs, seed=0, device="cpu",
                           workers=1, progress=False)
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
