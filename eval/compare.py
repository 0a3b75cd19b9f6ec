"""VL-JEPA against a token-generating VLM baseline, same encoder, data and budget (paper §4.5).

    python eval/compare.py                                  # budgets 5k, 20k, 80k samples seen
    python eval/compare.py --budgets 5000 20000 80000 320000 --out results/compare
    python eval/compare.py --replot                         # table + plots from results.json
    python eval/compare.py --models VL-JEPA baseline baseline-MiniLM   # + the pretrained start

Both models train on the stage-2 mix (``data=openmoji_vqa``: easy-VQA questions + OpenMoji
captions, split by emoji) with the same frozen EfficientNet-Lite0 tokens (the OpenMoji recipes'
224-px last stage, 7x7x320, pooled to a 4x4 grid for both, ``--visual-pool``; VL-JEPA's default
64-px stride-4 tokens are overridden so both read the same cached features), the same query
tokens, seed, optimiser and schedule, for ``budget`` samples (``max_steps = budget / batch``).
VL-JEPA's default predictor reads the question through the frozen all-MiniLM-L6-v2;
``baseline-MiniLM`` gives the baseline the same pretrained start: its decoder is that MiniLM's
embeddings and six layers under a prefix-LM (causal) mask, fine-tuned at lr x
``pretrained_lr_mult`` (``model.config.pretrained_decoder=true``). Then, on held-out data:
  - easy-VQA accuracy over the 13 answers (a fixed random subset of ``--vqa-test`` questions):
    VL-JEPA by nearest answer embedding, the baseline by lowest perplexity;
  - zero-shot classification of the held-out emoji over their names (top-1 / top-5);
  - captioning of the held-out emoji, CIDEr (pycocoevalcap) against the emoji name: the baseline
    generates greedily; VL-JEPA has no decoder here and returns the nearest caption of the
    *training* emoji names (so a held-out name can never be matched exactly);
  - trainable parameters, and per-query CPU latency at batch 1 and 32 of answering among
    C candidates (VL-JEPA: predictor + nearest neighbour over cached candidate embeddings;
    baseline: scoring all C candidates) for C = 13 and C = #held-out emoji, and of captioning.
Writes results.json, results.md, accuracy_vs_samples.png and latency_vs_candidates.png.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from vljepa.metrics import cider
from vljepa.profiling import Stopwatch, median_ms

if __package__:  # loaded as eval.compare (python -m eval.compare, pytest)
    from .common import build, compose_train
else:  # python eval/compare.py: Python searches the script's directory first
    from common import build, compose_train

ROOT = Path(__file__).resolve().parents[1]
# The X-encoder both models read (the baseline's default; VL-JEPA's "lite" default is the 64-px
# stride-4 stage, which the OpenMoji recipes also replace: emoji need the last stage).
SAME_X_ENCODER = ["model.config.x_encoder.image_size=null", "model.config.x_encoder.feature_index=-1"]
MODELS = {"VL-JEPA": SAME_X_ENCODER,
          "baseline": ["model=vlm_baseline", *SAME_X_ENCODER],
          "baseline-MiniLM": ["model=vlm_baseline", *SAME_X_ENCODER,
                              "model.config.pretrained_decoder=true"]}


def compose(kind: str, visual_pool: int, seed: int):
    """The training config of model ``kind`` (a key of MODELS) on the stage-2 mix."""
    pool = ("model.config.visual_pool" if kind.startswith("baseline")
            else "model.config.predictor.visual_pool")
    return compose_train(MODELS[kind] + ["data=openmoji_vqa", f"{pool}={visual_pool}",
                                         f"seed={seed}", "run_name=compare"])


def train_one(kind: str, budget: int, args) -> tuple:
    """Fit one model for ``budget`` samples; returns (model, datamodule, train seconds)."""
    import lightning as L

    cfg = compose(kind, args.visual_pool, args.seed)
    L.seed_everything(args.seed, workers=True)
    model, module, data = build(cfg)
    steps = max(1, budget // cfg.data.batch_size)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1,
                        precision=cfg.trainer.precision, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with Stopwatch() as fit:
        trainer.fit(module, datamodule=data)
    return model.eval(), data, fit.seconds


# ---- the two ways of answering ----

@torch.no_grad()
def scores(model, visual, query_ids, query_mask, candidates: list[str], templates=None):
    """(B, C): cosine to candidate embeddings (VL-JEPA) or mean token log-prob (baseline)."""
    if hasattr(model, "candidate_scores"):
        return model.candidate_scores(visual, query_ids, query_mask, candidates)
    pred = F.normalize(model(visual, query_ids, query_mask), dim=-1)
    if templates:
        return pred @ model.text_classifier(candidates, templates).T
    return pred @ F.normalize(model.target_embed(candidates), dim=-1).T


@torch.no_grad()
def caption(model, visual, bank: list[str]) -> list[str]:
    if hasattr(model, "generate"):  # the baseline learnt both templates: keep the name
        return [c.removeprefix("an emoji of ").strip()
                for c in model.generate(visual, max_new_tokens=16)]
    s = scores(model, visual, None, None, bank)
    return [bank[i] for i in s.argmax(1).tolist()]


def held_out(data, vqa_test: int, seed: int, emoji_test: int | None = None) -> dict:
    """The test data both models are scored on, as tensors: ``vqa_test`` random easy-VQA test
    questions; the first ``emoji_test`` held-out emoji (None: all), classified among all the
    held-out names."""
    v = data.vqa.test_set
    rows = sorted(random.Random(seed).sample(range(len(v)), min(vqa_test, len(v))))
    vqa = v.__getitems__(rows)
    ds, _, keys = data.load_split("test")
    names = list(ds["caption"])
    train_names = sorted(set(data.load_split("train")[0]["caption"]))
    classes = sorted(set(names))
    if emoji_test is not None:
        names, keys = names[:emoji_test], keys[:emoji_test]
    return {"vqa": vqa, "vqa_vocab": list(data.vqa.candidates), "emoji_visual": data.cache.load(keys),
            "emoji_names": names, "classes": classes, "train_names": train_names,
            "emoji_targets": torch.tensor([classes.index(n) for n in names])}


def evaluate(model, h: dict) -> dict:
    q = h["vqa"]
    pred = scores(model, q["visual"], q["query_ids"], q["query_mask"], h["vqa_vocab"]).argmax(1)
    out = {"vqa_acc": round(100 * float((pred == q["answer_ids"]).float().mean()), 2)}
    s = scores(model, h["emoji_visual"], None, None, h["classes"], ["{}", "an emoji of {}"])
    top5 = s.topk(min(5, s.shape[1]), dim=1).indices
    t = h["emoji_targets"].unsqueeze(1)
    out["emoji_top1"] = round(100 * float((top5[:, :1] == t).any(1).float().mean()), 2)
    out["emoji_top5"] = round(100 * float((top5 == t).any(1).float().mean()), 2)
    hyps = caption(model, h["emoji_visual"], h["train_names"])
    out["caption_cider"] = round(cider(h["emoji_names"], hyps), 3)
    out["caption_exact"] = round(100 * sum(a.lower() == b.lower() for a, b in
                                           zip(hyps, h["emoji_names"])) / len(hyps), 2)
    out["caption_examples"] = list(zip(h["emoji_names"][:5], hyps[:5]))
    out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out


@torch.no_grad()
def latency(model, h: dict, iters: int) -> dict:
    """Per-call wall-clock ms, encoders excluded (visual tokens are cached, as in serving)."""
    out = {}
    q = h["vqa"]
    for C, cands, query in ((len(h["vqa_vocab"]), h["vqa_vocab"], True),
                            (len(h["classes"]), h["classes"], False)):
        if not hasattr(model, "candidate_scores"):  # candidate embeddings are computed once
            table = F.normalize(model.target_embed(cands), dim=-1)
        for B in (1, 32):
            v = q["visual"][:B] if query else h["emoji_visual"][:B]
            ids, mask = (q["query_ids"][:B], q["query_mask"][:B]) if query else (None, None)
            if hasattr(model, "candidate_scores"):
                fn = lambda: model.candidate_scores(v, ids, mask, cands).argmax(1)  # noqa: E731
            else:
                fn = lambda: (F.normalize(model(v, ids, mask), dim=-1) @ table.T).argmax(1)  # noqa: E731
            out[f"answer_C{C}_b{B}_ms"] = median_ms(fn, iters, max_seconds=20)
    for B in (1, 32):
        v = h["emoji_visual"][:B]
        if not hasattr(model, "generate"):
            bank = F.normalize(model.target_embed(h["train_names"]), dim=-1)
            fn = lambda: (F.normalize(model(v), dim=-1) @ bank.T).argmax(1)  # noqa: E731
        else:
            fn = lambda: model.generate(v, max_new_tokens=16)  # noqa: E731
        out[f"caption_b{B}_ms"] = median_ms(fn, max(3, iters // 4), max_seconds=20)
    return out


# ---- report ----

def samples_to_reach(budgets, accs, target) -> float | None:
    """Smallest budget where the accuracy curve reaches ``target`` (log-linear interpolation)."""
    import math
    for i, (b, a) in enumerate(zip(budgets, accs)):
        if a >= target:
            if i == 0:
                return float(b)
            b0, a0 = budgets[i - 1], accs[i - 1]
            f = (target - a0) / (a - a0)
            return float(math.exp(math.log(b0) + f * (math.log(b) - math.log(b0))))
    return None


def report(res: dict, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = res["budgets"]
    lines = ["# VL-JEPA vs token-generating VLM baseline", "",
             f"Same frozen X-encoder (EfficientNet-Lite0, {res['visual_tokens']} pooled visual "
             "tokens), data (easy-VQA + OpenMoji captions), seed and schedule. "
             f"easy-VQA: {res['vqa_test']} test questions; emoji: {res['n_emoji']} held-out emoji.",
             "", "| samples seen | model | easy-VQA acc | emoji top-1 | emoji top-5 | caption CIDEr"
             " | caption exact | trainable params | train s |", "|---|---|---|---|---|---|---|---|---|"]
    kinds = list(res["runs"])
    for b in budgets:
        for kind in kinds:
            r = res["runs"][kind][str(b)]
            lines.append(f"| {b:,} | {kind} | {r['vqa_acc']:.2f}% | {r['emoji_top1']:.2f}% | "
                         f"{r['emoji_top5']:.2f}% | {r['caption_cider']:.3f} | "
                         f"{r['caption_exact']:.1f}% | {r['trainable_params']:,} | "
                         f"{r['train_seconds']:.0f} |")
    j = [res["runs"]["VL-JEPA"][str(b)] for b in budgets]
    lines.append("")
    for name in [k for k in kinds if k != "VL-JEPA"]:
        v = [res["runs"][name][str(b)] for b in budgets]
        best = max(r["vqa_acc"] for r in v)
        need = samples_to_reach(budgets, [r["vqa_acc"] for r in j], best)
        at = budgets[[r["vqa_acc"] for r in v].index(best)]
        ratio = f"{at / need:.1f}x fewer samples" if need else "not reached"
        lines += [f"{name}'s best easy-VQA accuracy: {best:.2f}% at {at:,} samples; VL-JEPA "
                  f"reaches it at {need:,.0f} samples ({ratio})." if need else
                  f"{name}'s best easy-VQA accuracy {best:.2f}% is not reached by VL-JEPA.",
                  f"Trainable parameters: VL-JEPA {j[-1]['trainable_params']:,} = "
                  f"{j[-1]['trainable_params'] / v[-1]['trainable_params']:.2f}x {name}'s "
                  f"{v[-1]['trainable_params']:,}.", ""]
    lat = res["latency"]
    others = [k for k in kinds if k != "VL-JEPA" and k in lat]
    if "VL-JEPA" not in lat or not others:  # --no-latency
        lat, others = {"VL-JEPA": {}}, []
    else:
        lines += ["| latency (ms per call, median) | VL-JEPA | " + " | ".join(
                      f"{k} | {k} / VL-JEPA" for k in others) + " |",
                  "|---|---|" + "---|---|" * len(others)]
    for key in lat["VL-JEPA"]:
        a = lat["VL-JEPA"][key]
        lines.append(f"| {key} | {a:.2f} | " + " | ".join(
            f"{lat[k][key]:.2f} | {lat[k][key] / a:.1f}x" for k in others) + " |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, name in zip(axes, ("vqa_acc", "emoji_top5", "caption_cider"),
                             ("easy-VQA accuracy (%)", "zero-shot emoji top-5 (%)", "caption CIDEr")):
        for kind in kinds:
            ax.plot(budgets, [res["runs"][kind][str(b)][key] for b in budgets], "o-", label=kind)
        ax.set_xscale("log"), ax.set_xlabel("training samples seen"), ax.set_title(name)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_samples.png", dpi=110)
    if not others:
        return text
    fig, ax = plt.subplots(figsize=(5, 3.6))
    Cs = sorted({int(k.split("_C")[1].split("_")[0]) for k in lat["VL-JEPA"] if "_C" in k})
    for kind in [k for k in kinds if k in lat]:
        for B in (1, 32):
            ax.plot(Cs, [lat[kind][f"answer_C{C}_b{B}_ms"] for C in Cs], "o-", label=f"{kind} b{B}")
    ax.set_xlabel("candidates C"), ax.set_ylabel("ms per call"), ax.set_yscale("log")
    ax.legend(), fig.tight_layout()
    fig.savefig(out / "latency_vs_candidates.png", dpi=110)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[5000, 20000, 80000])
    ap.add_argument("--models", nargs="+", default=["VL-JEPA", "baseline"], choices=list(MODELS),
                    help="VL-JEPA first; baseline-MiniLM: the baseline from MiniLM's weights")
    ap.add_argument("--emoji-test", type=int, default=None,
                    help="score only the first n held-out emoji images (all names stay classes)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency figures")
    ap.add_argument("--visual-pool", type=int, default=2, help="7x7 tokens -> 4x4 for both models")
    ap.add_argument("--vqa-test", type=int, default=2000, help="easy-VQA test questions scored")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=20, help="timed calls per latency figure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "compare"))
    ap.add_argument("--replot", action="store_true", help="only rewrite the table and plots")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        print(report(json.loads((out / "results.json").read_text()), out))
        return
    torch.set_num_threads(args.threads)
    res = {"budgets": sorted(args.budgets), "vqa_test": args.vqa_test, "runs": {}, "latency": {},
           "args": vars(args)}
    if args.models[0] != "VL-JEPA":
        ap.error("--models: VL-JEPA first")
    fingerprints = {}
    for kind in args.models:
        res["runs"][kind] = {}
        for b in res["budgets"]:
            model, data, secs = train_one(kind, b, args)
            fingerprints[kind] = model.x_encoder.fingerprint
            if len(set(fingerprints.values())) > 1:  # the comparison is only fair on one encoder
                raise RuntimeError(f"the models read different X-encoders: {fingerprints}")
            h = held_out(data, args.vqa_test, args.seed, args.emoji_test)
            r = evaluate(model, h) | {"train_seconds": round(secs, 1)}
            res["runs"][kind][str(b)] = r
            (out / "results.json").write_text(json.dumps(res, indent=1))  # so far
            print(f"{kind} @ {b:,} samples: {json.dumps(r)}", flush=True)
            if b == res["budgets"][-1] and not args.no_latency:
                res["latency"][kind] = latency(model, h, args.iters)
                print(f"{kind} latency: {json.dumps(res['latency'][kind])}", flush=True)
        res["n_emoji"] = len(h["emoji_names"])
        n = h["vqa"]["visual"].shape[1]
        res["visual_tokens"] = (-(-int(n ** 0.5) // args.visual_pool)) ** 2
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(report(res, out))


if __name__ == "__main__":
    sys.exit(main())
