# `make run` and `make test` set everything up from scratch (a venv in .venv), then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast bench clean browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vivace train

# tests/test_report.py renders the run report in a real headless browser (Debian's chromium).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) browser
	$(PY) -m pytest

# The developer loop: everything but the tests marked slow (end to end, browser, torchrun,
# pseudo-terminal); under a minute on 2 idle cores. `make test` (CI) runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs
