"""Predictors: one contract (:class:`~vljepa.predictors.base.Predictor`), one file per kind, and
the table from each kind's config dataclass to its implementation -- the one place that maps a
config to a class (:func:`create_predictor`)."""
from __future__ import annotations

from torch import nn

from ..config import PredictorConfig, predictor_config
from .base import Predictor, PredictorDims, QueryReader
from .linear import LinearPredictor
from .llm import LLMPredictor
from .text import TextPredictor
from .transformer import CachedTextPredictor, TransformerPredictor

# config dataclass -> implementation; vljepa.config.PREDICTOR_CONFIGS maps kind -> config class
PREDICTORS: dict[type[PredictorConfig], type[Predictor]] = {
    cls.Config: cls for cls in (TransformerPredictor, CachedTextPredictor, TextPredictor,
                                LLMPredictor, LinearPredictor)}


def predictor_class(cfg: PredictorConfig) -> type[Predictor]:
    """The implementation of ``cfg``'s kind. Raises ValueError for a config without one."""
    cls = PREDICTORS.get(type(cfg))
    if cls is None:
        raise ValueError(f"no predictor implements {type(cfg).__name__}")
    return cls


def create_predictor(cfg: PredictorConfig | dict, dims: PredictorDims,
                     y_encoder: nn.Module | None = None) -> Predictor:
    """The predictor of ``cfg``'s kind, built from ``dims``; its query reader from the
    Y-encoder when one is given (e.g. a model), none otherwise (query states come from
    elsewhere, as in a serving bundle).

    Args:
        cfg: a predictor config (or a dict with ``kind``; see :func:`vljepa.config.predictor_config`).
        dims: the sizes (:class:`PredictorDims`); ``query_dim`` None is filled from the reader.
        y_encoder: the model's Y-encoder, or None.
    Raises:
        ValueError: as the kind's config and constructor (bad sizes, unknown kind).
    """
    cfg = predictor_config(cfg)
    return predictor_class(cfg).from_encoders(cfg, dims, y_encoder)


__all__ = ["Predictor", "PredictorDims", "QueryReader", "PREDICTORS", "create_predictor",
           "predictor_class", "TransformerPredictor", "CachedTextPredictor", "TextPredictor",
           "LLMPredictor", "LinearPredictor"]
