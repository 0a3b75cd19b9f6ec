"""What a fresh serving process costs: peak RSS and cold-start time to answer one question, with
the full model (``vljepa.load``) and with a lean serving bundle (``vljepa.load(dir, lean=True)``).

    python eval/ternary_serving.py                                  # the released model
    python eval/ternary_serving.py --model fp=DIR --model ternary=DIR [--repeats 3]

For each saved model the script first writes a serving bundle (``vljepa export-serving DIR
BUNDLE --easy-vqa``: the 107 easy-VQA questions' query states, the saved answers' S_Y, the
X-encoder's needed layers) under ``--bundle-dir``. Then fresh processes (``--repeats`` times,
alternating; medians) each import vljepa, load the model one way, and answer one easy-VQA test
question from its image file with the saved answer vocabulary. Reported per process:

- peak RSS (``ru_maxrss`` at the answer; interpreter teardown after it is not counted) and the
  RSS after each stage: ``import torch`` (the runtime), ``import vljepa``, then for the full
  model ``import timm`` and ``import sentence_transformers`` (their libraries, which the full
  load would import anyway), the load (weights, models), the first answer (activations,
  allocator and oneDNN state);
- the wall-clock seconds from the process's start to each stage; to the answer is the cold start;
- the resident tensors (parameters + buffers) of the X-encoder, of the text side (the full
  Y-encoder, or the bundle's stored S_Y and query states) and of the predictor (a ternary one
  stays packed);
- which of the heavy libraries the process imported.

The lean answer must equal the full model's (the script stops otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASED = ROOT / "checkpoints" / "vljepa-easyvqa-lite0"
HEAVY = ("timm", "torchvision", "open_clip", "transformers", "sentence_transformers",
         "tokenizers", "huggingface_hub", "lightning", "torchmetrics", "datasets")


def rss_mib() -> float:
    """Resident memory now, MiB (Linux). Not vljepa's: the worker reads it before importing
    vljepa, to split the RSS by import."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _mib(*modules) -> float:
    seen, total = set(), 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.nbytes
    return total / 2**20


def worker(mode: str, model_dir: str, t_start: float) -> dict:
    out = {}

    def stage(name):
        out[f"{name}_s"] = time.time() - t_start
        out[f"{name}_rss_mib"] = rss_mib()

    import torch
    stage("torch")
    import easy_vqa

    import vljepa
    from vljepa.profiling import peak_rss_mib
    stage("import")
    if mode == "full":  # the libraries the full load imports, one at a time, for the breakdown
        import timm  # noqa: F401
        stage("timm")
        import sentence_transformers  # noqa: F401
        stage("text")
        model = vljepa.load(model_dir)
    else:
        model = vljepa.load(model_dir, lean=True)
    stage("load")
    questions, _, image_ids = easy_vqa.get_test_questions()
    image = easy_vqa.get_test_image_paths()[image_ids[0]]
    with torch.inference_mode():
        answers, scores = model.answer([image], questions[:1])
    stage("answer")
    out["answer"] = answers[0]
    out["score"] = float(scores[0])
    out["peak_rss_mib"] = peak_rss_mib()
    out["x_mib"] = _mib(model.x_encoder)
    out["text_mib"] = _mib(model.y_encoder) if mode == "full" else \
        (model.s_y.nbytes + model.states.nbytes + model.lengths.nbytes) / 2**20
    out["predictor_mib"] = _mib(model.predictor)
    out["imported"] = [m for m in HEAVY if m in sys.modules]
    return out


def export_bundle(model_dir: str, bundle: Path) -> None:
    """``vljepa export-serving model_dir bundle --easy-vqa``, in its own process."""
    res = subprocess.run([sys.executable, "-m", "vljepa.cli", "export-serving", model_dir,
                          str(bundle), "--easy-vqa"], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"export-serving {model_dir}: {res.stderr[-2000:]}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", metavar="NAME=DIR",
                    help=f"default: fp={RELEASED}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bundle-dir", default=None,
                    help="where the serving bundles are written (default: a temporary directory)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], float(args.worker[2]))))
        return {}
    models = dict(m.split("=", 1) for m in (args.model or [f"fp={RELEASED}"]))
    tmp = None
    if args.bundle_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="vljepa-serving-")
        args.bundle_dir = tmp.name
    runs_on: dict[tuple[str, str], str] = {}
    for name, d in models.items():
        bundle = Path(args.bundle_dir) / name
        export_bundle(d, bundle)
        runs_on[(name, "full")], runs_on[(name, "lean")] = d, str(bundle)
    runs: dict[tuple[str, str], list[dict]] = {k: [] for k in runs_on}
    for _ in range(args.repeats):
        for (name, mode), d in runs_on.items():
            t0 = time.time()
            res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                                  mode, d, repr(t0)], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"{name} {mode}: {res.stderr[-2000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["exit_s"] = time.time() - t0
            runs[(name, mode)].append(r)
    for name in models:
        full, lean = runs[(name, "full")][0], runs[(name, "lean")][0]
        if (full["answer"], round(full["score"], 5)) != (lean["answer"], round(lean["score"], 5)):
            raise RuntimeError(f"{name}: the lean answer {lean['answer']!r} ({lean['score']:.6f}) "
                               f"differs from the full model's {full['answer']!r} "
                               f"({full['score']:.6f})")
    med = {k: {key: statistics.median(r[key] for r in rs) for key, v in rs[0].items()
               if isinstance(v, (int, float))} for k, rs in runs.items()}
    print("| model | load | peak RSS MiB | RSS after torch / vljepa / timm / sentence-transformers"
          " / load / answer MiB | s to torch / vljepa / load / answer (cold start) | "
          "X-encoder / text side / predictor tensors MiB | answer |")
    print("|---|---|---|---|---|---|---|")
    for (name, mode), m in med.items():
        r0 = runs[(name, mode)][0]
        libs = (f"{m['timm_rss_mib']:.0f} / {m['text_rss_mib']:.0f}" if mode == "full"
                else "- / -")
        text = "Y-encoder" if mode == "full" else "stored S_Y + states"
        print(f"| {name} | {mode} | {m['peak_rss_mib']:.0f} | {m['torch_rss_mib']:.0f} / "
              f"{m['import_rss_mib']:.0f} / {libs} / {m['load_rss_mib']:.0f} / "
              f"{m['answer_rss_mib']:.0f} | {m['torch_s']:.2f} / {m['import_s']:.2f} / "
              f"{m['load_s']:.2f} / {m['answer_s']:.2f} | {m['x_mib']:.2f} / "
              f"{m['text_mib']:.2f} ({text}) / {m['predictor_mib']:.2f} | {r0['answer']} |")
    print()
    for (name, mode), rs in runs.items():
        print(f"{name} {mode} imported: {', '.join(rs[0]['imported']) or 'none'} "
              f"(of {', '.join(HEAVY)})")
    if tmp is not None:
        tmp.cleanup()
    return med


if __name__ == "__main__":
    main()
