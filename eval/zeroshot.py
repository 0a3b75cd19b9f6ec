"""Zero-shot classification and retrieval, one table for several models.

    python eval/zeroshot.py VL-JEPA=checkpoints/openmoji_stage1/model \
        baseline=checkpoints/openmoji_stage1_linear/model [--json]

Each NAME=MODEL is a saved model directory or .ckpt. The no-predictor baseline is the same
recipe with ``predictor=linear`` (a linear map from the X-encoder's pooled
feature into the Y space, trained with the same InfoNCE, data and budget). Columns: zero-shot
top-1/top-5 (%) on the 293 held-out OpenMoji emoji (293-way, names never seen in training) and
on 500 scikit-learn digits (50 per class, 10-way, "zero" ... "nine"); retrieval R@1/5/10 (%) image->text and
text->image over the held-out emoji and their names. The held-out emoji are those of the split
each model was trained with (``data.seed``, recorded in its card as ``split_seed``; a model
trained with ``seed=1`` holds out other emoji than one trained with ``seed=0``), or
``--split-seed``'s for all.

A model trained on the emoji corpus (experiment=emoji_stage1) has seen other pictures of most of
those emoji, OpenMoji's among them: ``--exclude-corpus DIR`` keeps only the held-out emoji that
no training picture of that corpus shows, in any style (by code point; the recipe's split), for
every model in the table:

    python eval/zeroshot.py VL-JEPA=... linear=... --exclude-corpus $VLJEPA_CACHE/emoji_corpus/corpus
"""
from __future__ import annotations

import argparse
import json

import vljepa
from vljepa.metrics import corpus_codepoints, evaluate
from vljepa.profiling import Stopwatch

COLUMNS = [("openmoji", "top1"), ("openmoji", "top5"), ("digits", "top1"), ("digits", "top5"),
           *((("retrieval", f"{d}_R@{k}") for d in ("i2t", "t2i") for k in (1, 5, 10)))]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL pairs")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--split-seed", type=int, default=None,
                    help="OpenMoji split seed (default: each model card's, the training data.seed)")
    ap.add_argument("--exclude-corpus", default=None, metavar="DIR",
                    help="drop the held-out emoji that this emoji corpus's training split shows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    exclude = corpus_codepoints(args.exclude_corpus) if args.exclude_corpus else None
    results = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"expected NAME=MODEL, got {item!r}")
        with Stopwatch() as watch:
            results[name] = evaluate(vljepa.load(path), cache_dir=args.cache_dir,
                                     split_seed=args.split_seed, exclude_codepoints=exclude)
        results[name]["seconds"] = round(watch.seconds, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return results
    if exclude is not None:
        r = next(iter(results.values()))["openmoji"]
        print(f"held-out emoji: {r['n']} ({r['classes']} names) that no training picture of "
              f"{args.exclude_corpus} shows; {r['excluded']} left out")
    header = ["model"] + [f"{t.replace('openmoji', 'emoji')} {m}" for t, m in COLUMNS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in results.items():
        print("| " + " | ".join([name] + [f"{r[t][m]:.1f}" for t, m in COLUMNS]) + " |")
    return results


if __name__ == "__main__":
    main()
