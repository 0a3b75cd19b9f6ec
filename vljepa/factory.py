"""Create, load and convert models: the library's entry points (timm's ``create_model``,
huggingface_hub's ``from_pretrained``).

A saved model is a directory with ``config.json`` and ``model.safetensors`` (the trained parts
only; the frozen encoders are named by the config and rebuilt from their own weights, never
copied), a Lightning ``.ckpt`` from ``train.py``, or a hub repo id fetched with
``huggingface_hub.snapshot_download`` (only the local HF cache with ``HF_HUB_OFFLINE=1``).
:func:`load` reads any of them and hands it to the loader of its ``format`` (:data:`LOADERS`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import hub
from .baseline import VLMBaseline
from .config import NAMED_CONFIGS, ModelConfig, YEncoderConfig, check_config, merge, named_config
from .model import VLJEPA
from .encoders import TextTokenizer
from .quantize import init_from_full_precision

if TYPE_CHECKING:
    from .serving import ServingModel

# config.json's "format" -> the class method that rebuilds that kind of model from
# (meta, tensors, source, map_location): the one place that decides what a file holds.
LOADERS: dict[str, Callable[..., VLJEPA | VLMBaseline]] = {
    VLJEPA.FORMAT: VLJEPA.from_saved,
    VLMBaseline.FORMAT: VLMBaseline.from_saved,
}


def create_model(config: str | ModelConfig | dict | None = None, **overrides: Any) -> VLJEPA:
    """Build a VL-JEPA (untrained predictor, pretrained frozen encoders) from a config.

    Args:
        config: a named config (``"lite"``, the offline default: EfficientNet-Lite0 X-encoder,
            all-MiniLM-L6-v2 Y-encoder; ``"paper"``; see :data:`vljepa.config.NAMED_CONFIGS`),
            a :class:`ModelConfig`, or a nested dict (e.g. a Hydra node) of the fields that
            differ from the dataclass defaults (:class:`ModelConfig`). None: ``"lite"``.
        overrides: fields merged into the config, nested dicts key by key, e.g.
            ``create_model("lite", predictor={"depth": 4})``; a predictor of another kind
            starts from that kind's defaults (``predictor={"kind": "linear"}``).
    Raises:
        ValueError: an unknown config name or config key (names it).
    """
    if config is None or isinstance(config, str):
        config = named_config(config or "lite")
    cfg = ModelConfig.from_dict(config or {}).to_dict()
    new_kind = (overrides.get("predictor") or {}).get("kind")
    if new_kind and new_kind != cfg["predictor"]["kind"]:
        cfg["predictor"] = {"kind": new_kind}  # another kind starts from its own defaults
    return VLJEPA(ModelConfig.from_dict(merge(cfg, overrides)))


def load(name_or_path: str | os.PathLike, map_location: str = "cpu", lean: bool = False,
         fallback: bool = False) -> VLJEPA | VLMBaseline | ServingModel:
    """Load a saved model: a ``save_pretrained`` directory, a hub repo id, or a Lightning
    ``.ckpt`` from ``train.py``. Returns it in eval mode, built from its own config, as the
    class its ``format`` names (a :class:`VLJEPA`, or the token-generating
    :class:`~vljepa.baseline.VLMBaseline`).

    ``lean=True`` loads a serving bundle (``vljepa export-serving``) as a
    :class:`vljepa.serving.ServingModel` instead: it answers the bundle's stored questions with
    its stored candidates, without the encoders' libraries (see :mod:`vljepa.serving`;
    ``fallback`` as :func:`vljepa.serving.load_serving`).

    A ternary model from a directory stays packed in memory (2 bits per weight, multiplied as
    stored by the int8 x 2-bit kernel of :mod:`vljepa.kernels.ternary_gemm`), so it serves
    but cannot train; a ternary ``.ckpt`` loads in its
    trainable (latent, fp32) state.

    Raises:
        FileNotFoundError: the directory or a file in it is missing (names which); an encoder's
            weights file named by the config is missing (names it).
        ValueError: an unknown format; the weights do not fit the config; or the X- or Y-encoder
            found on this machine is not the one the checkpoint was trained with (names which);
            ``fallback`` without ``lean``.
    """
    if fallback and not lean:
        raise ValueError("fallback=True goes with lean=True (it answers what a serving bundle "
                         "does not store with the full model)")
    if lean:
        from .serving import load_serving
        return load_serving(hub.resolve(name_or_path), map_location, fallback)
    meta, state, source = hub.read_any(name_or_path, map_location)
    fmt = meta.get("format", VLJEPA.FORMAT)
    if fmt not in LOADERS:
        raise ValueError(f"{source} holds a model of format {fmt!r}; this vljepa reads "
                         f"{sorted(LOADERS)}")
    return LOADERS[fmt](meta, state, source, map_location)


def _named_or_saved(name_or_path: str | os.PathLike | None, **kw: Any) -> VLJEPA:
    """A named config (or None: "lite") -> a new model; anything else -> :func:`load`."""
    if name_or_path is None or str(name_or_path) in NAMED_CONFIGS:
        return create_model(name_or_path, **kw)
    model = load(name_or_path, **kw)
    if not isinstance(model, VLJEPA):
        raise ValueError(f"{str(name_or_path)!r} is not a VL-JEPA ({type(model).__name__}): "
                         "open_clip's conventions need encode_image / encode_text")
    return model


def create_model_and_transforms(name_or_path: str | os.PathLike | None = None, **kw: Any
                                ) -> tuple[VLJEPA, Callable, Callable]:
    """open_clip's entry point: ``(model, preprocess_train, preprocess_val)``.

    ``name_or_path`` is a named config ("lite", "paper": a new model, ``kw`` as
    :func:`create_model`'s overrides) or a saved model (directory, ``.ckpt``, hub repo id; ``kw``
    as :func:`load`'s). Both transforms are the X-encoder's own preprocessing (PIL image ->
    normalised float tensor (3, H, W)): the X-encoder is frozen and its features are cached, so
    training uses no augmentation. ``model.encode_image(preprocess_val(img)[None])`` is then
    open_clip's call. Raises as :func:`create_model` / :func:`load`.
    """
    model = _named_or_saved(name_or_path, **kw)
    return model, model.x_encoder.transform, model.x_encoder.transform


def create_model_from_pretrained(name_or_path: str | os.PathLike, **kw: Any
                                 ) -> tuple[VLJEPA, Callable]:
    """open_clip's ``create_model_from_pretrained``: ``(model, preprocess)`` of a saved model
    (or a named config). Raises as :func:`load`."""
    model, _, preprocess = create_model_and_transforms(name_or_path, **kw)
    return model, preprocess


def get_tokenizer(name_or_path: str | os.PathLike | None = None,
                  context_length: int | None = None) -> TextTokenizer:
    """open_clip's ``get_tokenizer``: a callable list[str] -> ``LongTensor`` (B, L) for
    ``model.encode_text``, with ``context_length`` and ``pad_id`` attributes.

    Reads only the config (a named config, or a saved model's ``config.json`` / ``.ckpt``
    hyper-parameters): no weights are loaded. Raises FileNotFoundError / ValueError as
    :func:`load` for a missing or foreign file.
    """
    if name_or_path is None or str(name_or_path) in NAMED_CONFIGS:
        cfg = named_config(name_or_path or "lite").y_encoder
    else:
        meta = hub.read_meta(name_or_path)
        if meta.get("format", VLJEPA.FORMAT) not in LOADERS:
            raise ValueError(f"{str(name_or_path)!r} holds a model of format {meta['format']!r}")
        cfg = YEncoderConfig(**meta["model"]["y_encoder"])
    return TextTokenizer(cfg, context_length)


def save_pretrained(model: VLJEPA | VLMBaseline, directory: str | os.PathLike) -> Path:
    """``model.save_pretrained(directory)``: ``config.json`` + ``model.safetensors``."""
    return model.save_pretrained(directory)


def convert_checkpoint(ckpt: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Lightning ``.ckpt`` from ``train.py`` -> a ``save_pretrained`` directory (one call;
    also ``vljepa convert CKPT DIR``). Raises as :func:`load`."""
    if Path(ckpt).suffix != hub.CHECKPOINT_SUFFIX:
        raise ValueError(f"{str(ckpt)!r} is not a Lightning checkpoint (.ckpt)")
    return load(ckpt).save_pretrained(directory)


def init_from(model: VLJEPA, source: str | os.PathLike) -> VLJEPA:
    """Copy a saved model's trained weights into ``model`` (``train.py init_from=``): a model of
    the same config (stage 1 -> stage 2), or a full-precision model into a ternary one (the
    start of a QAT fine-tune, :func:`vljepa.quantize.init_from_full_precision`). A Y-decoder the
    source has and ``model`` lacks is left behind.

    Raises:
        ValueError: the configs differ (names the fields), or ``source`` is a packed ternary
            export (inference only).
    """
    src = load(source)
    if getattr(model, "y_decoder", None) is None and getattr(src, "y_decoder", None) is not None:
        src.y_decoder, src.config.y_decoder = None, None  # keep the VL-JEPA, leave its Y-decoder
    if model.config.predictor.quant == "ternary" and src.config.predictor.quant == "none":
        return init_from_full_precision(model, src)
    check_config(model.config, src.config, str(source))
    if src.config.predictor.quant == "ternary":
        raise ValueError(f"{source} is a packed ternary export (inference only); to continue "
                         "training use its Lightning checkpoint: ckpt_path=...ckpt")
    return model.load_trained(src.trained_state_dict(), str(source))

