#!/usr/bin/env bash
# A separate venv for the side-by-side comparisons (python -m bench peer_fastai | peer_timm | peer_fastai_accuracy):
#
#     bash scripts/peers_setup.sh
#
# .venv-peers holds fastai and timm with the torch/torchvision they need, and vivace itself
# installed --no-deps into that SAME torch, so both sides of every ratio run one torch build.
# (vivace's own .venv pins torch==2.13.0 CPU, beside which torchvision does not import.)
# The torch 2.14.1 wheel is a CUDA build (~5.5 GB with its nvidia-* wheels): it runs on CPU too.
# Idempotent: a stamp naming the pins is written last, so an interrupted run is simply redone.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=.venv-peers
PINS="torch==2.14.1 torchvision==0.29.1 fastai==2.8.12 timm==1.0.31"
# vivace's runtime dependencies from pyproject.toml, less its torch pin.
VIVACE_DEPS="numpy>=1.24 pillow>=10.0 safetensors>=0.4 matplotlib>=3.7 tqdm>=4.65"
STAMP=$VENV/.installed

if [[ -f $STAMP && "$(cat "$STAMP")" == "$PINS" ]]; then
    echo "$VENV is up to date ($PINS); delete $STAMP to reinstall"
    exit 0
fi

start=$SECONDS
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
PY=$VENV/bin/python
# One resolve for the peers and vivace's deps, so pip cannot move torch off its pin later.
$PY -m pip install --quiet $PINS $VIVACE_DEPS
# vivace pins torch==2.13.0: --no-deps keeps the peers' torch (its other deps are installed above).
$PY -m pip install --quiet --no-deps -e .
$PY - <<'EOF'
import fastai, timm, torch, torchvision, vivace
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, fastai {fastai.__version__}, "
      f"timm {timm.__version__}, vivace {getattr(vivace, '__version__', '?')} from {vivace.__file__}")
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
EOF
echo "$PINS" > "$STAMP"
echo "$VENV ready in $((SECONDS - start)) s"
