"""The scaling curve of caption pretraining on the emoji corpus: zero-shot top-1 on new names by
a new artist against the number of training pictures, VL-JEPA and the linear no-predictor
baseline trained the same way.

    python eval/emoji_scaling.py                        # 1k, 4k, 16k and all (34,116) pictures
    python eval/emoji_scaling.py --sizes 1000 4000 --out results/emoji_scaling

Each point is one ``python train.py experiment=emoji_stage1`` (``predictor=linear`` for the
baseline) with ``data.source_kwargs.max_train_images=N`` (a seeded sample of the training
pictures; the validation and test pictures stay the same), then eval/emoji_cells.py's
"new name / new artist" cell (top-1 and top-5 %, plain names, and with the prompt ensemble).
A point whose run directory already holds a finished run is not trained again, so the curve
resumes where it stopped. Needs the corpus (configs/data/emoji_corpus.yaml says how to build
it). Writes results.json, results.md and scaling.png under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from vljepa.data.captions import CELLS
from vljepa.hub import atomic_write

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"VL-JEPA": [], "linear": ["predictor=linear"]}
CELL = CELLS[2]  # new name / new artist


def train_point(model: str, size: int | None, out: Path, seed: int) -> Path:
    """Train one point into ``out/<model>-<size>`` unless finished there; its model dir."""
    run = out / f"{model}-{size or 'all'}"
    if (run / "summary.json").is_file() and (run / "model" / "config.json").is_file():
        return run / "model"
    run.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=emoji_stage1", *MODELS[model],
           f"data.source_kwargs.max_train_images={size or 'null'}", f"seed={seed}",
           f"run_name=emoji-scaling-{model}-{size or 'all'}", f"paths.output_dir={run}",
           "trainer.enable_progress_bar=false"]
    print("$", " ".join(cmd), flush=True)
    with open(run / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not (run / "summary.json").is_file():
        raise RuntimeError(f"{run.name}: train.py exited {rc}\n"
                           f"{(run / 'train.log').read_text()[-2000:]}")
    return run / "model"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 4000, 16000, 0],
                    help="training pictures per point (0: all of them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "emoji_scaling"))
    args = ap.parse_args(argv)
    if __package__:  # loaded as eval.emoji_scaling (python -m, pytest)
        from . import emoji_cells
    else:  # python eval/emoji_scaling.py: Python searches the script's directory first
        import emoji_cells
    from vljepa.data.cache import default_cache_dir
    from vljepa.data.captions import corpus_splits

    out = Path(args.out)
    total = len(corpus_splits(default_cache_dir() / "emoji_corpus" / "corpus",
                              seed=args.seed)["train"])
    points = {f"{model}-{size or 'all'}": (model, size, train_point(model, size or None, out,
                                                                     args.seed))
              for size in args.sizes for model in MODELS}
    # every point at once: they share the X-encoder, so one pass of it over the test pictures
    cells = emoji_cells.main([f"{k}={path}" for k, (_, _, path) in points.items()]
                             + ["--seed", str(args.seed), "--out", str(out / "cells")])
    rows = []
    for key, (model, size, path) in points.items():
        summary = json.loads((path.parent / "summary.json").read_text())
        rows.append({"model": model, "size": min(size, total) if size else total,
                     "cell": cells[key]["cells"][CELL],
                     "train_s": summary.get("wall_seconds"),
                     "peak_rss_mib": summary.get("peak_rss_mib")})
    lines = [f"# Scaling: zero-shot on {CELL} (seed {args.seed})", "",
             "| model | training pictures | top-1 % | top-5 % | top-1 % (ensemble) | "
             "top-5 % (ensemble) | train wall s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cell"]
        lines.append(f"| {r['model']} | {r['size']} | {c['plain_top1']:.1f} | {c['plain_top5']:.1f}"
                     f" | {c['ensemble_top1']:.1f} | {c['ensemble_top5']:.1f} | {r['train_s']} |"
                     f" {r['peak_rss_mib']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write(out / "results.json", lambda p: Path(p).write_text(json.dumps(rows, indent=2)))
    atomic_write(out / "results.md", lambda p: Path(p).write_text(text))
    plot(rows, out / "scaling.png")
    return {"rows": rows}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for model in MODELS:
        pts = [(r["size"], r["cell"]["plain_top1"]) for r in rows if r["model"] == model]
        xs = [x for x, _ in pts]
        ax.plot(xs, [v for _, v in pts], marker="o", label=model)
    ax.set_xscale("log")
    ax.set_xlabel("training pictures")
    ax.set_ylabel(f"top-1 % ({CELL})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))


if __name__ == "__main__":
    main()
