#!/usr/bin/env bash
# The shipped default's decodings compared on Moral Stories dev (docs/coherence.md): greedy apply, the paper's
# generate mode, and best-of-N reranked by alignment and coherence; each through `evaluate` with two alignment
# scorers and the coherence scorer.
#   bash benchmarks/decodings.sh RUN REWARD SECOND_REWARD COHERENCE [WORK_DIR] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1; REWARD=$2; SECOND=$3; COH=$4; WORK=${5:-/tmp/decodings}; N=${6:-100}
DATA=../shared/data/moral_stories/moral_stories.jsonl
mkdir -p "$WORK"
[ -s "$WORK/dev.jsonl" ] || secondthoughts prepare --format moral_stories --input $DATA --split dev --limit "$N" --output "$WORK/dev.jsonl"
E="secondthoughts evaluate --model $RUN --data $WORK/dev.jsonl --reward $REWARD --second-reward $SECOND --coherence $COH --batch-size 8"
[ -f "$WORK/apply/metrics.json" ] || $E --out "$WORK/apply"
[ -f "$WORK/generate/metrics.json" ] || $E --mode generate --score-generated --out "$WORK/generate"
for K in ${BEST_OF:-8}; do
  [ -f "$WORK/best-of-$K/metrics.json" ] || $E --best-of "$K" --rerank "$REWARD" "$COH" --out "$WORK/best-of-$K"
done
