"""Start from a model: the weights of a bundle, a run folder or a state-dict file, fitted to a new model.

`read_source` reads what a source says of itself, from its header only: which file holds the
weights, its classes and normalization statistics where it records them, its architecture.
`start_from` loads its weights into a freshly built model: the body must match tensor for tensor;
the head (the last Linear) is kept when the classes are the same (its rows reordered by class
name) and left as initialised otherwise. The chapter's point about statistics is the Recipe's
`stats="auto"`: a model is fed the statistics it was trained on (`inherited_stats`). Nothing is
unpickled: PyTorch files load with `weights_only=True`.
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import checkpoint, export
from .checkpoint import WEIGHT_FILES, WeightsChoice, load_checkpoint
from .flags import knob
from .models import arch_label
from .normalize import format_stats, imagenet_stats

MISMATCHES_SHOWN = 5
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's and torch.compile's, in saved state dicts


@dataclass
class InitSpec:
    """Where a run starts: `start_from`'s keyword arguments."""

    init: str = knob("", 'start from these weights: an export bundle, a run folder (its --out), or a safetensors / '
                         'PyTorch state-dict file; "" = random')
    init_weights: WeightsChoice = knob("final", "with a run folder as --init: its final or best weights")


@dataclass(frozen=True)
class SourceModel:
    """What a source of weights says of itself before they are read."""

    path: Path  # the file holding the weights
    kind: str  # "bundle", "run" or "state dict"
    vocab: list[str] | None = None  # its classes in output order; None: the file names none
    stats: tuple[list[float], list[float]] | None = None  # the statistics it trained with; None: unknown
    arch: str = ""  # "xresnet50"; "": unknown

    def describe(self, n_outputs: int) -> str:
        classes = f"{len(self.vocab)} classes" if self.vocab is not None else f"{n_outputs} outputs"
        return f"{self.arch or self.kind}, {classes}"


def read_source(init: str | Path, init_weights: WeightsChoice = "final") -> SourceModel:
    """The source at `init`: a run folder, a bundle, a run's checkpoint file or a state-dict file."""
    path = Path(init)
    if path.is_dir():
        return _run_source(path, init_weights)
    if not path.is_file():
        raise FileNotFoundError(f"--init {path}: no such file or folder; pass an export bundle, a run folder "
                                "(a train --out) or a state-dict file (.safetensors, .pt, .pth)")
    meta = _safetensors_metadata(path)
    if meta.get("format") == export.FORMAT:
        info = json.loads(meta.get("info", "{}"))
        stats = info.get("normalize")
        return SourceModel(path, "bundle", info.get("vocab"), _stats_pair(stats),
                           arch_label(info.get("config", {})))
    if meta.get("format") == checkpoint.FORMAT:
        return _checkpoint_source(path, path.parent)
    # `save_weights` files (the book's learn.save) say their classes and statistics in the metadata.
    vocab, normalize = json.loads(meta.get("vocab", "null")), json.loads(meta.get("normalize", "null"))
    return SourceModel(path, "state dict", vocab if isinstance(vocab, list) else None, _stats_pair(normalize))


def save_weights(model: nn.Module, path: Path, vocab: Sequence[str], normalize: dict | None) -> Path:
    """The model's weights as a safetensors file, with its classes and statistics in the metadata:
    a state dict any safetensors reader loads, which `start_from` reads whole."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"vocab": json.dumps([str(v) for v in vocab]), "normalize": json.dumps(normalize)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_weights(source: SourceModel) -> dict[str, Tensor]:
    """The source's tensors by state-dict key (a bundle's checked against its digest first)."""
    if source.kind == "bundle":
        return export.read_bundle(source.path)[1]
    if source.kind == "run":
        state = load_checkpoint(source.path)
        return state.get("eval_model", state["model"])  # EMA runs: the average, as they export
    return _state_dict_file(source.path)


def inherited_stats(init: str, init_weights: WeightsChoice = "final") -> str:
    """`stats="auto"` resolved: the source's statistics as a recipe value, or imagenet when it names none."""
    source = read_source(init, init_weights)
    return format_stats(*(source.stats or imagenet_stats))


def start_from(model: nn.Module, init: str, init_weights: WeightsChoice, vocab: Sequence[str]) -> str:
    """Load the weights of `init` into `model` (built for `vocab`); the one line saying what was kept.

    ValueError listing the first tensors that differ when the source is another architecture.
    """
    source, weights = _fitting_weights(model, init, init_weights)
    own, head = model.state_dict(), _head_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"}
    head_weights, head_note = _fit_head(source, weights, head, list(vocab))
    body = {key: value for key, value in weights.items() if key not in head_keys}
    model.load_state_dict({**own, **body, **head_weights})
    source_outputs = weights.get(f"{head}.weight", own[f"{head}.weight"]).shape[0]
    return f"init: {init} ({source.describe(source_outputs)}) -> {head_note}, {len(vocab)} classes"


def check_fits(model: nn.Module, init: str, init_weights: WeightsChoice = "final") -> None:
    """What `start_from` checks, without loading: the source is readable and its body fits `model`
    (which may be on the meta device: only shapes are compared). ValueError or FileNotFoundError."""
    _fitting_weights(model, init, init_weights)


def _fitting_weights(model: nn.Module, init: str, init_weights: WeightsChoice) -> tuple[SourceModel, dict[str, Tensor]]:
    """The source and its weights (wrapper prefixes dropped), checked to fit `model`'s body."""
    source = read_source(init, init_weights)
    weights = {_unwrapped(key): value for key, value in read_weights(source).items()}
    head = _head_name(model)
    _check_body(source, model, model.state_dict(), weights, {f"{head}.weight", f"{head}.bias"})
    return source, weights


def _run_source(run: Path, init_weights: WeightsChoice) -> SourceModel:
    if init_weights not in WEIGHT_FILES:
        raise ValueError(f"init_weights={init_weights!r} is not one of: {', '.join(WEIGHT_FILES)}")
    file = run / WEIGHT_FILES[init_weights]
    if not file.is_file():
        hint = "it has not finished an epoch" if (run / "config.json").is_file() else "it is not a run folder"
        raise FileNotFoundError(f"--init {run}: no {file.name} ({init_weights} weights): {hint}")
    return _checkpoint_source(file, run)


def _checkpoint_source(file: Path, run: Path) -> SourceModel:
    """A run's checkpoint: its classes and statistics (recorded since 2026-12-06), its config's arch."""
    state = json.loads(_safetensors_metadata(file).get("state", "{}"))
    config = _read_json(run / "config.json")
    stats = _stats_pair(state.get("normalize")) if "normalize" in state else _config_stats(config)
    return SourceModel(file, "run", state.get("vocab"), stats, str(config.get("arch", "")))


def _config_stats(config: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """An older run's statistics, where its config says them (computed ones were not recorded)."""
    if config.get("normalize") is False:
        return None
    return imagenet_stats if config.get("stats", "imagenet") in ("imagenet", "auto") else None


def _stats_pair(normalize: Any) -> tuple[list[float], list[float]] | None:
    return (normalize["mean"], normalize["std"]) if isinstance(normalize, dict) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata ({} for any other file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return {}


def _state_dict_file(path: Path) -> dict[str, Tensor]:
    """A safetensors file, or a PyTorch file of tensors read with weights_only=True (no code runs)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"--init {path} is not a readable safetensors file ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a file torch did not write fails in many ways: KeyError, EOFError, ...
        if isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower():
            raise ValueError(f"--init {path} holds pickled Python objects besides tensors; vivace loads weights "
                             "with weights_only=True and never runs a file's code: save model.state_dict(), or "
                             "convert the file to safetensors") from None  # a class or function: code to run
        raise ValueError(f"--init {path} is not a PyTorch or safetensors weights file "
                         f"({type(err).__name__}: {err})") from None
    return _tensors_of(path, obj)


def _tensors_of(path: Path, obj: Any) -> dict[str, Tensor]:
    """The state dict in a loaded file: the file itself, or its "state_dict" or "model" entry."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"--init {path} holds no state dict (a mapping of names to tensors): save "
                         "model.state_dict()")
    return obj


def _unwrapped(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def _head_name(model: nn.Module) -> str:
    """The model's classifier: its last Linear layer."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer to take as its head")
    return linears[-1]


def _check_body(source: SourceModel, model: nn.Module, own: dict[str, Tensor], weights: dict[str, Tensor],
                head_keys: set[str]) -> None:
    """ValueError naming the first tensors missing, unexpected or of another shape (the head's input width too)."""
    problems = [f"missing {key} {tuple(t.shape)}" for key, t in own.items() if key not in weights.keys() | head_keys]
    problems += [f"unexpected {key} {tuple(t.shape)}" for key, t in weights.items() if key not in own]
    for key in own.keys() & weights.keys():
        compared = slice(1, None) if key in head_keys else slice(None)  # a head may have any number of outputs
        if own[key].shape[compared] != weights[key].shape[compared]:
            problems.append(f"{key} is {tuple(weights[key].shape)} in the file, {tuple(own[key].shape)} in the model")
    if problems:
        config = getattr(model, "config", None)
        name = arch_label(config) if isinstance(config, dict) else type(model).__name__
        shown = "; ".join(sorted(problems)[:MISMATCHES_SHOWN])
        raise ValueError(f"--init {source.path} ({source.arch or source.kind}) does not fit this {name}: "
                         f"{len(problems)} tensors differ, first: {shown}. Train with the architecture the "
                         "weights were made with (--arch, --widen, --stem-widen, --act, --self-attention, ...)")


def _fit_head(source: SourceModel, weights: dict[str, Tensor], head: str,
              vocab: list[str]) -> tuple[dict[str, Tensor], str]:
    """The source's head where it predicts the same classes (rows in this vocab's order), else none."""
    weight, bias = weights.get(f"{head}.weight"), weights.get(f"{head}.bias")
    if weight is None or bias is None:
        return {}, "head new (the file has none)"
    kept = {f"{head}.weight": weight, f"{head}.bias": bias}
    if source.vocab is None:  # a bare state dict: only the number of outputs can be compared
        if weight.shape[0] != len(vocab):
            return {}, "head replaced"
        return kept, "head kept (as many outputs; the file names no classes: taken in this data's order)"
    if sorted(source.vocab) != sorted(vocab):
        return {}, "head replaced"
    rows = [source.vocab.index(name) for name in vocab]
    if rows == list(range(len(rows))):
        return kept, "head kept (same classes)"
    return {key: value[rows] for key, value in kept.items()}, "head kept (same classes, rows reordered by name)"
