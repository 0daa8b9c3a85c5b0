"""How well does a best-of-N reranker choose among one story's candidates, against people's ratings
of every candidate? And how much better could it choose?

    secondthoughts realign --input stories.jsonl --output cands.jsonl --seed 0 --batch-size 17 --keep-candidates \
        --source-penalty 0 --length-penalty 0
    python benchmarks/candidate_choice.py --candidates cands.jsonl --labels benchmarks/coherence_labels.jsonl \
        --split cands13 [--penalties SOURCE LENGTH ...]

(several rounds pooled: every round's candidates files and ``--split cands14 cands15 cands16``.
Another model's candidates of the same stories, rated in their own split: ``--versus FILE ...
--versus-split SPLIT ...`` compares the two models' picks under each weighting, paired by story.)
``--skip-unrated``: candidates decoded again on another machine may differ in a few sampled texts;
drop those (and stories that keep under 80% of their texts) rather than stop.
``--write-best FILE [--floor F]`` writes, of each story's candidates whose mean ratings are both at
least F, the best by the ratings, as a corrections file for ``secondthoughts learn`` (context, source,
target; with ``--versus``, the best of both models' candidates of a story, rated in one round): how the
shipped default learned from its readers' picks (docs/coherence.md).
``--write-pairs FILE [--good G --bad B --pairs-per-story K]`` writes preference pairs for ``secondthoughts
learn --pairs`` (context, source, chosen, rejected): per story, the candidates whose lower mean rating
is >= G (best first by the ratings) against those whose lower mean rating is <= B (shuffled, seed 0),
zipped with the shorter list cycled, at most K a story.

``--candidates``: ``realign --keep-candidates`` rows (``id``, ``context``, ``source`` and
``alternatives``: every distinct candidate text with its validity and its best-of score: the
rewrite likelihood less the penalties in ``score_penalties``, which are added back here; rows
written before realign recorded them say nothing, and ``--scored-with`` gives them: rounds 13-26
decoded with ``--source-penalty 0 --length-penalty 0``, the default decoding with 1 and 0.5).
``--labels``: rows ``{"id", "system": "alt<j>", "split", "align", "coherence", "text_sha1"}``
rating the j-th alternative of a story (the texts are model outputs on Moral Stories, which the
project does not commit; ``text_sha1`` checks that the candidates are the ones rated). Candidates
are those a reranker may choose: valid and changed.

Prints, for every story with rated candidates: the mean rating of the candidate each reranker
keeps (Align, Coherence, share at coherence >= 5, their sum), the best candidate by the ratings
(what a perfect reranker would keep) and a random one, each reranker's pick against the
likelihood's (paired, 95% bootstrap intervals over stories), and a linear reranker over the
features below fitted on the other stories (leave one story out: its numbers are out of sample).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics as st
import sys
from collections import Counter
from collections.abc import Callable

import numpy as np

from secondthoughts.coherence import log_words, source_similarity
from secondthoughts.decoding import LENGTH_PENALTY, SOURCE_PENALTY

Candidate = dict  # text, valid, score (the likelihood, penalties added back), kept, align, coh, and the features below

FEATURES: dict[str, Callable[[Candidate], float]] = {
    "likelihood": lambda c: c["score"],
    "similarity to the source": lambda c: c["src_sim"],
    "log words": lambda c: log_words(c["text"]),
}


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def rated_stories(rows: list[dict], labels: list[dict], splits: list[str], scored_with: tuple[float, float] = (0.0, 0.0)) -> list[list[Candidate]]:
    """Each story's rated, valid, changed candidates with their mean ratings and features (labels
    of any of ``splits``: story ids differ between rounds); ``score`` is the likelihood: the row's
    ``score_penalties`` (else ``scored_with``: source, length) added back to the best-of score;
    ``kept``: the text realign kept (the row's ``text``)."""
    lab = {(r["id"], r["system"]): r for r in labels if r["split"] in splits}
    stories, seen = [], set()
    for line, row in enumerate(rows, 1):
        if row["id"] in seen:
            raise ValueError(f"line {line}: story {row['id']} appears twice")
        seen.add(row["id"])
        if "alternatives" not in row:
            raise ValueError(f"line {line}: field 'alternatives' missing (realign --keep-candidates writes it)")
        pen = row.get("score_penalties")
        source_pen, length_pen = (pen["source"], pen["length"]) if pen else scored_with
        cands = []
        for j, alt in enumerate(row["alternatives"]):
            r = lab.get((row["id"], f"alt{j}"))
            if r is None or not alt["valid"] or alt["text"] == row["source"]:
                continue
            if r["text_sha1"] != sha1(alt["text"]):
                raise ValueError(f"line {line}: alternative {j} of story {row['id']} is not the text rated (text_sha1 differs)")
            sim = source_similarity(alt["text"], row["source"])
            story = {"id": row["id"], "context": row["context"], "source": row["source"]}
            lik = alt["score"] + source_pen * sim + length_pen * log_words(alt["text"])
            cands.append({**alt, **story, "score": lik, "kept": alt["text"] == row.get("text"), "align": st.mean(r["align"]), "coh": st.mean(r["coherence"]), "src_sim": sim})
        if cands:
            stories.append(cands)
    return stories


SHARE = 0.8  # --skip-unrated keeps a story only if this share of its texts is the rated ones


def keep_rated(rows: list[dict], labels: list[dict], splits: list[str], share: float = SHARE) -> tuple[list[dict], list[dict], int, int]:
    """Candidates decoded again elsewhere can differ from the rated ones in a few sampled texts (another
    CPU's float rounding flips a sample): keep each story's alternatives whose text is one rated for it
    (matched by ``text_sha1``, not by index), numbered and labelled anew; a story keeping under ``share``
    of its texts (of those decoded or those rated, whichever are more) is dropped whole: its samples
    are not the ones read. Stories with no rated text are left as they are (``rated_stories`` skips
    them). Returns the rows, their labels, and how many alternatives and stories were dropped."""
    by_text = {(r["id"], r["text_sha1"]): r for r in labels if r["split"] in splits and r["system"].startswith("alt")}
    rated_per_story = Counter(i for i, _ in by_text)
    kept_rows, kept_labels, alts_dropped, stories_dropped = [], [], 0, 0
    for row in rows:
        if "alternatives" not in row or not rated_per_story[row["id"]]:  # left for rated_stories to report or skip
            kept_rows.append(row)
            continue
        alts = row["alternatives"]
        keep = [a for a in alts if (row["id"], sha1(a["text"])) in by_text]
        if len(keep) < share * max(len(alts), rated_per_story[row["id"]]):
            keep, stories_dropped = [], stories_dropped + 1
        alts_dropped += len(alts) - len(keep)
        kept_rows.append({**row, "alternatives": keep})
        kept_labels += [{**by_text[(row["id"], sha1(a["text"]))], "system": f"alt{j}"} for j, a in enumerate(keep)]
    return kept_rows, kept_labels, alts_dropped, stories_dropped


def load_rated(flag: str, rows: list[dict], labels: list[dict], splits: list[str], skip_unrated: bool, scored_with: tuple[float, float] = (0.0, 0.0)) -> list[list[Candidate]]:
    """``rated_stories`` for a command line: with ``skip_unrated`` through ``keep_rated`` (saying what it
    dropped); a bad row, or no story with rated candidates, stops with one line naming ``flag``."""
    if skip_unrated:
        rows, labels, alts, n = keep_rated(rows, labels, splits)
        print(f"{flag}: dropped {alts} alternatives that are not a rated text, {n} stories with under {SHARE:.0%} rated")
    try:
        stories = rated_stories(rows, labels, splits, scored_with)
    except ValueError as e:
        sys.exit(f"error: {flag} {e}")
    if not stories:
        sys.exit(f"error: {flag}: no story with rated candidates (are {' '.join(splits)} the labels' splits of those files?)")
    return stories


def load_files(files: list[str], splits: list[str], labels: list[dict], skip_unrated: bool) -> list[tuple[str, list[dict], list[list[Candidate]]]]:
    """Candidates files rated in a split each (one round a file), read apart: each file's path, rows and
    ``load_rated`` stories. A count of splits other than of files stops with one line."""
    if len(splits) != len(files):
        sys.exit("error: give one --split per --candidates file")
    out = []
    for path, split in zip(files, splits):
        rows = read_jsonl(path)
        out.append((path, rows, load_rated(f"--candidates {path}", rows, labels, [split], skip_unrated)))
    return out


def rated(c: Candidate) -> float:
    """A candidate's quality by the ratings: mean Align + mean Coherence."""
    return c["align"] + c["coh"]


def preference_pairs(stories: list[list[Candidate]], good: float, bad: float, per_story: int, seed: int = 0) -> list[dict]:
    """Per story, its good candidates (lower mean rating >= ``good``, best first) against its bad ones
    (lower mean rating <= ``bad``, shuffled), zipped with the shorter list cycled, at most ``per_story``."""
    rng, out = random.Random(seed), []
    for s in stories:
        goods = sorted((c for c in s if min(c["align"], c["coh"]) >= good), key=rated, reverse=True)
        bads = [c for c in s if min(c["align"], c["coh"]) <= bad]
        rng.shuffle(bads)
        if not goods or not bads:
            continue
        for k in range(min(per_story, max(len(goods), len(bads)))):
            g, b = goods[k % len(goods)], bads[k % len(bads)]
            out.append({"id": g["id"], "context": g["context"], "source": g["source"], "chosen": g["text"], "rejected": b["text"]})
    return out


def features(cands: list[Candidate], names: list[str]) -> np.ndarray:
    """Each feature centred on its story's mean: a reranker only compares within a story."""
    m = np.array([[FEATURES[n](c) for n in names] for c in cands])
    return m - m.mean(0)


def fit_pairwise(stories: list[list[Candidate]], names: list[str], l2: float = 1.0, margin: float = 1.5) -> np.ndarray:
    """Logistic regression on within-story pairs rated at least ``margin`` apart (Align + Coherence):
    P(a above b) = sigmoid(w . (x_a - x_b)). Newton's method; no intercept, the pairs are symmetric."""
    diffs, ys = [], []
    for cands in stories:
        x, q = features(cands, names), [rated(c) for c in cands]
        for i in range(len(cands)):
            for j in range(len(cands)):
                if q[i] - q[j] >= margin:
                    diffs += [x[i] - x[j], x[j] - x[i]]
                    ys += [1.0, 0.0]
    a, y, w = np.array(diffs).reshape(-1, len(names)), np.array(ys), np.zeros(len(names))  # no pairs: zero weights
    for _ in range(50):
        p = 1 / (1 + np.exp(-a @ w))
        hess = (a * (p * (1 - p))[:, None]).T @ a + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, a.T @ (p - y) + l2 * w)
    return w


def interval(values: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the mean, resampling the values (a story's pick each; for the
    mean of all candidates, candidates)."""
    rng = random.Random(seed)
    means = sorted(st.mean(rng.choice(values) for _ in values) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n)]


def summary(picks: list[Candidate]) -> str:
    a, c = [p["align"] for p in picks], [p["coh"] for p in picks]
    ok = [float(x >= 5) for x in c]
    cis = ", ".join(f"{name} [{lo:.2f}, {hi:.2f}]" for name, (lo, hi) in (("align", interval(a)), ("coherence", interval(c)), (">= 5", interval(ok))))
    return f"Align {st.mean(a):.2f}  Coherence {st.mean(c):.2f}  coherence >= 5 {st.mean(ok):4.0%}  sum {st.mean(a) + st.mean(c):.2f}  ({cis})"


def paired(picks: list[Candidate], base: list[Candidate], seed: int = 0, n: int = 2000) -> str:
    out = []
    for name, f in (("sum", rated), ("align", lambda p: p["align"]), ("coherence", lambda p: p["coh"])):
        d = [f(a) - f(b) for a, b in zip(picks, base)]
        lo, hi = interval(d, seed, n)
        out.append(f"{name} {st.mean(d):+.2f} [{lo:+.2f}, {hi:+.2f}]")
    return ", ".join(out)


def best_of_scores(cands: list[Candidate], source: float, length: float) -> np.ndarray:
    """The best-of score of a story's candidates, centred: the features weighted 1, -source, -length."""
    return features(cands, list(FEATURES)) @ np.array([1.0, -source, -length])


def pick(stories: list[list[Candidate]], source: float, length: float) -> list[Candidate]:
    """Each story's candidate under the best-of score (argmax keeps the first of ties, as ``choose_best`` does)."""
    return [s[int(np.argmax(best_of_scores(s, source, length)))] for s in stories]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", required=True, nargs="+", help="realign --keep-candidates output JSONL")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--split", required=True, nargs="+", help="the labels' split(s) that rated these candidates (several: pooled)")
    ap.add_argument("--scored-with", nargs=2, type=float, default=(0.0, 0.0), metavar=("SOURCE", "LENGTH"),
                    help="the penalties the scores of rows without score_penalties already include (realign's --source-penalty "
                         "and --length-penalty when they were decoded; default 0 0, as rounds 13-26 decoded them)")
    ap.add_argument("--penalties", nargs=2, type=float, action="append", metavar=("SOURCE", "LENGTH"),
                    help="the likelihood minus SOURCE x similarity to the source minus LENGTH x log words (realign's "
                         "--source-penalty and --length-penalty), e.g. weights fitted on another round; repeatable "
                         "(default: the commands' own)")
    ap.add_argument("--versus", nargs="+", default=[], metavar="FILE", help="another model's candidates of the same stories")
    ap.add_argument("--versus-split", nargs="+", default=[], metavar="SPLIT", help="the labels' split(s) that rated --versus")
    ap.add_argument("--write-best", metavar="FILE", help="write, of each story's candidates rated >= --floor on both scales (with --versus, both models'), the best by the ratings as a corrections file")
    ap.add_argument("--floor", type=float, default=6.0, help="--write-best considers candidates whose mean Align and Coherence are both >= this")
    ap.add_argument("--write-pairs", metavar="FILE", help="write preference pairs (context, source, chosen, rejected) of each story's good and bad candidates")
    ap.add_argument("--good", type=float, default=5.5, help="--write-pairs: chosen candidates have both mean ratings >= this")
    ap.add_argument("--bad", type=float, default=3.5, help="--write-pairs: rejected candidates have a mean rating <= this")
    ap.add_argument("--pairs-per-story", type=int, default=4, help="--write-pairs: at most this many pairs a story")
    ap.add_argument("--skip-unrated", action="store_true",
                    help="candidates decoded again on another machine: drop alternatives that are not a rated text of their story "
                         "(and stories that keep under 80%% of theirs) instead of stopping")
    args = ap.parse_args()
    if args.write_pairs and (args.good <= args.bad or args.pairs_per_story < 1):
        sys.exit("error: --write-pairs needs --good above --bad and --pairs-per-story >= 1")
    if bool(args.versus) != bool(args.versus_split):
        sys.exit("error: --versus and --versus-split go together")
    args.penalties = args.penalties or [(SOURCE_PENALTY, LENGTH_PENALTY)]
    labels = read_jsonl(args.labels)

    def read_rated(flag: str, files: list[str], splits: list[str]) -> list[list[Candidate]]:
        rows = [r for path in files for r in read_jsonl(path)]
        return load_rated(flag, rows, labels, splits, args.skip_unrated, tuple(args.scored_with)) if files else []

    stories, other = read_rated("--candidates", args.candidates, args.split), read_rated("--versus", args.versus, args.versus_split)
    if args.versus and not {c["id"] for s in other for c in s} & {c["id"] for s in stories for c in s}:
        sys.exit("error: --versus: no story with rated candidates in both (are --versus-split the labels' splits of those files?)")
    print(f"{len(stories)} stories, {sum(map(len, stories))} rated candidates (valid, changed)")
    best = [max(s, key=rated) for s in stories]  # max keeps the first of ties
    if args.write_best:  # of a story's candidates rated >= floor on both scales (both models' with --versus), the best by the ratings
        pooled: dict[str, list[Candidate]] = {}
        for c in (c for s in stories + other for c in s):
            pooled.setdefault(c["id"], []).append(c)
        good = [[c for c in s if min(c["align"], c["coh"]) >= args.floor] for s in pooled.values()]
        kept = [max(g, key=rated) for g in good if g]
        with open(args.write_best, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": b["id"], "context": b["context"], "source": b["source"], "target": b["text"]}) + "\n" for b in kept)
        print(f"wrote {len(kept)} corrections to {args.write_best} (a story's best candidate of those rated >= {args.floor:g} on both scales)")
    if args.write_pairs:
        pairs = preference_pairs(stories, args.good, args.bad, args.pairs_per_story)
        with open(args.write_pairs, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p) + "\n" for p in pairs)
        print(f"wrote {len(pairs)} pairs of {len({p['id'] for p in pairs})} stories to {args.write_pairs} "
              f"(chosen rated >= {args.good:g} on both scales, rejected <= {args.bad:g} on one)")
    lik = [max(s, key=lambda c: c["score"]) for s in stories]  # max keeps the first: choose_best's tie rule
    print(f"{'best by the ratings (a perfect reranker)':44s} {summary(best)}")
    print(f"{'a random candidate (mean of all)':44s} {summary([c for s in stories for c in s])}")
    print(f"{'the rewrite likelihood alone':44s} {summary(lik)}")
    kept = [c for s in stories for c in s if c["kept"]]
    every_kept = len(kept) == len(stories)  # every story's kept text is a rated candidate
    if every_kept:
        print(f"{'the text realign kept (its text field)':44s} {summary(kept)}\n{'':44s} minus the likelihood's: {paired(kept, lik)}")
    names = list(FEATURES)
    for a, b in args.penalties:
        picks = pick(stories, a, b)
        print(f"likelihood - {a:g} x similarity - {b:g} x log words\n{'':44s} {summary(picks)}\n{'':44s} minus the likelihood's: {paired(picks, lik)}")
        if every_kept:  # what the heads (or whatever else realign chose with) added to this score
            print(f"{'':44s} the kept text minus this weighting's: {paired(kept, picks)}")
        if other:  # the same weighting over the other model's candidates, on the stories both have
            theirs = {p["id"]: p for p in pick(other, a, b)}
            both = [(theirs[p["id"]], p) for p in picks if p["id"] in theirs]
            if len(both) < max(len(picks), len(theirs)):  # a story without a rated candidate on one side: compare like with like
                print(f"{'this model, the stories both have':44s} {summary([p for _, p in both])}")
            print(f"{'--versus, the same weighting':44s} {summary([t for t, _ in both])} ({len(both)} stories)\n"
                  f"{'':44s} minus this model's: {paired([t for t, _ in both], [p for _, p in both])}")
    for k in range(2, len(names) + 1) if len(stories) > 1 else ():  # leaving a story out needs another to fit on
        use = names[:k]
        loo = [stories[i][int(np.argmax(features(stories[i], use) @ fit_pairwise(stories[:i] + stories[i + 1 :], use)))] for i in range(len(stories))]
        w = fit_pairwise(stories, use)
        terms = " ".join(f"{'-' if x < 0 else '+'} {abs(x):.2f} x {n}" for x, n in zip(w[1:] / w[0], use[1:]))
        print(f"fitted (weights: all stories; picks: each story left out of its fit): likelihood {terms}\n{'':44s} {summary(loo)}\n{'':44s} minus the likelihood's: {paired(loo, lik)}")


if __name__ == "__main__":
    main()
