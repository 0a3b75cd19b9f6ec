"""Selective decoding benchmark (paper §4.6): caption quality against decodes per second for
uniform sampling and for the online and offline adaptive decoders (vljepa/selective.py).

    python eval/selective_decoding.py --model checkpoints/y_decoder/model
    python eval/selective_decoding.py --replot          # table + plot from results.json

Streams are built from real pictures: easy-VQA test images (caption "red circle"), OpenMoji
glyphs (their names) and scikit-image photos (vljepa.data.captions.SKIMAGE_PHOTOS). A stream is
a sequence of segments of random length, one picture each (no picture twice in a row), with
known boundaries and the picture's caption as the segment's reference. Every frame is jittered
(random shift, brightness, Gaussian noise; torchvision), so frames in a segment differ.
Frames go through the X-encoder (feature cache) and the model's query-free prediction
(``embed_visual``); decoding uses the model's Y-decoder.

Scoring follows the paper: each segment's reference, at the segment's middle, is scored against
the decoded text nearest in time (CIDEr-D from pycocoevalcap over all segments, and exact
match). Decodes per second count every Y-decoder call at the stream's frame rate (``--fps``).
Uniform decodes every k-th frame; online sweeps the change threshold; offline sweeps the number
of segments. The ratio at equal CIDEr is the uniform decode rate needed (interpolated on its
curve) to reach an adaptive point's CIDEr, over that point's rate.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # defaults resolve from the repo, not the cwd


def build_pool(n_emoji: int, n_vqa: int, seed: int) -> list[tuple]:
    """(PIL image, caption) pictures to draw segments from."""
    from vljepa.data.captions import easy_vqa_captions, openmoji, skimage_photos
    from vljepa.inputs import load_image

    rng = random.Random(seed)
    pool = []
    for ds, n in ((easy_vqa_captions("test"), n_vqa), (openmoji("train"), n_emoji),
                  (skimage_photos(), None)):
        rows = range(len(ds)) if n is None else rng.sample(range(len(ds)), min(n, len(ds)))
        pool += [(load_image(ds[i]["image"]).convert("RGB").resize((224, 224)), ds[i]["caption"])
                 for i in rows]
    return pool


def build_streams(pool, n_streams: int, min_seg: int, max_seg: int, segments: tuple[int, int],
                  seed: int, seg_dist: str = "uniform") -> list[dict]:
    """Jittered frame sequences with known segments: [{"frames", "bounds", "captions"}]."""
    import torchvision.transforms.v2 as T

    rng = random.Random(seed)
    torch.manual_seed(seed)
    jitter = T.Compose([T.RandomAffine(degrees=0, translate=(0.06, 0.06), fill=255),
                        T.ColorJitter(brightness=0.15)])
    to_tensor, to_pil = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)]), T.ToPILImage()
    streams = []
    for _ in range(n_streams):
        frames, bounds, captions, last = [], [0], [], None
        for _ in range(rng.randint(*segments)):
            i = rng.choice([j for j in range(len(pool)) if j != last])
            last = i
            image, caption = pool[i]
            n = rng.randint(min_seg, max_seg) if seg_dist == "uniform" else \
                round(math.exp(rng.uniform(math.log(min_seg), math.log(max_seg))))
            for _ in range(n):
                x = to_tensor(jitter(image))
                x = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
                frames.append(to_pil(x))
            bounds.append(len(frames))
            captions.append(caption)
        streams.append({"frames": frames, "bounds": bounds, "captions": captions})
    return streams


# ---- decoding schedules: each returns [(time in frames, text)] and the decode count ----

def uniform(emb, frame_text, k: int):
    times = list(range(0, len(emb), k))
    return [(t, frame_text[t]) for t in times], len(times)


def online(emb, decode, threshold: float, window: int):
    from vljepa.selective import SelectiveDecoder
    sd = SelectiveDecoder(decode=decode, threshold=threshold, window=window)
    out = sd.run(emb)
    return out, sd.n_decodes


def offline(emb, decode, n_segments: int):
    from vljepa.selective import SelectiveDecoder
    sd = SelectiveDecoder(decode=decode)
    segs = sd.segment(emb, n_segments=n_segments)
    return [((s.start + s.end - 1) / 2, s.text) for s in segs], sd.n_decodes


def nearest(decoded: list[tuple[float, str]], t: float) -> str:
    return min(decoded, key=lambda d: (abs(d[0] - t), d[0]))[1]


def score(streams, decoded_per_stream, fps: float) -> dict:
    from vljepa.metrics import cider
    refs, hyps, n = [], [], 0
    for s, (decoded, count) in zip(streams, decoded_per_stream):
        n += count
        for (a, b), caption in zip(zip(s["bounds"], s["bounds"][1:]), s["captions"]):
            refs.append(caption)
            hyps.append(nearest(decoded, (a + b - 1) / 2))
    seconds = sum(len(s["frames"]) for s in streams) / fps
    return {"decodes": n, "decodes_per_s": n / seconds, "cider": cider(refs, hyps),
            "exact": 100 * sum(r == h for r, h in zip(refs, hyps)) / len(refs)}


def rate_for(points: list[dict], cider: float) -> float | None:
    """The decode rate a method needs to reach ``cider``, read off its quality curve made
    monotone in rate (isotonic regression on log rate, scikit-learn; single CIDEr points are
    noisy at a few hundred segments), interpolated in log rate. None if it never gets there."""
    import numpy as np
    from sklearn.isotonic import IsotonicRegression

    pts = sorted(points, key=lambda p: p["decodes_per_s"])
    x = np.log([p["decodes_per_s"] for p in pts])
    fit = IsotonicRegression(increasing=True).fit_transform(x, [p["cider"] for p in pts])
    grid = np.linspace(x[0], x[-1], 2000)
    curve = np.interp(grid, x, fit)
    hit = np.flatnonzero(curve >= cider - 1e-12)
    return float(np.exp(grid[hit[0]])) if len(hit) else None


def dense_cider(points: list[dict]) -> float:
    """Uniform sampling's quality at its highest rate, on its monotone curve."""
    import numpy as np
    from sklearn.isotonic import IsotonicRegression

    pts = sorted(points, key=lambda p: p["decodes_per_s"])
    fit = IsotonicRegression(increasing=True).fit_transform(
        np.log([p["decodes_per_s"] for p in pts]), [p["cider"] for p in pts])
    return float(fit[-1])


def report(res: dict, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["points"]
    uni = [p for p in rows if p["method"] == "uniform"]
    dense = dense_cider(uni)
    lines = ["# Selective decoding: caption quality vs decodes per second", "",
             f"{res['n_streams']} streams, {res['frames']} frames at {res['fps']} fps "
             f"({res['frames'] / res['fps']:.0f} s), {res['segments']} segments "
             f"(mean {res['frames'] / res['segments']:.1f} frames each, lengths "
             f"{res['args'].get('seg_dist', 'uniform')} in {res['args']['seg_frames']}).", "",
             "| method | setting | decodes | decodes/s | CIDEr | exact | uniform rate for this CIDEr | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for p in rows:
        need = rate_for(uni, p["cider"]) if p["method"] != "uniform" else None
        p["ratio"] = need / p["decodes_per_s"] if need else None
        need_s = "" if need is None else f"{need:.3f}"
        ratio_s = "" if p["ratio"] is None else f"{p['ratio']:.2f}x"
        lines.append(f"| {p['method']} | {p['setting']} | {p['decodes']} | "
                     f"{p['decodes_per_s']:.3f} | {p['cider']:.3f} | {p['exact']:.1f}% | "
                     f"{need_s} | {ratio_s} |")
    lines += ["", "Equal quality, on monotone (isotonic) curves: decodes per second each method "
              f"needs to reach a fraction of uniform's dense CIDEr ({dense:.3f}).", "",
              "| target CIDEr | uniform | online | offline | uniform / online | uniform / offline |",
              "|---|---|---|---|---|---|"]
    res["equal_quality"] = []
    for frac in (0.8, 0.9, 0.95, 0.98):
        target = frac * dense
        r = {m: rate_for([p for p in rows if p["method"] == m], target)
             for m in ("uniform", "online", "offline")}
        ratio = {m: r["uniform"] / r[m] if r["uniform"] and r[m] else None
                 for m in ("online", "offline")}
        res["equal_quality"].append({"fraction": frac, "cider": target, **r,
                                     **{f"ratio_{m}": v for m, v in ratio.items()}})
        fmt = lambda v, unit="": "never" if v is None else f"{v:.3f}{unit}"  # noqa: E731
        lines.append(f"| {target:.3f} ({frac:.0%}) | {fmt(r['uniform'])} | {fmt(r['online'])} | "
                     f"{fmt(r['offline'])} | {fmt(ratio['online'], 'x')} | "
                     f"{fmt(ratio['offline'], 'x')} |")
    lines += ["", f"Online per-frame overhead (change detection only, encoders and decoder "
                  f"excluded): {res['overhead']['step_us']:.1f} µs; predictor pass per frame "
                  f"(batch 1): {res['overhead']['predictor_ms']:.2f} ms; one Y-decoder call "
                  f"(greedy, batch 1): {res['overhead']['decode_ms']:.2f} ms."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("uniform", "o-"), ("online", "s-"), ("offline", "^-")):
        pts = sorted((p for p in rows if p["method"] == method), key=lambda p: p["decodes_per_s"])
        ax.plot([p["decodes_per_s"] for p in pts], [p["cider"] for p in pts], style, label=method)
    ax.set_xscale("log"), ax.set_xlabel("decodes per second"), ax.set_ylabel("CIDEr")
    ax.set_title("selective decoding vs uniform sampling"), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cider_vs_decode_rate.png", dpi=110)
    return text


def overhead(model, emb: torch.Tensor, visual: torch.Tensor) -> dict:
    from vljepa.profiling import Stopwatch, median_ms
    from vljepa.selective import SelectiveDecoder
    sd = SelectiveDecoder(decode=lambda e: [""] * len(e), threshold=0.3, window=2)
    with Stopwatch() as steps:
        for e in emb:
            sd.step(e)
    step_us = 1e6 * steps.seconds / len(emb)

    return {"step_us": step_us, "predictor_ms": median_ms(lambda: model.embed_visual(visual[:1]), 30),
            "decode_ms": median_ms(lambda: model.decode(emb[:1]), 30)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "checkpoints" / "y_decoder" / "model"))
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--segments", type=int, nargs=2, default=(4, 8), help="per stream, min max")
    ap.add_argument("--seg-frames", type=int, nargs=2, default=(6, 30), help="per segment, min max")
    ap.add_argument("--seg-dist", choices=("uniform", "loguniform"), default="uniform",
                    help="segment lengths: uniform, or log-uniform (many short, a few long)")
    ap.add_argument("--fps", type=float, default=2.0, help="stream frame rate")
    ap.add_argument("--window", type=int, default=2, help="online decoder's window")
    ap.add_argument("--emoji", type=int, default=200, help="OpenMoji glyphs in the picture pool")
    ap.add_argument("--vqa", type=int, default=200, help="easy-VQA test images in the pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "selective"))
    ap.add_argument("--replot", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        print(report(json.loads((out / "results.json").read_text()), out))
        return

    import vljepa
    from vljepa.metrics import cached_visual_tokens

    model = vljepa.load(args.model)
    if model.y_decoder is None:
        raise SystemExit(f"{args.model} has no Y-decoder: python train.py experiment=y_decoder")
    streams = build_streams(build_pool(args.emoji, args.vqa, args.seed), args.streams,
                            *args.seg_frames, tuple(args.segments), args.seed, args.seg_dist)
    frames = [f for s in streams for f in s["frames"]]
    print(f"{len(streams)} streams, {len(frames)} frames", flush=True)
    visual = cached_visual_tokens(model, frames, progress=True)
    emb_all = torch.cat([model.embed_visual(visual[i:i + 256]) for i in range(0, len(visual), 256)])
    embs, at = [], 0
    for s in streams:
        embs.append(emb_all[at:at + len(s["frames"])])
        at += len(s["frames"])
    # every frame's own text, decoded once (uniform sampling picks from it)
    texts_all = [t for i in range(0, len(emb_all), 256) for t in model.decode(emb_all[i:i + 256])]
    frame_texts, at = [], 0
    for s in streams:
        frame_texts.append(texts_all[at:at + len(s["frames"])])
        at += len(s["frames"])

    memo: dict[bytes, str] = {}

    def decode(e: torch.Tensor) -> list[str]:  # the Y-decoder, memoised across settings
        keys = [r.numpy().tobytes() for r in e]
        todo = [i for i, k in enumerate(keys) if k not in memo]
        if todo:
            for i, t in zip(todo, model.decode(e[todo])):
                memo[keys[i]] = t
        return [memo[k] for k in keys]

    points = []
    for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48):
        r = score(streams, [uniform(e, ft, k) for e, ft in zip(embs, frame_texts)], args.fps)
        points.append({"method": "uniform", "setting": f"every {k}"} | r)
    for th in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7):
        r = score(streams, [online(e, decode, th, args.window) for e in embs], args.fps)
        points.append({"method": "online", "setting": f"threshold {th}"} | r)
    for frac in (1 / 2, 1 / 4, 1 / 6, 1 / 8, 1 / 12, 1 / 16, 1 / 24, 1 / 32):
        r = score(streams, [offline(e, decode, max(1, round(frac * len(e)))) for e in embs], args.fps)
        points.append({"method": "offline", "setting": f"1 segment / {round(1 / frac)} frames"} | r)
    for p in points:
        print(json.dumps(p), flush=True)
    res = {"n_streams": len(streams), "frames": len(frames), "fps": args.fps,
           "segments": sum(len(s["captions"]) for s in streams), "points": points,
           "overhead": overhead(model, emb_all, visual), "args": vars(args)}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(report(res, out))


if __name__ == "__main__":
    sys.exit(main())
