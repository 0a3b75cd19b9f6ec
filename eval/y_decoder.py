"""How well the Y-decoder writes text back from embeddings (paper §3, Y-decoder).

    python eval/y_decoder.py --model checkpoints/y_decoder/model

Three checks, each exact match (case-insensitive) and CIDEr-D (pycocoevalcap):
  texts    decode(embed_text(t)) on held-out texts (emoji names of the test split, never trained
           on) and, for reference, on a sample of the training texts;
  VQA      decode(predict(image, question)) on easy-VQA test questions against the answer, next
           to the nearest-candidate accuracy of the same predictions (how VL-JEPA answers);
  captions decode(embed_image(image)) on the scenes test images (easy-VQA shapes, held-out
           emoji) against their captions.
Visual tokens come from the feature cache (``$VLJEPA_CACHE``), so the X-encoder runs once.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # defaults resolve from the repo, not the cwd


def score(name: str, refs: list[str], hyps: list[str]) -> dict:
    from vljepa.metrics import cider
    exact = sum(r.lower() == h.lower() for r, h in zip(refs, hyps)) / len(refs)
    out = {"n": len(refs), "exact": round(100 * exact, 2), "cider": round(cider(refs, hyps), 3),
           "examples": list(zip(refs[:4], hyps[:4]))}
    print(f"{name:<28} n={out['n']:<5} exact {out['exact']:6.2f}%  CIDEr {out['cider']:.3f}  "
          f"e.g. {out['examples'][:2]}", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "checkpoints" / "y_decoder" / "model"))
    ap.add_argument("--vqa-test", type=int, default=2000, help="easy-VQA test questions scored")
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import vljepa
    from vljepa.data.captions import scenes
    from vljepa.data.vqa import load_vqa
    from vljepa.metrics import cached_visual_tokens
    from vljepa.profiling import Stopwatch
    from vljepa.training.datamodules import TextCorpusDataModule

    torch.manual_seed(args.seed)
    model = vljepa.load(args.model)
    dec = lambda e: model.decode(e, num_beams=args.beams)  # noqa: E731
    res = {}
    total = Stopwatch()

    data = TextCorpusDataModule(model, sources=["easy_vqa", "scenes", "unicode"])
    data.setup()
    held = data.texts["test"]
    res["texts_held_out"] = score("texts, held out", held, dec(model.embed_text(held)))
    seen = random.Random(args.seed).sample(data.texts["train"], min(1000, len(data.texts["train"])))
    res["texts_train"] = score("texts, training sample", seen, dec(model.embed_text(seen)))

    vqa = load_vqa("easy_vqa", "test", max_samples=args.vqa_test, seed=args.seed)
    visual = cached_visual_tokens(model, list(vqa["image"]), progress=True)
    ids, mask = model.tokenize_queries(list(vqa["question"]))
    with torch.no_grad():
        pred = torch.nn.functional.normalize(model(visual, ids, mask), dim=-1)
    answers = list(vqa["answer"])
    res["vqa"] = score("VQA: decode(predict)", answers, dec(pred))
    cands = model.answers or sorted(set(answers))
    nearest = (pred @ model.embed_text(cands).T).argmax(1).tolist()
    res["vqa"]["nearest_candidate_acc"] = round(
        100 * sum(cands[i] == a for i, a in zip(nearest, answers)) / len(answers), 2)
    print(f"{'VQA: nearest candidate':<28} acc {res['vqa']['nearest_candidate_acc']:.2f}%")

    ds = scenes("test")
    visual = cached_visual_tokens(model, list(ds["image"]), progress=True)
    res["captions"] = score("captions: decode(embed_image)", list(ds["caption"]),
                            dec(model.embed_visual(visual)))
    res["seconds"] = round(total.seconds, 1)
    print(f"total {res['seconds']} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
