"""ONNX export (vljepa.serving.onnx_export) and torch-free serving (onnx_runtime, ``vljepa serve
DIR``): the released model's answers and embeddings equal the torch model's (cosine within
1e-4), and the server imports no torch and stays under 200 MiB."""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("tokenizers")
easy_vqa = pytest.importorskip("easy_vqa")

from test_serve import MODEL, Server, post  # noqa: E402 - a shared subprocess helper

pytestmark = pytest.mark.skipif(not (MODEL / "model.safetensors").is_file(),
                                reason="the released checkpoint is not in this checkout")


@pytest.fixture(scope="module")
def torch_model():
    import vljepa
    return vljepa.load(MODEL)


@pytest.fixture(scope="module")
def export_dir(torch_model, tmp_path_factory) -> Path:
    from vljepa.serving.onnx_export import export_onnx
    questions = sorted(set(easy_vqa.get_train_questions()[0]) | set(easy_vqa.get_test_questions()[0]))
    d = tmp_path_factory.mktemp("onnx")
    export_onnx(torch_model, d, questions)
    return d


@pytest.fixture(scope="module")
def test_set() -> list[tuple[str, str, str]]:
    """(image path, question, answer): 64 easy-VQA test questions."""
    paths = easy_vqa.get_test_image_paths()
    qs, answers, ids = easy_vqa.get_test_questions()
    return [(paths[i], q, a) for q, a, i in list(zip(qs, answers, ids))[::31][:64]]


def test_parity_with_torch_on_easy_vqa(torch_model, export_dir, test_set):
    from vljepa.inputs import load_image
    from vljepa.serving.onnx_runtime import OnnxBackend

    b = OnnxBackend(export_dir)
    assert b.query_source == "text_hidden" and b.candidates == torch_model.answers
    images = [load_image(p) for p, _, _ in test_set]
    questions = [q for _, q, _ in test_set]
    px = np.stack([b.preprocess(im) for im in images])  # (B, H, W, 3) uint8, resized, cropped
    assert px.dtype == np.uint8 and px.shape[1:] == (*b.image_size, 3)
    # preprocessing in numpy (resize and crop per image, normalisation per batch) equals the
    # X-encoder's own, bit for bit
    np.testing.assert_array_equal(b.float_pixels(px[:3]), np.stack(
        [torch_model.x_encoder.transform(im).numpy() for im in images[:3]]))
    ref = torch_model.predict(images, questions).numpy()
    assert (b.predict(px, questions) * ref).sum(1).min() >= 1 - 1e-4
    answers, scores = b.answer(px, questions)
    ref_answers, ref_scores = torch_model.answer(images, questions)
    assert answers == ref_answers
    assert sum(a == t for a, (_, _, t) in zip(answers, test_set)) >= 63
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
    ref = torch_model.embed_image(images).numpy()
    assert (b.embed_images(px) * ref).sum(1).min() >= 1 - 1e-4
    # the X-encoder and the Y-encoder run in chunks of run_batch (8) items: the same rows as
    # one run of all 64 images / 20 texts of several lengths
    assert b.run_batch == 8 and len(px) == 64
    whole = OnnxBackend(export_dir, run_batch=64)
    np.testing.assert_allclose(b.visual_tokens(px), whole.visual_tokens(px), atol=1e-5)
    texts20 = [f"a {'very ' * (i % 5)}red circle number {i}" for i in range(20)]
    np.testing.assert_allclose(b.embed_texts(texts20), whole.embed_texts(texts20), atol=1e-5)
    with pytest.raises(ValueError, match="run_batch"):
        OnnxBackend(export_dir, run_batch=0)
    # questions and texts the export does not store: read with the Y-encoder graph
    new_q = ["what colour is the shape?", "Is there a BLUE circle in the picture?"] * 4
    ref = torch_model.predict(images[:8], new_q).numpy()
    assert (b.predict(px[:8], new_q) * ref).sum(1).min() >= 1 - 1e-4
    texts = ["a red circle", "  Grinning Face ", "the shape is a triangle and it is teal", "no"]
    assert (b.embed_texts(texts) * torch_model.embed_text(texts).numpy()).sum(1).min() >= 1 - 1e-4
    assert b.count_tokens(["a red circle"]) == [5]


def test_server_runs_without_torch_under_200_mib(torch_model, export_dir, test_set):
    code = ("import sys, vljepa.cli, vljepa.serving.http, vljepa.serving.onnx_runtime; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
    assert not [ln for ln in out.stderr.splitlines() if ln.rstrip().endswith(("| torch", "| torch._C"))]
    server = Server([str(export_dir), "--name", "onnx-lite0"]).wait()
    try:
        urls = ["data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
                for p, _, _ in test_set]
        r = post(server.url, "/v1/answer", {"images": urls, "questions": [q for _, q, _ in test_set]},
                 headers={})
        assert r.status_code == 200, r.text
        ref, _ = torch_model.answer([p for p, _, _ in test_set], [q for _, q, _ in test_set])
        assert [d["answer"] for d in r.json()["data"]] == ref
        r = post(server.url, "/v1/embeddings", {"input": ["a red circle", urls[0]]}, headers={})
        got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
        assert float(got[0] @ torch_model.embed_text(["a red circle"]).numpy()[0]) >= 1 - 1e-4
        assert float(got[1] @ torch_model.embed_image([test_set[0][0]]).numpy()[0]) >= 1 - 1e-4
        r = post(server.url, "/v1/classify", {"image": urls[0], "labels": ["red", "blue"]},
                 headers={})
        assert r.status_code == 200
        health = post_get(server.url + "/health")
        assert health["backend"] == "onnx" and health["torch_imported"] is False
        assert health["peak_rss_mib"] <= 200, {k: health[k] for k in ("peak_rss_mib", "torch_imported")}
    finally:
        server.stop()
    assert server.proc.returncode == 0


def post_get(url: str) -> dict:
    import requests
    return requests.get(url, timeout=30).json()


def test_export_refuses_what_it_cannot_export(tmp_path):
    import vljepa
    from vljepa.serving.onnx_export import export_onnx
    linear = vljepa.create_model(predictor={"kind": "linear"})
    with pytest.raises(ValueError, match="predictor kinds"):
        export_onnx(linear, tmp_path / "x", ["what?"])
    assert not (tmp_path / "x" / "onnx.json").exists()
