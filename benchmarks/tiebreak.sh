#!/usr/bin/env bash
# `sc` with its greedy tie-break (`tie_break: greedy`, the default since it was replayed on the
# recorded runs: benchmarks/tie_break_replay.py), run live on Qwen2.5-Coder 0.5B, where the
# replay said it matters most, on the items of the first 0.5B run (GSM8K 101-220; none's
# results copied from that run, so the report compares item by item). About 2 hours of the
# 2-core machine; resumes where it stopped. Run it alone on the machine.
#
#   benchmarks/tiebreak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PONDER=.venv/bin/ponder
PY=.venv/bin/python
RUNS=benchmarks/runs
OUT=$RUNS/gsm8k-0.5b-tiebreak
mkdir -p $OUT
if [ ! -s $OUT/items.jsonl ]; then
    $PY -c 'import json, sys
for line in open(sys.argv[1]):
    if json.loads(line)["approach"] == "none":
        sys.stdout.write(line)' $RUNS/gsm8k-0.5b/items.jsonl > $OUT/items.jsonl
fi
PONDER_MODEL=qwen2.5-coder-0.5b $PONDER bench --suite gsm8k --path ../shared/data/gsm8k/test.jsonl \
    --spl-train 100 --limit 120 --max-tokens 512 --concurrency 8 --seed 0 --trace --timeout 1800 \
    --approaches none,sc --no-progress --out $OUT
