"""Lean serving: answer questions with only what the query path needs.

A loaded :class:`~vljepa.model.VLJEPA` holds the whole frozen X-encoder (timm), the whole
Y-encoder (sentence-transformers, a 6-layer MiniLM) and the libraries behind them, but answering
a known question with a saved candidate vocabulary needs far less: the candidates' S_Y change
only when the candidates do, and the query states of a saved set of questions only when the
questions do. A *serving bundle* stores them with the model:

    vljepa.serving.export_serving("checkpoints/vljepa-easyvqa-lite0", "serve/", questions)
    model = vljepa.load("serve/", lean=True)     # a ServingModel: torch + PIL, no timm,
    answers, scores = model.answer(images, questions)   # transformers, sentence-transformers

A bundle is a ``save_pretrained`` directory (``config.json``, ``model.safetensors``, the model
card; ``vljepa.load(dir)`` still loads the full model from it) plus two files:

    serving.json         format, the questions and candidates stored, the X-encoder's layers and
                         preprocessing, the SHA-256 of model.safetensors it was made from
    serving.safetensors  ``x_encoder.*`` (the layers the visual tokens need: for the default
                         EfficientNet-Lite0 at ``feature_index=-4``, the stem and two stages),
                         ``candidates.s_y`` (C, D) float32 unit rows (``embed_text``), and
                         ``questions.states`` (Q, L, Dq) float32 + ``questions.lengths`` (Q,)
                         int64: the predictor's query input for each stored question

The predictor is read from ``model.safetensors`` as the full loader reads it (a ternary one
stays packed, 2 bits per weight). A timm CNN X-encoder made of plain convolutions, batch norms
and ReLU / ReLU6 (EfficientNet-Lite, MobileNet-style blocks without squeeze-excitation) with
Resize / CenterCrop / ToTensor / Normalize preprocessing is rebuilt in plain torch and PIL;
any other X-encoder is stored by reference (``"kind": "full"``) and built with its library at
load. ``export_serving`` checks that the rebuilt X-encoder and preprocessing give bit-identical
tokens on test images before writing anything.

Answers equal the full model's (tests/test_serving.py): the same layers run on the same inputs;
the stored S_Y and query states were computed by the full model, in one batch (the full model
batches differently, so scores can differ from its by float32 rounding, about 1e-7).
A question or candidate that is not stored raises :class:`NotInBundleError` naming it, or with
``fallback=True`` loads the full model from the same directory, warns once, and answers with it.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .. import hub
from ..config import ModelConfig
from ..encoders.weights import file_sha256
from ..inputs import as_image_list, check_texts, load_image
from ..kernels.bitlinear import check_packed_state, to_packed
from ..model import VLJEPA
from ..predictors import PREDICTORS, PredictorDims, create_predictor, predictor_class
from ..version import __version__
from .lean_cnn import LeanConvEncoder, LeanTransform, lean_x_encoder

FORMAT = "vljepa-serving/1"
CONFIG_NAME = hub.SERVING_CONFIG_NAME  # serving.json
WEIGHTS_NAME = hub.SERVING_WEIGHTS_NAME  # serving.safetensors
class NotInBundleError(ValueError):
    """A question or candidate answer that the serving bundle does not store."""


# ---- export ----

def export_serving(model: Any, directory: str | os.PathLike, questions: Sequence[str],
                   candidates: Sequence[str] | None = None) -> Path:
    """Write a serving bundle of ``model`` to ``directory`` (see the module docstring).

    Args:
        model: a :class:`~vljepa.model.VLJEPA`, or a saved one (a directory, ``.ckpt`` or
            hub repo id, read by :meth:`VLJEPA.from_pretrained <vljepa.model.VLJEPA.from_pretrained>`).
            Its predictor kind must be ``lean_servable`` ("transformer", "cached_text").
        directory: created if needed; every file is written atomically (the model's own files
            by ``save_pretrained``, then serving.safetensors, then serving.json).
        questions: the questions to store (duplicates are stored once); a lean model answers
            these, and only these, exactly as written.
        candidates: the candidate answers to store; None: the model's saved answer vocabulary.
    Returns:
        the directory.
    Raises:
        ValueError: no questions; no candidates (none given, none saved); a predictor kind
            whose frozen parts are not saved ("text", "llm") or "linear"; a model that is not a
            VL-JEPA; a question whose token mask is not right-padded.
    """
    from safetensors.torch import save_file

    if not isinstance(model, VLJEPA):
        model = VLJEPA.from_pretrained(model)  # ValueError for another kind of saved model
    if not predictor_class(model.config.predictor).lean_servable:
        able = sorted(c.Config.KIND for c in PREDICTORS.values() if c.lean_servable)
        raise ValueError(f"lean serving supports predictor kinds {able}, not "
                         f"{model.config.predictor.kind!r} (its frozen pretrained layers are not "
                         "saved with the model, or it ignores the query)")
    questions = list(dict.fromkeys(check_texts(questions, "questions")))
    if not questions:
        raise ValueError("no questions given: a serving bundle stores the query states of the "
                         "questions it answers")
    if candidates is None:
        if not model.answers:
            raise ValueError("no candidates given and the model has no saved answer vocabulary")
        candidates = model.answers
    candidates = list(dict.fromkeys(check_texts(candidates, "candidates")))
    if not candidates:
        raise ValueError("no candidate answers given")
    model.eval()
    with torch.no_grad():
        s_y = model.embed_text(candidates).float().cpu().contiguous()  # (C, D) unit rows
        ids, mask = model.tokenize_queries(questions)  # (Q, L) each
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(mask.shape[1])[None] < lengths[:, None]):
            raise ValueError("the query tokenizer does not right-pad: a bundle stores each "
                             "question's states as a prefix")
        states = model.predictor.embed_query(ids.to(model.device)).float().cpu()  # (Q, L, Dq)
        states = (states * mask[..., None]).contiguous()  # zeros at padding, as the cache gives
    x_spec, x_tensors = lean_x_encoder(model.x_encoder)
    d = Path(model.save_pretrained(directory))
    for name in (WEIGHTS_NAME, CONFIG_NAME):  # temp files of a writer killed mid-save
        for stale in d.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    tensors = {**x_tensors, "candidates.s_y": s_y, "questions.states": states,
               "questions.lengths": lengths.to(torch.int64).contiguous()}
    hub.atomic_write(d / WEIGHTS_NAME, lambda p: save_file(tensors, p))
    meta = {"format": FORMAT, "vljepa_version": __version__,
            "model_sha256": file_sha256(d / hub.WEIGHTS_NAME),
            "x_encoder": x_spec, "questions": questions, "candidates": candidates,
            "visual": {"dim": model.x_encoder.dim, "num_tokens": model.x_encoder.num_tokens,
                       "grid": list(model.x_encoder.grid) if model.x_encoder.grid else None},
            "query_dim": int(states.shape[-1])}
    hub.atomic_write(d / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return d


# ---- the lean model ----

class ServingModel(nn.Module):
    """A VL-JEPA that answers the stored questions with the stored candidates: the X-encoder's
    needed layers, the predictor (packed if ternary), the candidates' S_Y and the questions'
    query states. Load it with :func:`load_serving` or ``vljepa.load(dir, lean=True)``.

    Attributes:
        config: the model's :class:`~vljepa.config.ModelConfig`.
        questions, candidates: what the bundle stores (lists of strings).
        answers: the default candidates (the stored ones).
    """

    def __init__(self, config: ModelConfig, meta: dict[str, Any],
                 tensors: dict[str, torch.Tensor], predictor_state: dict[str, torch.Tensor],
                 directory: Path, fallback: bool, map_location: str = "cpu"):
        super().__init__()
        self.config, self.directory, self.fallback = config, directory, fallback
        source = repr(str(directory / hub.WEIGHTS_NAME))
        xs = meta["x_encoder"]
        if xs["kind"] == "conv":
            self.x_encoder = LeanConvEncoder(xs["blocks"])
            self.transform = LeanTransform(xs["transform"])
            x_state = {k[len("x_encoder."):]: v for k, v in tensors.items()
                       if k.startswith("x_encoder.")}
            missing, unexpected = self.x_encoder.load_state_dict(x_state, strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing or unexpected:
                raise ValueError(f"{directory / WEIGHTS_NAME}: X-encoder tensors missing "
                                 f"{missing[:5]}, unexpected {unexpected[:5]}")
        elif xs["kind"] == "full":
            from ..encoders import XEncoder
            full = XEncoder(config.x_encoder)
            if full.fingerprint != xs["fingerprint"]:
                raise ValueError(f"the X-encoder built here (fingerprint {full.fingerprint}) is "
                                 f"not the bundle's ({xs['fingerprint']})")
            self.x_encoder, self.transform = full, full.transform
        else:
            raise ValueError(f"unknown X-encoder kind {xs['kind']!r} in {directory / CONFIG_NAME}")
        v = meta["visual"]
        dims = PredictorDims(v["dim"], v["num_tokens"], tuple(v["grid"]) if v["grid"] else None,
                             config.embed_dim, meta["query_dim"])
        self.predictor = create_predictor(config.predictor, dims)  # no reader: stored states
        state = {f"predictor.{k}": t for k, t in predictor_state.items()}
        if any(k.endswith(".weight_packed") for k in state):
            to_packed(self.predictor)  # drop the fp32 latent weights before the packed arrive
            check_packed_state(self, state, source)
        expected = {f"predictor.{k}" for k in self.predictor.state_dict()}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{source} does not fit this model config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        self.predictor.load_state_dict(predictor_state)
        self.register_buffer("s_y", tensors["candidates.s_y"], persistent=False)
        self.register_buffer("states", tensors["questions.states"], persistent=False)
        self.register_buffer("lengths", tensors["questions.lengths"], persistent=False)
        self.questions, self.candidates = list(meta["questions"]), list(meta["candidates"])
        self.answers = self.candidates
        self._question_index = {q: i for i, q in enumerate(self.questions)}
        self._candidate_index = {c: i for i, c in enumerate(self.candidates)}
        self._full = None
        self.to(map_location).eval()

    @property
    def device(self) -> torch.device:
        return self.s_y.device

    def train(self, mode: bool = True):  # noqa: D102 - serving only: always in eval mode
        return super().train(False)

    def full_model(self):
        """The full :class:`~vljepa.model.VLJEPA` from the same directory (loaded once, on
        first use; imports the encoders' libraries)."""
        if self._full is None:
            self._full = VLJEPA.from_pretrained(self.directory, map_location=str(self.device))
        return self._full

    def _missing(self, what: str, missing: list[str], stored: int) -> None:
        """Raise NotInBundleError, or with ``fallback`` warn (return to use the full model)."""
        shown = ", ".join(repr(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
        what = what[:-1] if len(missing) == 1 else what
        msg = (f"{len(missing)} {what} not stored in the serving bundle {str(self.directory)!r} "
               f"(it stores {stored}): {shown}.")
        if not self.fallback:
            raise NotInBundleError(
                f"{msg} Export a bundle that stores them (vljepa export-serving ... --questions), "
                f"load with fallback=True, or load the full model: vljepa.load(dir)")
        warnings.warn(f"{msg} Answering with the full model (loaded from the same directory; "
                      "it imports the encoders' libraries and takes several hundred MiB more)",
                      stacklevel=4)  # the caller of answer / predict (under torch.no_grad)

    @torch.no_grad()
    def visual_tokens(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Images (anything :func:`vljepa.inputs.load_image` reads) -> visual tokens (B, N, Dx)
        float32, as :meth:`VLJEPA.visual_tokens <vljepa.model.VLJEPA.visual_tokens>` gives."""
        images = as_image_list(images)
        out = []
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([self.transform(load_image(im)) for im in images[i:i + batch_size]])
            out.append(self.x_encoder(pixels.to(self.device)))
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, images: Sequence[Any], questions: Sequence[str], batch_size: int = 64
                ) -> torch.Tensor:
        """Images and one stored question each -> Ŝ_Y (B, D) float32, unit norm.

        Raises:
            ValueError: the counts differ, ``batch_size`` < 1, or an empty question.
            NotInBundleError: a question the bundle does not store (without ``fallback``).
        """
        images = as_image_list(images)
        questions = check_texts(questions, "questions")
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        missing = [q for q in dict.fromkeys(questions) if q not in self._question_index]
        if missing:
            self._missing("questions", missing, len(self.questions))
            return self.full_model().predict(images, questions, batch_size)
        out = []
        for i in range(0, len(images), batch_size):
            visual = self.visual_tokens(images[i:i + batch_size], batch_size)
            idx = torch.tensor([self._question_index[q] for q in questions[i:i + batch_size]])
            lengths = self.lengths[idx]
            L = int(lengths.max())
            query = self.states[idx, :L]  # (b, L, Dq), zeros at padding
            mask = torch.arange(L, device=self.device)[None] < lengths[:, None]
            out.append(F.normalize(self.predictor(visual.to(self.device, torch.float32),
                                                  query, mask), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def answer(self, images: Sequence[Any], questions: Sequence[str],
               candidates: Sequence[str] | None = None, batch_size: int = 64
               ) -> tuple[list[str], torch.Tensor]:
        """Answer each question by the nearest stored candidate (:meth:`VLJEPA.answer
        <vljepa.model.VLJEPA.answer>`).

        Args:
            candidates: a subset of the stored candidates, in any order; None: all of them.
        Returns:
            (B answer strings, (B,) float32 cosine of each chosen answer).
        Raises:
            NotInBundleError: a question or candidate the bundle does not store (without
                ``fallback``). ValueError / TypeError: as :meth:`predict`, or no candidates.
        """
        if candidates is None:
            candidates = self.candidates
        candidates = check_texts(candidates, "candidates")
        if not candidates:
            raise ValueError("no candidate answers given")
        missing = [c for c in dict.fromkeys(candidates) if c not in self._candidate_index]
        missing_q = [q for q in dict.fromkeys(check_texts(questions, "questions"))
                     if q not in self._question_index]
        if missing or missing_q:
            if missing:
                self._missing("candidates", missing, len(self.candidates))
            if missing_q:
                self._missing("questions", missing_q, len(self.questions))
            return self.full_model().answer(images, questions, candidates, batch_size)
        s_y = self.s_y[torch.tensor([self._candidate_index[c] for c in candidates])]
        scores, idx = (self.predict(images, questions, batch_size) @ s_y.T).max(1)
        return [candidates[i] for i in idx.tolist()], scores


def load_serving(directory: str | os.PathLike, map_location: str = "cpu",
                 fallback: bool = False) -> ServingModel:
    """Load a serving bundle written by :func:`export_serving` as a :class:`ServingModel`.

    Imports torch, PIL, numpy and safetensors only (plus the X-encoder's library when the
    bundle stores it by reference).

    Args:
        directory: the bundle (a local directory).
        fallback: on a question or candidate the bundle does not store, warn and answer with
            the full model loaded from the same directory, instead of raising.
    Raises:
        FileNotFoundError: a file of the bundle is missing (names it; a plain saved model has
            no serving files: make them with ``vljepa export-serving``).
        ValueError: a foreign format; model.safetensors changed since the export (the stored
            S_Y and states would be stale); tensors that do not fit the config.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    for name in (hub.CONFIG_NAME, hub.WEIGHTS_NAME, CONFIG_NAME, WEIGHTS_NAME):
        if not (d / name).is_file():
            hint = (" (a saved model without a serving bundle: write one with `vljepa "
                    "export-serving MODEL DIR --questions ...`)") if name in (
                CONFIG_NAME, WEIGHTS_NAME) else ""
            raise FileNotFoundError(f"{name} is missing from {str(d)!r}{hint}")
    meta = json.loads((d / CONFIG_NAME).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / CONFIG_NAME} is not a vljepa serving bundle "
                         f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    model_meta = json.loads((d / hub.CONFIG_NAME).read_text())
    if "model" not in model_meta:
        raise ValueError(f"{d / hub.CONFIG_NAME} is not a vljepa config (no 'model' key)")
    if file_sha256(d / hub.WEIGHTS_NAME) != meta["model_sha256"]:
        raise ValueError(f"{d / hub.WEIGHTS_NAME} is not the file the serving bundle was made "
                         "from (its SHA-256 differs): export the bundle again")
    config = ModelConfig.from_dict(model_meta["model"])
    state = load_file(str(d / hub.WEIGHTS_NAME), device=map_location)
    predictor_state = {k[len("predictor."):]: v for k, v in state.items()
                       if k.startswith("predictor.")}
    del state
    tensors = load_file(str(d / WEIGHTS_NAME), device=map_location)
    return ServingModel(config, meta, tensors, predictor_state, d, fallback, map_location)
