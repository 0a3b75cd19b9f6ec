"""vljepa: JEPA-style vision-language models (VL-JEPA, arXiv 2512.10942) that train, evaluate
and serve on an ordinary CPU.

    import vljepa
    model = vljepa.create_model()                 # offline default encoders, untrained predictor
    model = vljepa.load("checkpoints/<run>/model")  # a trained model, in eval mode
    answers, scores = model.answer(images, questions, candidates)
    vljepa.quantize(model).save_pretrained("out")  # ternary (BitNet b1.58), packed 2-bit
    vljepa.export_serving(model, "serve", questions)  # a lean serving bundle
    lean = vljepa.load("serve", lean=True)          # answers those questions: no timm, no MiniLM

The library imports neither Lightning nor Hydra: training lives in :mod:`vljepa.training`.
"""
import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .version import __version__

# Names are imported on first use (PEP 562), so ``import vljepa`` (and ``vljepa serve`` of an
# ONNX export, vljepa.serving.onnx_runtime) does not import torch until a name needs it.
_EXPORTS = {
    **dict.fromkeys(["BaselineConfig", "CachedTextPredictorConfig", "LinearPredictorConfig",
                     "LLMPredictorConfig", "LossConfig", "ModelConfig", "PredictorConfig",
                     "TextPredictorConfig", "TransformerPredictorConfig", "XEncoderConfig",
                     "YDecoderConfig", "YEncoderConfig", "named_config", "predictor_config"],
                    "config"),
    **dict.fromkeys(["convert_checkpoint", "create_model", "create_model_and_transforms",
                     "create_model_from_pretrained", "get_tokenizer", "init_from", "load",
                     "save_pretrained"], "factory"),
    "VLJEPA": "model",
    "quantize": "quantize",
    **dict.fromkeys(["ServingModel", "export_serving", "load_serving"], "serving"),
}

if TYPE_CHECKING:
    from .config import (BaselineConfig, CachedTextPredictorConfig, LinearPredictorConfig,
                         LLMPredictorConfig, LossConfig, ModelConfig, PredictorConfig,
                         TextPredictorConfig, TransformerPredictorConfig, XEncoderConfig,
                         YDecoderConfig, YEncoderConfig, named_config, predictor_config)
    from .factory import (convert_checkpoint, create_model, create_model_and_transforms,
                          create_model_from_pretrained, get_tokenizer, init_from, load,
                          save_pretrained)
    from .model import VLJEPA
    from .quantize import quantize
    from .serving import ServingModel, export_serving, load_serving


def __getattr__(name: str) -> Any:
    """A public name (imported from its module on first use), or a submodule (``vljepa.hub``)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """The package object: a submodule import (``vljepa.quantize``, the module) does not
    replace the public name of the same name (the function ``vljepa.quantize``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = ["VLJEPA", "ModelConfig", "XEncoderConfig", "YEncoderConfig", "PredictorConfig",
           "TransformerPredictorConfig", "CachedTextPredictorConfig", "TextPredictorConfig",
           "LLMPredictorConfig", "LinearPredictorConfig", "predictor_config",
           "LossConfig", "YDecoderConfig", "BaselineConfig", "named_config", "create_model",
           "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer",
           "load", "save_pretrained", "convert_checkpoint", "init_from", "quantize",
           "export_serving", "load_serving", "ServingModel", "__version__"]
