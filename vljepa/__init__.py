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
from .version import __version__

__all__ = ["VLJEPA", "ModelConfig", "XEncoderConfig", "YEncoderConfig", "PredictorConfig",
           "TransformerPredictorConfig", "CachedTextPredictorConfig", "TextPredictorConfig",
           "LLMPredictorConfig", "LinearPredictorConfig", "predictor_config",
           "LossConfig", "YDecoderConfig", "BaselineConfig", "named_config", "create_model",
           "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer",
           "load", "save_pretrained", "convert_checkpoint", "init_from", "quantize",
           "export_serving", "load_serving", "ServingModel", "__version__"]
