"""The web demo (vljepa/demo.py, `vljepa demo`): its handlers without a browser, on the released
checkpoint; then the page itself in headless Chromium (marker `browser`; skipped without
/usr/bin/chromium or playwright). Needs the demo extra (gradio); skipped without it."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the demo extra is not installed: "
                                          "pip install 'vljepa[demo]'")

from conftest import ROOT  # noqa: E402
from vljepa import demo  # noqa: E402
from vljepa.cli import main  # noqa: E402
from vljepa.demo import ERROR, NO_Y_DECODER  # noqa: E402

RELEASED = ROOT / "checkpoints" / "vljepa-easyvqa-lite0"
CHROMIUM = os.environ.get("VLJEPA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "results" / "demo" / "screenshot.png"
SHAPE_QUESTION = "what shape is this?"


@pytest.fixture(scope="module")
def released():
    import vljepa
    return vljepa.load(RELEASED)


@pytest.fixture(scope="module")
def shape_example(released):
    """(image path, true shape) of an easy-VQA test image whose shape the released model names
    when asked "what shape is this?" (not an easy-VQA wording, so the page sees a new one)."""
    import easy_vqa
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    truth = {}
    for q, a, i in zip(questions, answers, image_ids):
        if a in ("circle", "rectangle", "triangle"):
            truth.setdefault(i, a)
    ids = sorted(truth)[:8]
    got, _ = released.answer([paths[i] for i in ids], [SHAPE_QUESTION] * len(ids))
    i = next(i for i, g in zip(ids, got) if g == truth[i])
    return paths[i], truth[i]


class NearestWordDecoder:
    """The released model with a stand-in Y-decoder that "writes" the nearest word of its
    answer vocabulary: the demo's text paths, deterministic and without training one."""

    def __init__(self, model):
        self._model, self.y_decoder = model, "stand-in"
        self._words = model.embed_text(model.answers)  # (C, D)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def decode(self, e):  # (B, D) -> B strings
        return [self._model.answers[int(i)] for i in (e @ self._words.T).argmax(1)]


# ---- the handlers, no browser ----

def test_answer_is_the_models_answer_with_a_chart(released, shape_example):
    image, shape = shape_example
    answer, chart, message = demo.answer_image(released, image, SHAPE_QUESTION, "")
    assert answer == shape == released.answer([image], [SHAPE_QUESTION])[0][0]
    assert chart is not None and len(chart.axes[0].patches) == len(released.answers)
    assert "cosine" in message and "answer vocabulary" in message
    # candidates typed in the page: only those are scored, blanks and repeats dropped
    answer, chart, message = demo.answer_image(released, image, SHAPE_QUESTION,
                                               f" {shape}, , green, {shape} ,yes")
    assert answer == shape and len(chart.axes[0].patches) == 3 and "3 candidates" in message


def test_a_file_that_is_not_an_image_is_a_message(released, tmp_path):
    for name in ("notes.txt", "fake.png"):  # a text file, also under an image's name
        (tmp_path / name).write_text("this is not an image\n")
        answer, chart, message = demo.answer_image(released, str(tmp_path / name),
                                                   SHAPE_QUESTION)
        assert (answer, chart) == ("", None) and message.startswith(ERROR)
        assert f"'{name}' is not an image" in message and str(tmp_path) not in message
    assert "no image" in demo.answer_image(released, None, SHAPE_QUESTION)[2]
    assert demo.zero_shot(released, str(tmp_path / "notes.txt"), "a, b")[1].startswith(ERROR)


@pytest.mark.parametrize("question", ["", "   ", None])
def test_an_empty_question_is_a_message(released, shape_example, question):
    answer, chart, message = demo.answer_image(released, shape_example[0], question)
    assert (answer, chart) == ("", None)
    assert message.startswith(ERROR) and "question is empty" in message


def test_a_huge_image_is_downscaled_and_answered(released, shape_example, tmp_path):
    image, shape = shape_example
    big = Image.open(image).convert("RGB").resize((4000, 3000), Image.Resampling.NEAREST)
    big.save(tmp_path / "huge.png")
    small, note = demo.prepare_image(str(tmp_path / "huge.png"))
    assert small.size == (1024, 768) and "4000x3000" in note
    t = time.perf_counter()
    answer, chart, message = demo.answer_image(released, str(tmp_path / "huge.png"),
                                               "what color is the shape?", "")
    assert answer in released.answers and chart is not None and "downscaled" in message
    assert time.perf_counter() - t < 30


def test_an_image_of_too_many_pixels_is_refused_before_decoding(released, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(demo, "MAX_PIXELS", 1_000_000)
    Image.new("RGB", (2000, 1000), "white").save(tmp_path / "wide.png")
    answer, chart, message = demo.answer_image(released, str(tmp_path / "wide.png"),
                                               SHAPE_QUESTION)
    assert (answer, chart) == ("", None)
    assert message.startswith(ERROR) and "'wide.png' is too large" in message
    assert "2000x1000" in message


def test_describe_needs_a_y_decoder(released, shape_example):
    text, message = demo.describe_image(released, shape_example[0])
    assert text == "" and message == NO_Y_DECODER
    text, message = demo.describe_image(NearestWordDecoder(released), shape_example[0])
    assert text in released.answers and message == ""
    text, message = demo.describe_image(NearestWordDecoder(released), None)
    assert text == "" and message.startswith(ERROR)


def test_zero_shot_probabilities(released, shape_example):
    probs, message = demo.zero_shot(released, shape_example[0], "red circle, blue triangle, "
                                                                "green rectangle")
    assert list(probs) == ["red circle", "blue triangle", "green rectangle"]
    assert sum(probs.values()) == pytest.approx(1, abs=1e-5) and message == ""
    probs, message = demo.zero_shot(released, shape_example[0], "only one")
    assert probs is None and "at least two labels" in message


@pytest.fixture(scope="module")
def colour_scenes(released):
    """Three easy-VQA test images of three colours the released model names: [(path, colour)]."""
    import easy_vqa
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    first: dict[str, list[int]] = {}  # colour -> its first images
    for q, a, i in zip(questions, answers, image_ids):
        if q == "what color is the shape?" and len(first.setdefault(a, [])) < 2:
            first[a].append(i)
    ids = [i for c in sorted(first) for i in first[c]]
    got, _ = released.answer([paths[i] for i in ids], ["what color is the shape?"] * len(ids))
    truth = {i: c for c in first for i in first[c]}
    found: dict[str, str] = {}
    for i, g in zip(ids, got):
        if g == truth[i]:
            found.setdefault(g, paths[i])
    assert len(found) >= 3, found
    return [(p, c) for c, p in list(found.items())[:3]]


def test_video_selective_decoding_against_uniform(released, colour_scenes, tmp_path):
    pytest.importorskip("av")
    from vljepa.video import write_video

    lengths = [3, 4, 3]  # three scenes, one image each, 10 frames at 10 fps
    frames = [Image.open(p).convert("RGB") for (p, _), n in zip(colour_scenes, lengths)
              for _ in range(n)]
    write_video(tmp_path / "scenes.mp4", frames, fps=10)
    fig, rows, message = demo.video_timeline(released, str(tmp_path / "scenes.mp4"),
                                             "what color is the shape?", fps=10,
                                             threshold=0.2, window=2)
    # a decode at the start, then `window - 1` frames after each scene change
    assert [r[1] for r in rows] == [0, 4, 8]
    assert "decodes 3 times" in message and "decodes 10 times" in message
    assert all(r[3] == "(needs a Y-decoder)" for r in rows) and "no Y-decoder" in message
    assert fig is not None and len(fig.axes[0].lines) >= 3 + len(rows)
    # with a Y-decoder, the text at each decode point: the scenes' colours
    _, rows, message = demo.video_timeline(NearestWordDecoder(released),
                                           str(tmp_path / "scenes.mp4"),
                                           "what color is the shape?", fps=10)
    assert [r[3] for r in rows] == [c for _, c in colour_scenes]
    assert "Y-decoder" not in message


def test_a_bad_video_is_a_message(released, tmp_path):
    pytest.importorskip("av")
    (tmp_path / "clip.mp4").write_bytes(b"this is not a video" * 50)
    fig, rows, message = demo.video_timeline(released, str(tmp_path / "clip.mp4"))
    assert (fig, rows) == (None, [])
    assert message.startswith(ERROR) and "'clip.mp4' is not a readable video" in message
    assert str(tmp_path) not in message
    assert "no video" in demo.video_timeline(released, None)[2]


def test_an_unexpected_error_is_a_message_and_the_next_request_is_answered(released,
                                                                            shape_example):
    class Broken(NearestWordDecoder):
        def predict(self, *a, **k):
            raise KeyError("boom")

    run = demo._ui(demo.answer_image, Broken(released))
    answer, chart, message = run(shape_example[0], SHAPE_QUESTION, "")
    assert (answer, chart) == ("", None) and "unexpected error" in message and "boom" in message
    run = demo._ui(demo.answer_image, released)
    assert run(shape_example[0], SHAPE_QUESTION, "")[0] == shape_example[1]


def test_cli_demo_launches_and_says_how_to_install(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(demo, "launch", lambda *a, **k: calls.append((a, k)))
    assert main(["demo", "-m", str(RELEASED), "--port", "7999"]) == 0
    assert calls == [((str(RELEASED),), {"host": "127.0.0.1", "port": 7999})]
    # without gradio: one line naming the extra, exit status 2
    monkeypatch.setitem(sys.modules, "gradio", None)
    monkeypatch.delitem(sys.modules, "vljepa.demo")
    assert main(["demo", "-m", str(RELEASED)]) == 2
    assert "pip install 'vljepa[demo]'" in capsys.readouterr().err


# ---- the page in a real browser ----

@pytest.mark.browser
def test_page_in_headless_chromium(released, shape_example, tmp_path):
    """Upload an easy-VQA image, ask, read the answer off the page; an empty question and a
    file that is not an image give messages in the page and the server keeps answering."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                    "$VLJEPA_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install "
                                   "playwright; the browser comes from apt, not `playwright "
                                   "install`)")
    image, shape = shape_example
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image\n")
    port = demo.free_port()
    app = demo.launch(released, port=port, block=False, quiet=True, name=str(RELEASED.name))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}/")
            upload = page.locator("#image-input input[type=file]")
            question = page.locator("#question textarea")
            answer = page.locator("#answer textarea")
            message = page.locator("#image-message")
            expect = sync_api.expect
            expect.set_options(timeout=30_000)

            def ask(text: str) -> None:
                question.fill(text)
                page.locator("#answer-button").click()

            def upload_image(path) -> None:  # and wait until the page shows it uploaded
                upload.set_input_files(str(path))
                expect(page.locator("#image-input img")).to_have_attribute(
                    "src", re.compile(re.escape(Path(path).name) + "$"))

            upload_image(image)
            ask(SHAPE_QUESTION)
            expect(message).to_contain_text("cosine")
            assert answer.input_value() == shape

            ask("")  # an empty question: a readable message, no answer
            expect(message).to_contain_text("the question is empty")
            assert answer.input_value() == ""

            upload_image(fake)  # passes the browser's check by its name; the server reads it
            ask(SHAPE_QUESTION)
            expect(message).to_contain_text("'fake.png' is not an image")

            upload_image(image)  # and the server still answers
            ask(SHAPE_QUESTION)
            expect(message).to_contain_text("cosine")
            assert answer.input_value() == shape
            expect(page.locator("#scores img")).to_be_visible()  # the bar chart
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            browser.close()
    finally:
        app.close()
    assert SCREENSHOT.stat().st_size > 10_000
