"""Load test of ``vljepa serve``: throughput, latency and memory at several concurrencies, the
same work through the Python API in one process for comparison, and a run mixed with bad
requests.

    python eval/serve_load.py checkpoints/vljepa-easyvqa-lite0
    python eval/serve_load.py onnx/                      # an ONNX export (vljepa export-onnx)
    python eval/serve_load.py MODEL --requests 200 --concurrency 1 8 32 --json out.json

It starts ``vljepa serve MODEL`` on a free loopback port, then for each endpoint (answer,
classify, predict, embeddings of texts, embeddings of images) and each concurrency C sends
``--requests`` requests from C client threads (one keep-alive connection each), one easy-VQA
test image or one text per request. Reported per row: requests/s, p50 / p95 / p99 latency (ms),
errors (non-200 answers or failed connections), CPU time per request of the server (all its
threads) and of the client (this process), and the server's peak RSS so far (MiB, its
``/health``). Server plus client CPU per request bounds what the machine can serve:
``cores / (server + client CPU)`` requests/s at most, and one core's worth of the server's
Python (its event loop and the model's Python share one interpreter lock). The in-process row
("api") does the same requests one by one through the Python API (``vljepa.load(MODEL)``, or
for an ONNX export its :class:`OnnxBackend`), from image bytes; ``x api`` is the server's
throughput over it. The mixed run sends good answer requests with
``--bad-share`` bad requests among them at concurrency 8: every good one must still get its
200 and the right answer. The client runs on the same machine (it takes CPU from the server).
The model runs on ``--threads`` intra-op threads (default 1) in the server and in-process alike:
on cores shared with other work, two threads wait at every operation for each other.

Bars (exit status 1 when missed): no error on a good request at any concurrency; with
batching, throughput at concurrency 8 at least 3x that at concurrency 1 (every endpoint).
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vljepa.profiling import Stopwatch, median_ms, peak_rss_mib

LABELS = ["a red shape", "a blue shape", "a green shape", "a circle", "a rectangle",
          "a triangle"]
COLORS = ["red", "blue", "green", "yellow", "gray", "black", "brown", "teal"]
SHAPES = ["circle", "rectangle", "triangle", "square", "star", "oval"]


def _texts(n: int, start: int = 0) -> list[str]:
    """n distinct short texts (so neither side answers from a memo); ``start`` shifts them."""
    return [f"a {COLORS[i % 8]} {SHAPES[(i // 8) % 6]} number {i}" for i in range(start, start + n)]


def _workload(n: int) -> tuple[list[tuple[bytes, str, str]], list[str]]:
    import easy_vqa
    paths = easy_vqa.get_test_image_paths()
    qs, answers, ids = easy_vqa.get_test_questions()
    rows = list(zip(qs, answers, ids))
    random.Random(0).shuffle(rows)
    cache: dict[int, bytes] = {}
    samples = []
    for q, a, i in rows[:n]:
        if i not in cache:
            cache[i] = Path(paths[i]).read_bytes()
        samples.append((cache[i], q, a))
    return samples, _texts(n)


def _url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def bodies(endpoint: str, samples, texts) -> list[tuple[str, dict, str | None]]:
    """(path, JSON body, expected answer or None) per request of ``endpoint``."""
    if endpoint == "answer":
        return [("/v1/answer", {"image": _url(p), "question": q}, a) for p, q, a in samples]
    if endpoint == "classify":
        return [("/v1/classify", {"image": _url(p), "labels": LABELS}, None) for p, _, _ in samples]
    if endpoint == "predict":
        return [("/v1/predict", {"image": _url(p), "question": q}, None) for p, q, _ in samples]
    if endpoint == "embed_text":
        return [("/v1/embeddings", {"input": t}, None) for t in texts]
    if endpoint == "embed_image":
        return [("/v1/embeddings", {"input": [{"image": _url(p)}]}, None) for p, _, _ in samples]
    raise ValueError(endpoint)


BAD = [b"{not json", b'{"input": []}', b'{"input": [1, 2]}', b'{"image": "AAAA", "question": "q"}',
       b'{"image": "data:image/png;base64,!!", "question": "what?"}', b'{"model": "gpt", "input": "x"}',
       b'{"images": [], "question": "q"}', b'[]']


class Client:
    """Requests from ``concurrency`` threads, each on its own keep-alive connection."""

    def __init__(self, host: str, port: int, concurrency: int):
        self.host, self.port = host, port
        self.pool = ThreadPoolExecutor(concurrency)
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            c.connect()
            # http.client sends the headers and the body in two writes: without TCP_NODELAY,
            # Nagle's algorithm holds the body until the server's delayed ACK (40 ms on Linux)
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def request(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        t = time.perf_counter()
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    self.local.conn = None
                return r.status, data, time.perf_counter() - t
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    return -1, b"", time.perf_counter() - t
        raise AssertionError("unreachable")

    def run(self, work: list[tuple[str, bytes]]) -> tuple[list[tuple[int, bytes, float]], float]:
        with Stopwatch() as sw:
            results = list(self.pool.map(lambda w: self.request(*w), work))
        return results, sw.seconds

    def close(self) -> None:
        self.pool.shutdown()


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VLJEPA_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "vljepa.cli", "serve", model, "--port", "0",
                             *extra], stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if " serving " in line and " at http://" in line:
            hostport = line.rsplit("http://", 1)[1].strip()
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            host, port = hostport.rsplit(":", 1)
            return proc, host, int(port)
        sys.stderr.write(line)
    raise RuntimeError(f"the server exited with status {proc.wait()} before serving")


def health(host: str, port: int) -> dict:
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", "/health")
    out = json.loads(c.getresponse().read())
    c.close()
    return out


def batch_totals(host: str, port: int) -> tuple[float, float]:
    """(items, batches) the server has run so far, every kind of work together (/metrics)."""
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    items = batches = 0.0
    for line in text.splitlines():
        if line.startswith("vljepa_batch_size_sum{"):
            items += float(line.split()[-1])
        elif line.startswith("vljepa_batch_size_count{"):
            batches += float(line.split()[-1])
    return items, batches


def vm_hwm_mib(pid: int) -> float | None:
    """The peak RSS of process ``pid`` from /proc (Linux), in MiB; None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) process ``pid`` has used, in seconds, from
    /proc/PID/stat (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def own_cpu_seconds() -> float:
    """This process's CPU time (user + system, all threads: the client), in seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class InProcess:
    """The same requests through the Python API, one by one, in this process."""

    def __init__(self, model: str, threads: int | None):
        if (Path(model) / "onnx.json").is_file():
            from vljepa.serving.backend import decode_image
            from vljepa.serving.onnx_runtime import OnnxBackend
            b = OnnxBackend(model, threads=threads)

            def px(png):
                return b.preprocess(decode_image(png, "image", 1 << 30))[None]
            self.calls = {
                "answer": lambda s, t: b.answer(px(s[0]), [s[1]]),
                "classify": lambda s, t: b.embed_images(px(s[0])) @ b.embed_texts(LABELS).T,
                "predict": lambda s, t: b.predict(px(s[0]), [s[1]]),
                "embed_text": lambda s, t: b.embed_texts([t]),
                "embed_image": lambda s, t: b.embed_images(px(s[0]))}
        else:
            import torch

            import vljepa
            torch.set_num_threads(threads or os.cpu_count() or 1)
            m = vljepa.load(model)
            self.calls = {
                "answer": lambda s, t: m.answer([s[0]], [s[1]]),
                "classify": lambda s, t: m.classify([s[0]], LABELS),
                "predict": lambda s, t: m.predict([s[0]], [s[1]]),
                "embed_text": lambda s, t: m.embed_text([t]),
                "embed_image": lambda s, t: m.embed_image([s[0]])}

    def rate(self, endpoint: str, samples, texts) -> tuple[float, float]:
        """(requests/s over all the requests, median ms per request)."""
        fn = self.calls[endpoint]
        for s in samples:  # warm-up, as the server's: every question read once (not the texts)
            fn(s, "a warm-up text")
        times = []
        with Stopwatch() as sw:
            for s, t in zip(samples, texts):
                with Stopwatch() as one:
                    fn(s, t)
                times.append(one.seconds)
        return len(samples) / sw.seconds, 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="what `vljepa serve` serves: a model dir, or an ONNX export")
    ap.add_argument("--requests", type=int, default=200, help="requests per endpoint and "
                    "concurrency (default 200)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--endpoints", nargs="+", default=["answer", "classify", "predict",
                                                        "embed_text", "embed_image"])
    ap.add_argument("--bad-share", type=float, default=0.25,
                    help="share of bad requests in the mixed run (default 0.25)")
    ap.add_argument("--server-args", default="", help="more `vljepa serve` arguments, e.g. "
                    "'--max-batch-size 64 --max-wait-ms 2'")
    ap.add_argument("--threads", type=int, default=1,
                    help="the model's intra-op threads, in the server (--threads) and in the "
                         "in-process run alike (default 1; 0: the library's default)")
    ap.add_argument("--no-api", action="store_true", help="skip the in-process comparison")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    samples, texts = _workload(args.requests)
    threads = args.threads or None
    extra = args.server_args.split() + (["--threads", str(threads)] if threads else [])
    proc, host, port = start_server(args.model, extra)
    rows: list[dict[str, Any]] = []
    ok = True
    try:
        info = health(host, port)
        print(f"server: {info['model']} ({info['backend']}), pid {proc.pid}, peak RSS "
              f"{info['peak_rss_mib']:.0f} MiB at start, torch imported: "
              f"{info['torch_imported']}", file=sys.stderr)
        # untimed: first-call allocations, the default candidates' S_Y, and every question's
        # query states (the server keeps them, as it keeps text embeddings): otherwise the first
        # timed row of an endpoint with questions reads them and the later rows do not
        warm = Client(host, port, 4)
        for e in args.endpoints:
            warm.run([(p, json.dumps(b).encode())
                      for p, b, _ in bodies(e, samples, texts[-len(samples):])])
        warm.close()
        for e in args.endpoints:
            for c in args.concurrency:
                # texts new to the server at each concurrency: it keeps the embeddings of texts
                work = bodies(e, samples, _texts(args.requests, 1_000_000 * c))
                payload = [(p, json.dumps(b).encode()) for p, b, _ in work]
                client = Client(host, port, c)
                items0, batches0 = batch_totals(host, port)
                cpu0, own0 = cpu_seconds(proc.pid), own_cpu_seconds()
                results, seconds = client.run(payload)
                cpu1, own1 = cpu_seconds(proc.pid), own_cpu_seconds()
                items1, batches1 = batch_totals(host, port)
                client.close()
                lat = [r[2] * 1000 for r in results]
                errors = sum(r[0] != 200 for r in results)
                wrong = sum(1 for r, (_, _, want) in zip(results, work) if want is not None
                            and r[0] == 200 and json.loads(r[1])["data"][0]["answer"] != want)
                rows.append({"endpoint": e, "concurrency": c, "requests": len(results),
                             "req_per_s": len(results) / seconds,
                             "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
                             "p99_ms": percentile(lat, 99), "errors": errors,
                             "wrong_answers": wrong,
                             "mean_batch": (items1 - items0) / max(1.0, batches1 - batches0),
                             # CPU per request: the server's (all its threads), the client's
                             "server_cpu_ms": (None if cpu0 is None or cpu1 is None
                                               else 1000 * (cpu1 - cpu0) / len(results)),
                             "client_cpu_ms": 1000 * (own1 - own0) / len(results),
                             "server_peak_rss_mib": health(host, port)["peak_rss_mib"]})
                print(f"  {e} c={c}: {rows[-1]['req_per_s']:.0f} req/s, errors {errors}",
                      file=sys.stderr)
        # mixed: good answer requests with bad ones among them, at concurrency 8
        good = [(p, json.dumps(b).encode(), a) for p, b, a in bodies("answer", samples, texts)]
        rng = random.Random(1)
        n_bad = int(len(good) * args.bad_share / max(1e-9, 1 - args.bad_share))
        mixed = [(*g, True) for g in good] + [
            (rng.choice(["/v1/answer", "/v1/embeddings"]), rng.choice(BAD), None, False)
            for _ in range(n_bad)]
        rng.shuffle(mixed)
        client = Client(host, port, 8)
        results, seconds = client.run([(p, b) for p, b, _, _ in mixed])
        client.close()
        good_ok = sum(1 for r, m in zip(results, mixed) if m[3] and r[0] == 200
                      and json.loads(r[1])["data"][0]["answer"] == m[2])
        bad_4xx = sum(1 for r, m in zip(results, mixed) if not m[3] and 400 <= r[0] < 500)
        mixed_row = {"good": len(good), "good_ok": good_ok, "bad": n_bad, "bad_4xx": bad_4xx,
                     "other": len(mixed) - good_ok - bad_4xx, "seconds": seconds}
        final = health(host, port)
    finally:
        hwm = vm_hwm_mib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
    api: dict[str, tuple[float, float]] = {}
    if not args.no_api:
        ip = InProcess(args.model, threads)
        with Stopwatch() as sw:
            for e in args.endpoints:
                api[e] = ip.rate(e, samples, texts)
        # median_ms of one answer call, for the record (the same figure eval/bench.py reports)
        answer_ms = median_ms(lambda: ip.calls["answer"](samples[0], texts[0]), 20)
        print(f"  in-process API: {sw.seconds:.1f} s, answer median {answer_ms:.1f} ms; this "
              f"process's peak RSS {peak_rss_mib():.0f} MiB", file=sys.stderr)

    print(f"\n{info['model']} ({info['backend']}), {args.requests} requests per row, "
          f"{threads or 'default'} model thread(s), server "
          f"exit status {status} after SIGTERM, server peak RSS {final['peak_rss_mib']:.0f} MiB"
          + (f" (VmHWM {hwm:.0f} MiB)" if hwm else "") + f", torch imported by the server: "
          f"{final['torch_imported']}\n")
    print("| endpoint | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
          "| x c=1 | x api | server CPU ms/req | client CPU ms/req | server peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for e in args.endpoints:
        base = next((r["req_per_s"] for r in rows if r["endpoint"] == e and r["concurrency"] == 1),
                    None)
        for r in (r for r in rows if r["endpoint"] == e):
            r["x_c1"] = r["req_per_s"] / base if base else None
            r["x_api"] = r["req_per_s"] / api[e][0] if e in api else None
            print(f"| {e} | {r['concurrency']} | {r['req_per_s']:.0f} | {r['p50_ms']:.1f} | "
                  f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors'] + r['wrong_answers']} | "
                  f"{r['mean_batch']:.1f} | "
                  + (f"{r['x_c1']:.1f}" if r["x_c1"] else "-") + " | "
                  + (f"{r['x_api']:.2f}" if r["x_api"] else "-") + " | "
                  + (f"{r['server_cpu_ms']:.2f}" if r["server_cpu_ms"] is not None else "-")
                  + f" | {r['client_cpu_ms']:.2f} | {r['server_peak_rss_mib']:.0f} |")
        if e in api:
            print(f"| {e} | api (in-process, one by one) | {api[e][0]:.0f} | {api[e][1]:.1f} "
                  "| | | | 1 | | 1.00 | | | |")
    print(f"\nmixed run (concurrency 8): {mixed_row['good_ok']}/{mixed_row['good']} good "
          f"requests answered right, {mixed_row['bad_4xx']}/{mixed_row['bad']} bad requests got "
          f"a 4xx, {mixed_row['other']} other")
    # the bars
    for r in rows:
        if r["errors"] or r["wrong_answers"]:
            ok = False
            print(f"BAR MISSED: {r['endpoint']} c={r['concurrency']}: {r['errors']} errors, "
                  f"{r['wrong_answers']} wrong answers")
    for e in args.endpoints:
        r8 = next((r for r in rows if r["endpoint"] == e and r["concurrency"] == 8), None)
        if r8 and r8.get("x_c1") is not None and r8["x_c1"] < 3:
            ok = False
            print(f"BAR MISSED: {e}: concurrency 8 gives {r8['x_c1']:.1f}x concurrency 1 (< 3x)")
    if mixed_row["good_ok"] != mixed_row["good"] or mixed_row["other"]:
        ok = False
        print("BAR MISSED: the mixed run dropped good requests or answered bad ones with non-4xx")
    if status != 0:
        ok = False
        print(f"BAR MISSED: the server exited with status {status} after SIGTERM")
    if args.json:
        Path(args.json).write_text(json.dumps({"server": final, "rows": rows, "api": api,
                                               "mixed": mixed_row, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
