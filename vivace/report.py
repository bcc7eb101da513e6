"""The run report: one self-contained report.html per run directory, readable offline.

Everything is inline: CSS in a <style> block, every plot a base64 PNG data URI, no scripts and
no external links, so the file can be mailed or archived alone.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import os
import time
from pathlib import Path
from typing import Any

from .files import atomic_write
from .interpret import Interpretation

REPORT_NAME = "report.html"
N_TOP_LOSSES = 9
N_MOST_CONFUSED = 10
STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; background: #fff; }
h1 { border-bottom: 2px solid #4a7ab5; }
h2 { color: #4a7ab5; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #e8eef7; }
td.k, th.k { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.muted { color: #777; }
"""


def write_report(run_dir: str | Path, learn: Any = None) -> Path:
    """Write `run_dir/report.html`; without `learn`, rebuild one from the run's best checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json): "
                                "pass the --out of a `vivace train` run")
    if learn is None:
        from .train import load_run  # lazy: train imports this module
        learn = load_run(run_dir)
    interp = Interpretation.from_learner(learn)
    plots = {
        "Confusion matrix": interp.plot_confusion_matrix(run_dir / "confusion_matrix.png"),
        "Top losses": interp.plot_top_losses(N_TOP_LOSSES, run_dir / "top_losses.png"),
        "Reliability": interp.plot_reliability(run_dir / "reliability.png"),
    }
    body = [f"<h1>vivace run: {_esc(run_dir.resolve().name)}</h1>",
            f"<p class='muted'>{_esc(str(run_dir.resolve()))}, written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
            _summary_section(run_dir), _log_section(run_dir), _curves_section(run_dir),
            _interpretation_section(interp, plots), _config_section(run_dir)]
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>vivace report: {_esc(run_dir.resolve().name)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{chr(10).join(body)}\n</body></html>\n")
    path = run_dir / REPORT_NAME
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def img_tag(path: Path, alt: str) -> str:
    """An <img> with the PNG at `path` inlined as a base64 data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def table(header: list[str], rows: list[list[Any]], n_names: int = 1) -> str:
    """An HTML table: the first `n_names` columns left-aligned (names), the rest right (numbers)."""
    head = "".join(f"<th{' class=k' if i < n_names else ''}>{_esc(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{' class=k' if i < n_names else ''}>{_esc(_fmt(v))}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _summary_section(run_dir: Path) -> str:
    path = run_dir / "summary.json"
    if not path.is_file():
        return "<h2>Summary</h2><p class='muted'>no summary.json (the run did not finish)</p>"
    summary = json.loads(path.read_text())
    return "<h2>Summary</h2>" + table(["", "value"], [[k, v] for k, v in summary.items()])


def _log_section(run_dir: Path) -> str:
    path = run_dir / "log.csv"
    if not path.is_file():
        return "<h2>Epochs</h2><p class='muted'>no log.csv</p>"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return "<h2>Epochs</h2>" + (table(rows[0], rows[1:]) if rows else "<p class='muted'>empty log.csv</p>")


def _curves_section(run_dir: Path) -> str:
    parts = ["<h2>Training curves</h2>"]
    for name, caption in (("losses.png", "Losses and metrics per epoch"),
                          ("schedule.png", "Learning rate and training size per batch")):
        path = run_dir / name
        parts.append(f"<h3>{caption}</h3>" + (img_tag(path, caption) if path.is_file()
                                               else f"<p class='muted'>no {name}</p>"))
    return "\n".join(parts)


def _interpretation_section(interp: Interpretation, plots: dict[str, Path]) -> str:
    acc = interp.per_class_accuracy()
    counts = interp.confusion_matrix().sum(dim=1).tolist()
    confused = interp.most_confused()[:N_MOST_CONFUSED]
    parts = ["<h2>Validation: where the model goes wrong</h2>",
             "<h3>Per-class accuracy</h3>",
             table(["class", "accuracy", "items"], [[c, acc[c], n] for c, n in zip(interp.vocab, counts)]),
             "<h3>Most confused (actual, predicted, count)</h3>",
             table(["actual", "predicted", "count"], [list(c) for c in confused], n_names=2) if confused
             else "<p class='muted'>no confusions</p>"]
    for title, path in plots.items():
        parts.append(f"<h3>{_esc(title)}</h3>{img_tag(path, title)}")
    return "\n".join(parts)


def _config_section(run_dir: Path) -> str:
    config = json.loads((run_dir / "config.json").read_text())
    return "<h2>Config</h2>" + table(["field", "value"], [[k, v] for k, v in config.items()])
