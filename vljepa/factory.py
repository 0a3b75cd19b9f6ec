"""Create, save and load VL-JEPA models.

A saved model is a directory with ``config.json`` (the :class:`ModelConfig` plus the fingerprints
of the encoders it was trained with) and ``model.safetensors`` (the trained parts only: predictor,
heads, logit scale, and the Y-encoder when it was trained). The frozen X-encoder is named by its
config and rebuilt from its own weights, never copied.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, config_diff
from .model import VLJEPA
from .ternary import check_packed_state, export_state_dict, to_packed

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def create_model(config: ModelConfig | dict | None = None, **overrides: Any) -> VLJEPA:
    """Build a VL-JEPA from a config (dataclass or nested dict, e.g. a Hydra node).

    ``create_model()`` gives the offline default: EfficientNet-Lite0 X-encoder and
    all-MiniLM-L6-v2 Y-encoder. Keyword arguments are merged into the config's top level.
    """
    cfg = ModelConfig.from_dict(config or {}).to_dict()
    cfg.update(overrides)
    return VLJEPA(ModelConfig.from_dict(cfg))


def trained_state_dict(model: VLJEPA) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold: all but the frozen encoders'."""
    frozen = ["x_encoder."]
    if not model.config.y_encoder.trainable:
        frozen.append("y_encoder.")
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(tuple(frozen))}


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same directory, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_pretrained(model: VLJEPA, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed).

    A ternary model (``predictor.quant="ternary"``) is written packed: 2 bits per BitLinear
    weight plus a scale, its other predictor tensors in float16 (see
    :func:`vljepa.ternary.export_state_dict`). The model itself is left as it is.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"model": model.config.to_dict(), "x_encoder_fingerprint": model.x_encoder.fingerprint,
            "format": "vljepa/1"}
    state = trained_state_dict(model)
    if model.config.predictor.quant == "ternary":
        state = export_state_dict(model, state)
    _atomic_write(d / WEIGHTS_NAME, lambda p: save_file(state, p))
    _atomic_write(d / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return d


def load_trained_weights(model: VLJEPA, state: dict[str, torch.Tensor], source: str) -> VLJEPA:
    """Load trained tensors into ``model``; anything missing, extra or misshapen is an error
    naming the tensors."""
    expected = trained_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{source} does not fit this model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict(state, strict=False)
    return model


def check_config(expected: ModelConfig | dict, found: ModelConfig | dict, source: str) -> None:
    """Raise ValueError naming every field where a checkpoint's config differs from a model's."""
    a = ModelConfig.from_dict(expected).to_dict()
    b = ModelConfig.from_dict(found).to_dict()
    diff = config_diff(a, b)
    if diff:
        raise ValueError(f"{source} was saved with a different model config "
                         f"(this model vs checkpoint): {'; '.join(diff)}")


def load(name_or_path: str | os.PathLike, map_location: str = "cpu") -> VLJEPA:
    """Load a model saved by :func:`save_pretrained` (a directory) or a Lightning ``.ckpt`` from
    ``train.py``. Returns it in eval mode. A ternary model from a directory stays packed in
    memory (2 bits per weight; each layer is unpacked on the fly), so it serves but cannot train;
    a ternary ``.ckpt`` loads in its trainable (latent, fp32) state.

    Raises:
        FileNotFoundError: the directory or a file in it is missing (names which).
        ValueError: the weights do not fit the config, or the X-encoder found on this machine is
            not the one the checkpoint was trained with.
    """
    path = Path(name_or_path)
    if path.suffix == ".ckpt":
        return load_lightning_checkpoint(path, map_location)
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {str(path)!r}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{name} is missing from {str(path)!r}")
    from safetensors.torch import load_file

    meta = json.loads((path / CONFIG_NAME).read_text())
    model = VLJEPA(ModelConfig.from_dict(meta["model"]))
    found = model.x_encoder.fingerprint
    if meta.get("x_encoder_fingerprint") not in (None, found):
        raise ValueError(
            f"the X-encoder built here ({model.config.x_encoder.name}, fingerprint {found}) is not "
            f"the one {str(path)!r} was trained with (fingerprint {meta['x_encoder_fingerprint']}):"
            " its weights, version or preprocessing differ")
    state = load_file(str(path / WEIGHTS_NAME), device=map_location)
    if model.config.predictor.quant == "ternary":
        to_packed(model.predictor)  # drop the fp32 latent weights before the packed ones arrive
        check_packed_state(model, state, str(path / WEIGHTS_NAME))
    return load_trained_weights(model, state, str(path / WEIGHTS_NAME)).to(map_location).eval()


def load_lightning_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> VLJEPA:
    """Rebuild a VLJEPA from a Lightning checkpoint written by ``train.py`` (read with
    ``weights_only=True``: the hyper-parameters are plain data)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    try:
        cfg = ckpt["hyper_parameters"]["model_config"]
    except KeyError:
        raise ValueError(f"{str(path)!r} is not a vljepa training checkpoint "
                         "(no hyper_parameters.model_config)") from None
    model = VLJEPA(ModelConfig.from_dict(cfg))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return load_trained_weights(model, state, str(path)).to(map_location).eval()
