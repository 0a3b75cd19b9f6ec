"""CPU latency of embed_image and answer, per image / per question, at batch 1 and 32.

    python eval/bench.py checkpoints/vljepa-easyvqa-lite0 [--threads 2] [--repeats 3]

Full path from an image file: decode, preprocess, X-encoder, predictor (and, for answer, the
candidate embeddings, memoised after the first call, as in serving). Reports the median of
``--repeats`` timed runs after one warm-up, in ms per item.
"""
from __future__ import annotations

import argparse
import json

import torch

import vljepa
from vljepa.profiling import median_ms


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import easy_vqa

    paths = easy_vqa.get_test_image_paths()
    model = vljepa.load(args.model)
    out = {"threads": args.threads}
    for b in args.batches:
        images = [paths[i % len(paths)] for i in range(b)]
        questions = ["what color is the shape?"] * b
        # median_ms's untimed warm-up call takes first-call allocations, memoises candidates
        ms_embed = median_ms(lambda: model.embed_image(images, batch_size=b), args.repeats)
        ms_answer = median_ms(lambda: model.answer(images, questions, batch_size=b), args.repeats)
        out[f"embed_image_ms_per_image_b{b}"] = round(ms_embed / b, 1)
        out[f"answer_ms_per_question_b{b}"] = round(ms_answer / b, 1)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
