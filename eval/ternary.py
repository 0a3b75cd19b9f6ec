"""Full precision against ternary (BitNet b1.58) predictors, side by side, in one run.

    python eval/ternary.py --model fp=checkpoints/fp/model --model ternary=checkpoints/ternary/model
    python eval/ternary.py --model ... --repeats 3 --out results/ternary.md --skip-accuracy

For each saved model directory it reports:
  - easy-VQA test accuracy (eval/vqa.py, in a subprocess);
  - zero-shot top-1 / top-5 over the 293 held-out OpenMoji emoji (vljepa.metrics, in a
    subprocess; meaningful for caption-trained models, e.g. experiment=openmoji_stage2);
  - predictor size: bytes of the ``predictor.*`` tensors in model.safetensors, and the file size;
  - resident predictor bytes once loaded (parameters + buffers: a ternary model stays packed);
  - peak RSS (MiB) of a fresh process that loads the model and answers batch-1 and batch-32
    easy-VQA questions (the encoders are in it too: they dominate);
  - answer latency (ms, median) at batch 1 and 32: ``model.answer`` from image files (X-encoder,
    predictor, candidate embedding), and the predictor alone on precomputed visual tokens.
Worker processes alternate between models, ``--repeats`` times, so machine load hits all of them
alike; the table gives the median over repeats. Latencies are wall clock on ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from vljepa.profiling import median_ms, peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]  # defaults resolve from the repo, not the cwd

HERE = Path(__file__).resolve().parent


def worker(model_dir: str, threads: int, iters: int) -> dict:
    """Load one model, answer, and measure; runs in its own process so its peak RSS is its own."""
    import easy_vqa
    import torch

    import vljepa

    torch.set_num_threads(threads)
    model = vljepa.load(model_dir)
    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    images, qs = [paths[i] for i in image_ids[:32]], questions[:32]
    candidates = easy_vqa.get_answers()
    out = {"predictor_resident_bytes": sum(t.nbytes for t in [
        *model.predictor.parameters(), *model.predictor.buffers()])}
    with torch.inference_mode():
        visual = model.visual_tokens(images)
        ids, mask = model.tokenize_queries(qs)
        for b in (1, 32):
            out[f"answer_b{b}_ms"] = median_ms(
                lambda: model.answer(images[:b], qs[:b], candidates), iters)
            out[f"predictor_b{b}_ms"] = median_ms(
                lambda: model(visual[:b], ids[:b], mask[:b]), 5 * iters)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def file_sizes(model_dir: str) -> dict:
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    pred = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.startswith("predictor."):
                t = f.get_tensor(key)
                pred += t.nbytes
    return {"predictor_bytes": pred, "file_bytes": path.stat().st_size}


def accuracy(model_dir: str) -> dict:
    res = subprocess.run([sys.executable, str(HERE / "vqa.py"), model_dir, "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout[res.stdout.index("{"):])


def zero_shot_emoji(model_dir: str) -> dict:
    code = ("import json, sys, vljepa; from vljepa.metrics import evaluate; "
            "print(json.dumps(evaluate(vljepa.load(sys.argv[1]), tasks=['openmoji'])['openmoji']))")
    res = subprocess.run([sys.executable, "-c", code, model_dir], capture_output=True, text=True,
                         check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"emoji_top1": r["top1"], "emoji_top5": r["top5"]}


def table(rows: dict[str, dict], base: str) -> str:
    b = rows[base]
    head = ["model", "easy-VQA acc", "emoji top-1", "emoji top-5", "predictor tensors", "vs " + base, "model.safetensors",
            "predictor resident", "peak RSS", "answer b1", "answer b32", "predictor b1",
            "predictor b32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        acc = f"{100 * r['test/acc']:.2f}%" if "test/acc" in r else "n/a"
        emoji = [f"{r[k]:.1f}%" if k in r else "n/a" for k in ("emoji_top1", "emoji_top5")]
        lines.append("| " + " | ".join([
            name, acc, *emoji, f"{r['predictor_bytes'] / 1024:.0f} KiB",
            f"{b['predictor_bytes'] / r['predictor_bytes']:.1f}x smaller",
            f"{r['file_bytes'] / 1024:.0f} KiB",
            f"{r['predictor_resident_bytes'] / 1024:.0f} KiB", f"{r['peak_rss_mib']:.0f} MiB",
            *(f"{r[k]:.1f} ms" for k in ("answer_b1_ms", "answer_b32_ms", "predictor_b1_ms",
                                          "predictor_b32_ms"))]) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                    help="a saved model directory; the first is the baseline (full precision)")
    ap.add_argument("--repeats", type=int, default=3, help="worker runs per model, interleaved")
    ap.add_argument("--iters", type=int, default=10, help="timed calls per latency, per worker")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "ternary.md"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.iters)))
        return {}
    models = dict(m.split("=", 1) for m in args.model)
    if not models or any(not (Path(d) / "model.safetensors").is_file() for d in models.values()):
        ap.error("give --model NAME=DIR for saved model directories (model.safetensors inside)")

    rows = {name: file_sizes(d) for name, d in models.items()}
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for rep in range(args.repeats):
        for name, d in models.items():
            res = subprocess.run([sys.executable, __file__, "--worker", d, "--threads",
                                  str(args.threads), "--iters", str(args.iters)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep + 1}/{args.repeats} {name}: {runs[name][-1]}", flush=True)
    for name, rs in runs.items():
        rows[name].update({k: statistics.median(r[k] for r in rs) for k in rs[0]})
        rows[name]["runs"] = rs
    if not args.skip_accuracy:
        for name, d in models.items():
            rows[name].update(accuracy(d))
            rows[name].update(zero_shot_emoji(d))
            print(f"{name}: easy-VQA test/acc {rows[name]['test/acc']:.4f}, zero-shot emoji "
                  f"top-1 {rows[name]['emoji_top1']:.1f}%", flush=True)

    base = next(iter(models))
    md = (f"# Full precision vs ternary predictor\n\nModels: "
          + ", ".join(f"`{n}` = `{d}`" for n, d in models.items())
          + f"\n\nLatency: median of {args.iters} calls per worker (predictor: {5 * args.iters}),"
          f" median over {args.repeats} interleaved worker runs, {args.threads} threads, "
          f"wall clock on a shared machine. Peak RSS: whole process (encoders included).\n\n"
          + table(rows, base) + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=2))
    print(md)
    return rows


if __name__ == "__main__":
    main()
