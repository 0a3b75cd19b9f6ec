"""``vljepa serve`` (vljepa.serving.http): the released model over HTTP, as clients see it.

Two servers run as subprocesses on free loopback ports, started together: the full model (with
an API key, small limits so that the limits can be hit), and a lean serving bundle that is
stopped with SIGTERM while a request is in flight.
"""
from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
easy_vqa = pytest.importorskip("easy_vqa")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "checkpoints" / "vljepa-easyvqa-lite0"
NAME = "vljepa-easyvqa-lite0"
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.skipif(not (MODEL / "model.safetensors").is_file(),
                                reason="the released checkpoint is not in this checkout")


class Server:
    """A ``vljepa serve`` subprocess; ``url`` once it prints that it serves."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("VLJEPA_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "vljepa.cli", "serve", *args,
                                      "--port", "0"], stderr=subprocess.PIPE, text=True,
                                     env=env, cwd=ROOT)
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if " serving " in line and " at http://" in line:
                self.url = line.rsplit(" at ", 1)[1].strip()
                self._ready.set()
        self._ready.set()

    def wait(self, timeout: float = 120) -> Server:
        self._ready.wait(timeout)
        assert self.url, f"the server did not start: {''.join(self.lines)[-3000:]}"
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def data_url(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def png_url(w: int, h: int) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, str, str]]:
    """(image data URL, question, the Python API's answer) for the first 8 easy-VQA test
    questions: the server must answer as ``vljepa.load(MODEL).answer`` does (the model itself
    gets some questions wrong: 99.9% on the test set)."""
    from PIL import Image

    import vljepa

    paths = easy_vqa.get_test_image_paths()
    qs, _, ids = easy_vqa.get_test_questions()
    qs, ids = qs[:8], ids[:8]
    answers, _ = vljepa.load(MODEL).answer([Image.open(paths[i]).convert("RGB") for i in ids], qs)
    return [(data_url(paths[i]), q, a) for q, a, i in zip(qs, answers, ids)]


@pytest.fixture(scope="module")
def lean_bundle(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lean-bundle")
    from vljepa.cli import main
    assert main(["export-serving", str(MODEL), str(d), "--easy-vqa"]) == 0
    return d


@pytest.fixture(scope="module")
def servers(lean_bundle):
    """(the full model's server, the lean bundle's), started together."""
    full = Server([str(MODEL), "--api-key", KEY, "--max-items", "16", "--max-request-mb", "1",
                   "--max-image-pixels", "20000", "--max-wait-ms", "20"])
    lean = Server([str(lean_bundle), "--lean", "--name", NAME, "--max-batch-size", "2"])
    try:
        yield full.wait(), lean.wait()
    finally:
        full.stop()
        lean.stop()


@pytest.fixture(scope="module")
def server(servers) -> str:
    return servers[0].url


def post(url: str, path: str, body, headers=AUTH, **kw):
    if isinstance(body, (bytes, str)):
        return requests.post(url + path, data=body, headers=headers, timeout=60, **kw)
    return requests.post(url + path, json=body, headers=headers, timeout=60, **kw)


def test_answers_classifies_predicts_and_embeds(server, samples):
    url, question, answer = samples[0]
    r = post(server, "/v1/answer", {"images": [s[0] for s in samples],
                                    "questions": [s[1] for s in samples], "top_k": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == NAME
    assert [d["answer"] for d in out["data"]] == [s[2] for s in samples]
    for d in out["data"]:
        assert len(d["top_k"]) == 3 and d["top_k"][0] == {"answer": d["answer"], "score": d["score"]}
        assert d["top_k"][0]["score"] >= d["top_k"][1]["score"] >= d["top_k"][2]["score"]
    r = post(server, "/v1/answer", {"image": url, "question": question,
                                    "candidates": ["circle", "rectangle", "triangle"]})
    assert r.status_code == 200 and r.json()["data"][0]["answer"] in ("circle", "rectangle", "triangle")
    labels = ["a red shape", "a blue shape", "a green shape"]
    r = post(server, "/v1/classify", {"image": url, "labels": labels,
                                      "templates": ["{}", "a picture of {}"], "top_k": 2})
    assert r.status_code == 200, r.text
    d = r.json()["data"][0]
    assert len(d["probabilities"]) == 3 and abs(sum(d["probabilities"]) - 1) < 1e-4
    assert d["label"] == labels[int(np.argmax(d["probabilities"]))] and len(d["top_k"]) == 2
    r = post(server, "/v1/predict", {"image": url, "question": question})
    e = np.array(r.json()["data"][0]["embedding"], np.float32)
    assert e.shape == (256,) and abs(np.linalg.norm(e) - 1) < 1e-4
    r = post(server, "/v1/predict", {"image": url, "question": question, "encoding_format": "base64"})
    e64 = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(e64, e, atol=1e-6)
    # embeddings: texts through the Y-encoder, images through the query-free prediction, in order
    r = post(server, "/v1/embeddings", {"input": ["a red circle", url, {"image": url},
                                                  {"text": "a blue square"}], "model": NAME})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1, 2, 3]
    emb = np.array([d["embedding"] for d in out["data"]], np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-6)  # the same image, two spellings
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0


def test_openai_client_gets_embeddings(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    texts = ["a red circle", "a blue square", "yes"]
    res = client.embeddings.create(model=NAME, input=texts)  # the client asks for base64
    assert res.model == NAME and len(res.data) == 3 and res.usage.total_tokens > 0
    got = np.array([d.embedding for d in res.data], np.float32)
    assert got.shape == (3, 256)
    ref = post(server, "/v1/embeddings", {"input": texts, "encoding_format": "float"}).json()
    np.testing.assert_allclose(got, np.array([d["embedding"] for d in ref["data"]]), atol=1e-6)
    one = client.embeddings.create(model=NAME, input="a red circle", encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, got[0], atol=1e-6)
    assert [m.id for m in client.models.list()] == [NAME]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=NAME, input="x")


def bad_requests(samples) -> list[tuple[str, object, int, str]]:
    """(path, body, expected status, a word the error must contain)."""
    url, q, _ = samples[0]
    return [
        ("/v1/embeddings", b"{not json", 400, "malformed JSON"),
        ("/v1/embeddings", b"", 400, "empty"),
        ("/v1/embeddings", b"[1, 2]", 400, "JSON object"),
        ("/v1/embeddings", {}, 400, "input"),
        ("/v1/embeddings", {"input": []}, 400, "empty"),
        ("/v1/embeddings", {"input": ""}, 400, "empty"),
        ("/v1/embeddings", {"input": 5}, 400, "input"),
        ("/v1/embeddings", {"input": [[101, 102]]}, 400, "token ids"),
        ("/v1/embeddings", {"input": [None]}, 400, "input[0]"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ("/v1/embeddings", {"input": "x", "dimensions": 64}, 400, "dimensions"),
        ("/v1/embeddings", {"input": "x", "model": "gpt-4"}, 404, "gpt-4"),
        ("/v1/embeddings", {"input": "x", "model": 3}, 400, "model"),
        ("/v1/embeddings", {"input": "x", "inputs": "y"}, 400, "inputs"),
        ("/v1/embeddings", {"input": ["x"] * 17}, 400, "limit"),
        ("/v1/embeddings", {"input": "data:image/png;base64,!!!notbase64"}, 400, "base64"),
        ("/v1/embeddings", {"input": [{"image": base64.b64encode(b"not an image").decode()}]},
         400, "input[0].image"),
        ("/v1/embeddings", {"input": [{"image": "https://example.com/a.png"}]}, 400, "remote"),
        ("/v1/embeddings", {"input": [png_url(200, 200)]}, 413, "pixels"),
        ("/v1/embeddings", {"input": "x" * (2 * 2 ** 20)}, 413, "limit"),
        ("/v1/embeddings", {"input": [{"image": 7}]}, 400, "base64"),
        ("/v1/answer", {"image": url}, 400, "question"),
        ("/v1/answer", {"image": url, "question": ["a", "b"]}, 400, "question"),
        ("/v1/answer", {"image": url, "question": "   "}, 400, "empty"),
        ("/v1/answer", {"images": [url, url], "questions": [q]}, 400, "2 images but 1"),
        ("/v1/answer", {"image": url, "images": [url], "question": q}, 400, "exactly one"),
        ("/v1/answer", {"images": [], "question": q}, 400, "empty"),
        ("/v1/answer", {"image": url, "question": q, "top_k": "3"}, 400, "top_k"),
        ("/v1/answer", {"image": url, "question": q, "top_k": 99}, 400, "top_k"),
        ("/v1/answer", {"image": url, "question": q, "candidates": "red"}, 400, "candidates"),
        ("/v1/answer", {"image": url, "question": q, "candidates": []}, 400, "empty"),
        ("/v1/answer", {"image": "data:image/png;base64," + url[22:-40], "question": q}, 400,
         "image"),
        ("/v1/classify", {"image": url}, 400, "labels"),
        ("/v1/classify", {"image": url, "labels": ["a"], "templates": ["no slot"]}, 400, "slot"),
        ("/v1/predict", {"images": "not a list", "question": q}, 400, "images"),
        ("/v1/nothing", {}, 404, "/v1/nothing"),
    ]


def test_every_bad_request_gets_a_4xx_naming_the_problem(server, samples):
    for path, body, status, word in bad_requests(samples):
        r = post(server, path, body)
        assert r.status_code == status, (path, str(body)[:80], r.status_code, r.text[:300])
        err = r.json()["error"]
        assert word.lower() in (err["message"] + str(err["param"])).lower(), (path, err)
        assert err["type"]
    r = requests.get(server + "/v1/answer", headers=AUTH, timeout=10)
    assert r.status_code == 405 and "GET" in r.json()["error"]["message"]
    # the server keeps serving: a good request afterwards succeeds
    url, q, a = samples[0]
    r = post(server, "/v1/answer", {"image": url, "question": q})
    assert r.status_code == 200 and r.json()["data"][0]["answer"] == a


def test_bad_requests_do_not_disturb_good_ones_batched_with_them(server, samples):
    """Good and bad requests at once (batched together): every good one gets its answer."""
    bad = bad_requests(samples)

    def good(i):
        url, q, a = samples[i % len(samples)]
        r = post(server, "/v1/answer", {"image": url, "question": q})
        return r.status_code == 200 and r.json()["data"][0]["answer"] == a

    with ThreadPoolExecutor(16) as pool:
        goods = [pool.submit(good, i) for i in range(24)]
        bads = [pool.submit(post, server, p, b) for p, b, _, _ in bad]
        assert all(f.result() for f in goods)
        assert all(400 <= f.result().status_code < 500 for f in bads)


def test_api_key_health_models_and_metrics(server):
    url = server
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        r = requests.post(url + "/v1/embeddings", json={"input": "x"}, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(url + "/v1/models", timeout=10).status_code == 401
    assert requests.get(url + "/metrics", timeout=10).status_code == 401
    assert post(url, "/v1/embeddings", {"input": "x"}, headers={"X-API-Key": KEY}).status_code == 200
    health = requests.get(url + "/health", timeout=10).json()  # no key needed
    assert health["status"] == "ok" and health["model"] == NAME and health["backend"] == "torch"
    models = requests.get(url + "/v1/models", headers=AUTH, timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == NAME
    assert requests.get(url + f"/v1/models/{NAME}", headers=AUTH, timeout=10).status_code == 200
    assert requests.get(url + "/v1/models/other", headers=AUTH, timeout=10).status_code == 404
    text = requests.get(url + "/metrics", headers=AUTH, timeout=10).text
    for name in ("vljepa_requests_total", "vljepa_request_duration_seconds_bucket",
                 "vljepa_batch_size_bucket", "vljepa_queue_items", "vljepa_peak_rss_mebibytes"):
        assert name in text, name
    assert 'status="401"' in text


def test_concurrent_requests_are_batched(server, samples):
    def metric(name: str, kind: str) -> float:
        text = requests.get(server + "/metrics", headers=AUTH, timeout=10).text
        line = next(ln for ln in text.splitlines() if ln.startswith(f'{name}{{kind="{kind}"}}'))
        return float(line.split()[-1])

    count0, sum0 = metric("vljepa_batch_size_count", "predict"), metric("vljepa_batch_size_sum", "predict")
    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda i: post(server, "/v1/predict", {
            "image": samples[i % 8][0], "question": samples[i % 8][1]}), range(32)))
    assert all(r.status_code == 200 for r in rs)
    batches = metric("vljepa_batch_size_count", "predict") - count0
    items = metric("vljepa_batch_size_sum", "predict") - sum0
    assert items == 32 and batches < 32, (batches, items)  # some batches held several requests


def test_lean_bundle_serves_its_questions_and_drains_on_sigterm(servers, samples):
    full, lean = servers
    url, q, a = samples[0]
    health = requests.get(lean.url + "/health", timeout=10).json()
    assert health["backend"] == "torch-lean" and health["questions"] == 107
    # the same answer and score as the full model
    r = post(lean.url, "/v1/answer", {"image": url, "question": q}, headers={})
    ref = post(full.url, "/v1/answer", {"image": url, "question": q}).json()["data"][0]
    d = r.json()["data"][0]
    assert d["answer"] == ref["answer"] == a and abs(d["score"] - ref["score"]) < 1e-5
    r = post(lean.url, "/v1/answer", {"image": url, "question": "how many sides has it?"},
             headers={})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_in_bundle"
    # SIGTERM while a long request is in flight (256 images in batches of 2): it completes,
    # then the server exits 0
    result = {}
    heavy = samples * 32

    def in_flight():
        result["r"] = post(lean.url, "/v1/answer", {"images": [s[0] for s in heavy],
                                                     "questions": [s[1] for s in heavy]},
                           headers={})
    t = threading.Thread(target=in_flight)
    t.start()
    deadline = time.time() + 20
    while time.time() < deadline:  # until the server holds it (this request is the other one)
        text = requests.get(lean.url + "/metrics", timeout=10).text
        if "vljepa_requests_in_flight 2.0" in text:
            break
        time.sleep(0.005)
    else:
        raise AssertionError("the request was never seen in flight")
    lean.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert result["r"].status_code == 200, result["r"].text
    assert [d["answer"] for d in result["r"].json()["data"]] == [s[2] for s in heavy]
    assert lean.proc.wait(30) == 0, "".join(lean.lines)[-2000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(lean.url + "/health", timeout=5)


def test_cli_refuses_bad_settings(capsys):
    from vljepa.cli import main
    assert main(["serve", str(MODEL), "--max-batch-size", "0"]) == 2
    assert "max_batch_size" in capsys.readouterr().err
    assert main(["serve", str(MODEL), "--fallback"]) == 2
    assert "--fallback goes with --lean" in capsys.readouterr().err
