"""A real Jupyter kernel runs the book's calls: every figure shows as a PNG, training shows HTML
bars and an HTML epoch table, and the saved notebook keeps them (nbclient + ipykernel)."""
from __future__ import annotations

import types
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from conftest import make_image_folder, tiny_model
from vivace import book, screen
from vivace.figures import Figure
from vivace.interpret import Interpretation
from vivace.lr_finder import LRFindResult
from vivace.show import image_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

REPO = Path(__file__).resolve().parents[1]
FIGURE_CALLS = ["dls.show_batch()", "learn.show_results(max_n=4)", "interp.plot_confusion_matrix()",
                "interp.plot_top_losses(9)", "learn.lr_find(num_it=10, show_plot=False).plot()", "dls.show_batch()  # again"]


def book_cells(folder: Path) -> list[str]:
    """The first hour of the book on a tiny folder: data, a look, the LR finder, training, interpretation."""
    return [
        "import vivace, torch\ntorch.set_num_threads(2)\nprint(vivace.__file__)",
        "from vivace.book import *\n"
        f"dls = ImageDataLoaders.from_folder({str(folder)!r}, valid='val', item_tfms=Resize(24),\n"
        "                                   batch_tfms=aug_transforms(size=16), bs=4)",
        FIGURE_CALLS[0],
        "learn = Learner(dls, xresnet18(n_out=dls.c, widen=0.25), metrics=accuracy)\nlearn.lr_find(num_it=10)",
        "learn.fit_one_cycle(2, 1e-2)",
        FIGURE_CALLS[1],
        "interp = ClassificationInterpretation.from_learner(learn)\n" + FIGURE_CALLS[2],
        FIGURE_CALLS[3],
        FIGURE_CALLS[4],
        "%matplotlib inline",  # pyplot's inline backend on: vivace's figures must still show once
        FIGURE_CALLS[5],
    ]


def outputs_of(nb, last_line: str) -> list[dict]:
    """The outputs of the one cell that ends with `last_line`."""
    (cell,) = [c for c in nb.cells if c.source.endswith(last_line)]
    return cell.outputs


def pngs(outputs: list[dict]) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs)


def htmls(outputs: list[dict], marker: str) -> list[str]:
    return [out["data"]["text/html"] for out in outputs if marker in out.get("data", {}).get("text/html", "")]


# -- without a kernel: the figures' PNG, and nothing shown or printed by a script ----------------------
def test_vivaces_figures_are_matplotlib_figures_with_a_png_for_notebooks():
    interp = Interpretation(types.SimpleNamespace(dls=types.SimpleNamespace(vocab=["a", "b"], valid=None)),
                            torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    sweep = LRFindResult([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0], 1e-2, 1e-2)
    for fig in (image_grid(torch.rand(2, 3, 8, 8), ["x", "y"]), interp.confusion_matrix_figure(), sweep.plot()):
        assert isinstance(fig, Figure) and fig._repr_png_().startswith(PNG_SIGNATURE)
    assert plt.get_fignums() == []  # made without pyplot: nothing for a script's pyplot to show


def test_the_books_lr_find_in_a_script_draws_and_prints_nothing(tiny_dls, capsys):
    drawn = []
    screen.display_in_notebook(lambda: drawn.append("drawn"))
    assert drawn == []  # outside a kernel the figure is not even made
    learn = book.Learner(tiny_dls, tiny_model(len(tiny_dls.vocab)))
    found = learn.lr_find(num_it=6)
    assert capsys.readouterr() == ("", "") and plt.get_fignums() == []
    assert repr(found).startswith("SuggestedLRs(valley=")


# -- a real kernel ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook, run top to bottom in a fresh kernel that imports this checkout, saved and read back."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("notebook")
    folder = make_image_folder(root / "data")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in book_cells(folder)])
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(REPO))  # the kernel inherits this process's environment
    mp.delenv("VIVACE_PROGRESS", raising=False)
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                resources={"metadata": {"path": str(root)}}).execute()
    finally:
        mp.undo()
    nbformat.write(nb, root / "book.ipynb")
    return nbformat.read(root / "book.ipynb", as_version=4)


@pytest.mark.slow
def test_the_kernel_imports_this_checkout(executed):
    printed = "".join(out.get("text", "") for out in executed.cells[0].outputs)
    assert printed.strip() == str(REPO / "vivace" / "__init__.py")


@pytest.mark.slow
@pytest.mark.parametrize("call", FIGURE_CALLS)
def test_every_figure_shows_once_as_png(executed, call):
    outputs = outputs_of(executed, call)
    assert pngs(outputs) == 1, outputs  # shown, and not twice (the returned value and a display)


@pytest.mark.slow
def test_lr_find_shows_its_plot_and_one_bar_over_its_steps(executed):
    outputs = outputs_of(executed, "learn.lr_find(num_it=10)")
    assert pngs(outputs) == 1  # the plot, drawn by lr_find itself as fastai's
    assert outputs[-1]["output_type"] == "execute_result"
    assert outputs[-1]["data"]["text/plain"].startswith("SuggestedLRs(valley=")
    (bar,) = htmls(outputs, "<progress")
    assert "lr_find: 10/10 batches" in bar and "epoch" not in bar


@pytest.mark.slow
def test_training_shows_the_fit_bar_and_an_html_table_with_a_row_per_epoch(executed):
    outputs = outputs_of(executed, "learn.fit_one_cycle(2, 1e-2)")
    assert not [out for out in outputs if out["output_type"] == "stream" and "train_loss" in out["text"]]
    (bars,) = htmls(outputs, "<progress")
    assert "2/2 epochs" in bars and bars.count("<progress") == 1  # the epoch's bar went when it ended
    (table,) = htmls(outputs, "<table")
    assert table.count("<tr>") == 2 and "<th>train_loss</th>" in table and "<th>accuracy</th>" in table
    assert [out["output_type"] for out in outputs] == ["display_data", "display_data"]  # bars above the table
    assert "<progress" in outputs[0]["data"]["text/html"]
