#!/usr/bin/env bash
# The README's real run: LoRA on 1,000 Moral Stories training pairs (one epoch; the anchored run up to three), chain of edits
# (AEM) and the direct baseline, then greedy re-alignment of 100 dev examples. `merged`: AEM on chains whose edits at most
# 3 kept tokens apart are merged (--merge-gap 3), one epoch at batch 2.
#   bash benchmarks/ms1000.sh [WORK_DIR]        (default /tmp/ms1000; runs go to runs/ms1000-*)
# Each step skips what is already there, and `train --resume` continues a killed run.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/ms1000}
DATA=../shared/data/moral_stories/moral_stories.jsonl
mkdir -p "$WORK"
[ -s "$WORK/train.jsonl" ] || secondthoughts prepare --format moral_stories --input $DATA --split train --limit 1000 --output "$WORK/train.jsonl"
[ -s "$WORK/dev.jsonl" ] || secondthoughts prepare --format moral_stories --input $DATA --split dev --limit 100 --output "$WORK/dev.jsonl"
# ms1000-coe is the first run, made before chains were anchored: positional chains, one epoch.
# ms1000-anchored: anchored chains (the default now), up to 3 epochs with early stopping. The README's
# anchored run predates <|ins|><|new|> (an insert right where an edit ends has no anchor); this trains
# the current format. The 1-epoch comparison of the two formats: README, "A real run".
for NAME in coe direct anchored merged; do
  RUN=runs/ms1000-$NAME
  case $NAME in
    coe) FLAGS="--mode coe --chain-format positional --merge-gap -1 --epochs 1 --batch-size 8";;
    direct) FLAGS="--mode direct --epochs 1 --batch-size 8";;
    anchored) FLAGS="--mode coe --chain-format anchored --merge-gap -1 --epochs 3 --batch-size 8";;
    merged) FLAGS="--mode coe --chain-format anchored --merge-gap 3 --epochs 1 --batch-size 2 --eval-every 40";;
  esac
  if [ ! -f "$RUN/README.md" ]; then
    RESUME=$([ -d "$RUN/checkpoint" ] && echo --resume || true)
    # (the run's own FLAGS come last: the last value of a flag wins)
    /usr/bin/time -v secondthoughts train --data "$WORK/train.jsonl" --eval-data "$WORK/dev.jsonl" --out $RUN \
      --lr 1e-3 --lora-r 16 --lora-alpha 16 --max-length 256 --eval-every 20 --log-every 5 $FLAGS $RESUME \
      2> >(tee "$WORK/train-$NAME.log" >&2)
  fi
done
# Greedy chains as the model writes them (unconstrained: the parse rate measures the model) and constrained.
R="secondthoughts realign --model runs/ms1000-coe --input $WORK/dev.jsonl --batch-size 8"
# (realign exits 1 when some chain is invalid, which unconstrained decoding allows)
[ -s "$WORK/coe-unconstrained.jsonl" ] || $R --unconstrained --output "$WORK/coe-unconstrained.jsonl" || true
[ -s "$WORK/coe-constrained.jsonl" ] || $R --output "$WORK/coe-constrained.jsonl"
A="secondthoughts realign --model runs/ms1000-anchored --input $WORK/dev.jsonl --batch-size 8"
[ -s "$WORK/anchored-unconstrained.jsonl" ] || $A --unconstrained --output "$WORK/anchored-unconstrained.jsonl" || true
[ -s "$WORK/anchored-constrained.jsonl" ] || $A --output "$WORK/anchored-constrained.jsonl"
M="secondthoughts realign --model runs/ms1000-merged --input $WORK/dev.jsonl --batch-size 8"
[ -s "$WORK/merged-unconstrained.jsonl" ] || $M --unconstrained --output "$WORK/merged-unconstrained.jsonl" || true
[ -s "$WORK/merged-constrained.jsonl" ] || $M --output "$WORK/merged-constrained.jsonl"
[ -s "$WORK/direct.jsonl" ] || secondthoughts realign --model runs/ms1000-direct --mode direct --input "$WORK/dev.jsonl" --batch-size 8 --output "$WORK/direct.jsonl"
python benchmarks/parse_rate.py "$WORK"/coe-*.jsonl "$WORK"/anchored-*.jsonl "$WORK"/merged-*.jsonl "$WORK/direct.jsonl"

# Stage 2: RL refinement of the AEM run against the reward model trained on all 10,000 Moral
# Stories train pairs (README, reward section), then held-out evaluation of all three runs.
REWARD=runs/reward-ms-full
if [ ! -f "$REWARD/metrics.json" ]; then
  [ -s "$WORK/train-all.jsonl" ] || secondthoughts prepare --format moral_stories --input $DATA --split train --output "$WORK/train-all.jsonl"
  [ -s "$WORK/dev-all.jsonl" ] || secondthoughts prepare --format moral_stories --input $DATA --split dev --output "$WORK/dev-all.jsonl"
  secondthoughts reward train --data "$WORK/train-all.jsonl" --dev "$WORK/dev-all.jsonl" --out $REWARD
fi
if [ ! -d runs/ms1000-rl/model ]; then
  RESUME=$([ -d runs/ms1000-rl/checkpoint ] && echo --resume || true)
  /usr/bin/time -v secondthoughts refine --policy runs/ms1000-coe --reward $REWARD --data "$WORK/train.jsonl" --eval-data "$WORK/dev.jsonl" \
    --out runs/ms1000-rl --steps 12 --prompts-per-step 8 --k 4 --lr 2e-4 --checkpoint-every 4 $RESUME 2> >(tee "$WORK/refine.log" >&2)
fi
for RUN in coe direct anchored merged rl; do
  [ -f "$WORK/report-$RUN/metrics.json" ] || secondthoughts evaluate --model runs/ms1000-$RUN --data "$WORK/dev.jsonl" --reward $REWARD --out "$WORK/report-$RUN"
done
