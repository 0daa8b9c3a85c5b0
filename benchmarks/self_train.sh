#!/usr/bin/env bash
# Rejection-sampling fine-tuning of a chain model on its own best-of-16 texts (docs/coherence.md, "Learning from its
# own best picks"): the default decoding on train stories the model never saw, kept where the alignment reward and
# the rewrite likelihood both pass a floor, then `learn` on them with as many of the model's own training rows
# replayed. Every step is a secondthoughts command; each is skipped when its output exists (rerun to resume).
#   bash benchmarks/self_train.sh RUN REWARD TRAIN_JSONL OUT [WORK_DIR] [FIRST] [N]
# TRAIN_JSONL: the run's training data (replayed); stories FIRST..FIRST+N-1 of the complete Moral Stories train
# stories (the run saw the first 3,000) are decoded, 50 a file.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1; REWARD=$2; TRAIN=$3; OUT=$4; WORK=${5:-/tmp/self-train}; FIRST=${6:-3000}; N=${7:-550}
MIN_ALIGN=${MIN_ALIGN:-0.3}; MIN_LIKELIHOOD=${MIN_LIKELIHOOD:--1.12}
DATA=../shared/data/moral_stories/moral_stories.jsonl
mkdir -p "$WORK/chunks"
[ -s "$WORK/complete.jsonl" ] || {
  secondthoughts prepare --format moral_stories --input "$DATA" --split train --output "$WORK/all.jsonl"
  python -c "import json,sys; [sys.stdout.write(l) for l in open(sys.argv[1]) if json.loads(l)['meta'].get('situation')]" \
    "$WORK/all.jsonl" > "$WORK/complete.jsonl"
}
tail -n +$((FIRST + 1)) "$WORK/complete.jsonl" | head -n "$N" | split -l 50 -d -a 3 --additional-suffix .jsonl - "$WORK/chunks/s"
for c in "$WORK"/chunks/s*.jsonl; do
  o=${c%.jsonl}.out.jsonl
  [ -s "$o" ] || secondthoughts realign --model "$RUN" --input "$c" --output "$o" --seed 0 --batch-size 17
done
[ -s "$WORK/scored.jsonl" ] || { cat "$WORK"/chunks/s*.out.jsonl > "$WORK/decoded.jsonl"
  secondthoughts reward score --model "$REWARD" --input "$WORK/decoded.jsonl" --output "$WORK/scored.jsonl" \
    --text-field text --reward-field p_align --dtype float32; }
python - "$WORK/scored.jsonl" "$WORK/picks.jsonl" "$MIN_ALIGN" "$MIN_LIKELIHOOD" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keep = [r for r in rows if r["valid"] and r["text"].strip() != r["source"].strip()
        and r["p_align"] >= float(sys.argv[3]) and r["rerank_score"] >= float(sys.argv[4])]
with open(sys.argv[2], "w") as f:
    for r in keep:
        f.write(json.dumps({"context": r["context"], "source": r["source"], "target": r["text"], "id": r["id"]}) + "\n")
print(f"{len(keep)} of {len(rows)} texts kept")
EOF
R=""; [ -f "$OUT/learn.json" ] && R=--resume
secondthoughts learn $R --model "$RUN" --corrections "$WORK/picks.jsonl" --replay-data "$TRAIN" --replay 1 --epochs 2 \
  --lr 5e-4 --batch-size 4 --out "$OUT"
