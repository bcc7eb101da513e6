"""Run records: config.json, log.csv (a row per epoch), summary.json and plots in the run dir."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .files import atomic_write, write_csv


def read_json_object(path: Path, what: str = "", fix: str = "") -> dict[str, Any]:
    """The JSON object in `path`; ValueError naming the file, what is wrong and `fix` (what to do)."""
    then = f"; {fix}" if fix else ""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}){then}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must hold a JSON object{what}, got {type(value).__name__}{then}")
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


class RunLogger(Callback):
    """Keeps log.csv in step with the Recorder's rows, and plots losses and schedules at the end."""

    order = 30

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def after_epoch(self, learn) -> None:
        if learn.is_main:
            write_log_csv(self.directory / "log.csv", learn.recorder.rows)

    def after_fit(self, learn) -> None:
        if learn.is_main and learn.recorder.rows:
            plot_history(learn.recorder.rows, learn.recorder.lrs, learn.recorder.sizes, self.directory)


def write_log_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite the whole log: rows are few, and a resumed run then never duplicates one."""
    header = list(rows[0])
    write_csv(path, header, [[int(row[k]) if k == "epoch" else round(row[k], 6) for k in header] for row in rows])


def plot_history(rows: list[dict[str, float]], lrs: list[float], sizes: list[int], directory: Path) -> None:
    """losses.png (train/valid loss and metrics per epoch) and schedule.png (LR and size per batch)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "valid_loss"):
        ax_loss.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    for key in [k for k in rows[0] if k not in ("epoch", "train_loss", "valid_loss", "time")]:
        ax_metric.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "losses.png", dpi=80)
    plt.close(fig)

    fig, (ax_lr, ax_size) = plt.subplots(1, 2, figsize=(10, 3))
    ax_lr.plot(lrs)
    ax_lr.set(xlabel="batch", ylabel="learning rate")
    ax_size.plot(sizes)
    ax_size.set(xlabel="batch", ylabel="train size (px)")
    fig.tight_layout()
    fig.savefig(directory / "schedule.png", dpi=80)
    plt.close(fig)
