"""The book's chapter 7 ("Training a State-of-the-Art Model") runs on vivace.

Each code cell of the chapter, in order, with only the import line changed and the sizes shrunk:
Resize(460) -> Resize(64), crop sizes 224/128 -> 32/24, xresnet50 -> xresnet18(widen=0.25) for the
training cells (the book's own `xresnet50()` is built once, shape only), 5 epochs -> 1; the batch
sizes are the book's. The data is
the embedded Imagenette subset, placed in a data home under Imagenette's folder name so that
`untar_data(URLs.IMAGENETTE)` finds it offline.
"""
import contextlib
import io
import math

import pytest
import torch
import torch.nn.functional as F

import vivace.book
import vivace.lr_finder
from vivace.book import *  # the chapter's `from fastai.vision.all import *`
from vivace.guards import StopAfter
from vivace.data.datasets import DATASETS, embedded_path
from vivace.data.names import display_names
from vivace.inference import Predictor

N_TRAIN, N_VALID = 400, 100  # the embedded subset's 500 images, split 80/20 at random as in the book
HEADER = "epoch  train_loss  valid_loss  accuracy  time"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A data home holding the embedded subset as `imagenette2`, the folder of URLs.IMAGENETTE."""
    home = tmp_path_factory.mktemp("book_home")
    (home / "imagenette2").symlink_to(embedded_path(), target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIVACE_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def path(home):
    # -- cell: Imagenette
    path = untar_data(URLs.IMAGENETTE)
    return path


def get_dls_for(path):
    """The book's `get_dls` cell (it reads the global `path`)."""
    def get_dls(bs, size):
        dblock = DataBlock(blocks=(ImageBlock, CategoryBlock),
                           get_items=get_image_files,
                           get_y=parent_label,
                           item_tfms=Resize(64),
                           batch_tfms=[*aug_transforms(size=size, min_scale=0.75),
                                       Normalize.from_stats(*imagenet_stats)])
        return dblock.dataloaders(path, bs=bs)
    return get_dls


@pytest.fixture(scope="module")
def baseline_dls(path):
    # -- cell: presizing DataBlock
    dblock = DataBlock(blocks=(ImageBlock(), CategoryBlock()),
                       get_items=get_image_files,
                       get_y=parent_label,
                       item_tfms=Resize(64),
                       batch_tfms=aug_transforms(size=32, min_scale=0.75))
    dls = dblock.dataloaders(path, bs=64)
    return dls


def table(out: str) -> list[list[str]]:
    """The printed epoch table as rows of fields, the header first."""
    return [line.split() for line in out.strip().splitlines()]


def check_rows(rows: list[list[str]], n_epochs: int) -> None:
    assert rows[0] == HEADER.split()
    assert len(rows) == n_epochs + 1
    for row in rows[1:]:
        train_loss, valid_loss, acc = (float(v) for v in row[1:4])
        assert math.isfinite(train_loss) and math.isfinite(valid_loss)
        assert 0.0 <= acc <= 1.0
        assert len(row[4]) == 5 and row[4][2] == ":"  # mm:ss


# -- Imagenette --------------------------------------------------------------------------
def test_untar_data_finds_the_copy_in_the_data_home_without_downloading(home, path):
    assert path == home / "imagenette2"
    assert not list(home.glob("*.tgz"))
    assert len(get_image_files(path)) == N_TRAIN + N_VALID
    assert len(get_image_files(path, folders=["val"])) == N_VALID
    assert get_image_files(path, recurse=False) == []  # the images sit two folders down


def test_urls_are_fastai_addresses_of_known_datasets():
    names = {URLs.IMAGENETTE: "imagenette", URLs.IMAGENETTE_160: "imagenette-160",
             URLs.IMAGENETTE_320: "imagenette-320", URLs.IMAGEWOOF: "imagewoof",
             URLs.IMAGEWOOF_160: "imagewoof-160", URLs.IMAGEWOOF_320: "imagewoof-320"}
    for url, name in names.items():
        assert url == DATASETS[name].url
    assert URLs.IMAGENETTE == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
    with pytest.raises(ValueError, match="Imagenette and Imagewoof"):
        untar_data("https://example.com/pets.tgz")


def test_baseline_cells(baseline_dls, capsys):
    dls = baseline_dls
    assert dls.c == 10 and len(dls.vocab) == 10
    assert (len(dls.source.train_files), len(dls.source.valid_files)) == (N_TRAIN, N_VALID)
    assert dls.train.size == 32 and dls.cache.presize == 64
    # -- cell: baseline (xresnet50(n_out=dls.c) in the book)
    model = xresnet18(n_out=dls.c, widen=0.25)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    learn.fit_one_cycle(1, 3e-3)
    check_rows(table(capsys.readouterr().out), 1)
    # fastai's defaults, which the book's numbers rely on: Adam with true weight decay 0.01
    assert isinstance(learn.opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [0.01, 0.0]  # none on BN, biases


def test_the_books_xresnet50_has_1000_outputs_unless_told(baseline_dls):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model = xresnet50()
        assert model.eval()(x).shape == (2, 1000)  # fastai's default n_out, as in the book
        model = xresnet50(n_out=baseline_dls.c)
        assert model.eval()(x).shape == (2, 10)


def test_learner_defaults_are_fastais(baseline_dls):
    learn = Learner(baseline_dls, xresnet18(n_out=10, widen=0.25))
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    assert learn.metrics == [] and learn.opt_func == "adamw" and learn.wd == 0.01


# -- Normalization -----------------------------------------------------------------------
def test_normalization_cells(path, baseline_dls, capsys):
    dls = baseline_dls
    # -- cell
    x, y = dls.one_batch()
    mean, std = x.mean(dim=[0, 2, 3]), x.std(dim=[0, 2, 3])
    assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32) and y.shape == (64,)
    assert ((0.3 < mean) & (mean < 0.6)).all() and ((0.15 < std) & (std < 0.4)).all()  # book: 0.48, 0.29
    # -- cells: get_dls, then one batch of it
    get_dls = get_dls_for(path)
    dls = get_dls(64, 32)
    x, y = dls.one_batch()
    mean, std = x.mean(dim=[0, 2, 3]), x.std(dim=[0, 2, 3])
    assert (mean.abs() < 0.5).all() and ((0.7 < std) & (std < 1.4)).all()  # book: about 0 and 1
    # -- cell
    model = xresnet18(n_out=dls.c, widen=0.25)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    learn.fit_one_cycle(1, 3e-3)
    check_rows(table(capsys.readouterr().out), 1)


def test_normalize_without_statistics_computes_them(path):
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                       item_tfms=Resize(64), batch_tfms=[*aug_transforms(size=32), Normalize()])
    dls = dblock.dataloaders(path, bs=64)
    assert dls.normalize.mean != list(imagenet_stats[0])
    x, _ = dls.one_batch()
    assert (x.mean(dim=[0, 2, 3]).abs() < 0.3).all()


# -- Progressive resizing ----------------------------------------------------------------
@pytest.fixture(scope="module")
def progressive(path):
    """The two progressive-resizing cells, and what they printed."""
    get_dls = get_dls_for(path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # -- cell (get_dls(128, 128), xresnet50, 4 epochs in the book)
        dls = get_dls(128, 24)
        learn = Learner(dls, xresnet18(n_out=dls.c, widen=0.25), loss_func=CrossEntropyLossFlat(),
                        metrics=accuracy)
        learn.fit_one_cycle(1, 3e-3)
        first_opt = learn.opt
        # -- cell (get_dls(64, 224), fine_tune(5, 1e-3) in the book)
        learn.dls = get_dls(64, 32)
        learn.fine_tune(1, 1e-3)
    return learn, first_opt, out.getvalue()


def test_progressive_resizing_cells(progressive):
    learn, first_opt, out = progressive
    check_rows(table(out), 3)  # 1 epoch, then fine_tune's frozen epoch and its 1 epoch
    assert learn.dls.train.size == 32 and learn.dls.train.batch_size == 64
    assert learn.recorder.sizes[0] == 24 and learn.recorder.sizes[-1] == 32
    assert next(learn.model.parameters()).device == learn.dls.device
    assert learn.opt is not first_opt  # fine_tune starts a fresh optimizer, as fastai's freeze() does


# -- Test time augmentation --------------------------------------------------------------
def test_tta_cell(progressive):
    learn = progressive[0]
    # -- cell
    preds, targs = learn.tta()
    acc = accuracy(preds, targs).item()
    assert preds.shape == (N_VALID, 10) and targs.shape == (N_VALID,)
    torch.testing.assert_close(preds.sum(-1), torch.ones(N_VALID))  # probabilities, as fastai's
    assert 0.0 <= acc <= 1.0


# -- Mixup -------------------------------------------------------------------------------
def test_mixup_figure_cell(path):
    # -- cell
    church = PILImage.create(get_image_files_sorted(path/'train'/'n03028079')[0])
    gas = PILImage.create(get_image_files_sorted(path/'train'/'n03425413')[0])
    church = church.resize((256,256))
    gas = gas.resize((256,256))
    tchurch = tensor(church).float() / 255.
    tgas = tensor(gas).float() / 255.

    _,axs = plt.subplots(1, 3, figsize=(12,4))
    show_image(tchurch, ax=axs[0]);
    show_image(tgas, ax=axs[1]);
    show_image((0.3*tchurch + 0.7*tgas), ax=axs[2]);
    try:
        assert tchurch.shape == (256, 256, 3) and 0.0 <= tchurch.min() and tchurch.max() <= 1.0
        assert [ax.get_images()[0].get_array().shape for ax in axs] == [(256, 256, 3)] * 3
    finally:
        plt.close("all")


def test_mixup_cell(baseline_dls, capsys):
    dls = baseline_dls
    # -- cell
    model = xresnet18(n_out=dls.c, widen=0.25)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(),
                    metrics=accuracy, cbs=MixUp())
    learn.fit_one_cycle(1, 3e-3)
    check_rows(table(capsys.readouterr().out), 1)


def test_mixup_spellings(baseline_dls):
    model = xresnet18(n_out=10, widen=0.25)
    assert MixUp is Mixup and MixUp(0.4).alpha == 0.4
    learn = Learner(baseline_dls, model, cbs=Mixup)  # a class, as the book's first edition writes it
    assert sum(isinstance(cb, Mixup) for cb in learn.cbs) == 1
    learn = Learner(baseline_dls, model, cbs=[Mixup(), CutMix()])
    assert [type(cb) for cb in learn.cbs[-2:]] == [Mixup, CutMix]


def test_mixup_trains_the_books_1000_output_model(baseline_dls):
    model = xresnet18(widen=0.25)  # the book's first edition: xresnet50() has 1000 outputs for 10 classes
    learn = Learner(baseline_dls, model, loss_func=CrossEntropyLossFlat(), cbs=[Mixup, StopAfter(2)])
    learn.fit_one_cycle(1, 3e-3)
    assert learn.n_classes == 1000 and torch.isfinite(learn.state.loss)


# -- Label smoothing ---------------------------------------------------------------------
def test_label_smoothing_cell(baseline_dls, capsys):
    dls = baseline_dls
    # -- cell
    model = xresnet18(n_out=dls.c, widen=0.25)
    learn = Learner(dls, model, loss_func=LabelSmoothingCrossEntropy(),
                    metrics=accuracy)
    learn.fit_one_cycle(1, 3e-3)
    rows = table(capsys.readouterr().out)
    check_rows(rows, 1)
    # The table's valid_loss is the smoothed loss (eps 0.1, the book's default), not plain cross-entropy.
    preds, targets = learn.get_preds()
    smoothed = F.cross_entropy(preds, targets, label_smoothing=0.1).item()
    assert float(rows[1][2]) == pytest.approx(smoothed, abs=2e-6)
    # ... and the Learner's loss is the smoothed one: on a confident right answer plain CE is ~0.
    confident, label = torch.tensor([[10.0] + [0.0] * (dls.c - 1)]), torch.tensor([0])
    assert learn.loss_func(confident, label).item() == pytest.approx(
        F.cross_entropy(confident, label, label_smoothing=0.1).item()) and learn.loss_func(confident, label) > 0.5


# -- the rest of the API the chapter and its questionnaire touch ----------------------------
def test_lr_find_gives_fastais_valley_and_restores_weights(baseline_dls, tmp_path):
    learn = Learner(baseline_dls, xresnet18(n_out=10, widen=0.25), metrics=accuracy)
    before = [p.detach().clone() for p in learn.model.parameters()]
    lrs = learn.lr_find(num_it=12)
    assert 1e-7 <= lrs.valley <= 10 and 1e-7 <= lrs.suggestion <= 10
    assert repr(lrs).startswith("SuggestedLRs(valley=")
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    lrs.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_valley_follows_fastais_rule():
    lrs = [10.0 ** (i - 7) for i in range(10)]
    losses = [3.0, 3.1, 2.9, 2.5, 2.0, 1.5, 1.0, 0.8, 2.0, 5.0]  # longest fall: index 1 to 7
    # fastai: start = end - run = 7 - 7 = 0, idx = 0 + int(7/3) + int(7/6) = 3
    assert vivace.lr_finder.valley(lrs, losses) == lrs[3]


def test_export_and_load_learner(progressive, path, tmp_path):
    learn = progressive[0]
    learn.export(tmp_path / "export.vivace")
    learn_inf = load_learner(tmp_path / "export.vivace")
    assert isinstance(learn_inf.predictor, Predictor) and learn_inf.dls.vocab == learn.dls.vocab
    # -- the book's inference calls (chapter 2's `learn_inf.predict`), on a validation image
    fname = get_image_files(path / "val")[0]
    label, index, probs = learn_inf.predict(fname)
    assert label == learn.dls.vocab[index]
    assert probs.shape == (10,) and int(probs.argmax()) == int(index)
    assert learn.predict(fname)[0] == label


def test_interpretation_and_results_on_imagenette(progressive):
    learn = progressive[0]
    interp = ClassificationInterpretation.from_learner(learn)
    assert interp.confusion_matrix().shape == (10, 10) and interp.confusion_matrix().sum() == N_VALID
    confused = interp.most_confused()
    assert all(a in learn.dls.vocab and p in learn.dls.vocab and a != p for a, p, _ in confused)  # ids
    assert [n for _, _, n in confused] == sorted((n for _, _, n in confused), reverse=True)
    fig = learn.show_results(max_n=4)
    names = set(display_names(learn.dls.vocab))  # people read "church", not "n03028079"
    assert all(set(ax.get_title().split("\n")) <= names for ax in fig.axes)


def test_show_batch(baseline_dls, tmp_path):
    fig = baseline_dls.show_batch(tmp_path / "batch.png")
    assert len(fig.axes) == 9 and (tmp_path / "batch.png").stat().st_size > 0


def test_aug_transforms_mirror_fastai():
    (aug,) = aug_transforms(size=32, min_scale=0.75)
    assert (aug.size, aug.min_scale, aug.ratio) == (32, 0.75, (1.0, 1.0))  # RandomResizedCropGPU, square
    (aug,) = aug_transforms()
    assert aug.size is None and aug.min_scale == 1.0  # no random crop: the whole image
    (aug,) = aug_transforms(mult=2.0, do_flip=False)
    assert (aug.max_rotate_deg, aug.max_warp, aug.max_lighting, aug.flip) == (20.0, 0.4, 0.4, False)
    assert aug.max_zoom == 1.1 and aug.p_affine == 0.75 and aug.p_lighting == 0.75
    with pytest.raises(ValueError, match="flip_vert"):
        aug_transforms(flip_vert=True)
    with pytest.raises(ValueError, match="min_scale"):
        aug_transforms(size=32, min_scale=0.0)


def test_without_a_size_aug_transforms_keeps_the_presize(path):
    dblock = DataBlock(get_items=get_image_files, get_y=parent_label, item_tfms=Resize(64),
                       batch_tfms=aug_transforms())
    dls = dblock.dataloaders(path, bs=64)
    assert dls.train.size == 64 and dls.valid.size == 64 and dls.normalize is None


def test_grandparent_splitter_uses_imagenettes_folders(path):
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                       splitter=GrandparentSplitter(valid_name='val'), item_tfms=Resize(64))
    source = dblock.source(path)
    assert (len(source.train_files), len(source.valid_files)) == (N_TRAIN, N_VALID)
    assert all(f.parent.parent.name == "val" for f in source.valid_files)
    wrong = DataBlock(get_items=get_image_files, get_y=parent_label, splitter=GrandparentSplitter(),
                      item_tfms=Resize(64))
    with pytest.raises(ValueError, match="valid_name='val'"):
        wrong.source(path)  # fastai's default valid_name is 'valid'


def test_the_default_split_is_random_but_fixed(path):
    items = get_image_files(path)
    train, valid = RandomSplitter()(items)
    assert (train, valid) == RandomSplitter(valid_pct=0.2, seed=42)(items)
    assert len(valid) == N_VALID and sorted(train + valid) == list(range(len(items)))
    assert RandomSplitter(seed=1)(items) != (train, valid)
    source = DataBlock(get_items=get_image_files, get_y=parent_label, item_tfms=Resize(64)).source(path)
    assert source.valid_files == [items[i] for i in valid]  # the same each call: no leak between get_dls


def test_datablock_refuses_what_it_cannot_mean():
    with pytest.raises(ValueError, match="CategoryBlock"):
        DataBlock(blocks=(ImageBlock, ImageBlock), get_y=parent_label, item_tfms=Resize(64))
    with pytest.raises(ValueError, match="get_y"):
        DataBlock(item_tfms=Resize(64))
    with pytest.raises(ValueError, match="Resize"):
        DataBlock(get_y=parent_label)
    with pytest.raises(ValueError, match="squish"):
        Resize(64, method="squish")
    with pytest.raises(ValueError, match="batch_tfms"):
        DataBlock(get_y=parent_label, item_tfms=Resize(64), batch_tfms=[lambda x: x])


def test_category_block_vocab_fixes_the_class_order(path):
    vocab = sorted({parent_label(f) for f in get_image_files(path)}, reverse=True)
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=vocab)), get_items=get_image_files,
                       get_y=parent_label, item_tfms=Resize(64))
    assert dblock.source(path).vocab == vocab


def test_star_import_is_exactly_all():
    namespace = {}
    exec("from vivace.book import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(vivace.book.__all__)
    assert len(vivace.book.__all__) == len(set(vivace.book.__all__))
