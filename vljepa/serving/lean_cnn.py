"""The X-encoder without timm: a timm EfficientNet-style CNN (plain convolutions, batch norms,
ReLU / ReLU6) and its eval preprocessing, rebuilt in plain torch and PIL for serving bundles.

:func:`lean_x_encoder` reads the spec and tensors off a loaded :class:`~vljepa.encoders.XEncoder`
and keeps the rebuild only when it gives bit-identical tokens on test images;
:class:`LeanConvEncoder` and :class:`LeanTransform` rebuild it from that spec.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .backend import resize_crop

_ACTS = {"relu": F.relu, "relu6": F.relu6, None: None}



class ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d (eval statistics) -> optional ReLU / ReLU6: timm's
    ``Conv2d`` + ``BatchNormAct2d`` with the same ops, so the same float results."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.conv = nn.Conv2d(spec["in"], spec["out"], spec["kernel"], spec["stride"],
                              spec["padding"], spec["dilation"], spec["groups"], spec["bias"])
        self.bn = nn.BatchNorm2d(spec["out"], eps=spec["eps"])
        if spec["act"] not in _ACTS:
            raise ValueError(f"unsupported activation {spec['act']!r} in a serving bundle")
        self.act = _ACTS[spec["act"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.act is None else self.act(x)


class ConvBlock(nn.Module):
    """Units in sequence, plus the input when ``skip`` (an inverted-residual block)."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.units = nn.Sequential(*[ConvBNAct(u) for u in spec["units"]])
        self.skip = bool(spec["skip"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.units(x)
        return y + x if self.skip else y


class LeanConvEncoder(nn.Module):
    """The X-encoder's layers up to its token output, in plain torch: preprocessed pixels
    (B, 3, H, W) float32 -> visual tokens (B, h*w, C) float32."""

    def __init__(self, blocks: list[dict[str, Any]]):
        super().__init__()
        self.blocks = nn.Sequential(*[ConvBlock(b) for b in blocks])

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.blocks(pixels).flatten(2).transpose(1, 2).float()


class LeanTransform:
    """torchvision's eval preprocessing (Resize of the short side, CenterCrop, ToTensor,
    Normalize) on PIL images with the same PIL and torch calls: RGB PIL image -> (3, H, W)
    float32, normalised."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = dict(spec)
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(spec["std"], dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(resize_crop(img, self.spec).copy())  # (H, W, 3) uint8
        x = x.permute((2, 0, 1)).contiguous().to(torch.float32).div(255)
        return x.sub_(self.mean).div_(self.std)


def _unit_spec(conv: nn.Module, bn: nn.Module, where: str) -> dict[str, Any]:
    """One conv + BatchNormAct2d pair -> its spec; ValueError when it is anything else."""
    from timm.layers import BatchNormAct2d  # export only: the full model has timm loaded

    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{where}: {type(conv).__name__} is not a plain nn.Conv2d")
    if type(bn) is not BatchNormAct2d or not isinstance(bn.drop, nn.Identity) \
            or bn.running_mean is None:
        raise ValueError(f"{where}: {type(bn).__name__} is not a BatchNormAct2d with stats")
    act = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Identity: None}.get(type(bn.act), "?")
    if act == "?":
        raise ValueError(f"{where}: activation {type(bn.act).__name__} is not supported")
    return {"in": conv.in_channels, "out": conv.out_channels, "kernel": list(conv.kernel_size),
            "stride": list(conv.stride), "padding": list(conv.padding),
            "dilation": list(conv.dilation), "groups": conv.groups,
            "bias": conv.bias is not None, "eps": bn.eps, "act": act}


def _timm_cnn_spec(x_encoder: nn.Module) -> tuple[list[dict[str, Any]], list[tuple[nn.Module, nn.Module]]]:
    """A timm EfficientNet-family X-encoder (its stem and the blocks up to the token output)
    -> (block specs, the (conv, bn) module pairs in order). ValueError when a part is not
    plain conv / batch norm / ReLU(6) (squeeze-excitation, 'same' padding, other blocks)."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    cfg, m = x_encoder.cfg, x_encoder.model
    if cfg.backend != "timm" or not (hasattr(m, "conv_stem") and hasattr(m, "blocks")
                                     and hasattr(m, "stage_ends")):
        raise ValueError(f"X-encoder {cfg.backend}:{cfg.name} is not an EfficientNet-style timm CNN")
    if cfg.feature_index is None:
        raise ValueError("the X-encoder's output is its final features (feature_index=None)")
    from timm.models._features import feature_take_indices
    _, max_index = feature_take_indices(len(m.stage_ends), [cfg.feature_index])
    blocks = [m for stage in list(m.blocks)[:m.stage_ends[max_index]] for m in stage]
    specs = [{"units": [_unit_spec(m.conv_stem, m.bn1, "conv_stem")], "skip": False}]
    pairs = [(m.conv_stem, m.bn1)]
    for i, b in enumerate(blocks):
        where = f"block {i} ({type(b).__name__})"
        if getattr(b, "conv_s2d", None) is not None or not isinstance(b.se, nn.Identity) \
                or not isinstance(b.aa, nn.Identity) or not isinstance(b.drop_path, nn.Identity):
            raise ValueError(f"{where}: space-to-depth, squeeze-excitation, anti-aliasing or "
                             "drop path is not supported")
        if type(b) is DepthwiseSeparableConv:
            units = [(b.conv_dw, b.bn1), (b.conv_pw, b.bn2)]
        elif type(b) is InvertedResidual:
            units = [(b.conv_pw, b.bn1), (b.conv_dw, b.bn2), (b.conv_pwl, b.bn3)]
        else:
            raise ValueError(f"{where} is not supported")
        specs.append({"units": [_unit_spec(c, n, where) for c, n in units],
                      "skip": bool(b.has_skip)})
        pairs += units
    return specs, pairs


def _transform_spec(transform: Any) -> dict[str, Any]:
    """timm's eval transform -> the spec of :class:`LeanTransform`; ValueError otherwise."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    names = [type(t).__name__ for t in steps or []]
    if names not in (["Resize", "CenterCrop", "ToTensor", "Normalize"],
                     ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]):
        raise ValueError(f"preprocessing {names} is not Resize, CenterCrop, ToTensor, Normalize")
    resize, crop, _, norm = steps
    size = resize.size if isinstance(resize.size, int) else (
        resize.size[0] if len(resize.size) == 1 else None)
    interp = {T.InterpolationMode.NEAREST: "nearest", T.InterpolationMode.BILINEAR: "bilinear",
              T.InterpolationMode.BICUBIC: "bicubic", T.InterpolationMode.LANCZOS: "lanczos",
              T.InterpolationMode.BOX: "box", T.InterpolationMode.HAMMING: "hamming"
              }.get(resize.interpolation)
    crop_hw = [int(v) for v in crop.size]
    if size is None or resize.max_size is not None or interp is None \
            or max(crop_hw) > size:
        raise ValueError(f"{resize} then {crop} is not a short-side resize then a smaller crop")
    return {"resize": int(size), "interpolation": interp, "crop": crop_hw,
            "mean": torch.as_tensor(norm.mean, dtype=torch.float32).tolist(),
            "std": torch.as_tensor(norm.std, dtype=torch.float32).tolist()}


def _test_images() -> list[Image.Image]:
    """Images of several sizes and aspect ratios (seeded noise) for the export's self-check."""
    g = np.random.default_rng(0)
    return [Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in ((64, 64), (97, 131), (150, 40), (33, 33))]


def lean_x_encoder(x_encoder: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The serving spec and tensors of ``x_encoder``: rebuilt in plain torch when it can be and
    the rebuild matches bit for bit on test images, else stored by reference (kind "full")."""
    full = {"kind": "full", "fingerprint": x_encoder.fingerprint}
    try:
        blocks, pairs = _timm_cnn_spec(x_encoder)
        transform = _transform_spec(x_encoder.transform)
    except (ValueError, ImportError, AttributeError) as e:
        warnings.warn(f"the X-encoder is stored by reference (its library is imported when the "
                      f"bundle loads): {e}", stacklevel=3)
        return full, {}
    lean = LeanConvEncoder(blocks)
    units = [u for b in lean.blocks for u in b.units]
    for unit, (conv, bn) in zip(units, pairs):
        unit.conv.load_state_dict(conv.state_dict())
        unit.bn.load_state_dict(bn.state_dict())
    lean.eval()
    lt = LeanTransform(transform)
    with torch.no_grad():
        for img in _test_images():
            px = x_encoder.transform(img)
            if not torch.equal(lt(img), px):
                warnings.warn("the plain-PIL preprocessing differs from the X-encoder's: the "
                              "X-encoder is stored by reference", stacklevel=3)
                return full, {}
            if not torch.equal(lean(px[None]), x_encoder(px[None])):
                warnings.warn("the plain-torch X-encoder differs from the original: the "
                              "X-encoder is stored by reference", stacklevel=3)
                return full, {}
    spec = {"kind": "conv", "blocks": blocks, "transform": transform,
            "fingerprint": x_encoder.fingerprint}
    tensors = {f"x_encoder.{k}": v.detach().contiguous().clone()
               for k, v in lean.state_dict().items() if not k.endswith("num_batches_tracked")}
    return spec, tensors
