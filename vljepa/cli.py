"""The ``vljepa`` command line: embed, answer, classify, eval, convert, quantize, export-serving,
export-onnx, serve, demo.

    vljepa embed    -m MODEL --image a.png b.png            # or --text "a red circle" ...
    vljepa answer   -m MODEL --image a.png --question "what color is the shape?"
    vljepa classify -m MODEL --image a.png --labels "red apple" "grinning face"
    vljepa eval     -m MODEL --task openmoji digits retrieval
    vljepa convert  checkpoints/<run>/checkpoints/last.ckpt checkpoints/<run>/model
    vljepa quantize checkpoints/<run>/model checkpoints/<run>/ternary   # BitNet b1.58, packed
    vljepa export-serving MODEL serve/ --easy-vqa           # lean serving bundle
    vljepa answer   -m serve/ --lean --image a.png --question "what color is the shape?"
    vljepa demo     -m MODEL --port 7860                    # web demo (pip install 'vljepa[demo]')
    vljepa serve    MODEL --port 8000                       # HTTP API (pip install 'vljepa[serve]')
    vljepa export-onnx MODEL onnx/ --easy-vqa               # ONNX graphs (pip install 'vljepa[onnx]')
    vljepa serve    onnx/                                   # served by onnxruntime, no torch

MODEL is a saved model directory, a Lightning .ckpt or a hub repo id (``$VLJEPA_MODEL`` when
-m is not given). Results go to stdout (or -o FILE) as JSON (default) or CSV (--format csv).
Errors print one line "vljepa: error: ..." and exit with status 2.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

# The library's modules are imported by the commands that use them: `vljepa serve` of an ONNX
# export runs without torch.


def _add_stored_inputs(p: argparse.ArgumentParser, output_help: str) -> None:
    """The arguments of the commands that export a model with stored questions and candidates
    (export-serving, export-onnx); :func:`_questions` reads them."""
    p.add_argument("source", help="model directory, .ckpt or hub repo id")
    p.add_argument("output_dir", help=output_help)
    p.add_argument("--questions", nargs="+", default=[], help="questions to store")
    p.add_argument("--questions-file", default=None,
                   help="a text file of questions to store, one per line")
    p.add_argument("--easy-vqa", action="store_true",
                   help="store every distinct easy-VQA question (train and test)")
    p.add_argument("--candidates", nargs="+", default=None,
                   help="candidate answers to store (default: the model's saved vocabulary)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vljepa", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("-m", "--model", default=os.environ.get("VLJEPA_MODEL"),
                       help="model directory, Lightning .ckpt or hub repo id "
                            "(default: $VLJEPA_MODEL)")
        p.add_argument("--format", choices=("json", "csv"), default="json",
                       help="output format (default json)")
        p.add_argument("-o", "--output", default=None, help="write to this file, not stdout")
        p.add_argument("--batch-size", type=int, default=32, help="images per batch")
        p.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
        return p

    p = command("embed", "Embed images (embed_image) or texts (embed_text) as unit vectors "
                         "in the shared space; one row per input: input, then D numbers.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--image", nargs="+", help="image files")
    g.add_argument("--text", nargs="+", help="texts")
    p.add_argument("--question", default=None,
                   help="with --image: embed the predicted answer to this question instead")

    p = command("answer", "Answer questions about images by the nearest candidate answer; one "
                          "row per image: image, question, answer, score (cosine).")
    p.add_argument("--image", nargs="+", required=True, help="image files")
    p.add_argument("--question", nargs="+", required=True,
                   help="one question for all images, or one per image")
    p.add_argument("--candidates", nargs="+", default=None,
                   help="candidate answers (default: the vocabulary saved with the model)")
    p.add_argument("--lean", action="store_true",
                   help="MODEL is a serving bundle (export-serving): answer its stored "
                        "questions without the encoders' libraries")
    p.add_argument("--fallback", action="store_true",
                   help="with --lean: answer a question or candidate the bundle does not store "
                        "with the full model (a warning), instead of an error")

    p = command("classify", "Zero-shot classification; rows: image, rank, label, probability "
                            "for the top-k labels of each image.")
    p.add_argument("--image", nargs="+", required=True, help="image files")
    p.add_argument("--labels", nargs="+", required=True, help="class names")
    p.add_argument("--template", nargs="+", default=None,
                   help="templates with {} for the label, averaged (default: the bare label)")
    p.add_argument("--top-k", type=int, default=5, help="labels reported per image (default 5)")

    p = command("eval", "Zero-shot top-1/top-5 on held-out OpenMoji emoji and sklearn digits, "
                        "and image<->text retrieval R@1/5/10 on held-out emoji; rows: task, "
                        "metric, value.")
    p.add_argument("--task", nargs="+", default=["openmoji", "digits", "retrieval"],
                   choices=["openmoji", "digits", "retrieval"], help="harnesses to run")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N images of each set (a quick check)")
    p.add_argument("--cache-dir", default=None,
                   help="X-encoder feature cache (default $VLJEPA_CACHE or ~/.cache/vljepa)")

    p = sub.add_parser("convert", help="Convert a train.py Lightning checkpoint to a model "
                                       "directory (config.json + model.safetensors).")
    p.add_argument("checkpoint", help="the .ckpt file")
    p.add_argument("output_dir", help="directory to write")

    p = sub.add_parser("quantize", help="Post-training quantisation (BitNet b1.58) of a "
                                        "full-precision model into a packed ternary model "
                                        "directory. For a quantisation-aware fine-tune instead: "
                                        "python train.py experiment=ternary init_from=SRC")
    p.add_argument("source", help="full-precision model directory, .ckpt or hub repo id")
    p.add_argument("output_dir", help="directory to write (config.json + packed weights)")

    desc = ("Write a lean serving bundle: the model plus the candidate answers' S_Y, the "
            "query states of the given questions and the X-encoder's needed layers, so "
            "`vljepa.load(DIR, lean=True)` (or `vljepa answer --lean`) answers those questions "
            "without timm, transformers or sentence-transformers.")
    p = sub.add_parser("export-serving", help=desc, description=desc)
    _add_stored_inputs(p, "directory to write (the model's files + serving files)")

    desc = ("Write ONNX graphs of the model for torch-free serving (`vljepa serve DIR` runs "
            "them with onnxruntime): the X-encoder, the predictor, the Y-encoder (which also "
            "reads new questions) where it exports, the candidates' S_Y and the stored "
            "questions' query states. Needs pip install 'vljepa[onnx]'.")
    p = sub.add_parser("export-onnx", help=desc, description=desc)
    _add_stored_inputs(p, "directory to write")
    p.add_argument("--no-text", action="store_true",
                   help="leave the Y-encoder out (smaller; then only stored questions and "
                        "candidates are served)")

    desc = ("Serve the model over HTTP (OpenAI-compatible /v1/embeddings, /v1/answer, "
            "/v1/classify, /v1/predict, /health, /v1/models, /metrics) with dynamic batching. "
            "MODEL is anything `vljepa.load` reads, a serving bundle (--lean) or an ONNX export "
            "(export-onnx: served without torch). SIGTERM drains the requests in flight, then "
            "exits 0. Needs pip install 'vljepa[serve]'.")
    p = sub.add_parser("serve", help=desc, description=desc)
    p.add_argument("model", nargs="?", default=os.environ.get("VLJEPA_MODEL"),
                   help="model directory, .ckpt, hub repo id or ONNX export (default: "
                        "$VLJEPA_MODEL)")
    p.add_argument("--lean", action="store_true", help="MODEL is a serving bundle "
                   "(export-serving): serve its stored questions and candidates")
    p.add_argument("--fallback", action="store_true", help="with --lean: answer what the "
                   "bundle does not store with the full model instead of a 400")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default "
                   "127.0.0.1, this machine only; 0.0.0.0 for every one)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--name", default=None, help="the model id clients use (default: MODEL's "
                   "directory name)")
    p.add_argument("--api-key", default=os.environ.get("VLJEPA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(default: $VLJEPA_API_KEY; none: no key)")
    p.add_argument("--max-batch-size", type=int, default=32, help="items per batch (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests, in ms (default 5)")
    p.add_argument("--max-request-mb", type=float, default=16.0,
                   help="largest request body, in MiB (default 16)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="largest image, width x height (default 16777216)")
    p.add_argument("--max-items", type=int, default=256,
                   help="most images or texts in one request (default 256)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="a request's time limit, in seconds (default 30; 504 past it)")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="items waiting for a batch before requests get 503 (default 4096)")
    p.add_argument("--threads", type=int, default=None,
                   help="the model's intra-op threads (torch or onnxruntime; default: one per "
                        "core). 1 suits a machine whose cores are busy with other work")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info: an access log line per request)")

    desc = ("Serve a web demo (gradio) of the model: image question answering, zero-shot "
            "labels, selective decoding of a video. Needs pip install 'vljepa[demo]'.")
    p = sub.add_parser("demo", help=desc, description=desc)
    p.add_argument("-m", "--model", default=os.environ.get("VLJEPA_MODEL"),
                   help="model directory, Lightning .ckpt or hub repo id (default: $VLJEPA_MODEL)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default "
                   "127.0.0.1, this machine only; 0.0.0.0 for every one)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return ap


def _write(rows: list[dict[str, Any]], fmt: str, output: str | None) -> None:
    if fmt == "json":
        text = json.dumps(rows, indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if output:
        from .hub import atomic_write
        atomic_write(output, lambda p: Path(p).write_text(text))
    else:
        sys.stdout.write(text)


def _questions(args: argparse.Namespace) -> list[str]:
    """The questions --questions, --questions-file and --easy-vqa name, in that order."""
    questions = list(args.questions)
    if args.questions_file:
        questions += [q for q in Path(args.questions_file).read_text().splitlines() if q.strip()]
    if args.easy_vqa:
        import easy_vqa
        questions += sorted(set(easy_vqa.get_train_questions()[0])
                            | set(easy_vqa.get_test_questions()[0]))
    return questions


def _serve(args: argparse.Namespace) -> None:
    try:  # the serve extra: imported for this command only
        from .serving.http import ServeConfig, default_model_name, load_backend, serve
    except ImportError as e:
        raise ImportError(f"vljepa serve needs starlette, uvicorn and prometheus_client: pip "
                          f"install 'vljepa[serve]' ({e})") from e
    if not args.model:
        raise ValueError("no model given: vljepa serve MODEL (or set $VLJEPA_MODEL)")
    if args.fallback and not args.lean:
        raise ValueError("--fallback goes with --lean")
    if args.max_request_mb <= 0:
        raise ValueError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    config = ServeConfig(
        host=args.host, port=args.port, model_name=args.name or default_model_name(args.model),
        api_key=args.api_key or None, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_request_bytes=int(args.max_request_mb * 2 ** 20),
        max_image_pixels=args.max_image_pixels, max_items=args.max_items,
        timeout_s=args.timeout, max_queue_items=args.max_queue,
        log_level=args.log_level).check()
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    serve(load_backend(args.model, lean=args.lean, fallback=args.fallback,
                       threads=args.threads), config)


def _run(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    if args.command == "serve":
        _serve(args)
        return None
    from .factory import convert_checkpoint, load
    from .quantize import quantize
    if args.command == "export-onnx":
        try:
            from .serving.onnx_export import export_onnx
        except ImportError as e:
            raise ImportError(f"export-onnx needs onnx, onnxscript and onnxruntime: pip "
                              f"install 'vljepa[onnx]' ({e})") from e
        out = export_onnx(args.source, args.output_dir, _questions(args), args.candidates,
                          text=not args.no_text)
        print(f"wrote {out}", file=sys.stderr)
        return None
    if args.command == "convert":
        out = convert_checkpoint(args.checkpoint, args.output_dir)
        print(f"wrote {out}", file=sys.stderr)
        return None
    if args.command == "quantize":
        out = quantize(load(args.source)).save_pretrained(args.output_dir)
        print(f"wrote {out}", file=sys.stderr)
        return None
    if args.command == "export-serving":
        from .serving import export_serving
        questions = _questions(args)
        if not questions:
            raise ValueError("no questions given: pass --questions, --questions-file or "
                             "--easy-vqa")
        out = export_serving(args.source, args.output_dir, questions, args.candidates)
        print(f"wrote {out}", file=sys.stderr)
        return None
    if not args.model:
        raise ValueError("no model given: pass -m MODEL or set $VLJEPA_MODEL")
    if args.command == "demo":
        try:  # gradio is an optional dependency (the demo extra): imported for this command only
            from .demo import launch
        except ImportError as e:
            raise ImportError(f"the web demo needs gradio and matplotlib: pip install "
                              f"'vljepa[demo]' ({e})") from e
        launch(args.model, host=args.host, port=args.port)
        return None
    if getattr(args, "lean", False):
        model = load(args.model, lean=True, fallback=args.fallback)
    else:
        if getattr(args, "fallback", False):
            raise ValueError("--fallback goes with --lean")
        model = load(args.model)
    kw = {"batch_size": args.batch_size, "progress": args.progress}
    if args.command == "embed":
        if args.text:
            emb, inputs = model.embed_text(args.text, **kw), args.text
        elif args.question:
            emb = model.predict(args.image, [args.question] * len(args.image), **kw)
            inputs = args.image
        else:
            emb, inputs = model.embed_image(args.image, **kw), args.image
        if args.format == "json":
            return [{"input": x, "embedding": [round(v, 6) for v in e]}
                    for x, e in zip(inputs, emb.tolist())]
        return [{"input": x, **{f"e{i}": round(v, 6) for i, v in enumerate(e)}}
                for x, e in zip(inputs, emb.tolist())]
    if args.command == "answer":
        questions = args.question
        if len(questions) == 1:
            questions = questions * len(args.image)
        elif len(questions) != len(args.image):
            raise ValueError(f"{len(args.image)} images but {len(questions)} questions: give one "
                             "question for all, or one per image")
        if args.lean:
            kw.pop("progress")  # a lean model answers few questions: no progress bar
        answers, scores = model.answer(args.image, questions, args.candidates, **kw)
        return [{"image": im, "question": q, "answer": a, "score": round(float(s), 6)}
                for im, q, a, s in zip(args.image, questions, answers, scores)]
    if args.command == "classify":
        if args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
        probs = model.classify(args.image, args.labels, args.template, **kw)
        top = probs.topk(min(args.top_k, len(args.labels)), dim=1)
        return [{"image": im, "rank": r + 1, "label": args.labels[i], "probability": round(p, 6)}
                for im, ps, ix in zip(args.image, top.values.tolist(), top.indices.tolist())
                for r, (p, i) in enumerate(zip(ps, ix))]
    if args.command == "eval":
        from .metrics import evaluate  # torchmetrics and the data sources: this command only
        results = evaluate(model, args.task, args.cache_dir, limit=args.limit,
                           progress=args.progress)
        return [{"task": t, "metric": k, "value": v} for t, m in results.items()
                for k, v in m.items()]
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rows = _run(args)
    except (FileNotFoundError, ValueError, TypeError, ImportError, KeyError, RuntimeError,
            OSError) as e:
        print(f"vljepa: error: {e}", file=sys.stderr)
        return 2
    if rows is not None:
        _write(rows, args.format, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
