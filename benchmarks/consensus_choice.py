"""Would a consensus term help the best-of-N chooser? Minimum Bayes risk decoding keeps the candidate
most like the others; here its score is added to the default's, against people's ratings of every
candidate (as ``candidate_choice.py`` reads them).

    python benchmarks/consensus_choice.py --candidates r18.jsonl r20.jsonl --labels benchmarks/coherence_labels.jsonl \\
        --split cands18-learn cands20-learn [--weights 0.5 1 2 4 8] [--skip-unrated]

A candidate's *consensus*: the mean cosine similarity of its all-MiniLM-L6-v2 embedding (the embedded
encoder, mean-pooled) to every other distinct text of its story (with ``--skip-unrated``, of those
kept), centred per story. Each weighting keeps
argmax(default score + W x consensus), the default score being the commands' (the likelihood minus the
source and length penalties). Prints, per candidates file and pooled, the mean rated sum (Align +
Coherence) of what each keeps minus the default's, and pooled summaries with paired 95% bootstrap
intervals. ``--weights 1e6``: consensus alone (the MBR pick).
"""

from __future__ import annotations

import argparse
import statistics as st
import sys

import candidate_choice as cc
import numpy as np
import torch

from secondthoughts.decoding import LENGTH_PENALTY, SOURCE_PENALTY
from secondthoughts.reward import RewardConfig, RewardModel


def add_consensus(stories: list[list[cc.Candidate]], alternatives: dict[str, list[str]], encoder: RewardModel) -> None:
    """Set each candidate's ``consensus``: its embedding's mean cosine similarity to the story's other texts."""
    dim = encoder.encoder.config.hidden_size
    for cands in stories:
        texts = alternatives[cands[0]["id"]]
        with torch.inference_mode():
            emb = encoder.features(texts, texts)[:, :dim].cpu().numpy()  # [u, v, u*v, |u-v|]: u, normalized
        sim = emb @ emb.T
        where = {t: i for i, t in enumerate(texts)}
        for c in cands:
            i = where[c["text"]]
            c["consensus"] = float((sim[i].sum() - sim[i, i]) / max(1, len(texts) - 1))


def keep(cands: list[cc.Candidate], weight: float) -> cc.Candidate:
    score = cc.best_of_scores(cands, SOURCE_PENALTY, LENGTH_PENALTY)
    consensus = np.array([c["consensus"] for c in cands])
    return cands[int(np.argmax(score + weight * (consensus - consensus.mean())))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", required=True, nargs="+", help="realign --keep-candidates output JSONL, one file per round")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--split", required=True, nargs="+", help="the labels' split of each candidates file, in the same order")
    ap.add_argument("--weights", nargs="+", type=float, default=[0.5, 1, 2, 4, 8])
    ap.add_argument("--skip-unrated", action="store_true", help="as candidate_choice.py's: drop texts decoded again that are not the rated ones")
    args = ap.parse_args()
    rounds: list[tuple[str, list[list[cc.Candidate]], dict[str, list[str]]]] = []
    seen: set[str] = set()
    for path, rows, stories in cc.load_files(args.candidates, args.split, cc.read_jsonl(args.labels), args.skip_unrated):
        for i in (s[0]["id"] for s in stories):  # one story twice would count as two independent ones
            if i in seen:
                sys.exit(f"error: --candidates {path}: story {i} appears in two files (pool one model's candidates only)")
            seen.add(i)
        rounds.append((path, stories, {r["id"]: [a["text"] for a in r["alternatives"]] for r in rows if "alternatives" in r}))
    encoder = RewardModel.create(RewardConfig(head="frozen"), device="cpu")
    for _, stories, alternatives in rounds:
        add_consensus(stories, alternatives, encoder)
    pooled = [s for _, stories, _ in rounds for s in stories]
    files = [path for path, stories, _ in rounds for _ in stories]  # each pooled story's file
    base = [keep(s, 0.0) for s in pooled]
    print(f"{len(pooled)} stories; the default: {cc.summary(base)}")
    for w in args.weights:
        picks = [keep(s, w) for s in pooled]
        gain = [cc.rated(p) - cc.rated(b) for p, b in zip(picks, base)]
        per = " ".join(f"{path}: {st.mean(g for g, f in zip(gain, files) if f == path):+.2f}" for path, _, _ in rounds)
        print(f"+ {w:g} x consensus  {cc.summary(picks)}\n  minus the default's: {cc.paired(picks, base)}; sum by file: {per}")


if __name__ == "__main__":
    main()
