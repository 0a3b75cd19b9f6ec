"""A web demo of a VL-JEPA in the browser (gradio): ``vljepa demo -m MODEL`` or :func:`launch`.

Three tabs, each a thin page over the library:

    Image      an image + a question -> the nearest candidate answer and a bar chart of every
               candidate's cosine to Ŝ_Y (``predict`` against ``embed_text``); "Describe" writes
               text with the Y-decoder, ``decode(embed_image([image]))``
    Zero-shot  an image + comma-separated labels -> ``classify``'s probabilities
    Video      a short video -> selective decoding (:class:`vljepa.selective.SelectiveDecoder`)
               over its sampled frames: a timeline of the embedding drift, the frames where the
               Y-decoder runs and its text there, and the decode count against uniform sampling

Needs the optional ``demo`` extra (``pip install 'vljepa[demo]'``: gradio, matplotlib; the
Video tab also PyAV). Nothing else in the library imports this module.

Bad input never ends in a stack trace: the handlers (:func:`answer_image`,
:func:`describe_image`, :func:`zero_shot`, :func:`video_timeline`) are plain functions of the
model and the page's inputs that return what the page shows plus a message, an error message
(starting with :data:`ERROR`) when the input was wrong; so they also run and test without a
server. Images are downscaled to at most :data:`MAX_SIDE` pixels a side before the model sees
them, so a 4000x3000 photo is answered as fast as a small one.
"""
from __future__ import annotations

import atexit
import html
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from .factory import load
from .inputs import load_image
from .selective import SelectiveDecoder

log = logging.getLogger(__name__)

MAX_SIDE = 1024        # images (and video frames) larger than this a side are downscaled first
MAX_PIXELS = 50_000_000  # image files larger than this are refused before they are decoded
MAX_CANDIDATES = 512   # candidate answers / labels per request, to bound the Y-encoder's work
MAX_VIDEO_FRAMES = 600  # sampled frames per video; embedded 32 at a time
ERROR = "⚠️ "          # error messages start with this
NO_Y_DECODER = ("This model has no Y-decoder, so it cannot write text (it answers by choosing "
                "among candidates). Train one with `python train.py experiment=y_decoder "
                "model.name_or_path=<this model>`.")
# what bad input raises in the library (vljepa.inputs, VLJEPA's checks, vljepa.video)
_INPUT_ERRORS = (FileNotFoundError, ValueError, TypeError, RuntimeError, ImportError,
                 Image.DecompressionBombError)  # the last: a huge image given as bytes / array


# ---- helpers ----

def _error(e: BaseException | str) -> str:
    return ERROR + str(e)


def parse_list(text: str | None, what: str = "items") -> list[str]:
    """Comma-separated ``text`` -> its non-blank items, stripped, first occurrence kept.

    Raises ValueError for more than :data:`MAX_CANDIDATES` items (``what`` names them)."""
    seen: dict[str, None] = {}
    for item in (text or "").split(","):
        if item.strip():
            seen.setdefault(item.strip())
    if len(seen) > MAX_CANDIDATES:
        raise ValueError(f"{len(seen)} {what}: at most {MAX_CANDIDATES} please")
    return list(seen)


def prepare_image(image: Any) -> tuple[Image.Image, str]:
    """What the page uploaded (a file path, PIL image or array; None for nothing) -> (RGB PIL
    image of at most :data:`MAX_SIDE` pixels a side, a note saying so when it was downscaled,
    else "").

    Raises:
        ValueError: no image; a file that is not a readable image (names the file); an image
            file of more than :data:`MAX_PIXELS` pixels (checked before decoding it).
        FileNotFoundError, TypeError: as :func:`vljepa.inputs.load_image`.
    """
    if image is None or (isinstance(image, str) and not image):
        raise ValueError("no image: upload one or pick an example")
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        too_large = (f"{Path(image).name!r} is too large: at most {MAX_PIXELS / 1e6:g} "
                     "megapixels please")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(image) as header:  # reads the size only
                    w, h = header.size
        except Image.DecompressionBombError:
            raise ValueError(too_large) from None
        except Exception:  # not an image: load_image below says so
            w = h = 0
        if w * h > MAX_PIXELS:
            raise ValueError(f"{too_large} (it is {w}x{h})")
    try:
        img = load_image(image)
    except ValueError as e:
        if isinstance(image, (str, os.PathLike)):  # an upload: name the file, not the temp path
            raise ValueError(f"{Path(image).name!r} is not an image this demo can read (PNG, "
                             "JPEG, GIF, BMP, WebP, ...): upload an image file") from e
        raise
    if max(img.size) <= MAX_SIDE:
        return img, ""
    small = ImageOps.contain(img, (MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return small, (f"the {img.width}x{img.height} image was downscaled to "
                   f"{small.width}x{small.height} first")


def check_question(question: str | None) -> str:
    """The question, stripped; ValueError when it is empty."""
    if not question or not question.strip():
        raise ValueError("the question is empty: type one, e.g. 'what shape is this?'")
    return question.strip()


def scores_figure(candidates: Sequence[str], scores: Sequence[float], top: int = 20) -> Figure:
    """A horizontal bar chart of the ``top`` best candidates' cosines, best on top, the chosen
    (first) one highlighted. ``scores`` are cosines, one per candidate."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top]
    names = [candidates[i] for i in order][::-1]
    values = [float(scores[i]) for i in order][::-1]
    fig = Figure(figsize=(6, 0.32 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    colors = ["#b0b8c4"] * (len(names) - 1) + ["#ff7c00"]
    ax.barh(names, values, color=colors)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3f}", va="center", ha="left" if v >= 0 else "right", fontsize=8)
    lo, hi = min(0.0, min(values)), max(0.0, max(values))
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - 0.2 * span if lo < 0 else 0.0, hi + 0.2 * span)  # room for the numbers
    ax.axvline(0, color="black", linewidth=0.5)
    more = f" (top {top} of {len(scores)})" if len(scores) > top else ""
    ax.set_xlabel(f"cosine(Ŝ_Y, S_Y(candidate)){more}")
    ax.tick_params(axis="y", labelsize=9)
    return fig


# ---- handlers: (model, the page's inputs) -> (what the page shows..., message) ----

@torch.no_grad()
def answer_image(model, image: Any, question: str | None, candidates: str | None = ""
                 ) -> tuple[str, Figure | None, str]:
    """Answer a question about one image by the nearest candidate (as :meth:`VLJEPA.answer`).

    Args:
        image: a file path, PIL image or array (what the page's image input gives); None if none.
        question: the question text.
        candidates: comma-separated candidate answers; empty uses the model's saved answer
            vocabulary (``model.answers``).
    Returns:
        (the chosen answer, or "" on an error; a bar chart of the candidates' cosines
        cos(Ŝ_Y (1, D), S_Y (C, D)), or None; a message: the score and the candidate source, or
        an error starting with :data:`ERROR` for bad input: no image, a file that is not an
        image, an empty question, no candidates).
    """
    try:
        img, note = prepare_image(image)
        question = check_question(question)
        cands = parse_list(candidates, "candidates")
        source = f"{len(cands)} candidates given"
        if not cands:
            if not model.answers:
                raise ValueError("this model has no saved answer vocabulary: type candidate "
                                 "answers, comma-separated")
            cands = list(model.answers)
            source = f"{len(cands)} candidates: the model's answer vocabulary"
        sims = (model.predict([img], [question]) @ model.embed_text(cands).T)[0]  # (C,)
    except _INPUT_ERRORS as e:
        return "", None, _error(e)
    best = int(sims.argmax())
    message = f"cosine {float(sims[best]):.3f}; {source}"
    return cands[best], scores_figure(cands, sims.tolist()), message + (f"; {note}" if note else "")


@torch.no_grad()
def describe_image(model, image: Any) -> tuple[str, str]:
    """Text for one image from the Y-decoder: ``model.decode(model.embed_image([image]))``.

    Returns:
        (the text, or ""; a message: :data:`NO_Y_DECODER` when the model has none, an error
        starting with :data:`ERROR` for bad input, else "").
    """
    if model.y_decoder is None:
        return "", NO_Y_DECODER
    try:
        img, note = prepare_image(image)
        return model.decode(model.embed_image([img]))[0], note
    except _INPUT_ERRORS as e:
        return "", _error(e)


@torch.no_grad()
def zero_shot(model, image: Any, labels: str | None) -> tuple[dict[str, float] | None, str]:
    """Zero-shot classification of one image among comma-separated ``labels``
    (:meth:`VLJEPA.classify`, bare labels as templates).

    Returns:
        ({label: probability} summing to 1, or None on an error; a message, an error starting
        with :data:`ERROR` for no image, a non-image file or fewer than two labels).
    """
    try:
        img, note = prepare_image(image)
        names = parse_list(labels, "labels")
        if len(names) < 2:
            raise ValueError("give at least two labels, comma-separated, e.g. 'red circle, "
                             "blue triangle'")
        probs = model.classify([img], names)[0]  # (C,)
    except _INPUT_ERRORS as e:
        return None, _error(e)
    return {n: float(p) for n, p in zip(names, probs)}, note


@torch.no_grad()
def video_timeline(model, video: str | os.PathLike | None, question: str | None = "",
                   fps: float = 2.0, threshold: float = 0.2, window: int = 2,
                   max_frames: int = 120) -> tuple[Figure | None, list[list], str]:
    """Selective decoding over a video's sampled frames, for the page.

    The frames (``fps`` per second, at most ``max_frames``) are embedded in one batch, as
    ``predict`` with ``question`` or ``embed_image`` without one, and fed to a
    :class:`~vljepa.selective.SelectiveDecoder` (``threshold``, ``window``) one by one. A frame's
    drift is 1 - cos(its embedding, the last decoded embedding), the detector's own quantity
    (0 for the first frame, which is always decoded). Without a Y-decoder the decode points are
    still found (they need no text), only the text is missing.

    Returns:
        (a matplotlib timeline: drift against time, the threshold, and the decode points with
        their text, or None on an error; table rows [time s, frame, drift, text] per decode;
        a message: decodes against uniform sampling (one decode per frame), or an error
        starting with :data:`ERROR` for no video, an unreadable file, no PyAV, bad settings).
    """
    try:
        if not video:
            raise ValueError("no video: upload one (mp4, webm, avi, ...) or pick the example")
        if not 1 <= int(max_frames) <= MAX_VIDEO_FRAMES:
            raise ValueError(f"max frames must be 1..{MAX_VIDEO_FRAMES}, got {max_frames}")
        question = (question or "").strip()
        times, emb = _embed_video(model, video, float(fps), int(max_frames), question)
        has_text = model.y_decoder is not None
        last: list[torch.Tensor] = []  # the embedding the decoder last received, (D,)

        def decode(e: torch.Tensor) -> list[str]:  # (1, D) -> [text]
            last[:] = [e[0]]
            return model.decode(e) if has_text else [""]

        sd = SelectiveDecoder(model, decode=decode, threshold=float(threshold),
                              window=int(window))
        drift, points = [], []
        for i, e in enumerate(emb):
            drift.append(1 - float(e @ last[0]) if last else 0.0)
            text = sd.step(e)
            if text is not None:
                points.append((i, text))
    except _INPUT_ERRORS as e:
        return None, [], _error(e)
    T, K = len(times), sd.n_decodes
    fig = _timeline_figure(times, drift, points, float(threshold), sd.release, has_text)
    rows = [[round(times[i], 2), i, round(drift[i], 3), text if has_text else "(needs a Y-decoder)"]
            for i, text in points]
    message = (f"{T} frames at {float(fps):g} per second ({times[-1]:.1f} s): selective decoding "
               f"decodes {K} times; uniform sampling (one decode per frame) decodes {T} times, "
               f"{T / K:.1f}x as many.")
    if question:
        message += f" Frames embedded as answers to {question!r}."
    if not has_text:
        message += (" This model has no Y-decoder: the decode points are shown, their text "
                    "needs one (`python train.py experiment=y_decoder "
                    "model.name_or_path=<this model>`).")
    return fig, rows, message


def _embed_video(model, video: str | os.PathLike, fps: float, max_frames: int,
                 question: str, batch_size: int = 32) -> tuple[list[float], torch.Tensor]:
    """A video's sampled frames -> (times in seconds, (T, D) unit vectors: ``predict`` with
    ``question``, or ``embed_image`` when it is ""), ``batch_size`` frames in memory at a time.
    Raises FileNotFoundError / ValueError naming the file (not its temporary path), ImportError
    without PyAV."""
    from .video import iter_frames  # PyAV: the video extra, needed only by the Video tab

    def embed(frames: list) -> torch.Tensor:
        return (model.predict(frames, [question] * len(frames)) if question
                else model.embed_image(frames))

    times, out, batch = [], [], []
    try:
        for t, frame in iter_frames(video, fps=fps, max_frames=max_frames):
            times.append(t)
            batch.append(ImageOps.contain(frame, (MAX_SIDE, MAX_SIDE))
                         if max(frame.size) > MAX_SIDE else frame)
            if len(batch) == batch_size:
                out.append(embed(batch))
                batch = []
    except (FileNotFoundError, ValueError) as e:  # name the upload, not its temp path
        reason = re.sub(r"\[Errno -?\d+\] |: '[^']*'$", "", str(e))  # FFmpeg's noise
        raise type(e)(reason.replace(str(video), Path(video).name)) from e
    if batch:
        out.append(embed(batch))
    if not out:
        raise ValueError(f"{Path(video).name!r} holds no video frames")
    return times, torch.cat(out)


def _timeline_figure(times: Sequence[float], drift: Sequence[float],
                     points: Sequence[tuple[int, str]], threshold: float, release: float,
                     has_text: bool) -> Figure:
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(times, drift, marker=".", color="#3b6fb6", label="drift: 1 - cos(frame, last decoded)")
    ax.axhline(threshold, color="#d62728", linestyle="--", linewidth=1, label="threshold")
    ax.axhline(release, color="#d62728", linestyle=":", linewidth=1, label="release")
    top = max(max(drift), threshold) * 1.05 + 0.02
    for k, (i, text) in enumerate(points):
        ax.axvline(times[i], color="#2ca02c", alpha=0.5, linewidth=1)
        ax.plot([times[i]], [drift[i]], "o", color="#2ca02c",
                label="decode" if k == 0 else None)
        label = (text[:28] + "…" if len(text) > 28 else text) if has_text else f"#{k + 1}"
        ax.text(times[i], top, " " + label, rotation=60, fontsize=8, va="bottom", ha="left")
    ax.set_ylim(bottom=0, top=top * 1.6 if points else top)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("embedding drift")
    ax.legend(loc="upper right", fontsize=7)
    return fig


# ---- the page ----

def _example_files(directory: Path) -> tuple[list[str], str | None]:
    """A few easy-VQA test images copied into ``directory`` (gradio serves temp files, not
    site-packages), and a short synthetic clip of them when PyAV is there: (images, video)."""
    try:
        import easy_vqa  # the offline extra; without it the page just has no examples
    except ImportError:
        return [], None
    paths = easy_vqa.get_test_image_paths()  # {image id: path}
    images = []
    for i in sorted(paths)[:4]:
        src = paths[i]
        dst = directory / f"easy_vqa_test_{i}{Path(src).suffix}"
        shutil.copyfile(src, dst)
        images.append(str(dst))
    from .video import write_video  # imports PyAV only when called

    frames = [load_image(p).resize((128, 128), Image.Resampling.NEAREST)
              for p in images[:3] for _ in range(6)]
    for name, codec in (("easy_vqa_scenes.webm", "libvpx"),  # VP8: browsers play it
                        ("easy_vqa_scenes.mp4", "mpeg4")):   # every FFmpeg has this one
        try:
            write_video(directory / name, frames, fps=3, codec=codec)
            return images, str(directory / name)
        except Exception as e:  # no PyAV (the tab still takes uploads), or no such encoder
            log.info("no %s example video: %s", codec, e)
    return images, None


def image_input(**kw) -> gr.Image:
    """A ``gr.Image`` giving the handler the uploaded file's path, and leaving the reading to
    the handler: a file that Pillow cannot open (a text file named .png) reaches
    :func:`prepare_image`, which says so in the page, instead of failing in gradio's
    preprocessing with a bare "Error". (The browser already refuses files that do not look like
    images by their name: "Invalid file type".)"""
    component = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kw)
    preprocess = component.preprocess

    def preprocess_or_path(payload):
        try:
            return preprocess(payload)
        except Exception:  # Pillow cannot open it: the handler explains
            return None if payload is None or payload.path is None else str(payload.path)

    # per instance, not a subclass: gradio's frontend draws components by their class
    component.preprocess = preprocess_or_path
    return component


def _describe_model(model, name: str | None) -> str:
    cfg = model.config
    vocab = f"{len(model.answers)} answers" if model.answers else "none saved"
    dec = "yes" if model.y_decoder is not None else "none (text needs one)"
    return (f"**Model** `{name or 'in memory'}` · X-encoder `{cfg.x_encoder.name}` · "
            f"Y-encoder `{cfg.y_encoder.name}` · D = {cfg.embed_dim} · answer vocabulary: "
            f"{vocab} · Y-decoder: {dec}")


def _ui(fn: Callable, model) -> Callable:
    """``fn(model, *inputs)`` for gradio: its error message also shows as a warning toast, and an
    unexpected exception becomes a message in the page (its traceback goes to the server log)."""
    def run(*inputs):
        try:
            out = fn(model, *inputs)
        except Exception as e:  # a bug, not bad input: keep serving, say so in the page
            log.exception("demo handler %s failed", fn.__name__)
            empty = {answer_image: ("", None), describe_image: ("",), zero_shot: (None,),
                     video_timeline: (None, [])}[fn]
            return (*empty, _error(f"unexpected error ({type(e).__name__}: {e}); details are "
                                   "in the server log"))
        if isinstance(out[-1], str) and out[-1].startswith(ERROR):
            gr.Warning(html.escape(out[-1][len(ERROR):]))
        return out
    run.__name__ = fn.__name__
    return run


def build_demo(model, name: str | None = None) -> gr.Blocks:
    """The demo page for a loaded VL-JEPA (eval mode): the Image, Zero-shot and Video tabs.

    Args:
        model: a :class:`vljepa.VLJEPA`, e.g. from :func:`vljepa.load`.
        name: what the page calls the model (its path or hub id).
    Returns:
        the ``gradio.Blocks``, not launched (``.launch()`` it, or use :func:`launch`). Example
        files are copied to a temporary directory removed at exit.
    """
    tmp = Path(tempfile.mkdtemp(prefix="vljepa-demo-"))
    atexit.register(shutil.rmtree, tmp, True)
    images, video = _example_files(tmp)
    vocab = ", ".join(model.answers or [])
    with gr.Blocks(title="VL-JEPA demo", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# VL-JEPA\nA VL-JEPA predicts the *embedding* of the answer and picks the "
                    "nearest candidate text; it writes text only when asked, with its Y-decoder.")
        gr.Markdown(_describe_model(model, name), elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                with gr.Row():
                    with gr.Column():
                        image = image_input(label="Image", elem_id="image-input", height=280)
                        question = gr.Textbox(label="Question", placeholder="what shape is this?",
                                              elem_id="question")
                        candidates = gr.Textbox(
                            label="Candidate answers (comma-separated; empty = the model's "
                                  "answer vocabulary)",
                            placeholder=vocab[:200] or "red, blue, green", elem_id="candidates")
                        with gr.Row():
                            ask = gr.Button("Answer", variant="primary", elem_id="answer-button")
                            describe = gr.Button("Describe (Y-decoder)", elem_id="describe-button")
                    with gr.Column():
                        answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                        message = gr.Markdown(elem_id="image-message")
                        chart = gr.Plot(label="Candidates' cosine to the predicted embedding",
                                        format="png", elem_id="scores")
                        description = gr.Textbox(label="Description (Y-decoder)",
                                                 interactive=False, elem_id="description")
                if images:
                    qs = ["what shape is this?", "what color is the shape?",
                          "is there a circle in the image?", "what shape is this?"]
                    gr.Examples([[p, q] for p, q in zip(images, qs)], [image, question],
                                label="easy-VQA test images")
                for trigger in (ask.click, question.submit):
                    trigger(_ui(answer_image, model), [image, question, candidates],
                            [answer, chart, message])
                describe.click(_ui(describe_image, model), [image], [description, message])

            with gr.Tab("Zero-shot", id="zero-shot"):
                how = (f"the prediction for the model's default prompt "
                       f"{model.config.default_prompt!r}" if model.config.default_prompt
                       else "the query-free prediction; a model trained only with questions, "
                            "as the easy-VQA release, is weak at it")
                gr.Markdown(f"`classify`: the image's embedding (`embed_image`: {how}) against "
                            "each label's text embedding, softmax over the labels.")
                with gr.Row():
                    with gr.Column():
                        zs_image = image_input(label="Image", elem_id="zs-image-input", height=280)
                        labels = gr.Textbox(label="Labels (comma-separated)",
                                            value="red circle, blue triangle, green rectangle",
                                            elem_id="labels")
                        classify = gr.Button("Classify", variant="primary",
                                             elem_id="classify-button")
                    with gr.Column():
                        probs = gr.Label(label="Probabilities", num_top_classes=10,
                                         elem_id="probabilities")
                        zs_message = gr.Markdown(elem_id="zs-message")
                if images:
                    gr.Examples([[p] for p in images], [zs_image], label="easy-VQA test images")
                for trigger in (classify.click, labels.submit):
                    trigger(_ui(zero_shot, model), [zs_image, labels], [probs, zs_message])

            with gr.Tab("Video", id="video"):
                gr.Markdown("Selective decoding: each sampled frame gives an embedding for the "
                            "price of a predictor pass; the Y-decoder runs only where the "
                            "embedding drifts past the threshold for `window` frames in a row.")
                with gr.Row():
                    with gr.Column():
                        vid = gr.Video(label="Video (short)", sources=["upload"],
                                       elem_id="video-input", height=240)
                        v_question = gr.Textbox(label="Question per frame (optional; empty = "
                                                      "query-free embed_image)",
                                                elem_id="video-question")
                        with gr.Row():
                            fps = gr.Slider(0.5, 10, value=2, step=0.5, label="frames per second")
                            max_frames = gr.Slider(1, MAX_VIDEO_FRAMES, value=120, step=1,
                                                   label="at most frames")
                        with gr.Row():
                            threshold = gr.Slider(0.01, 1.0, value=0.2, step=0.01,
                                                  label="threshold (cosine distance)")
                            window = gr.Slider(1, 8, value=2, step=1, label="window (frames)")
                        run = gr.Button("Run selective decoding", variant="primary",
                                        elem_id="video-button")
                    with gr.Column():
                        v_message = gr.Markdown(elem_id="video-message")
                        timeline = gr.Plot(label="Embedding drift and decode points",
                                           format="png", elem_id="timeline")
                        table = gr.Dataframe(headers=["time (s)", "frame", "drift", "text"],
                                             label="Decodes", interactive=False,
                                             elem_id="decodes")
                if video:
                    gr.Examples([[video, ""]], [vid, v_question],
                                label="a synthetic clip of three easy-VQA images")
                run.click(_ui(video_timeline, model),
                          [vid, v_question, fps, threshold, window, max_frames],
                          [timeline, table, v_message])
    demo.queue(default_concurrency_limit=1, max_size=32)  # one request at a time on the CPU
    return demo


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(model_path: Any, host: str = "127.0.0.1", port: int = 7860,
           max_file_size: str | int | None = "100mb", quiet: bool = False,
           block: bool = True, name: str | None = None) -> gr.Blocks:
    """Load a model and serve its demo page at ``http://host:port``.

    Args:
        model_path: a saved model directory, Lightning ``.ckpt`` or hub repo id
            (:func:`vljepa.load`), or a model already loaded.
        host: the interface to listen on ("0.0.0.0" for every one; the default serves this
            machine only).
        max_file_size: uploads larger than this are refused in the page (gradio's syntax).
        block: serve until interrupted (Ctrl-C); False returns at once with the server running
            in a background thread (stop it with ``.close()``).
        name: what the page calls the model (default: ``model_path`` when it is a path).
    Returns:
        the running ``gradio.Blocks``.
    Raises:
        FileNotFoundError, ValueError: as :func:`vljepa.load`.
        RuntimeError: the port cannot be served (in use, or not allowed).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline demo
    if isinstance(model_path, (str, os.PathLike)):
        model, name = load(model_path), name or str(model_path)
    else:
        model = model_path
    demo = build_demo(model, name=name)
    try:
        demo.launch(server_name=host, server_port=port, show_error=True, quiet=quiet,
                    prevent_thread_lock=not block, max_file_size=max_file_size, ssr_mode=False,
                    footer_links=[], mcp_server=False)
    except OSError as e:
        raise RuntimeError(f"cannot serve the demo on {host}:{port}: {e}") from e
    return demo
