"""An ONNX export (``vljepa export-onnx``, :mod:`vljepa.serving.onnx_export`) served with
onnxruntime, numpy, PIL and ``tokenizers``: no torch is imported.

    backend = OnnxBackend("onnx/")               # what `vljepa serve onnx/` runs
    px = np.stack([backend.preprocess(img) for img in pil_images])   # (B, H, W, 3) uint8
    s_hat = backend.predict(px, questions)       # (B, D) float32, unit rows
    answers, scores = backend.answer(px, questions)

Questions the export stores use their stored query states; others are read with the Y-encoder
graph (kind cached_text: its last hidden states) or the stored token table (kind transformer),
when the export has them, and kept (at most ``QUERY_MEMO``). Candidates the export stores use
their stored S_Y; other texts go through the Y-encoder graph.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .backend import Backend, InputError

FORMAT = "vljepa-onnx/1"  # as vljepa.serving.onnx_export writes (which imports torch)
CONFIG_NAME = "onnx.json"
TENSORS_NAME = "tensors.safetensors"


class OnnxBackend(Backend):
    """A VL-JEPA from an ONNX export directory, on onnxruntime's CPU provider.

    Args:
        directory: written by ``vljepa export-onnx``.
        threads: onnxruntime intra-op threads (None: onnxruntime's default, one per core).
        memory_arena: keep onnxruntime's CPU memory arena (faster allocation, but it keeps the
            largest batch's buffers: about 60 MiB more at batch 32). False by default: the
            server stays under 200 MiB.
        run_batch: items per run of the X-encoder and Y-encoder graphs (images, texts); a
            larger batch runs in chunks of this size. Without an arena each run allocates its
            activations afresh, so this bounds the peak memory: measured on the easy-VQA export
            (one thread), 32 images in one run raised peak RSS by 21 MiB and took 19 ms, in
            runs of 8 by 9 MiB and 15 ms (small runs stay in cache); 32 texts in one run by
            10 MiB in 59 ms, in runs of 8 by 4 MiB in 66 ms.
    Attributes:
        questions, candidates: what the export stores (lists of strings).
        query_source: "text_hidden", "token_table" or "stored" (how new questions are read).
        text: the Y-encoder's session, or None (exported without it).
    Raises:
        FileNotFoundError: a file of the export is missing (names it).
        ValueError: not a vljepa ONNX export (another format).
        ImportError: onnxruntime (or, for the Y-encoder, tokenizers) is not installed.
    """

    kind = "onnx"
    QUERY_MEMO = 20_000

    def __init__(self, directory: str | os.PathLike, threads: int | None = None,
                 memory_arena: bool = False, run_batch: int = 8):
        super().__init__()
        if run_batch < 1:
            raise ValueError(f"run_batch must be >= 1, got {run_batch}")
        self.run_batch = run_batch
        import onnxruntime as ort
        from safetensors.numpy import load_file

        d = self.directory = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{CONFIG_NAME} is missing from {str(d)!r} (write an ONNX "
                                    "export with `vljepa export-onnx MODEL DIR`)")
        meta = self.meta = json.loads((d / CONFIG_NAME).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / CONFIG_NAME} is not a vljepa ONNX export (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
        for name in [*meta["graphs"].values(), TENSORS_NAME]:
            if not (d / name).is_file():
                raise FileNotFoundError(f"{name} is missing from {str(d)!r}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = memory_arena
        options.enable_mem_pattern = memory_arena
        # no busy-waiting between runs: on a shared CPU, spinning threads took 3x the time of
        # a batch from the threads with real work (eval/serve_load.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(name: str):
            return ort.InferenceSession(str(d / meta["graphs"][name]), options,
                                        providers=["CPUExecutionProvider"])
        self.x_encoder, self.predictor = session("x_encoder"), session("predictor")
        self.text = session("text") if "text" in meta["graphs"] else None
        self.tokenizer = self._counter = None  # _counter: count_tokens' own copy
        if self.text is not None:
            from tokenizers import Tokenizer
            self.tokenizer = Tokenizer.from_file(str(d / meta["text"]["tokenizer"]))
            self.tokenizer.no_truncation()
            self.tokenizer.enable_padding(pad_id=meta["text"]["pad_id"],
                                          pad_token=meta["text"]["pad_token"])
        tensors = load_file(str(d / TENSORS_NAME))
        self.embed_dim = int(meta["embed_dim"])
        self.logit_scale = float(meta["logit_scale"])
        self.transform = self.pixel_spec = meta["transform"]
        self.image_size = tuple(int(v) for v in self.transform["crop"])
        self.questions = list(meta["questions"])
        self.stored_candidates = list(meta["candidates"])
        self.candidates = self.stored_candidates or list(meta.get("answers") or []) or None
        self.query_source = meta["query_source"]
        self.max_query_len = int(meta["predictor"]["max_query_len"])
        self.query_dim = int(meta["predictor"]["query_dim"])
        self.default_prompt = meta.get("default_prompt")
        self._s_y = tensors.get("candidates.s_y")
        self._states = tensors.get("questions.states")
        self._lengths = tensors.get("questions.lengths")
        self._table = tensors.get("token_table")
        self._question_index = {q: i for i, q in enumerate(self.questions)}
        self._candidate_index = {c: i for i, c in enumerate(self.stored_candidates)}
        self._query_memo: OrderedDict[str, np.ndarray] = OrderedDict()

    # ---- Backend ----

    def visual_tokens(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels (B, H, W, 3) uint8 from :meth:`preprocess`, or (B, 3, H, W) float32
        normalised -> visual tokens (B, N, Dx) float32, in runs of ``run_batch`` images."""
        x = self.float_pixels(pixels)
        return self._in_runs(len(x), lambda s, e: self.x_encoder.run(None, {"pixels": x[s:e]})[0])

    def _in_runs(self, n: int, run) -> np.ndarray:
        """``run(start, end)`` over n items in runs of ``run_batch``, its outputs concatenated."""
        k = self.run_batch
        out = [run(s, min(s + k, n)) for s in range(0, n, k)]
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _predict(self, visual: np.ndarray, query: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.predictor.run(None, {"visual": visual, "query": query,
                                         "query_mask": mask})[0]

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        if self.default_prompt is not None:
            return self.predict(pixels, [self.default_prompt] * len(pixels))
        visual = self.visual_tokens(pixels)
        B = len(visual)  # query-free: one masked query position, as predictor(v, None, None)
        return self._predict(visual, np.zeros((B, 1, self.query_dim), np.float32),
                             np.zeros((B, 1), bool))

    def predict(self, pixels: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        questions = list(questions)
        self.check_questions(questions)
        states = self.query_states(questions)
        L = max(len(s) for s in states)
        query = np.zeros((len(states), L, self.query_dim), np.float32)
        mask = np.zeros((len(states), L), bool)
        for i, s in enumerate(states):
            query[i, :len(s)] = s
            mask[i, :len(s)] = True
        return self._predict(self.visual_tokens(pixels), query, mask)

    def query_states(self, questions: Sequence[str]) -> list[np.ndarray]:
        """Questions -> their query states, (L_i, Dq) float32 each: stored, kept, or read now
        (the Y-encoder graph or the token table). Raises InputError for a question the export
        cannot read."""
        new = [q for q in dict.fromkeys(questions)
               if q not in self._question_index and q not in self._query_memo]
        if new:
            self.check_questions(new)
            ids, mask = self._tokenize(new, self.max_query_len)
            if self.query_source == "text_hidden":
                states = self.text.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            else:  # token_table
                states = self._table[ids]
            for q, s, m in zip(new, states, mask):
                self._query_memo[q] = np.ascontiguousarray(s[:int(m.sum())], np.float32)
            while len(self._query_memo) > self.QUERY_MEMO:
                self._query_memo.popitem(last=False)
        out = []
        for q in questions:
            i = self._question_index.get(q)
            out.append(self._states[i, :int(self._lengths[i])] if i is not None
                       else self._query_memo[q])
        return out

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (ids (B, L) int64, mask (B, L) int64), right-padded to the longest,
        truncated to ``max_length`` tokens (as the Hugging Face tokenizer the model used)."""
        if self.tokenizer is None:
            raise InputError("this ONNX export has no tokenizer (exported with --no-text)")
        self.tokenizer.enable_truncation(max_length)
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        return ids, mask

    def _run_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> S_Y (B, D) float32 from the Y-encoder graph, in runs of ``run_batch``."""
        max_length = int(self.meta["text"]["max_length"])

        def run(s: int, e: int) -> np.ndarray:
            ids, mask = self._tokenize([t.strip() for t in texts[s:e]], max_length)
            return self.text.run(None, {"input_ids": ids, "attention_mask": mask})[1]
        return self._in_runs(len(texts), run)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.embed_dim), np.float32)
        rest = []
        for i, t in enumerate(texts):
            j = self._candidate_index.get(t)
            if j is not None:
                out[i] = self._s_y[j]
            else:
                rest.append(i)
        if rest:
            self.check_texts([texts[i] for i in rest], "texts")
            out[rest] = self._run_text([texts[i] for i in rest])
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self.tokenizer is None:
            return super().count_tokens(texts)
        if self._counter is None:  # a copy of its own: inference may be tokenizing meanwhile
            from tokenizers import Tokenizer
            self._counter = Tokenizer.from_str(self.tokenizer.to_str())
            self._counter.no_padding()
            self._counter.enable_truncation(int(self.meta["text"]["max_length"]))
        return [len(e.ids) for e in self._counter.encode_batch([t.strip() for t in texts])]

    def check_questions(self, questions: Sequence[str]) -> None:
        if self.query_source != "stored" and (self.text is not None or self._table is not None):
            return
        missing = [q for q in dict.fromkeys(questions) if q not in self._question_index]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise InputError(f"{len(missing)} question(s) not stored in this ONNX export (it "
                             f"stores {len(self.questions)} and cannot read new ones): {shown}",
                             "question", "not_in_bundle")

    def check_texts(self, texts: Sequence[str], param: str) -> None:
        if self.text is not None:
            return
        missing = [t for t in dict.fromkeys(texts) if t not in self._candidate_index]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise InputError(f"{len(missing)} text(s) not stored in this ONNX export (exported "
                             f"without the Y-encoder; it stores {len(self.stored_candidates)} "
                             f"candidates): {shown}", param, "not_in_bundle")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "questions": len(self.questions),
                "query_source": self.query_source, "text_encoder": self.text is not None}

    # ---- the Python API, for scripts ----

    def answer(self, pixels: np.ndarray, questions: Sequence[str],
               candidates: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Answer by the nearest candidate (``VLJEPA.answer``): pixels (B, 3, H, W) float32 and
        B questions -> (B answers, (B,) float32 cosines). ``candidates`` None: the default ones.
        Raises InputError as :meth:`predict` / :meth:`check_texts`, or with no candidates."""
        candidates = list(candidates if candidates is not None else (self.candidates or []))
        if not candidates:
            raise InputError("no candidate answers given and none stored", "candidates")
        sims = self.predict(pixels, questions) @ self.embed_texts(candidates).T
        best = sims.argmax(1)
        return [candidates[i] for i in best], sims[np.arange(len(best)), best]
