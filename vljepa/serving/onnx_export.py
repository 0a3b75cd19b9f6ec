"""``vljepa export-onnx``: a VL-JEPA as ONNX graphs, served by onnxruntime without torch
(:mod:`vljepa.serving.onnx_runtime`, ``vljepa serve DIR``).

    vljepa export-onnx checkpoints/vljepa-easyvqa-lite0 onnx/ --easy-vqa
    vljepa serve onnx/

The directory holds (as the lean serving bundle of :mod:`vljepa.serving.bundle` does, the query
states of the stored questions and the S_Y of the stored candidates are computed here, once):

    onnx.json            format, config, preprocessing spec, the stored questions and candidates,
                         how new questions are read, the parity measured at export
    x_encoder.onnx       pixels (B, 3, H, W) float32 -> visual tokens (B, N, Dx) float32
    predictor.onnx       visual (B, N, Dx) float32, query (B, L, Dq) float32, query_mask (B, L)
                         bool -> Ŝ_Y (B, D) float32, unit norm (query-free: L = 1, mask False)
    text.onnx (+ .data)  the Y-encoder and its head: input_ids, attention_mask (B, L) int64 ->
                         hidden (B, L, Dy) float32 (its last hidden states, which are also the
                         cached_text predictor's query states), s_y (B, D) float32, unit norm
    tokenizer.json       the Y-encoder's tokenizer (the ``tokenizers`` library reads it)
    tensors.safetensors  candidates.s_y (C, D), questions.states (Q, L, Dq) (zeros at padding),
                         questions.lengths (Q,) int64; token_table (V, Dq) for kind=transformer

The Y-encoder graph is written for a sentence-transformers Y-encoder (``text=False`` leaves it
out: then only the stored questions and candidates are served). Before anything is written to
``directory``, the graphs are run with onnxruntime against the torch model on test images, the
stored questions and the candidates; an export whose cosine to torch is below 1 - 1e-4 is
refused. Imports torch, onnx, onnxscript and onnxruntime (the ``onnx`` extra).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inputs import check_texts
from ..model import VLJEPA
from ..predictors import PREDICTORS, predictor_class
from ..version import __version__
from .lean_cnn import _test_images, _transform_spec

FORMAT = "vljepa-onnx/1"
CONFIG_NAME = "onnx.json"
TENSORS_NAME = "tensors.safetensors"
TOKENIZER_NAME = "tokenizer.json"
GRAPHS = {"x_encoder": "x_encoder.onnx", "predictor": "predictor.onnx", "text": "text.onnx"}
PARITY_TOLERANCE = 1e-4  # 1 - cosine to the torch model, at most


class _XEncoder(nn.Module):
    def __init__(self, x_encoder: nn.Module):
        super().__init__()
        self.x = x_encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.x(pixels)


class _Predictor(nn.Module):
    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.p = predictor

    def forward(self, visual: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.p(visual, query, query_mask), dim=-1)


class _Text(nn.Module):
    """A sentence-transformers Y-encoder and the model's head: ids, mask -> (last hidden states,
    unit S_Y)."""

    def __init__(self, st: nn.Module, head: nn.Module):
        super().__init__()
        self.st, self.head = st, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        f = self.st({"input_ids": input_ids, "attention_mask": attention_mask})
        return f["token_embeddings"], F.normalize(self.head(f["sentence_embedding"]), dim=-1)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, Any]], external_data: bool = False) -> None:
    """torch.onnx.export (the dynamo exporter) of ``module`` in eval mode, quietly."""
    module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=inputs,
                          output_names=outputs, dynamic_shapes=dynamic,
                          external_data=external_data, verbose=False)


def _query_source(model: VLJEPA) -> str:
    """How the ONNX server reads a question it does not store: "text_hidden" (the Y-encoder's
    last hidden states: kind cached_text reading the Y-encoder), "token_table" (kind
    transformer: the Y-encoder's token table), or "stored" (stored questions only)."""
    cfg, y = model.config.predictor, model.y_encoder
    if y.cfg.backend != "sentence-transformers":
        return "stored"
    if cfg.kind == "cached_text" and cfg.text_model is None:
        depth = len(y.model[0].auto_model.encoder.layer)
        if cfg.text_state_layers in (None, depth):
            return "text_hidden"
    if cfg.kind == "transformer":
        return "token_table"
    return "stored"


def export_onnx(model: Any, directory: str | os.PathLike, questions: Sequence[str] = (),
                candidates: Sequence[str] | None = None, text: bool = True,
                check_images: Sequence[Any] | None = None) -> Path:
    """Write ``model`` as ONNX graphs to ``directory`` (see the module docstring).

    Args:
        model: a :class:`~vljepa.model.VLJEPA`, or a saved one (directory, ``.ckpt``, hub id).
        directory: created if needed; files are written to a temporary directory beside it,
            checked, then moved in (``onnx.json`` last).
        questions: questions whose query states are stored (answered without the Y-encoder
            graph; the only ones answered when new questions cannot be read in ONNX).
        candidates: candidate answers whose S_Y are stored (the default candidates of the
            server); None: the model's saved answer vocabulary.
        text: write the Y-encoder graph (``text.onnx``, about 90 MB for all-MiniLM-L6-v2).
        check_images: images for the parity check (anything ``vljepa.inputs.load_image``
            reads); None: four seeded noise images of several sizes.
    Returns:
        the directory.
    Raises:
        ValueError: a predictor kind other than transformer / cached_text, a video X-encoder,
            preprocessing that is not Resize / CenterCrop / ToTensor / Normalize, nothing to
            read new questions with and no questions given, or an export whose outputs differ
            from the torch model's by more than ``PARITY_TOLERANCE`` in cosine (names which).
        RuntimeError: torch.onnx.export fails on a part of the model (names it).
    """
    from safetensors.numpy import save_file

    if not isinstance(model, VLJEPA):
        model = VLJEPA.from_pretrained(model)
    model.eval()
    cfg = model.config
    if not predictor_class(cfg.predictor).lean_servable:
        able = sorted(c.Config.KIND for c in PREDICTORS.values() if c.lean_servable)
        raise ValueError(f"ONNX export supports predictor kinds {able}, not "
                         f"{cfg.predictor.kind!r}")
    if cfg.predictor.quant != "none":
        raise ValueError(f"ONNX export of a {cfg.predictor.quant} predictor is not supported "
                         "(its packed kernel has no ONNX operator): export the full-precision "
                         "model")
    if cfg.x_encoder.frames:
        raise ValueError("ONNX export of a video X-encoder is not supported")
    transform = _transform_spec(model.x_encoder.transform)  # ValueError for other transforms
    source = _query_source(model)
    text = bool(text) and model.y_encoder.cfg.backend == "sentence-transformers"
    if not text and source != "stored":
        source = "stored"  # reading new questions needs the Y-encoder graph (or its table)
        if cfg.predictor.kind == "transformer":
            source = "token_table"
    questions = list(dict.fromkeys(check_texts(list(questions), "questions")))
    if cfg.default_prompt is not None and cfg.default_prompt not in questions:
        questions.append(cfg.default_prompt)
    if source == "stored" and not questions:
        raise ValueError("this export cannot read new questions (no Y-encoder graph, or a "
                         "query reader ONNX does not rebuild): give the questions to store")
    if candidates is None:
        candidates = model.answers or []
    candidates = list(dict.fromkeys(check_texts(list(candidates), "candidates")))
    if not candidates and not text:
        raise ValueError("no candidates to store and no Y-encoder graph: give candidates")

    tensors: dict[str, np.ndarray] = {}
    with torch.no_grad():
        if candidates:
            tensors["candidates.s_y"] = model.embed_text(candidates).float().numpy()
        if questions:
            ids, mask = model.tokenize_queries(questions)
            states = model.predictor.embed_query(ids).float() * mask[..., None]
            tensors["questions.states"] = states.numpy()
            tensors["questions.lengths"] = mask.sum(1).to(torch.int64).numpy()
        if source == "token_table":
            tensors["token_table"] = model.y_encoder.token_embedding.weight.detach().float().numpy()
        visual = model.x_encoder(model.x_encoder.transform(_test_images()[0])[None].repeat(2, 1, 1, 1))
        probe_ids, probe_mask = model.tokenize_queries(["what is it?", "is the shape red?"])
        probe_query = model.predictor.embed_query(probe_ids).float()
    query_dim = int(probe_query.shape[-1])

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=directory))
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        length = torch.export.Dim("length", min=1, max=cfg.predictor.max_query_len)
        try:
            pixels = model.x_encoder.transform(_test_images()[0])[None].repeat(2, 1, 1, 1)
            _export(_XEncoder(model.x_encoder), (pixels,), tmp / GRAPHS["x_encoder"],
                    ["pixels"], ["tokens"], {"pixels": {0: batch}})
        except Exception as e:  # noqa: BLE001 - name the part that failed
            raise RuntimeError(f"the X-encoder does not export to ONNX: {e}") from e
        try:
            _export(_Predictor(model.predictor),
                    (visual, probe_query, probe_mask), tmp / GRAPHS["predictor"],
                    ["visual", "query", "query_mask"], ["s_hat"],
                    {"visual": {0: batch}, "query": {0: batch, 1: length},
                     "query_mask": {0: batch, 1: length}})
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"the predictor does not export to ONNX: {e}") from e
        text_meta = None
        if text:
            st = model.y_encoder.model
            tok = st.tokenizer
            max_length = int(model.y_encoder.cfg.max_length)
            enc = tok(["a red circle", "what color is the shape in the image?"], padding=True,
                      return_tensors="pt")
            seq = torch.export.Dim("seq", min=2, max=max(max_length, cfg.predictor.max_query_len))
            try:
                _export(_Text(st, model.y_head), (enc["input_ids"], enc["attention_mask"]),
                        tmp / GRAPHS["text"], ["input_ids", "attention_mask"], ["hidden", "s_y"],
                        {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                        external_data=True)
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"the Y-encoder does not export to ONNX: {e}") from e
            (tmp / TOKENIZER_NAME).write_text(tok.backend_tokenizer.to_str())
            text_meta = {"graph": GRAPHS["text"], "tokenizer": TOKENIZER_NAME,
                         "max_length": max_length, "pad_id": int(tok.pad_token_id),
                         "pad_token": tok.pad_token, "hidden_dim": int(model.y_encoder.vocab_dim)}
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                  str(tmp / TENSORS_NAME))
        grid = model.x_encoder.grid
        meta = {"format": FORMAT, "vljepa_version": __version__,
                "model": cfg.to_dict(), "embed_dim": int(cfg.embed_dim),
                "logit_scale": float(model.logit_scale.detach().exp().clamp(max=100.0)),
                "answers": list(model.answers or []),
                "transform": transform,
                "visual": {"dim": int(model.x_encoder.dim),
                           "num_tokens": int(model.x_encoder.num_tokens),
                           "grid": list(grid) if grid else None},
                "predictor": {"kind": cfg.predictor.kind,
                              "max_query_len": int(cfg.predictor.max_query_len),
                              "query_dim": query_dim},
                "query_source": source, "text": text_meta,
                "default_prompt": cfg.default_prompt,
                "questions": questions, "candidates": candidates,
                "graphs": {k: v for k, v in GRAPHS.items() if k != "text" or text}}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        meta["parity"] = check_parity(model, tmp, check_images)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        for stale in (directory / n for n in (*GRAPHS.values(), GRAPHS["text"] + ".data",
                                               TOKENIZER_NAME, TENSORS_NAME, CONFIG_NAME)):
            if stale.exists() and not (tmp / stale.name).exists():
                stale.unlink()  # a file of an earlier export this one does not have
        names = sorted(p.name for p in tmp.iterdir())
        umask = os.umask(0)
        os.umask(umask)
        for name in [n for n in names if n != CONFIG_NAME] + [CONFIG_NAME]:
            os.chmod(tmp / name, 0o666 & ~umask)  # ordinary files, whatever wrote them
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def check_parity(model: VLJEPA, directory: str | os.PathLike,
                 images: Sequence[Any] | None = None) -> dict[str, float]:
    """Run the ONNX export in ``directory`` with onnxruntime and the torch ``model`` on the
    same inputs; return the smallest cosine of each output.

    Compared: Ŝ_Y of every image with up to 8 stored questions (and 2 new ones when the export
    reads new questions), the query-free image embeddings, and S_Y of the stored candidates
    computed by the Y-encoder graph (when there is one).

    Returns:
        {"predict": min cos, "embed_image": min cos, "embed_text": min cos (or absent)}.
    Raises:
        ValueError: a minimum below ``1 - PARITY_TOLERANCE`` (names the output).
    """
    from ..inputs import load_image
    from .onnx_runtime import OnnxBackend

    backend = OnnxBackend(directory)
    images = [load_image(im) for im in (images or _test_images())]
    pixels = np.stack([backend.preprocess(im) for im in images])
    out: dict[str, float] = {}
    with torch.no_grad():
        questions = list(backend.questions[:8])
        if backend.query_source != "stored":
            questions += ["what color is the shape?", "is there a blue square in the image?"]
        if questions:
            qs = [q for q in questions for _ in images]
            px = np.concatenate([pixels] * len(questions))
            ref = model.predict([im for _ in questions for im in images], qs).numpy()
            out["predict"] = float((backend.predict(px, qs) * ref).sum(1).min())
        ref = model.embed_image(images).numpy()
        out["embed_image"] = float((backend.embed_images(pixels) * ref).sum(1).min())
        if backend.text is not None and backend.candidates:
            texts = list(backend.candidates[:16]) + ["  A Red Circle  ", "what is it?"]
            ref = model.embed_text(texts).numpy()
            out["embed_text"] = float((backend._run_text(texts) * ref).sum(1).min())
    bad = {k: v for k, v in out.items() if v < 1 - PARITY_TOLERANCE}
    if bad:
        raise ValueError(f"the ONNX export differs from the torch model: smallest cosines {bad} "
                         f"(at least {1 - PARITY_TOLERANCE} needed)")
    return out
