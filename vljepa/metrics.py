"""Zero-shot classification and image<->text retrieval harnesses (used by ``vljepa eval`` and
``eval/zeroshot.py``) and CIDEr. (The benchmarks' timer is :func:`vljepa.profiling.median_ms`.)

Each harness takes any model with ``embed_visual`` (visual tokens (B, N, Dx) -> (B, D)),
``embed_text`` and ``text_classifier`` — a VL-JEPA or its linear probe baseline
(``predictor=linear``) — and reads the frozen X-encoder's tokens from the feature cache,
so a second evaluation of the same images never runs the X-encoder.

Metrics follow CLIP's zero-shot protocol (Radford et al. 2021): top-k accuracy of
``argmax_c cos(image, classifier_c)`` with template-averaged class embeddings, and recall@k of
the first correct item among the k nearest, in both directions.
"""
from __future__ import annotations

from typing import Any, Collection, Sequence

import torch
from torchmetrics.functional.classification import multiclass_accuracy

from .data.cache import FeatureCache, default_cache_dir
from .data.captions import DIGIT_NAMES, digits, openmoji
from .inputs import image_key

# Templates averaged into each class embedding (as open_clip's zero-shot classifier does).
OPENMOJI_TEMPLATES = ["{}", "an emoji of {}"]
DIGIT_TEMPLATES = ["{}", "the number {}", "a handwritten digit {}"]
TASKS = ("openmoji", "digits", "retrieval")
DIGITS_PER_CLASS = 50  # a fixed balanced 500-image subset: the CPU X-encoder is the cost


def cached_visual_tokens(model, images: Sequence[Any], cache_dir=None, batch_size: int = 64,
                         progress: bool = False) -> torch.Tensor:
    """Images -> visual tokens (B, N, Dx) float32, through the feature cache."""
    cache = FeatureCache(cache_dir or default_cache_dir(), model.x_encoder.fingerprint)
    keys = [image_key(im) for im in images]
    cache.compute(dict(zip(keys, images)), model.x_encoder, model.x_encoder.transform,
                  batch_size, progress=progress)
    return cache.load(keys).float()


@torch.no_grad()
def zero_shot(model, visual: torch.Tensor, targets: torch.Tensor, classnames: Sequence[str],
              templates: Sequence[str] | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of zero-shot classification.

    Args:
        visual: (B, N, Dx) visual tokens; targets: (B,) int64 class indices into ``classnames``.
    """
    z = model.embed_visual(visual)  # (B, D)
    logits = z @ model.text_classifier(classnames, templates).T  # (B, C)
    C = len(classnames)
    out = {}
    for k in (1, 5):
        acc = multiclass_accuracy(logits, targets, num_classes=C, top_k=min(k, C), average="micro")
        out[f"top{k}"] = round(100 * float(acc), 2)
    return out


@torch.no_grad()
def retrieval(model, visual: torch.Tensor, captions: Sequence[str],
              ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k (%) for image->text and text->image over paired (visual[i], captions[i]).
    A retrieved item counts as correct when its caption equals the query's (duplicates allowed).
    """
    captions = list(captions)
    z = model.embed_visual(visual)  # (B, D)
    t = model.embed_text(captions)  # (B, D)
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions])
    positive = cid[:, None] == cid[None, :]  # (B, B)
    sims = z @ t.T
    out = {}
    for name, s in (("i2t", sims), ("t2i", sims.T)):
        order = s.argsort(dim=1, descending=True)
        hits = positive.gather(1, order)  # (B, B): is the r-th nearest correct?
        for k in ks:
            out[f"{name}_R@{k}"] = round(100 * float(hits[:, :k].any(1).float().mean()), 2)
    return out


def evaluate(model, tasks: Sequence[str] = TASKS, cache_dir=None, split: str = "test",
             limit: int | None = None, progress: bool = False,
             split_seed: int | None = None,
             exclude_codepoints: Collection[int] | None = None) -> dict[str, dict[str, float]]:
    """Run the named harnesses: "openmoji" (zero-shot over the held-out emoji's names),
    "digits" (zero-shot over "zero" ... "nine", the first 50 of each digit) and "retrieval" (held-out emoji <-> names).
    ``limit`` keeps the first n images of each set (a quick check, not the reported figures).
    ``split_seed`` chooses the OpenMoji split (training's ``data.seed``: another seed holds out
    other emoji); None: the one the model card records (``split_seed``), else 0.
    ``exclude_codepoints`` drops the held-out emoji with these code points (and their names)
    from "openmoji" and "retrieval": for a model trained on other pictures of some of them
    (the emoji corpus, :func:`corpus_codepoints`), which are not zero-shot for it.
    Returns {task: {metric: value}}, each with ``n`` (images) and ``classes``; the OpenMoji
    tasks also with ``split_seed``."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown eval task(s) {sorted(unknown)}; choose from {TASKS}")
    results: dict[str, dict[str, float]] = {}
    if {"openmoji", "retrieval"} & set(tasks):
        if split_seed is None:
            split_seed = int((getattr(model, "card", None) or {}).get("split_seed", 0))
        ds = openmoji(split, seed=split_seed)
        excluded = 0
        if exclude_codepoints:
            drop = set(exclude_codepoints)
            keep = [i for i, c in enumerate(ds["codepoint"]) if c not in drop]
            excluded = len(ds) - len(keep)
            ds = ds.select(keep)
            if not len(ds):
                raise ValueError("exclude_codepoints leaves no held-out emoji to evaluate")
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        captions = list(ds["caption"])
        visual = cached_visual_tokens(model, list(ds["image"]), cache_dir, progress=progress)
        if "openmoji" in tasks:
            names = sorted(set(captions))
            targets = torch.tensor([names.index(c) for c in captions])
            results["openmoji"] = {**zero_shot(model, visual, targets, names, OPENMOJI_TEMPLATES),
                                   "n": len(captions), "classes": len(names),
                                   "split_seed": split_seed,
                                   "excluded": excluded}
        if "retrieval" in tasks:
            results["retrieval"] = {**retrieval(model, visual, captions), "n": len(captions),
                                    "split_seed": split_seed}
    if "digits" in tasks:
        ds = digits(per_class=DIGITS_PER_CLASS)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        visual = cached_visual_tokens(model, list(ds["image"]), cache_dir, progress=progress)
        results["digits"] = {**zero_shot(model, visual, torch.tensor(ds["label"]), DIGIT_NAMES,
                                         DIGIT_TEMPLATES), "n": len(ds), "classes": 10}
    return results


def cider(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """CIDEr-D (Vedantam et al. 2015) of ``hyps`` against one reference each, with the COCO
    caption evaluation code (pycocoevalcap); texts are lower-cased, not PTB-tokenised. An empty
    hypothesis scores as the word "empty". Raises ImportError naming the extra to install."""
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError("CIDEr needs pycocoevalcap: pip install 'vljepa[compare]'") from e
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"need as many hypotheses as references (got {len(hyps)} / {len(refs)})")
    gts = {i: [r.lower()] for i, r in enumerate(refs)}
    res = {i: [h.lower() or "empty"] for i, h in enumerate(hyps)}
    return float(Cider().compute_score(gts, res)[0])


def corpus_codepoints(corpus_dir, **split_kwargs) -> set[int]:
    """The code points an emoji corpus's training split shows, in any artist's style: each
    training picture's first code point (so "waving hand: dark skin tone", 1F44B-1F3FF, counts
    for waving hand, 1F44B). ``split_kwargs`` as :func:`vljepa.data.captions.corpus_splits`
    (default: the recipe's, seed 0). For :func:`evaluate`'s ``exclude_codepoints``."""
    from .data.captions import corpus_splits

    train = corpus_splits(corpus_dir, **split_kwargs)["train"]
    return {int(r["codepoints"].split("-")[0], 16) for r in train if r["codepoints"]}
