"""What a fresh serving process costs: peak RSS and cold-start time to answer one question.

    python eval/ternary_serving.py                                  # the released model
    python eval/ternary_serving.py --model fp=DIR --model ternary=DIR [--repeats 3]

For each saved model, a fresh process (``--repeats`` times, alternating models; medians)
imports vljepa, loads the model and answers one easy-VQA question from its image file with the
saved answer vocabulary. Reported: the process's peak RSS, and its RSS after each stage --
``import torch`` (the runtime), ``import vljepa`` (its libraries: timm, transformers,
sentence-transformers, ...), ``vljepa.load`` (the encoders' and the predictor's weights) and the
first answer (activations, allocator caches) -- and the wall-clock seconds from the process's
start to each stage and to the answer (cold start). The predictor's resident bytes
(parameters + buffers; a ternary model stays packed) are given beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASED = ROOT / "checkpoints" / "vljepa-easyvqa-lite0"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(model_dir: str, t_start: float) -> dict:
    import resource

    out = {}

    def stage(name):
        out[f"{name}_s"] = time.time() - t_start
        out[f"{name}_rss_mib"] = rss_mib()

    import torch
    stage("torch")
    sys.path.insert(0, str(ROOT))  # the vljepa next to this script
    import easy_vqa

    import vljepa
    stage("import")
    model = vljepa.load(model_dir)
    stage("load")
    questions, _, image_ids = easy_vqa.get_test_questions()
    image = easy_vqa.get_test_image_paths()[image_ids[0]]
    with torch.inference_mode():
        answers, _ = model.answer([image], questions[:1])
    stage("answer")
    out["answer"] = answers[0]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["predictor_resident_bytes"] = sum(t.nbytes for t in [
        *model.predictor.parameters(), *model.predictor.buffers()])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", metavar="NAME=DIR",
                    help=f"default: fp={RELEASED}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], float(args.worker[1]))))
        return {}
    models = dict(m.split("=", 1) for m in (args.model or [f"fp={RELEASED}"]))
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, d in models.items():
            t0 = time.time()
            res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", d,
                                  repr(t0)], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"{name}: {res.stderr[-2000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["exit_s"] = time.time() - t0
            runs[name].append(r)
    keys = [k for k in runs[next(iter(runs))][0] if k != "answer"]
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys}
           for name, rs in runs.items()}
    print("| model | peak RSS MiB | RSS after torch / vljepa import / load / answer MiB | "
          "s to torch / import / load / answer | predictor KiB | answer |")
    print("|---|---|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m['peak_rss_mib']:.0f} | {m['torch_rss_mib']:.0f} / "
              f"{m['import_rss_mib']:.0f} / {m['load_rss_mib']:.0f} / {m['answer_rss_mib']:.0f} | "
              f"{m['torch_s']:.2f} / {m['import_s']:.2f} / {m['load_s']:.2f} / {m['answer_s']:.2f} | "
              f"{m['predictor_resident_bytes'] / 1024:.0f} | {runs[name][0]['answer']} |")
    return med


if __name__ == "__main__":
    main()
