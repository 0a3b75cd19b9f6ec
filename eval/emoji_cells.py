"""Zero-shot on names and styles never seen in training: the three cells of the emoji corpus.

    python eval/emoji_cells.py VL-JEPA=checkpoints/emoji_stage1/model \
        linear=checkpoints/emoji_stage1_linear/model [openmoji=checkpoints/openmoji_stage1/model]
        [--corpus DIR] [--out results/emoji_cells]

The test split of the corpus (vljepa.data.captions.corpus_splits, the defaults of
configs/data/emoji_corpus.yaml: Facebook's pictures and 15% of the names held out, seed 0) has
three cells: seen name / new artist (Facebook's pictures of names trained in other styles), new
name / seen artist (held-out names in the training artists' styles) and new name / new artist
(held-out names drawn by Facebook). In each cell every picture is classified among the cell's
own distinct names (top-1 / top-5 %, CLIP-style zero-shot: ``VLJEPA.text_classifier``), once
with the bare name ("plain") and once with a prompt ensemble (:data:`ENSEMBLE`, open_clip's
averaged template embeddings). Retrieval on the held-out names (new name / seen artist):
text -> image R@1 / R@5 (% of names with one of their pictures among the top K of the cell's
pictures) and image -> text R@1 / R@5 (= top-1 / top-5 plain). Writes results.json and
results.md under ``--out``. Models sharing an X-encoder (its fingerprint) share one pass of
it over the test pictures. With ``--feature-cache`` the visual tokens are read from the feature
cache that training filled (float16, so a score can differ by a picture from the float32 pass)
when every test picture is there, which skips the pass (about 7 minutes for Lite0 here).
"""
from __future__ import annotations

import argparse
import io
import json
from collections import defaultdict
from pathlib import Path

import torch

import vljepa
from vljepa.data.captions import CELLS, corpus_splits
from vljepa.data.emoji_corpus import read_images
from vljepa.hub import atomic_write
from vljepa.profiling import Stopwatch

ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE = ["{}", "an emoji of {}", "an icon of {}", "a drawing of {}", "a picture of {}",
            "a small image of {}"]


def test_pictures(corpus: Path, seed: int = 0) -> tuple[list[dict], list[bytes]]:
    """The test rows (with their ``cell``) and their PNG bytes, in manifest order."""
    rows = corpus_splits(corpus, seed=seed)["test"]
    return rows, read_images(corpus, rows)


def topk(scores: torch.Tensor, gold: torch.Tensor, k: int) -> float:
    """% of rows of ``scores`` (B, C) whose ``gold`` column is among their k best."""
    k = min(k, scores.shape[1])
    return 100.0 * (scores.topk(k, dim=1).indices == gold[:, None]).any(1).float().mean().item()


@torch.no_grad()
def visual_tokens(model, images: list[bytes], batch_size: int = 256) -> torch.Tensor:
    """The frozen X-encoder's visual tokens (N, T, Dx) float32 of the PNG bytes: the same for
    every model with the same ``x_encoder.fingerprint``, so computed once per encoder."""
    from PIL import Image

    return torch.cat([model.visual_tokens([Image.open(io.BytesIO(b)).convert("RGB")
                                           for b in images[i:i + batch_size]])
                      for i in range(0, len(images), batch_size)])


def cached_visual_tokens(model, images: list[bytes]) -> torch.Tensor | None:
    """The test pictures' visual tokens (N, T, Dx) float32 from the feature cache
    (``$VLJEPA_CACHE``) of the model's X-encoder, or None when any picture is not cached."""
    from vljepa.data.cache import FeatureCache, default_cache_dir
    from vljepa.inputs import image_key

    cache = FeatureCache(default_cache_dir(), model.x_encoder.fingerprint)
    keys = [image_key(b) for b in images]  # the caption source keys a picture by its PNG bytes
    try:
        return cache.load(keys).float()
    except KeyError:  # load names the first picture not cached
        return None


@torch.no_grad()
def evaluate(model, rows: list[dict], visual: torch.Tensor, batch_size: int = 256) -> dict:
    """Top-1 / top-5 per cell (plain and ensemble) and retrieval R@1 / R@5 on held-out names,
    from the test pictures' visual tokens (N, T, Dx) (:func:`visual_tokens`)."""
    z = torch.cat([model.embed_visual(visual[i:i + batch_size])
                   for i in range(0, len(visual), batch_size)])  # (N, D), unit norm
    # each name's classifier row is the same in every cell: embed every name once per template
    # set (the Y-encoder's pass over names x templates is nearly all of an evaluation's time)
    every = sorted({r["name"] for r in rows if r["cell"] in CELLS})
    row_of = {n: j for j, n in enumerate(every)}
    weights = {how: model.text_classifier(every, templates)  # (C_all, D), unit norm
               for how, templates in (("plain", None), ("ensemble", ENSEMBLE))}
    out: dict = {}
    for cell in CELLS:
        idx = [i for i, r in enumerate(rows) if r["cell"] == cell]
        names = sorted({rows[i]["name"] for i in idx})
        pos = {n: j for j, n in enumerate(names)}
        gold = torch.tensor([pos[rows[i]["name"]] for i in idx])
        res = {"pictures": len(idx), "names": len(names)}
        mine = torch.tensor([row_of[n] for n in names])
        for how in ("plain", "ensemble"):
            s = z[idx] @ weights[how][mine].T  # (n, C) cosines among this cell's names
            res[f"{how}_top1"], res[f"{how}_top5"] = topk(s, gold, 1), topk(s, gold, 5)
        if cell == CELLS[1]:  # retrieval over the held-out names in seen styles
            w = weights["plain"][mine]
            by_name = defaultdict(set)
            for j, i in enumerate(idx):
                by_name[rows[i]["name"]].add(j)
            best = (w @ z[idx].T).topk(5, dim=1).indices  # (C, 5) pictures per name
            for k in (1, 5):
                res[f"t2i_R@{k}"] = 100.0 * sum(bool(by_name[n] & set(best[c, :k].tolist()))
                                                for c, n in enumerate(names)) / len(names)
            res["i2t_R@1"], res["i2t_R@5"] = res["plain_top1"], res["plain_top5"]
        out[cell] = res
    return out


def table(results: dict) -> str:
    cols = [(c, m) for c in CELLS for m in ("plain_top1", "plain_top5", "ensemble_top1",
                                              "ensemble_top5")]
    head = ["model"] + [f"{c}: {m.replace('_', ' ')}" for c, m in cols] + \
        [f"held-out names {m}" for m in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        vals = [f"{r['cells'][c][m]:.1f}" for c, m in cols] + \
            [f"{r['cells'][CELLS[1]][m]:.1f}" for m in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5")]
        lines.append("| " + " | ".join([name] + vals) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL pairs (saved model dirs)")
    ap.add_argument("--corpus", default=None,
                    help="the corpus (default: <cache>/emoji_corpus/corpus)")
    ap.add_argument("--seed", type=int, default=0, help="the split seed (the training data.seed)")
    ap.add_argument("--out", default=str(ROOT / "results" / "emoji_cells"))
    ap.add_argument("--feature-cache", action="store_true",
                    help="read the visual tokens from the training feature cache when every "
                         "test picture is there (float16) instead of running the X-encoder")
    args = ap.parse_args(argv)
    from vljepa.data.cache import default_cache_dir

    corpus = Path(args.corpus or default_cache_dir() / "emoji_corpus" / "corpus")
    rows, images = test_pictures(corpus, args.seed)
    counts = {c: sum(r["cell"] == c for r in rows) for c in CELLS}
    results = {}
    tokens: dict[str, torch.Tensor] = {}  # X-encoder fingerprint -> visual tokens of the test
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"expected NAME=MODEL, got {item!r}")
        with Stopwatch() as watch:
            model = vljepa.load(path)
            key = model.x_encoder.fingerprint
            if key not in tokens:  # one encoder's tokens at a time
                cached = cached_visual_tokens(model, images) if args.feature_cache else None
                if args.feature_cache and cached is None:
                    print(f"{name}: not every test picture is in the feature cache; "
                          "running the X-encoder")
                tokens = {key: cached if cached is not None else visual_tokens(model, images)}
            results[name] = {"path": path, "cells": evaluate(model, rows, tokens[key])}
        results[name]["seconds"] = round(watch.seconds, 1)
    info = (f"{len(rows):,} test pictures of {corpus} (split seed {args.seed}): "
            + ", ".join(f"{c} {n:,}" for c, n in counts.items()))
    text = table(results)
    print(info + "\n\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", lambda p: Path(p).write_text(
        json.dumps({"info": info, "models": results}, indent=2) + "\n"))
    atomic_write(out / "results.md", lambda p: Path(p).write_text(
        f"# Zero-shot on the emoji corpus's three cells\n\n{info}\n\n{text}\n"))
    return results


if __name__ == "__main__":
    main()
