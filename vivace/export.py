"""Export bundles: one safetensors file with the weights plus everything inference needs.

Layout: the model's state_dict as tensors; the metadata holds `format`, `version`, `info` (JSON:
architecture config, class names, normalization statistics, size, presize, TTA default, and
which weights: final or best, with their epoch) and `sha256`, a digest of `info` and every tensor,
checked on load. The digest catches corruption and edits; it is not a signature (whoever can edit
the file can recompute it), so every info field is then validated too (`check_info`). Nothing
is pickled.
"""
from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .files import atomic_write, content_hash
from .inference import TTA_MODES, Predictor
from .models.xresnet import XResNet
from .data.cache import MAX_PRESIZE_PX
from .data.eval_view import EvalView

FORMAT = "vivace-export"
MAX_BLOCKS_PER_STAGE = 64  # config.layers: xresnet152's deepest stage has 36
VERSION = 1  # bump when the layout or the meaning of a field changes


def bundle_info(learn: Any, tta: str = "none", weights: str = "final", epoch: int | None = None,
                thresh: float = 0.5) -> dict[str, Any]:
    """What a Predictor needs besides the weights, read from a Learner and its DataLoaders.

    `weights` and `epoch` record which of the run's weights these are (final or best) and after
    how many epochs they were saved; a live Learner holds its final weights. A model of several
    labels per image records that, and `thresh`, the probability above which a label counts.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r} is not one of: {', '.join(TTA_MODES)}")
    config = getattr(learn.model, "config", None)
    if not isinstance(learn.model, XResNet) or config is None:
        raise ValueError(f"can only export vivace XResNet models, got {type(learn.model).__name__}")
    return {"arch": "xresnet", "config": config, "vocab": [str(v) for v in learn.dls.vocab],
            **learn.dls.eval_view.bundle_fields(), "tta": tta, "weights": weights, "epoch": epoch,
            "multi_label": learn.dls.multi_label, "thresh": thresh}


def export_learner(learn: Any, path: str | Path, tta: str = "none", weights: str = "final",
                   epoch: int | None = None, thresh: float = 0.5) -> Path:
    """Write `learn`'s model and preprocessing to one bundle file at `path` (atomically)."""
    info_json = json.dumps(bundle_info(learn, tta, weights, epoch, thresh), sort_keys=True)
    # Contiguous CPU copies: channels_last weights have permuted strides, and safetensors
    # refuses tensors that share memory.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in learn.model.state_dict().items()}
    metadata = {"format": FORMAT, "version": str(VERSION), "info": info_json,
                "sha256": content_hash(info_json, tensors)}
    path = Path(path)
    with atomic_write(path, fsync=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_bundle(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The verified (info, tensors) of a bundle; ValueError if foreign, damaged or edited."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no export bundle at {path}: create one with `vivace export RUN_DIR -o {path}`")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable bundle (truncated or not safetensors: {err})") from err
    _check_header(path, meta)
    if content_hash(meta["info"], tensors) != meta["sha256"]:
        raise ValueError(f"{path} failed its integrity check (sha256 mismatch): the file was modified "
                         "or damaged after export; export it again")
    try:
        info = json.loads(meta["info"])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has unreadable info metadata ({err})") from err
    check_info(path, info, tensors)
    return info, tensors


def check_info(path: Path, info: Any, tensors: dict[str, Tensor]) -> None:
    """ValueError naming the bundle, the field and what it must be, for any info a Predictor can't use.

    A bundle whose checksum was recomputed after an edit passes the integrity check: this is what
    stops NaN statistics or a vocab that does not fit the model from giving NaN or wrong answers.
    """
    def bad(field: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"{path}: bundle field {field!r} must be {expected}, got {reprlib.repr(value)}")

    if not isinstance(info, dict):
        raise bad("info", "a JSON object", info)
    if info.get("arch") != "xresnet":
        raise bad("arch", "'xresnet'", info.get("arch"))
    config = info.get("config")
    if not isinstance(config, dict):
        raise bad("config", "a JSON object of XResNet arguments", config)
    for key in ("n_out", "c_in"):
        if not _positive_int(config.get(key)):
            raise bad(f"config.{key}", "an integer >= 1", config.get(key))
    layers = config.get("layers")  # the model is first built without memory (build_model): bound its time too
    if not (isinstance(layers, list) and all(_positive_int(n) and n <= MAX_BLOCKS_PER_STAGE for n in layers)):
        raise bad("config.layers", f"a list of block counts in [1, {MAX_BLOCKS_PER_STAGE}]", layers)
    vocab = info.get("vocab")
    names = isinstance(vocab, list) and all(isinstance(v, str) for v in vocab)
    if not names or len(set(vocab)) != len(vocab):
        raise bad("vocab", "a list of distinct class names (strings)", vocab)
    if len(vocab) != config["n_out"]:
        raise bad("vocab", f"{config['n_out']} class names, one per model output (config.n_out)", vocab)
    _check_normalize(info.get("normalize", "missing"), config["c_in"], bad)
    for key in ("size", "presize"):  # bounded: each image is decoded at presize (60000 px: 14 GB)
        if not _positive_int(info.get(key)) or info[key] > MAX_PRESIZE_PX:
            raise bad(key, f"an integer >= 1 and <= {MAX_PRESIZE_PX} (pixels)", info.get(key))
    if info["presize"] < info["size"]:
        raise bad("presize", f">= size={info['size']}", info["presize"])
    crop = info.get("crop", 1.0)  # bundles from before valid_crop resized the whole square
    if not _finite_number(crop) or not 0 < crop <= 1:
        raise bad("crop", "a number in (0, 1]", crop)
    max_aspect = info.get("max_aspect", 1.0)  # bundles from before 2026-12-05 cached centre squares
    if not _finite_number(max_aspect) or not 1 <= max_aspect <= 100:
        raise bad("max_aspect", "a number in [1, 100]", max_aspect)
    if not isinstance(info.get("square", False), bool):  # bundles before 2026-12-05 squashed
        raise bad("square", "true or false", info.get("square"))
    if info.get("tta") not in TTA_MODES:
        raise bad("tta", f"one of {', '.join(TTA_MODES)}", info.get("tta"))
    if info.get("weights", "final") not in ("final", "best"):  # bundles before the weights policy: final
        raise bad("weights", "'final' or 'best'", info.get("weights"))
    epoch = info.get("epoch")
    if epoch is not None and not (isinstance(epoch, int) and epoch >= 0):
        raise bad("epoch", "null or an integer >= 0", epoch)
    if not isinstance(info.get("multi_label", False), bool):  # bundles before several labels: one each
        raise bad("multi_label", "true or false", info.get("multi_label"))
    thresh = info.get("thresh", 0.5)
    if not _finite_number(thresh) or not 0 < thresh < 1:
        raise bad("thresh", "a number in (0, 1)", thresh)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: bundle weight {name!r} holds NaN or infinite values; "
                             "export a run whose training did not diverge")


def _check_normalize(norm: Any, channels: int, bad) -> None:
    """None (trained unnormalized) or {mean, std}: `channels` finite numbers each, std > 0."""
    if norm is None:
        return
    if not isinstance(norm, dict):
        raise bad("normalize", "null or an object with mean and std", norm)
    for key in ("mean", "std"):
        value = norm.get(key)
        if not isinstance(value, list) or len(value) != channels or not all(map(_finite_number, value)):
            raise bad(f"normalize.{key}", f"a list of {channels} finite numbers", value)
    if min(norm["std"]) <= 0:
        raise bad("normalize.std", "positive numbers", norm["std"])


def _positive_int(value: Any) -> bool:
    return type(value) is int and value >= 1


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_header(path: Path, meta: dict[str, str]) -> None:
    if meta.get("format") != FORMAT:
        is_checkpoint = "checkpoint" in str(meta.get("format"))
        hint = " (a training checkpoint? run `vivace export RUN_DIR`)" if is_checkpoint else ""
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}{hint}")
    if meta.get("version") != str(VERSION):
        raise ValueError(f"{path} is bundle version {meta.get('version')}; this vivace reads version "
                         f"{VERSION}: use the vivace that exported it, or export again")
    missing = [k for k in ("info", "sha256") if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks bundle metadata {missing}: it was not written by vivace.export")


def build_model(info: dict[str, Any], tensors: dict[str, Tensor]) -> nn.Module:
    """The bundle's model with its weights loaded (on the CPU, train mode as constructed).

    Built first on the meta device (shapes, no memory) and compared with the bundle's tensors: a
    config edited to a wider model (widen=64: 14 GB) is refused before anything is allocated.
    """
    if info.get("arch") != "xresnet":
        raise ValueError(f"unknown architecture {info.get('arch')!r} in bundle; expected 'xresnet'")
    try:
        with torch.device("meta"):
            expected = XResNet(**info["config"]).state_dict()
        _check_shapes(expected, tensors)
        model = XResNet(**info["config"])
        model.load_state_dict(tensors)
    except (TypeError, KeyError, RuntimeError) as err:  # config and weights do not fit together
        raise ValueError(f"bundle weights do not match its architecture config ({err})") from err
    return model


def _check_shapes(expected: dict[str, Tensor], tensors: dict[str, Tensor]) -> None:
    """ValueError naming the first tensor of the config's model that the bundle lacks or shapes otherwise."""
    for key, t in expected.items():
        found = "missing" if key not in tensors else tuple(tensors[key].shape)
        if found != tuple(t.shape):
            raise ValueError(f"bundle weights do not match its architecture config: {key} is {found} in the "
                             f"bundle, {tuple(t.shape)} by its config; export the run again")


def load(path: str | Path, device: str | torch.device | None = None, amp: str = "auto") -> Predictor:
    """Load a bundle as a ready-to-use Predictor (device None: CUDA if available, else CPU; amp as
    in training, see `vivace.runtime.autocast_dtype`)."""
    info, tensors = read_bundle(path)  # checked: every field below is present and usable
    return Predictor(build_model(info, tensors), info["vocab"], EvalView.from_bundle(info), tta=info["tta"],
                     device=device, amp=amp, multi_label=info.get("multi_label", False),
                     thresh=info.get("thresh", 0.5))
