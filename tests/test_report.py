import ast
import html as html_module
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivace import report
from vivace.cli import main
from vivace.data.names import display_names
from vivace.recipe import TrainOptions, make_recipe
from vivace.report import (N_TOP_LOSSES, REPORT_NAME, config_value, confusion_section, curves_png, epochs_section,
                           mmss, per_class_section, read_log, sig4, write_report)
from vivace.runs import load_run
from vivace.train import train

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EMBEDDED_IMAGES = 3 + N_TOP_LOSSES  # curves, schedule, reliability, and each top-loss image


@pytest.fixture(scope="module")
def run_dir(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    train(make_recipe(data=str(tiny_folder), arch="xresnet18", widen=0.25, size=16, presize=24, epochs=2,
                      bs=4, wd=5e-5), TrainOptions(workers=1, threads=2, out=str(out)))
    return out


class ImageSources(HTMLParser):
    """Collects every <img src> and any attribute that points outside the page."""

    def __init__(self):
        super().__init__()
        self.srcs, self.external = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.srcs.append(value)
            if name in ("src", "href") and not value.startswith("data:"):
                self.external.append(value)


def parse(html: str) -> ImageSources:
    parser = ImageSources()
    parser.feed(html)
    return parser


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs it, or run "
                    "`apt-get update && apt-get install -y chromium`")
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def test_training_writes_a_self_contained_report(run_dir):
    html = (run_dir / REPORT_NAME).read_text()
    page = parse(html)
    assert len(page.srcs) == EMBEDDED_IMAGES and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert page.external == [] and "<script" not in html and "<link" not in html
    assert "http://" not in html and "https://" not in html
    assert "Per-class accuracy" in html and "Most confused" in html and "Confusion matrix" in html


def test_the_headline_says_what_ran_how_well_how_long_and_where(run_dir, tiny_folder):
    html = (run_dir / REPORT_NAME).read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    facts = dict(re.findall(r"<div><b>([^<]+)</b><span>([^<]*)</span></div>", html))
    assert list(facts) == ["data", "model", "preset", "epochs", "final accuracy", "wall time", "machine",
                           "weights scored"]
    assert facts["data"] == tiny_folder.name and facts["preset"] == "none"
    assert facts["model"] == "xresnet18 (width ×0.25)"
    assert facts["epochs"] == "2" and facts["final accuracy"] == f"{summary['accuracy']:.2%}"
    assert re.fullmatch(r"\d\d:\d\d", facts["wall time"]) and facts["machine"] not in ("", "unknown CPU")
    assert facts["weights scored"] == "final weights"  # summary.json names no weights: the final ones


def test_the_epoch_table_is_formatted(run_dir):
    html = (run_dir / REPORT_NAME).read_text()
    epochs = html.split("<h2>Epochs</h2>")[1].split("</table>")[0]
    header = re.findall(r"<th>([^<]*)</th>", epochs)
    assert header[0] == "epoch" and header[-1] == "time" and "fit" not in header
    cells = [re.findall(r"<td>([^<]*)</td>", row) for row in epochs.split("<tr>")[2:]]
    assert [row[0] for row in cells] == ["0", "1"]
    assert all(re.fullmatch(r"\d\d:\d\d", row[-1]) for row in cells)
    numbers = [cell for row in cells for cell in row[1:-1]]
    significant = [len(re.sub(r"e.*|\D", "", n).lstrip("0")) for n in numbers if n != "0.000"]
    assert numbers and set(significant) == {4}


def test_two_fits_count_on_as_one_run(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,valid_loss,accuracy,time\n0,2.0,1.9,0.3,33.524677\n1,1.5,,,30.0\n"
                   "2,1.2,1.1,0.6,31.0\n0,1.0,0.9,0.7,75.2\n1,0.8,0.85,0.75,3600.4\n")
    rows = read_log(log)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4] and [r["fit"] for r in rows] == [1, 1, 1, 2, 2]
    html = epochs_section(rows)
    assert re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", html) == [
        ("0", "1"), ("1", "1"), ("2", "1"), ("3", "2"), ("4", "2")]
    assert "<td>00:34</td>" in html and "<td>01:15</td>" in html and "<td>1:00:00</td>" in html
    assert "<td>1.500</td><td></td><td></td>" in html and "skipped validation" in html  # blanks, no nan
    assert "nan" not in html
    assert Image.open(io.BytesIO(curves_png(rows))).size[0] > 0


def test_numbers_and_config_values_read_as_typed():
    assert [sig4(v) for v in (33.524677, 0.83519, 1.0, float("nan"))] == ["33.52", "0.8352", "1.000", ""]
    assert [mmss(s) for s in (33.5, 75.2, 3725)] == ["00:34", "01:15", "1:02:05"]
    assert [config_value(v) for v in (5e-5, 0.003, 64, "", True)] == ["5e-05", "0.003", "64", "(empty)", "True"]


def test_config_shows_what_differs_from_the_defaults(run_dir):
    html = (run_dir / REPORT_NAME).read_text()
    config = json.loads((run_dir / "config.json").read_text())
    diff, described, full = html.split("<h2>Config</h2>")[1].split("<details>")[:3]
    assert "<tr><td class=k>weight_decay</td><td class=k>5e-05</td><td class=k>0.01</td></tr>" in diff
    assert "<td class=k>arch</td>" not in diff and "<td class=k>optimizer</td>" not in diff  # at their defaults
    # recipe.txt, as the run wrote it: the resolved validation view beside what was asked
    assert "recipe.txt: the recipe as it ran" in described
    assert html_module.escape((run_dir / "recipe.txt").read_text()) in described
    assert 'valid_view = &quot;squash&quot;  # asked: &quot;auto&quot;' in described
    assert f"full config ({len(config)} fields)" in full
    assert all(f"<tr><td class=k>{field}</td>" in full for field in config)


def test_reliability_bins_show_their_counts(run_dir):
    html = (run_dir / REPORT_NAME).read_text()
    bins = html.split("<h3>Reliability (calibration)</h3>")[1].split("</table>")[0]
    counts = [int(row[1]) for row in re.findall(r"<td class=k>([\d.-]+)</td><td>(\d+)</td>", bins)]
    assert counts and all(n > 0 for n in counts) and sum(counts) == 12  # the tiny folder's 3 x 4 val images


def test_a_class_without_validation_images_says_so():
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [0, 2, 2]])  # the second class: no validation images
    html = per_class_section(cm, ["tench", "blue", "chain saw"], ["n01440764", "blue", "n03000684"])
    assert "<td class=k>blue</td><td class=k>blue</td><td>no validation images</td><td>0</td>" in html
    assert "<td class=k>tench</td><td class=k>n01440764</td><td>0.7500</td><td>4</td>" in html
    assert "nan" not in html


def test_class_names_are_human_and_escaped():
    cm = torch.tensor([[1, 1], [0, 2]])
    html = confusion_section(cm, display_names(["n01440764", "<b>&co"]))
    assert "tench" in html and "n01440764" not in html
    assert "&lt;b&gt;&amp;co" in html and "<b>&co" not in html


def test_report_does_not_import_training():
    # `import vivace` itself imports vivace.train, so read report.py's own imports: no circle back.
    tree = ast.parse(Path(report.__file__).read_text())
    modules = [(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert "interpret" in modules and not [m for m in modules if m.split(".")[-1] == "train"]


def test_report_rebuilds_from_the_run_dir(run_dir, capsys):
    (run_dir / REPORT_NAME).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / REPORT_NAME)
    assert len(parse((run_dir / REPORT_NAME).read_text()).srcs) == EMBEDDED_IMAGES


def test_report_needs_a_run_dir(run_dir, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        write_report(tmp_path, load_run(run_dir))
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_export_then_predict(run_dir, tiny_folder, tmp_path, capsys):
    bundle = tmp_path / "tiny.vivace"
    assert main(["export", str(run_dir), "-o", str(bundle)]) == 0
    image = tiny_folder / "val" / "green" / "3.png"
    assert main(["predict", str(bundle), str(image), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(image) and set(result["probs"]) == {"blue", "green", "red"}


@pytest.mark.slow
def test_report_renders_in_a_real_browser(run_dir, tmp_path):
    report = (run_dir / REPORT_NAME).resolve()
    shot = tmp_path / "shot.png"
    dom = chromium("--dump-dom", f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri(),
                   user_dir=tmp_path / "profile").stdout
    srcs = parse(dom).srcs
    assert len(srcs) == EMBEDDED_IMAGES
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank

    # Does the browser decode every embedded image? The report has no scripts, so a separate page
    # shows the same data URIs and writes each image's naturalWidth into its DOM on load.
    tags = "".join(f'<img src="{s}">' for s in srcs)
    probe = tmp_path / "probe.html"
    probe.write_text(f"<!DOCTYPE html><html><body>{tags}<script>window.addEventListener('load', () => {{"
                     "const p = document.createElement('pre'); p.id = 'widths';"
                     "p.textContent = Array.from(document.images, i => i.naturalWidth).join(',');"
                     "document.body.appendChild(p);});</script></body></html>")
    probe_dom = chromium("--dump-dom", probe.as_uri(), user_dir=tmp_path / "profile").stdout
    widths = re.search(r'<pre id="widths">([\d,]*)</pre>', probe_dom)
    assert widths is not None, "the probe page did not run"
    assert [int(w) > 0 for w in widths.group(1).split(",")] == [True] * EMBEDDED_IMAGES
