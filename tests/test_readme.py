"""The README's shell commands run as written on a fresh clone, or are listed here with why not.

Every line of every ```bash block is a command. Each is either in NOT_RUN (with the reason and
the test that covers it instead) or run, in order, in a scratch folder that holds links to the
checkout's `vivace/` and `.venv/`, so paths like `vivace/data/embedded/...` and `.venv/bin/vivace`
mean what they mean in a clone. A README command in neither place fails the test: the list stays
checked as the README changes.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

NOT_RUN: dict[str, str] = {
    "make run": "the pty test (tests/test_progress.py) runs the same `vivace train` in a terminal",
    "make test": "this suite",
    "vivace download": "needs the network; tests/test_datasets.py downloads from a local server",
    "vivace train --data imagenette-160": "downloads 99 MB and trains for hours on 2 cores",
    "vivace train --data path/to/folder": "a placeholder for the user's folder; tests/test_data.py and "
                                          "tests/test_cli.py train on generated folders with these flags",
    "torchrun": "tests/test_distributed.py launches torchrun on a generated folder",
    "vivace experiments": "hours on the real data; tests/test_experiments.py runs it on a tiny folder",
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, one per line, trailing comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def runnable(commands: list[str]) -> list[str]:
    return [c for c in commands if not any(c.startswith(prefix) for prefix in NOT_RUN)]


def as_local(command: str) -> str:
    """The command with `vivace` run by this interpreter (the venv's, or CI's)."""
    command = re.sub(r"^(\.venv/bin/)?vivace\b", f"{sys.executable} -m vivace", command)
    return re.sub(r"^torchrun\b", f"{sys.executable} -m torch.distributed.run", command)


def test_commands_are_parsed_from_bash_blocks():
    text = "x\n```bash\nmake run    # trains\n# a comment\n\nvivace --help\n```\n```python\nimport vivace\n```\n"
    assert readme_commands(text) == ["make run", "vivace --help"]


def test_every_readme_command_is_run_or_listed():
    commands = readme_commands((REPO / "README.md").read_text())
    assert commands[:2] == ["make run", "make test"], "the README's first two commands are the setup ones"
    unused = [prefix for prefix in NOT_RUN if not any(c.startswith(prefix) for c in commands)]
    assert not unused, f"NOT_RUN names commands the README no longer has: {unused}"


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    (tmp_path / "vivace").symlink_to(REPO / "vivace")
    env = {**os.environ, "PYTHONPATH": str(REPO), "VIVACE_HOME": str(tmp_path / "home")}
    for command in runnable(readme_commands((REPO / "README.md").read_text())):
        out = subprocess.run(as_local(command), shell=True, cwd=tmp_path, env=env, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"`{command}` failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
