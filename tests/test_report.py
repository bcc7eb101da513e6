import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vivace.cli import main
from vivace.recipe import make_recipe
from vivace.report import REPORT_NAME, write_report
from vivace.train import train

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EMBEDDED_PLOTS = 5  # losses, schedule, confusion matrix, top losses, reliability


@pytest.fixture(scope="module")
def run_dir(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    train(make_recipe(data=str(tiny_folder), arch="xresnet18", widen=0.25, size=16, presize=24, epochs=2,
                      bs=4, workers=1, threads=2, out=str(out)))
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
    assert len(page.srcs) == EMBEDDED_PLOTS and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert page.external == [] and "<script" not in html and "<link" not in html
    assert "http://" not in html and "https://" not in html
    config = json.loads((run_dir / "config.json").read_text())
    assert f"<td class=k>arch</td><td>{config['arch']}</td>" in html
    assert html.count("train_loss") >= 1 and "Per-class accuracy" in html and "Most confused" in html


def test_report_rebuilds_from_the_run_dir(run_dir, capsys):
    (run_dir / REPORT_NAME).unlink()
    assert write_report(run_dir) == run_dir / REPORT_NAME
    assert len(parse((run_dir / REPORT_NAME).read_text()).srcs) == EMBEDDED_PLOTS
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / REPORT_NAME)


def test_report_needs_a_run_dir(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_export_then_predict(run_dir, tiny_folder, tmp_path, capsys):
    bundle = tmp_path / "tiny.vivace"
    assert main(["export", str(run_dir), "-o", str(bundle)]) == 0
    image = tiny_folder / "val" / "green" / "3.png"
    assert main(["predict", str(bundle), str(image), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(image) and set(result["probs"]) == {"blue", "green", "red"}


def test_report_renders_in_a_real_browser(run_dir, tmp_path):
    report = (run_dir / REPORT_NAME).resolve()
    shot = tmp_path / "shot.png"
    dom = chromium("--dump-dom", f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri(),
                   user_dir=tmp_path / "profile").stdout
    srcs = parse(dom).srcs
    assert len(srcs) == EMBEDDED_PLOTS
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
    assert [int(w) > 0 for w in widths.group(1).split(",")] == [True] * EMBEDDED_PLOTS
