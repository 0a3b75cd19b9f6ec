"""Create, save and load VL-JEPA models.

A saved model is a directory with ``config.json`` (the :class:`ModelConfig` plus the fingerprints
of the encoders it was trained with) and ``model.safetensors`` (the trained parts only: predictor,
heads, logit scale, and the Y-encoder when it was trained). The frozen X-encoder is named by its
config and rebuilt from its own weights, never copied.

Names follow huggingface_hub's conventions (``config.json`` + ``model.safetensors``, as
``PyTorchModelHubMixin`` writes): :func:`load` takes a local directory, a Lightning ``.ckpt``, or
a hub repo id fetched with ``huggingface_hub.snapshot_download``, which honours
``HF_HUB_OFFLINE=1`` (then only the local HF cache is read).
"""
from __future__ import annotations

import hashlib
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
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        if k.startswith(tuple(frozen)):
            continue
        if v.numel() and (v.data_ptr(), v.shape) in seen:
            continue  # an alias (e.g. the Y-encoder's token table): saved once, under its first name
        seen.add((v.data_ptr(), v.shape))
        out[k] = v.detach().cpu().contiguous()
    return out


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same directory, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600 (and safetensors may recreate the file): saved models are ordinary files
        os.chmod(tmp, 0o666 & ~umask)
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
    from . import __version__
    meta = {"model": model.config.to_dict(), "x_encoder_fingerprint": model.x_encoder.fingerprint,
            "y_encoder_fingerprint": y_encoder_fingerprint(model), "answers": model.answers,
            "format": "vljepa/1", "vljepa_version": __version__}
    state = trained_state_dict(model)
    if model.config.predictor.quant == "ternary":
        state = export_state_dict(model, state)
    _atomic_write(d / WEIGHTS_NAME, lambda p: save_file(state, p))
    _atomic_write(d / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return d


def y_encoder_fingerprint(model: VLJEPA) -> str | None:
    """A hash of the frozen Y-encoder's identity and weights (None when it is trainable: its
    trained weights are then in the checkpoint itself)."""
    if model.config.y_encoder.trainable:
        return None
    if getattr(model.y_encoder, "_fingerprint", None) is None:
        cfg = model.config.y_encoder
        h = hashlib.sha256(f"{cfg.backend}|{cfg.name}|{cfg.pretrained}|{cfg.max_length}".encode())
        for name, t in model.y_encoder.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        model.y_encoder._fingerprint = h.hexdigest()[:16]
    return model.y_encoder._fingerprint


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


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local directory or ``.ckpt`` as is; otherwise a hub repo id (``owner/name``, optional
    ``@revision``) downloaded with ``huggingface_hub.snapshot_download`` (cache only when
    ``HF_HUB_OFFLINE=1``). Raises FileNotFoundError naming what was looked for."""
    path = Path(name_or_path)
    if path.exists() or path.suffix == ".ckpt" or str(name_or_path).count("/") != 1 \
            or str(name_or_path).startswith((".", "/")):
        return path
    from huggingface_hub import snapshot_download

    repo_id, _, revision = str(name_or_path).partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"]))
    except Exception as e:  # offline, unknown repo, no network: all mean "not available here"
        raise FileNotFoundError(
            f"no local model directory {str(name_or_path)!r}, and it could not be fetched as a "
            f"hub repo id ({type(e).__name__}: {e}). With HF_HUB_OFFLINE=1 only the local HF "
            "cache is read.") from e


def load(name_or_path: str | os.PathLike, map_location: str = "cpu") -> VLJEPA:
    """Load a model saved by :func:`save_pretrained` (a directory or hub repo id) or a Lightning
    ``.ckpt`` from ``train.py``. Returns it in eval mode, built from the checkpoint's own config.
    A ternary model from a directory stays packed in memory (2 bits per weight; each layer is
    unpacked on the fly), so it serves but cannot train; a ternary ``.ckpt`` loads in its
    trainable (latent, fp32) state.

    Raises:
        FileNotFoundError: the directory or a file in it is missing (names which); an encoder's
            weights file named by the config is missing (names it).
        ValueError: the weights do not fit the config, or the X- or Y-encoder found on this
            machine is not the one the checkpoint was trained with (names which).
    """
    path = resolve(name_or_path)
    if path.suffix == ".ckpt":
        return load_lightning_checkpoint(path, map_location)
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {str(path)!r}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{name} is missing from {str(path)!r}")
    from safetensors.torch import load_file

    meta = json.loads((path / CONFIG_NAME).read_text())
    if str(meta.get("format", "")).startswith("vljepa-vlm-baseline"):
        from .baseline import load_baseline  # the token-generating baseline (eval/compare.py)
        return load_baseline(path, meta, map_location)
    if "model" not in meta:
        raise ValueError(f"{str(path / CONFIG_NAME)!r} is not a vljepa config (no 'model' key)")
    model = VLJEPA(ModelConfig.from_dict(meta["model"]))
    found = model.x_encoder.fingerprint
    if meta.get("x_encoder_fingerprint") not in (None, found):
        raise ValueError(
            f"the X-encoder built here ({model.config.x_encoder.name}, fingerprint {found}) is not "
            f"the one {str(path)!r} was trained with (fingerprint {meta['x_encoder_fingerprint']}):"
            " its weights, version or preprocessing differ")
    if meta.get("y_encoder_fingerprint") is not None:
        found = y_encoder_fingerprint(model)
        if found != meta["y_encoder_fingerprint"]:
            raise ValueError(
                f"the Y-encoder built here ({model.config.y_encoder.name}, fingerprint {found}) is "
                f"not the one {str(path)!r} was trained with (fingerprint "
                f"{meta['y_encoder_fingerprint']}): its weights or version differ")
    state = load_file(str(path / WEIGHTS_NAME), device=map_location)
    if model.config.predictor.quant == "ternary":
        to_packed(model.predictor)  # drop the fp32 latent weights before the packed ones arrive
        check_packed_state(model, state, str(path / WEIGHTS_NAME))
    model = load_trained_weights(model, state, str(path / WEIGHTS_NAME))
    model.answers = meta.get("answers")
    return model.to(map_location).eval()


def convert_checkpoint(ckpt: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Lightning ``.ckpt`` from ``train.py`` -> a ``save_pretrained`` directory (one call;
    also ``vljepa convert CKPT DIR``)."""
    return save_pretrained(load_lightning_checkpoint(ckpt), directory)


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
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if "predictor" not in cfg and "output_vocab" in cfg:  # the token-generating VLM baseline
        from .baseline import VLMBaseline
        model = VLMBaseline(cfg)
        model.load_state_dict(state, strict=False)
        missing = set(model.trained_state_dict()) - set(state)
        if missing:
            raise ValueError(f"{str(path)!r} lacks tensors {sorted(missing)[:5]}")
    else:
        model = load_trained_weights(VLJEPA(ModelConfig.from_dict(cfg)), state, str(path))
    model.answers = ckpt.get("vljepa_answers")
    return model.to(map_location).eval()
