"""The run report: one self-contained report.html per run directory, readable offline.

Everything is inline: CSS in a <style> block, every plot and image a base64 PNG data URI, no
scripts and no external links, so the file can be mailed or archived alone. `write_report` draws
what it is given (a run directory and a trained Learner); rebuilding a Learner from a run
directory is the caller's step (`vivace.runs.load_run`), so this module never imports training.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import Tensor

from . import runtime
from .data.names import display_names
from .files import atomic_write, write_csv
from .interpret import Interpretation, confused_pairs
from .metrics import (MAX_LISTED_CLASSES, N_WORST_CLASSES, calibration_error, lowest_f_scores, per_class_scores,
                      reliability_bins, threshold_sweep)
from .recipe import Recipe, new_names
from .records import read_json_object

REPORT_NAME = "report.html"
CONFUSION_NAME = "confusion.csv"  # the whole confusion matrix, beside the report, at any number of classes
N_TOP_LOSSES = 9
TILE_MAX_PX = 288     # a top-loss image's largest side: twice the 144 px a tile shows (sharp on a dense screen)
N_MOST_CONFUSED = 10
# Up to this many classes the report shows the confusion matrix as a table and every class's
# scores in the open: a person reads them cell by cell (as the figure's counts), and 30 columns
# (about 1,350 px) already scroll sideways past the 1,100 px page. Above (ImageNet's 1,000
# classes: a million cells, a 51 MB page), the matrix is only confusion.csv and the page leads
# with the N_WORST_CLASSES worst classes, every class folded below them.
MAX_TABLE_CLASSES = MAX_LISTED_CLASSES
N_BINS = 15           # reliability bins over confidence [0, 1]
FEW_ITEMS = 10        # a reliability bin with fewer items is drawn faded and hatched: its accuracy is noise
CURVE_PANELS = (("loss", ("train_loss", "valid_loss", "nll")),
                ("accuracy", ("accuracy", "top5_accuracy", "accuracy_multi", "f1_macro")),
                ("calibration error (ECE)", ("calibration_error",)))
STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; background: #fff; }
h1 { border-bottom: 2px solid #4a7ab5; margin-bottom: 0.2em; }
h2 { color: #4a7ab5; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #e8eef7; }
td.k, th.k { text-align: left; }
img { max-width: 100%; }
.plot { border: 1px solid #ddd; margin: 0.3em 0; }
.muted { color: #777; }
.facts { display: grid; grid-template-columns: repeat(4, 1fr); gap: 0.6em; margin: 1em 0; }
.facts div { background: #f3f6fb; border-radius: 4px; padding: 0.4em 0.7em; }
.facts b { display: block; font-size: 0.75em; color: #4a7ab5; text-transform: uppercase; }
.facts span { font-size: 1.1em; overflow-wrap: anywhere; }
.side { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
.tiles { display: flex; flex-wrap: wrap; gap: 1em; }
.tile { margin: 0; width: 160px; font-size: 0.85em; line-height: 1.35; }
.tile img { width: 144px; border: 1px solid #ddd; }
.cm td { min-width: 2.2em; }
.cm th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
details { margin: 0.8em 0; }
summary { cursor: pointer; color: #4a7ab5; }
"""


def write_report(run_dir: str | Path, learn: Any) -> Path:
    """Write `run_dir/report.html` for the trained `learn`, scored on its validation set."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json): "
                                "pass the --out of a `vivace train` run")
    config = new_names(_read_json(run_dir / "config.json"))  # old runs: the fields' new names
    summary = _read_json(run_dir / "summary.json")
    rows = read_log(run_dir / "log.csv")
    name = _esc(run_dir.resolve().name)
    body = [f"<h1>vivace run: {name}</h1>",
            f"<p class='muted'>{_esc(run_dir.resolve())}, written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
            headline(config, summary, rows, machine_name(torch.device(learn.device))),
            epochs_section(rows), curves_section(rows, run_dir),
            "<h2>Validation: where the model goes wrong</h2>",
            *(multi_label_sections(learn, config.get("thresh", 0.5)) if learn.dls.multi_label
              else single_label_sections(learn, run_dir)),
            config_section(config, _read_text(run_dir / "recipe.txt")), _details("summary.json", summary)]
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>vivace report: {name}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{chr(10).join(body)}\n</body></html>\n")
    path = run_dir / REPORT_NAME
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def single_label_sections(learn: Any, run_dir: Path) -> list[str]:
    """Per-class accuracy, the confusion matrix (also written to `run_dir/confusion.csv`), the top
    losses and the reliability diagram."""
    interp = Interpretation.from_learner(learn)
    names = display_names(interp.vocab)
    cm = interp.confusion_matrix()
    write_confusion_csv(run_dir / CONFUSION_NAME, cm, interp.vocab)
    return [per_class_section(cm, names, interp.vocab), confusion_section(cm, names),
            top_losses_section(interp, names), reliability_section(interp.logits, interp.targets)]


def write_confusion_csv(path: Path, cm: Tensor, vocab: list[str]) -> Path:
    """The (C, C) counts as a CSV: a header of the predicted classes, then a row per actual class
    led by its id (the vocab, as predictions.csv names classes)."""
    return write_csv(path, ["actual \\ predicted", *vocab], ([label, *row] for label, row in zip(vocab, cm.tolist())))


def multi_label_sections(learn: Any, thresh: float) -> list[str]:
    """Several labels per image: precision, recall and F-score per class at `thresh`, and how
    accuracy_multi and the macro F-score move with the threshold."""
    preds, targets = learn.get_preds()
    names = display_names(learn.dls.vocab)
    scores = per_class_scores(preds, targets, thresh)
    rows = [[n, *(sig4(float(v)) for v in s[:3]), str(int(s[3]))] for n, s in zip(names, scores)]
    sweep = [[f"{t:g}", sig4(acc), sig4(f1)] for t, acc, f1 in threshold_sweep(preds, targets)]
    header = ["class", "precision", "recall", "F-score", "images with it"]
    every = table(header, rows)
    if len(rows) <= MAX_TABLE_CLASSES:
        per_class = f"<h3>Per class at threshold {thresh:g}</h3>" + every
    else:
        worst = lowest_f_scores(scores)
        per_class = worst_then_every(f"Per class at threshold {thresh:g}: the {len(worst)} lowest F-scores of "
                                     f"{len(rows):,} classes", table(header, [rows[i] for i in worst]), every,
                                     len(rows))
    return [per_class, "<h3>Scores by threshold</h3>" + table(["threshold", "accuracy_multi", "macro F-score"], sweep)]


# -- formatting ------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def sig4(value: float) -> str:
    """A number to 4 significant digits (0.8352, 33.52, 1.000); blank for NaN (not measured)."""
    return "" if math.isnan(value) else f"{value:#.4g}"


def mmss(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on; blank when not a finite number (not measured)."""
    if not math.isfinite(seconds):
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def config_value(value: Any) -> str:
    """A config value as a person would type it: 5e-05 stays 5e-05 (repr, not fixed decimals)."""
    if isinstance(value, float):
        return repr(value)
    if value == "":
        return "(empty)"
    if isinstance(value, str) and not value.strip():  # a label delimiter of one space, say: show it
        return json.dumps(value)
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def table(header: list[str], rows: list[list[str]], n_names: int = 1, css: str = "") -> str:
    """An HTML table of already-formatted cells: the first `n_names` columns left-aligned (names)."""
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{' class=k' if i < n_names else ''}>{_esc(v)}</{tag}>" for i, v in enumerate(values))
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table{f' class={css}' if css else ''}><tr>{cells('th', header)}</tr>{body}</table>"


def img_tag(png: bytes, alt: str, css: str = "plot") -> str:
    """An <img> with the PNG bytes inlined as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f"<img class='{css}' alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _details(title: str, mapping: dict[str, Any]) -> str:
    rows = [[k, config_value(v)] for k, v in mapping.items()]
    summary = f"<summary>{_esc(title)} ({len(rows)} fields)</summary>"
    return f"<details>{summary}{table(['field', 'value'], rows, n_names=2)}</details>"


def _read_json(path: Path) -> dict[str, Any]:
    """A run record's JSON object ({} if the file is absent); ValueError naming the file if unusable."""
    return read_json_object(path, fix="fix the file, or delete it and report again") if path.is_file() else {}


# -- the headline ----------------------------------------------------------------------------
def machine_name(device: torch.device) -> str:
    """The CUDA device's name, else the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{runtime.cpu_model()}, {os.cpu_count()} CPUs"


def data_name(data: str) -> str:
    """A dataset's name, a folder's last part, or the embedded sample."""
    return Path(data).name if data else "embedded sample"


def headline(config: dict[str, Any], summary: dict[str, Any], rows: list[dict[str, float]], machine: str) -> str:
    """The facts a person asks first: what was trained, on what, how well, how long, where."""
    model = config.get("arch", "?") + (f" (width ×{config['widen']:g})" if config.get("widen", 1) != 1 else "")
    model += f" (stem ×{config['stem_widen']:g})" if config.get("stem_widen", 1) != 1 else ""
    fits = int(rows[-1]["fit"]) if rows else 1
    epochs = str(len(rows) or config.get("epochs", "?")) + (f" in {fits} fits" if fits > 1 else "")
    metric = "accuracy" if "accuracy_multi" not in summary else "accuracy_multi"  # several labels per image
    accuracy = summary.get(metric)
    seconds = summary.get("train_seconds")
    facts = {"data": data_name(config.get("data", "")), "model": model,
             # summary.json names the preset (config.json did before 2026-12-06)
             "preset": summary.get("preset") or config.get("preset") or "none", "epochs": epochs,
             f"final {metric}": f"{accuracy:.2%}" if isinstance(accuracy, float) else "not measured",
             "wall time": mmss(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else "unknown",
             "machine": machine, "weights scored": f"{summary.get('weights', 'final')} weights"}
    cells = "".join(f"<div><b>{_esc(k)}</b><span>{_esc(v)}</span></div>" for k, v in facts.items())
    note = "" if summary else "<p class='muted'>no summary.json: the run did not finish</p>"
    return f"<div class='facts'>{cells}</div>{note}"


# -- epochs and curves -----------------------------------------------------------------------
def read_log(path: Path) -> list[dict[str, float]]:
    """log.csv's rows as floats (blank -> NaN), with `fit` (1, 2, ...) and a continuous `epoch`.

    Each `fit` call restarts its epochs at 0 (progressive resizing fits twice, as the book does);
    the report counts on in row order so several fits read as one run.
    """
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    rows, fit, previous = [], 0, math.inf  # the first row starts fit 1
    for index, r in enumerate(raw):
        row = _log_row(path, index + 2, r)  # line 1 is the header
        if row.get("epoch", index) <= previous:  # the count restarted: a new fit
            fit += 1
        previous = row.get("epoch", index)
        rows.append({**row, "epoch": float(index), "fit": float(fit)})
    return rows


def _log_row(path: Path, line: int, cells: dict[str | None, Any]) -> dict[str, float]:
    """One row of log.csv as numbers (blank -> NaN); ValueError naming the file, line and field."""
    fix = f"fix the line, or delete {path.name} (the report then has no epoch table)"
    if None in cells:  # csv.DictReader's key for cells beyond the header
        raise ValueError(f"{path}: line {line} has {len(cells) - 1 + len(cells[None])} fields, the header "
                         f"{len(cells) - 1}; {fix}")
    row = {}
    for key, text in cells.items():
        try:
            row[key] = float(text) if text not in ("", None) else math.nan
        except ValueError:
            raise ValueError(f"{path}: line {line}, field {key}: {text!r} is not a number; {fix}") from None
    return row


def epochs_section(rows: list[dict[str, float]]) -> str:
    """The epoch table: times as mm:ss, numbers to 4 significant digits, blanks where not validated."""
    if not rows:
        return "<h2>Epochs</h2><p class='muted'>no log.csv</p>"
    several_fits = rows[-1]["fit"] > 1
    keys = [k for k in rows[0] if k not in ("epoch", "fit", "time")]
    header = ["epoch", *(["fit"] if several_fits else []), *keys, *(["time"] if "time" in rows[0] else [])]
    body = [[str(int(r["epoch"])), *([str(int(r["fit"]))] if several_fits else []),
             *(sig4(r[k]) for k in keys), *([mmss(r["time"])] if "time" in r else [])] for r in rows]
    note = "<p class='muted'>blank: that epoch skipped validation (--valid-every)</p>" if any(
        math.isnan(r.get("valid_loss", 0.0)) for r in rows) else ""
    return "<h2>Epochs</h2>" + table(header, body, n_names=0) + note


def curves_png(rows: list[dict[str, float]]) -> bytes:
    """One panel per scale (loss, accuracy, calibration error), epochs continuous over fits."""
    panels = [(title, [k for k in keys if k in rows[0]]) for title, keys in CURVE_PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    fig = Figure(figsize=(4.4 * len(panels), 3.4))
    fit_starts = [r["epoch"] for prev, r in zip(rows, rows[1:]) if r["fit"] != prev["fit"]]
    for n, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        for key in keys:
            points = [(r["epoch"], r[key]) for r in rows if math.isfinite(r[key])]  # skipped validations
            if points:  # dashed: nll equals valid_loss without label smoothing, and must not hide it
                ax.plot(*zip(*points), marker="o" if len(points) <= 30 else None, ms=3, label=key,
                        ls="--" if key in ("nll", "top5_accuracy") else "-")
        for start in fit_starts:  # where a new fit (a new schedule) begins
            ax.axvline(start - 0.5, color="gray", ls=":", lw=1)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def curves_section(rows: list[dict[str, float]], run_dir: Path) -> str:
    parts = ["<h2>Training curves</h2>"]
    if rows:
        note = " (dotted: a new fit begins)" if rows[-1]["fit"] > 1 else ""
        parts.append(f"<h3>Losses and metrics per epoch{note}</h3>{img_tag(curves_png(rows), 'curves')}")
    schedule = run_dir / "schedule.png"
    if schedule.is_file():
        parts.append(f"<h3>Learning rate and training size per batch</h3>{img_tag(schedule.read_bytes(), 'schedule')}")
    return "\n".join(parts)


# -- validation: per class, confusions, top losses, calibration --------------------------------
def per_class_section(cm: Tensor, names: list[str], vocab: list[str]) -> str:
    """Accuracy per class; a class without validation images says so (no silent NaN). Above
    MAX_TABLE_CLASSES the least accurate classes come first, and every class is folded below them."""
    with_ids = names != vocab  # Imagenette's WordNet ids: show them beside the human names
    items, correct = cm.sum(dim=1).tolist(), cm.diagonal().tolist()
    rows = [[name, *([label] if with_ids else []), sig4(right / n) if n else "no validation images", str(n)]
            for name, label, right, n in zip(names, vocab, correct, items)]
    header = ["class", *(["id"] if with_ids else []), "accuracy", "items"]
    every = table(header, rows, n_names=1 + with_ids)
    if len(rows) <= MAX_TABLE_CLASSES:
        return "<h3>Per-class accuracy</h3>" + every
    scored = [i for i, n in enumerate(items) if n]
    worst = sorted(scored, key=lambda i: (correct[i] / items[i], -items[i]))[:N_WORST_CLASSES]  # surer first
    absent = f", {len(rows) - len(scored):,} of them without validation images" if len(scored) < len(rows) else ""
    return worst_then_every(f"Per-class accuracy: the {len(worst)} least accurate of {len(rows):,} classes",
                            table(header, [rows[i] for i in worst], n_names=1 + with_ids), every, len(rows), absent)


def worst_then_every(title: str, worst: str, every: str, n_classes: int, note: str = "") -> str:
    """Many classes: the table of the worst under `title`, then every class's table folded below it."""
    return (f"<h3>{title}</h3><p class='muted'>every class in vocab order is folded below this table{note}</p>"
            f"{worst}<details><summary>every class ({n_classes:,}, in vocab order)</summary>{every}</details>")


def confusion_section(cm: Tensor, names: list[str]) -> str:
    """The confusion matrix as a table, each row shaded by its share, up to MAX_TABLE_CLASSES
    classes (every report writes it whole to confusion.csv); and the most confused pairs."""
    pairs = confused_pairs(cm)[:N_MOST_CONFUSED]
    confused = (table(["actual", "predicted", "count"], [[names[a], names[p], str(n)] for a, p, n in pairs],
                      n_names=2) if pairs else "<p class='muted'>no confusions</p>")
    where = (f"{CONFUSION_NAME} in the run folder: a row per actual class, a column per predicted class, "
             "headed by the class ids")
    most = f"<h3>Most confused (actual, predicted, count)</h3>{confused}"
    if len(names) > MAX_TABLE_CLASSES:  # a million cells is no table for a person (and 50 MB of page)
        return (f"<h3>Confusion matrix</h3><p>{len(names):,} classes: the {len(names) ** 2:,} counts are not "
                f"shown here but written to {where}; the most confused pairs follow.</p>{most}")
    head = "<tr><th class=k>actual \\ predicted</th>" + "".join(f"<th class=col>{_esc(n)}</th>" for n in names)
    body = []
    for a, name in enumerate(names):
        total = max(int(cm[a].sum()), 1)
        cells = "".join(_cm_cell(int(cm[a, p]), int(cm[a, p]) / total, a == p) for p in range(len(names)))
        body.append(f"<tr><th class=k>{_esc(name)}</th>{cells}</tr>")
    return (f"<h3>Confusion matrix (rows: actual class, shaded by share of the row)</h3>"
            f"<table class=cm>{head}</tr>{''.join(body)}</table><p class='muted'>also in {where}</p>{most}")


def _cm_cell(count: int, share: float, diagonal: bool) -> str:
    colour = "color:#fff;" if share > 0.6 else ""
    weight = "font-weight:bold;" if diagonal else ""
    text = str(count) if count or diagonal else ""
    return f"<td style='background:rgba(74,122,181,{share:.2f});{colour}{weight}'>{text}</td>"


def top_losses_section(interp: Interpretation, names: list[str]) -> str:
    """The worst-predicted validation images as the model saw them, each with a short caption."""
    losses, indices = interp.top_losses(N_TOP_LOSSES)
    images = interp.images(indices)  # (k, 3, S, S) in [0, 1]
    tiles = []
    for loss, i, image in zip(losses.tolist(), indices.tolist(), images):
        actual, predicted = int(interp.targets[i]), int(interp.preds[i])
        caption = (f"predicted <b>{_esc(names[predicted])}</b><br>actual <b>{_esc(names[actual])}</b><br>"
                   f"loss {loss:.2f}<br>p(actual) {float(interp.probs[i, actual]):.2f}")
        alt = f"predicted {names[predicted]}, actual {names[actual]}"
        image_tag = img_tag(_image_png(image), alt, css="")
        tiles.append(f"<figure class=tile>{image_tag}<figcaption>{caption}</figcaption></figure>")
    return ("<h3>Top losses</h3><p class='muted'>the validation images the model got most wrong, as it saw "
            "them; loss: the item's cross-entropy; p(actual): the probability it gave the actual class</p>"
            f"<div class=tiles>{''.join(tiles)}</div>")


def _image_png(image: Tensor) -> bytes:
    """The image as PNG, its larger side at most TILE_MAX_PX. Nine tiles of 288 px take at most 2.8 MB of
    page (base64 of noise; photos less); at a 512 px validation size they took 4 to 9 MB."""
    pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # (S, S, 3)
    picture = Image.fromarray(pixels)
    if max(picture.size) > TILE_MAX_PX:
        picture.thumbnail((TILE_MAX_PX, TILE_MAX_PX), Image.Resampling.LANCZOS)  # keeps the aspect ratio
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def reliability_png(conf: Tensor, acc: Tensor, count: Tensor, ece: float) -> bytes:
    """Accuracy per confidence bin, its item count above each bar; sparse bins faded and hatched."""
    centres = (torch.arange(N_BINS, dtype=torch.float64) + 0.5) / N_BINS
    fig = Figure(figsize=(6, 4.6))
    ax = fig.add_subplot()
    for sparse, style in ((False, dict(color="tab:blue", label="accuracy")),
                          (True, dict(color="tab:blue", alpha=0.3, hatch="//",
                                      label=f"accuracy, < {FEW_ITEMS} items (noisy)"))):
        chosen = (count > 0) & ((count < FEW_ITEMS) == sparse)
        if chosen.any():
            ax.bar(centres[chosen].numpy(), acc[chosen].numpy(), width=1 / N_BINS, edgecolor="black", **style)
    for x, y, n in zip(centres.tolist(), acc.tolist(), count.tolist()):
        if n > 0:
            ax.text(x, min(y, 1.0) + 0.03, str(int(n)), ha="center", va="bottom", fontsize=8)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    used = count > 0
    ax.plot(conf[used].numpy(), acc[used].numpy(), "o", color="tab:red", ms=4, label="mean confidence")
    ax.set(xlim=(0, 1), ylim=(0, 1.1), xlabel="confidence (probability of the predicted class)",
           ylabel="accuracy", title=f"ECE {ece:.3f} over {int(count.sum())} items (number: items in the bin)")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def reliability_section(logits: Tensor, targets: Tensor) -> str:
    conf, acc, count = reliability_bins(logits, targets, N_BINS)
    ece = float(calibration_error(logits, targets, N_BINS))
    rows = [[f"{b / N_BINS:.2f}-{(b + 1) / N_BINS:.2f}", str(int(count[b])), sig4(float(conf[b])), sig4(float(acc[b]))]
            for b in range(N_BINS) if count[b] > 0]
    bins = table(["confidence", "items", "mean confidence", "accuracy"], rows)
    return (f"<h3>Reliability (calibration)</h3><div class=side>"
            f"{img_tag(reliability_png(conf, acc, count, ece), 'reliability')}{bins}</div>")


# -- config ----------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    """A run's text record, or "" where the run has none (runs before recipe.txt existed)."""
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def config_section(config: dict[str, Any], recipe_text: str = "") -> str:
    """The fields that differ from the Recipe defaults; the resolved recipe (recipe.txt) and the
    full config folded below."""
    defaults = {f.name: f.default for f in dataclasses.fields(Recipe)}
    changed = [[k, config_value(v), config_value(defaults[k]) if k in defaults else "(not a Recipe field)"]
               for k, v in config.items() if k not in defaults or v != defaults[k]]
    diff = (table(["field", "value", "default"], changed, n_names=3) if changed
            else "<p class='muted'>every field at its default</p>")
    described = (f"<details><summary>recipe.txt: the recipe as it ran</summary><pre>{_esc(recipe_text)}</pre>"
                 f"</details>" if recipe_text else "")
    return (f"<h2>Config</h2><p class='muted'>fields that differ from the defaults</p>{diff}{described}"
            f"{_details('full config', config)}")
