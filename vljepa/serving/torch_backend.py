"""A torch model behind the HTTP server: a full :class:`~vljepa.model.VLJEPA` or a lean
:class:`~vljepa.serving.bundle.ServingModel` (``vljepa.load(dir, lean=True)``) as a
:class:`~vljepa.serving.backend.Backend`.

The server preprocesses each image in the request's thread (the model's own transform: for
timm's eval transform its resize and crop in PIL, the normalisation later on the whole batch,
the same float32 operations), then runs the X-encoder and the predictor on the batch it
gathered, as ``model.predict`` / ``model.embed_image`` / ``model.embed_text`` do (the same
layers on the same inputs; scores may differ from a one-by-one call by float32 rounding, about
1e-7).
"""
from __future__ import annotations

import copy

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import hub
from ..model import VLJEPA
from .backend import Backend, InputError
from .bundle import NotInBundleError, ServingModel
from .lean_cnn import _transform_spec


class TorchBackend(Backend):
    """Serve a loaded VL-JEPA (full or lean).

    Args:
        model: a :class:`VLJEPA` or a :class:`ServingModel`, in eval mode.
    Raises:
        TypeError: another kind of model (the token-generating baseline has no shared space
            to serve).
    """

    def __init__(self, model: Any):
        super().__init__()
        if not isinstance(model, (VLJEPA, ServingModel)):
            raise TypeError(f"vljepa serve needs a VL-JEPA (a saved model or a serving bundle), "
                            f"got a {type(model).__name__}")
        self.model = model.eval()
        self.lean = isinstance(model, ServingModel)
        self._counter = None  # the tokenizer count_tokens uses (made on first use)
        self.kind = "torch-lean" if self.lean else "torch"
        self.embed_dim = int(model.config.embed_dim)
        self.candidates = list(model.answers) if model.answers else None
        self.transform = model.transform if self.lean else model.x_encoder.transform
        if self.lean:
            from safetensors import safe_open
            with safe_open(str(model.directory / hub.WEIGHTS_NAME), framework="pt") as f:
                scale = f.get_tensor("logit_scale") if "logit_scale" in f.keys() else None
            self.logit_scale = float(scale.exp().clamp(max=100.0)) if scale is not None else 100.0
        else:
            self.logit_scale = float(model.logit_scale.detach().exp().clamp(max=100.0))
        try:  # timm's eval transform as data: the server normalises a batch at a time
            self.pixel_spec = getattr(self.transform, "spec", None) or _transform_spec(
                self.transform)
        except ValueError:  # another transform: run it whole, image by image
            self.pixel_spec = None
        self.image_size = tuple(self.float_pixels(
            self.preprocess(Image.new("RGB", (64, 64)))[None]).shape[-2:])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        if self.pixel_spec is not None:
            return super().preprocess(image)  # (H, W, 3) uint8
        return self.transform(image).numpy()  # (3, H, W) float32

    def _visual(self, pixels: np.ndarray) -> torch.Tensor:
        px = torch.from_numpy(self.float_pixels(pixels)).to(self.model.device)
        return self.model.x_encoder(px)

    @torch.no_grad()
    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        visual = self._visual(pixels)
        if not self.lean:
            return self.model.embed_visual(visual).cpu().numpy()
        prompt = self.model.config.default_prompt
        if prompt is not None:
            return self._lean_predict(visual, [prompt] * len(visual))
        return F.normalize(self.model.predictor(visual, None, None), dim=-1).cpu().numpy()

    @torch.no_grad()
    def predict(self, pixels: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        visual = self._visual(pixels)
        if self.lean:
            return self._lean_predict(visual, list(questions))
        ids, mask = self.model.tokenize_queries(list(questions))
        return F.normalize(self.model(visual, ids, mask), dim=-1).cpu().numpy()

    def _lean_predict(self, visual: torch.Tensor, questions: list[str]) -> np.ndarray:
        """A serving bundle's path (:meth:`ServingModel.predict` on visual tokens): stored query
        states, or the full model for unstored questions when loaded with ``fallback``."""
        m = self.model
        if any(q not in m._question_index for q in questions):
            self.check_questions(questions)  # raises without fallback
            full = m.full_model()
            ids, mask = full.tokenize_queries(questions)
            return F.normalize(full(visual, ids, mask), dim=-1).cpu().numpy()
        idx = torch.tensor([m._question_index[q] for q in questions])
        lengths = m.lengths[idx]
        L = int(lengths.max())
        mask = torch.arange(L, device=m.device)[None] < lengths[:, None]
        return F.normalize(m.predictor(visual, m.states[idx, :L], mask), dim=-1).cpu().numpy()

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        if not self.lean:
            return self.model.embed_text(texts).cpu().numpy()
        m = self.model
        if all(t in m._candidate_index for t in texts):
            return m.s_y[torch.tensor([m._candidate_index[t] for t in texts])].cpu().numpy()
        self.check_texts(texts, "texts")
        return m.full_model().embed_text(texts).cpu().numpy()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self.lean:
            return super().count_tokens(texts)  # no tokenizer in a lean bundle: an estimate
        y = self.model.y_encoder
        if y.cfg.backend != "sentence-transformers":
            return super().count_tokens(texts)
        if self._counter is None:  # a copy of its own: inference may be tokenizing meanwhile
            self._counter = copy.deepcopy(y.model.tokenizer)
        enc = self._counter(list(texts), truncation=True, max_length=y.cfg.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def check_questions(self, questions: Sequence[str]) -> None:
        if not self.lean or self.model.fallback:
            return
        missing = [q for q in dict.fromkeys(questions) if q not in self.model._question_index]
        if missing:
            raise InputError(self._not_stored("question", missing, len(self.model.questions)),
                             "question", "not_in_bundle")

    def check_texts(self, texts: Sequence[str], param: str) -> None:
        if not self.lean or self.model.fallback:
            return
        missing = [t for t in dict.fromkeys(texts) if t not in self.model._candidate_index]
        if missing:
            raise InputError(self._not_stored("text", missing, len(self.model.candidates)),
                             param, "not_in_bundle")

    def _not_stored(self, what: str, missing: list[str], stored: int) -> str:
        shown = ", ".join(repr(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
        return (f"{len(missing)} {what}{'s' if len(missing) > 1 else ''} not stored in this "
                f"serving bundle (it stores {stored}): {shown}. A lean bundle answers its stored "
                "questions and embeds its stored candidates only; serve the full model, or "
                "start the server with --fallback")

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.lean:
            out["questions"] = len(self.model.questions)
        return out


__all__ = ["TorchBackend", "NotInBundleError"]
