"""vljepa: JEPA-style vision-language models (VL-JEPA, arXiv 2512.10942) that train, evaluate
and serve on an ordinary CPU.

    import vljepa
    model = vljepa.create_model()                 # offline default encoders, untrained predictor
    model = vljepa.load("checkpoints/<run>/model")  # a trained model, in eval mode
    answers, scores = model.answer(images, questions, candidates)
    vljepa.quantize(model).save_pretrained("out")  # ternary (BitNet b1.58), packed 2-bit
"""
__version__ = "0.1.0"  # before the imports: factory reads it

from .config import LossConfig, ModelConfig, PredictorConfig, XEncoderConfig, YEncoderConfig
from .factory import convert_checkpoint, create_model, load, save_pretrained
from .model import VLJEPA
from .ternary import quantize

__all__ = ["VLJEPA", "ModelConfig", "XEncoderConfig", "YEncoderConfig", "PredictorConfig",
           "LossConfig", "create_model", "load", "save_pretrained", "convert_checkpoint",
           "quantize", "__version__"]
