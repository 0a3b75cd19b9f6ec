"""Serving: lean bundles that answer stored questions without the encoders' libraries
(:mod:`~vljepa.serving.bundle`), the HTTP server (:mod:`~vljepa.serving.http`, ``vljepa serve``)
and ONNX exports served with onnxruntime and no torch (:mod:`~vljepa.serving.onnx_export`,
:mod:`~vljepa.serving.onnx_runtime`).

Names are imported on first use, so the torch-free modules (http, onnx_runtime) load without
torch."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"NotInBundleError": "bundle", "ServingModel": "bundle", "export_serving": "bundle",
            "load_serving": "bundle"}

if TYPE_CHECKING:
    from .bundle import NotInBundleError, ServingModel, export_serving, load_serving

__all__ = ["NotInBundleError", "ServingModel", "export_serving", "load_serving"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
