"""Export bundles: one safetensors file with the weights plus everything inference needs.

Layout: the model's state_dict as tensors; the metadata holds `format`, `version`, `info` (JSON:
architecture config, class names, normalization statistics, size, presize, TTA default, and
which weights: final or best, with their epoch) and `sha256`, a digest of `info` and every tensor,
checked on load. The digest catches corruption and edits; it is not a signature (whoever can edit
the file can recompute it). Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn

from .normalize import Normalize
from .inference import TTA_MODES, Predictor
from .models.xresnet import XResNet

FORMAT = "vivace-export"
VERSION = 1  # bump when the layout or the meaning of a field changes


def content_hash(info_json: str, tensors: dict[str, Tensor]) -> str:
    """sha256 hex of the info JSON and each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(info_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def bundle_info(learn: Any, tta: str = "none", weights: str = "final", epoch: int | None = None) -> dict[str, Any]:
    """What a Predictor needs besides the weights, read from a Learner and its DataLoaders.

    `weights` and `epoch` record which of the run's weights these are (final or best) and after
    how many epochs they were saved; a live Learner holds its final weights.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r} is not one of: {', '.join(TTA_MODES)}")
    config = getattr(learn.model, "config", None)
    if not isinstance(learn.model, XResNet) or config is None:
        raise ValueError(f"can only export vivace XResNet models, got {type(learn.model).__name__}")
    norm = learn.dls.normalize
    return {"arch": "xresnet", "config": config, "vocab": [str(v) for v in learn.dls.vocab],
            "normalize": norm.as_dict() if norm is not None else None,
            "size": int(learn.dls.valid.size), "crop": float(learn.dls.valid.transform.resize.crop),
            "presize": int(learn.dls.cache.presize), "tta": tta, "weights": weights, "epoch": epoch}


def export_learner(learn: Any, path: str | Path, tta: str = "none", weights: str = "final",
                   epoch: int | None = None) -> Path:
    """Write `learn`'s model and preprocessing to one bundle file at `path` (atomically)."""
    info_json = json.dumps(bundle_info(learn, tta, weights, epoch), sort_keys=True)
    # Contiguous CPU copies: channels_last weights have permuted strides, and safetensors
    # refuses tensors that share memory.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in learn.model.state_dict().items()}
    metadata = {"format": FORMAT, "version": str(VERSION), "info": info_json,
                "sha256": content_hash(info_json, tensors)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # Bytes through open(), not save_file, which creates 0600 files: a bundle is meant to be shared.
    tmp.write_bytes(save(tensors, metadata=metadata))
    os.replace(tmp, path)
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
    return info, tensors


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
    """The bundle's model with its weights loaded (on the CPU, train mode as constructed)."""
    if info.get("arch") != "xresnet":
        raise ValueError(f"unknown architecture {info.get('arch')!r} in bundle; expected 'xresnet'")
    try:
        model = XResNet(**info["config"])
        model.load_state_dict(tensors)
    except (TypeError, KeyError, RuntimeError) as err:  # config and weights do not fit together
        raise ValueError(f"bundle weights do not match its architecture config ({err})") from err
    return model


def load(path: str | Path, device: str | torch.device | None = None, amp: str = "auto") -> Predictor:
    """Load a bundle as a ready-to-use Predictor (device None: CUDA if available, else CPU; amp as
    in training, see `vivace.runtime.autocast_dtype`)."""
    info, tensors = read_bundle(path)
    try:
        norm = info["normalize"]
        return Predictor(build_model(info, tensors), info["vocab"],
                         Normalize(norm["mean"], norm["std"]) if norm is not None else None,
                         size=info["size"], presize=info["presize"], tta=info["tta"], device=device,
                         crop=info.get("crop", 1.0), amp=amp)  # bundles before valid_crop resized it all
    except KeyError as err:
        raise ValueError(f"{path}: bundle info lacks the field {err}") from err
