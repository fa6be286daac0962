#!/usr/bin/env bash
# What confidence buys on Qwen2.5-Coder 1.5B: self-consistency with 8 samples, adaptive
# self-consistency with at most 8 (it stops once the vote is settled), deepconf with at most 8
# traces (online: unsure traces are cut while written, sampling stops once the vote is
# settled), against the model alone, on the same 60 GSM8K test items (items 101-160 of the
# file, the first 60 of the split strategies.sh measures every approach on). Each step resumes
# where it stopped (the bench keeps every finished item in its run directory), so running this
# again does only what is missing. Run it alone on the machine (two cores: a test run beside
# it measures neither); the whole plan is about 3 to 4 hours of a 2-core CPU (sc with 5
# samples took about 1.2 minutes an item; 8 samples, at most, here).
#
#   benchmarks/confidence.sh              # everything
#   benchmarks/confidence.sh deepconf     # one step: none deepconf sc8 adaptive cot_decoding
#   benchmarks/confidence.sh none sc8     # several, in the order given
#
# Each variant of `sc` is a run directory of its own (the bench keys its results by route, and
# both variants are the route `sc`), each starting with none's results on the same items
# copied in, so that every report compares its approach with the model alone item by item.
# The sc variants send their options with every request (`--ponder JSON`, kept in meta.json so
# that a resumed run cannot mix two). cot_decoding is measured against the model alone too.
set -euo pipefail
cd "$(dirname "$0")/.."

PONDER=.venv/bin/ponder
PY=.venv/bin/python
GSM8K=../shared/data/gsm8k/test.jsonl
RUNS=benchmarks/runs
OUT=$RUNS/confidence-1.5b
# --spl-train 100 --limit 60: items 1-100 are SPL's training split (skipped here: spl is not
# among the approaches), the 60 after them are evaluated: items 101-160.
# --trace keeps each request's trace (waves, posteriors, confidences, cuts, tokens saved).
# --timeout 3600: eight samples of one request among eight requests share two cores; the engine
# admits sequences first come, first served, so a request waits behind up to 56 others (sc8
# items ran past a 1,800 s timeout while anything else shared the cores).
GSM=(--suite gsm8k --path "$GSM8K" --spl-train 100 --limit 60 --max-tokens 512
    --concurrency 8 --seed 0 --trace --timeout 3600)
export PONDER_MODEL=qwen2.5-coder-1.5b

want() { [ "${1:-all}" = all ] || [ "${1:-all}" = "$2" ]; }

# A run directory that starts with none's results on items 101-160 copied from the first
# GSM8K run (none is not re-run where nothing that touches it changed; the bench asks only
# what is missing, so none runs only if that run lacks some of these items).
with_none() {
    mkdir -p "$1"
    if [ ! -s "$1/items.jsonl" ] && [ -s $RUNS/gsm8k-1.5b/items.jsonl ]; then
        $PY -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["approach"] == "none" and 101 <= int(r["item_id"].split("-")[1]) <= 160:
        sys.stdout.write(line)' $RUNS/gsm8k-1.5b/items.jsonl > "$1/items.jsonl"
    fi
}

step() {
local target=$1

if want "$target" none; then
    with_none $OUT
    $PONDER bench "${GSM[@]}" --approaches none --no-progress --out $OUT
fi
if want "$target" deepconf; then
    # deepconf at its defaults: online, at most 8 traces, a warmup of 4 sets the threshold
    # (keep 0.9: the lowest group confidence, over 32-token windows, of the third most sure),
    # top 5 log-probabilities per token; the trace's `savings` step estimates the tokens saved
    with_none $OUT
    $PONDER bench "${GSM[@]}" --approaches deepconf --no-progress --out $OUT
fi
if want "$target" sc8; then
    # sc with 8 samples, all drawn at once (the baseline of the two below); like adaptive sc,
    # with sc's default tie-break (a tie for the most votes goes to one greedy answer)
    with_none $OUT-sc8
    $PONDER bench "${GSM[@]}" --approaches sc --ponder '{"sc": {"samples": 8}}' \
        --no-progress --out $OUT-sc8
fi
if want "$target" adaptive; then
    # adaptive sc, at most 8 samples: waves until P(leader beats runner-up) >= `confidence`,
    # which was 0.95 by default when this ran (4 unanimous samples settle it); the default is
    # 0.9 since. The options stay as run, so that the committed run resumes (a run directory
    # binds its options); to repeat it elsewhere, add "confidence": 0.95 and a new --out.
    with_none $OUT-adaptive
    $PONDER bench "${GSM[@]}" --approaches sc --ponder '{"sc": {"samples": 8, "adaptive": true}}' \
        --no-progress --out $OUT-adaptive
fi

if want "$target" cot_decoding; then
    # cot_decoding at its defaults: 5 branches on the first token, each continued greedily
    with_none $OUT
    $PONDER bench "${GSM[@]}" --approaches cot_decoding --no-progress --out $OUT
fi
}

for target in "${@:-all}"; do
    step "$target"
done
