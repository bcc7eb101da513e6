#!/bin/bash
# Same results, same speed? Train the same recipes on an older commit and on this checkout,
# alternating on one machine, and compare their epoch tables and times.
#
#   scripts/before_after.sh BASE_COMMIT [DATA_160]
#
# Runs the quick preset (embedded data) twice on each side, then, if DATA_160 (a folder like
# imagenette2-160) is given, one epoch of the speedrun preset on each. Uses this checkout's
# .venv (`make setup`); BASE_COMMIT is checked out in a temporary git worktree.
set -euo pipefail
base=${1:?usage: scripts/before_after.sh BASE_COMMIT [DATA_160]}
data=${2:-}
here=$(git rev-parse --show-toplevel)
py=$here/.venv/bin/python
out=$(mktemp -d)
git -C "$here" worktree add -q --detach "$out/before-tree" "$base"
trap 'git -C "$here" worktree remove --force "$out/before-tree"' EXIT

train() {  # tree run-name args...: one `vivace train` with that tree's vivace first on the path
  local tree=$1 name=$2; shift 2
  (cd "$tree" && PYTHONPATH="$tree" "$py" -m vivace train --out "$out/$name" "$@" > "$out/$name.txt" 2>&1)
}
for i in 1 2; do
  train "$out/before-tree" quick-before-$i
  train "$here" quick-after-$i
done
if [ -n "$data" ]; then
  train "$out/before-tree" speedrun-before-1 --preset imagenette-speedrun --data "$data" --epochs 1
  train "$here" speedrun-after-1 --preset imagenette-speedrun --data "$data" --epochs 1
fi
"$py" - "$out" <<'PY'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("quick", "speedrun"):
    before, after = sorted(out.glob(f"{name}-before-*/")), sorted(out.glob(f"{name}-after-*/"))
    if not before:
        continue
    tables = [list(csv.DictReader(open(d[0] / "log.csv"))) for d in (before, after)]
    same = [{k: v for k, v in r.items() if k != "time"} for r in tables[0]] == \
           [{k: v for k, v in r.items() if k != "time"} for r in tables[1]]
    seconds = [[json.loads((d / "summary.json").read_text())["train_seconds"] for d in side] for side in (before, after)]
    print(f"{name}: epoch tables identical: {same}; train seconds before {seconds[0]}, after {seconds[1]}, "
          f"ratio after/before {sum(seconds[1]) / sum(seconds[0]):.3f}")
PY
echo "runs kept in $out"
