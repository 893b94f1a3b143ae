"""Explanations (issue #16): faithfulness (ERASER comprehensiveness and sufficiency) and cost.

    python bench/explain_quality.py                       # trains its two models once (cached), then measures
    python bench/explain_quality.py --sst2-run RUN --imdb-run RUN --imdb-n 100

Models: MiniLM with today's defaults, trained on the SST-2 train split and on P1 (1,000 IMDB
reviews), cached in bench/work/explain/ (or any run bundles given with --sst2-run / --imdb-run).

Faithfulness (DeYoung et al., 2020, "ERASER"): for each text, the words ranked by each method;
delete the top k% (k = 1, 5, 10, 20, 50; at least one word) and measure the drop of the predicted
class's probability (comprehensiveness: higher is better), or keep only them (sufficiency: the
drop, lower is better); each is the mean over the five k. The methods, ranked on the same words:
- integrated gradients (sentilora's default, 20 steps) and gradient x input;
- occlusion: each word's own deletion effect (one forward pass per word; SST-2 only by default,
  --occlusion-imdb adds it for reviews);
- attention: the last layer's attention to each word, averaged over heads and reading positions;
- random: a seeded shuffle.
Words are deleted from the text itself (the remaining words re-joined by spaces; the reference
probability is that of all words re-joined the same way). Words the truncation cut are never ranked.

Cost: median and p95 seconds per explanation at the default setting (integrated gradients, 20
steps) for SST-2 test sentences of 15 to 25 words and IMDB test reviews of 400 to 600 words, one
at a time, on this machine; peak RSS of this process. Results: bench/results/explain-quality.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, WORK_DIR, PeakRSS, load_protocol, sst, utc_now, write_results  # noqa: E402

WORK = WORK_DIR / "explain"
BINS = (0.01, 0.05, 0.10, 0.20, 0.50)


def ensure_run(name: str, given: str | None) -> Path:
    """A trained bundle: the one given, else bench/work/explain/<name> (trained once with the defaults)."""
    if given:
        return Path(given)
    run = WORK / name
    if (run / "sentilora.json").is_file():
        return run
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"{name}-train.parquet"
    train = sst("sst2", "train") if name == "sst2" else load_protocol("p1")[0]
    train.to_parquet(data, index=False)
    names = "negative,positive" if name == "sst2" else "Negative,Positive"
    print(f"[explain] training the {name} model -> {run}", flush=True)
    subprocess.run([sys.executable, "-m", "sentilora", "train", "--out", str(run), "--model", "minilm", "--data", str(data),
                    "--data.label_names", names, "--quiet"], check=True)
    return run


def joined(words: list[Any], keep: set[int]) -> str:
    """The kept words (indices into `words`), in order, joined by spaces."""
    return " ".join(w.word for i, w in enumerate(words) if i in keep)


def attention_scores(clf: Any, e: Any, read: list[int]) -> np.ndarray:
    """The last layer's attention to each read word (summed over its tokens), mean over heads and positions."""
    import torch

    from sentilora.tokens import kept_positions, special_tokens

    tok, model = clf.tokenizer, clf.model
    enc = tok(e.text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False)
    prefix, suffix = special_tokens(tok)
    kept = kept_positions(len(enc["input_ids"]), clf.max_length - len(prefix) - len(suffix), clf.manifest.truncation)
    ids = torch.tensor([prefix + [enc["input_ids"][i] for i in kept] + suffix])
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")  # SDPA returns no attention weights
    try:
        with torch.no_grad():
            att = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True).attentions[-1]
    finally:
        model.set_attn_implementation(before)
    per_token = att[0].float().mean(0).mean(0)[len(prefix) : len(prefix) + len(kept)].numpy()
    by_pos = dict(zip(kept, per_token))
    word_of = enc.word_ids()
    out = np.zeros(len(e.words))
    for pos, score in by_pos.items():
        out[word_of[pos]] += score
    return out[read]


def occlusion_scores(clf: Any, e: Any, read: list[int], t: int, p_full: float) -> np.ndarray:
    texts = [joined(e.words, set(range(len(e.words))) - {i}) for i in read]
    return p_full - clf.predict_proba(texts)[:, t]


def faithfulness(clf: Any, texts: list[str], *, occlusion: bool, seed: int = 0) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    labels = clf.label_names
    comp: dict[str, list[float]] = {}
    suff: dict[str, list[float]] = {}
    for n, text in enumerate(texts):
        e = clf.explain(text)[0]
        g = clf.explain(text, method="grad_x_input")[0]
        read = [i for i, w in enumerate(e.words) if w.score is not None]
        if len(read) < 2:
            continue
        t = labels.index(e.target)
        everything = set(range(len(e.words)))
        p_full = float(clf.predict_proba([joined(e.words, everything)])[0, t])
        scores = {"integrated_gradients": np.array([e.words[i].score for i in read]),
                  "grad_x_input": np.array([g.words[i].score for i in read]),
                  "attention": attention_scores(clf, e, read),
                  "random": rng.permutation(len(read)).astype(float)}
        if occlusion:
            scores["occlusion"] = occlusion_scores(clf, e, read, t, p_full)
        ranked = {m: [read[i] for i in np.argsort(-s, kind="stable")] for m, s in scores.items()}  # most important first
        batch, where = [], []
        for m, order in ranked.items():
            for k in BINS:
                top = set(order[: max(1, round(k * len(read)))])
                batch += [joined(e.words, everything - top), joined(e.words, top | (everything - set(read)))]
                where.append(m)
        p = clf.predict_proba(batch)[:, t]
        for j, m in enumerate(where):
            comp.setdefault(m, []).append(p_full - p[2 * j])
            suff.setdefault(m, []).append(p_full - p[2 * j + 1])
        if (n + 1) % 50 == 0:
            print(f"[explain]   {n + 1}/{len(texts)}", flush=True)
    return {m: {"comprehensiveness": round(float(np.mean(comp[m])), 4), "sufficiency": round(float(np.mean(suff[m])), 4),
                "texts": len(comp[m]) // len(BINS)} for m in comp}


def cost(clf: Any, texts: list[str]) -> dict[str, float]:
    clf.explain(texts[0])  # warm-up
    seconds = []
    for text in texts:
        t0 = time.perf_counter()
        clf.explain(text)
        seconds.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(seconds), 3), "p95_s": round(float(np.percentile(seconds, 95)), 3),
            "n": len(seconds), "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1)}


def _part(name: str) -> str:
    return "cost" if "cost" in name else "faithfulness"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sst2-run"), ap.add_argument("--imdb-run")
    ap.add_argument("--sst2-n", type=int, default=500, help="SST-2 test sentences for faithfulness")
    ap.add_argument("--imdb-n", type=int, default=200, help="IMDB test reviews for faithfulness")
    ap.add_argument("--cost-n", type=int, default=30, help="texts per cost measurement")
    ap.add_argument("--occlusion-imdb", action="store_true", help="also rank IMDB words by occlusion (slow)")
    ap.add_argument("--part", choices=["both", "faithfulness", "cost"], default="both",
                    help="measure one part only; the other part's rows and targets are kept from the results file "
                         "(cost needs an idle machine, faithfulness does not)")
    args = ap.parse_args()
    started = utc_now()
    from sentilora.predict import Classifier

    rows, targets = [], []
    earlier = RESULTS_DIR / "explain-quality.json"
    if args.part != "both" and earlier.is_file():  # keep the part not measured now
        old = json.loads(earlier.read_text())
        other = "cost" if args.part == "faithfulness" else "faithfulness"
        rows += [r for r in old["rows"] if _part(r["system"]) == other]
        targets += [t for t in old["targets"] if _part(t["name"]) == other]
    sst_test = sst("sst2", "test")
    _, imdb_test, _ = load_protocol("p1")
    for name, run, texts, n, occl in (
        ("sst2", ensure_run("sst2", args.sst2_run), sst_test["text"].tolist(), args.sst2_n, True),
        ("imdb", ensure_run("imdb", args.imdb_run), imdb_test["text"].tolist(), args.imdb_n, args.occlusion_imdb),
    ):
        clf = Classifier.load(run)
        pick = np.random.default_rng(0).permutation(len(texts))
        if args.part != "cost":
            print(f"[explain] {name}: faithfulness on {n} texts", flush=True)
            found = faithfulness(clf, [texts[i] for i in pick[:n]], occlusion=occl)
            for method, f in found.items():
                rows.append({"system": f"{name}: faithfulness, {method}", "data": name, "method": method, **f, "run": str(run)})
            ig, att, rnd = (found[m]["comprehensiveness"] for m in ("integrated_gradients", "attention", "random"))
            targets.append({"name": f"{name}: faithfulness: integrated gradients beat random and attention on comprehensiveness",
                            "value": ig, "goal": f"> random ({rnd}) and > attention ({att})", "pass": ig > rnd and ig > att})
        if args.part != "faithfulness":
            lo, hi = (15, 25) if name == "sst2" else (400, 600)
            sized = [texts[i] for i in pick if lo <= len(texts[i].split()) <= hi][: args.cost_n]
            c = cost(clf, sized)
            rows.append({"system": f"{name}: cost of integrated gradients (20 steps)", "data": name, **c,
                         "peak_rss_mb": PeakRSS.now(), "precision": "bf16 weights" if clf.weights_cast else "fp32",
                         "run": str(run)})
            print(f"[explain] {name}: {json.dumps(rows[-1])}", flush=True)
            goal = 0.5 if name == "sst2" else 3.0
            what = "20-word sentence" if name == "sst2" else "500-word review"
            targets.append({"name": f"{name}: cost: median seconds per explanation ({what})",
                            "value": c["median_s"], "goal": f"< {goal}", "pass": c["median_s"] < goal})
    if args.part != "faithfulness":
        targets.append({"name": "cost: peak RSS of the bench process (MB)", "value": PeakRSS.now(), "goal": "< 2000",
                        "pass": PeakRSS.now() < 2000})
    path = write_results("explain", "quality", rows, targets, "python bench/explain_quality.py " + " ".join(sys.argv[1:]), started)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
