"""Full precision -> ternary (BitNet b1.58): post-training quantisation, or the start of a QAT
fine-tune.

A ternary VL-JEPA (``predictor.quant="ternary"``) has the same sizes as its full-precision twin;
its transformer blocks are :class:`vljepa.kernels.bitlinear.TernaryBlock` instead of
``nn.TransformerEncoderLayer``. The tensors are the same with other names (the kind's
``ternary_state`` renames them), so converting is a rename plus a copy; the BitLinear layers quantise their (latent, fp32) weights on the fly, and
``save_pretrained`` writes them packed at 2 bits.

    tern = vljepa.quantize(vljepa.load("checkpoints/<run>/model"))   # or: vljepa quantize SRC DST
    tern.save_pretrained("out")
"""
from __future__ import annotations

import dataclasses

from .config import config_diff
from .kernels.bitlinear import bit_linears
from .model import VLJEPA
from .predictors import predictor_class


def init_from_full_precision(model: VLJEPA, fp_model: VLJEPA) -> VLJEPA:
    """Copy a trained full-precision VLJEPA's weights into a ternary VLJEPA (latent state) of the
    same sizes, for post-training quantisation or a QAT fine-tune. The SubLN norms, which the
    full-precision model lacks, keep their identity initialisation.

    Raises ValueError if the models' configs differ other than in ``predictor.quant``, or
    ``model`` is not a latent ternary model.
    """
    a, b = model.config.to_dict(), fp_model.config.to_dict()
    if a["predictor"]["quant"] != "ternary" or b["predictor"]["quant"] != "none":
        raise ValueError("init_from_full_precision copies a predictor.quant='none' model into a "
                         "predictor.quant='ternary' one")
    a["predictor"]["quant"] = b["predictor"]["quant"]
    if diff := config_diff(a, b):
        raise ValueError(f"full-precision model differs from the ternary config: {'; '.join(diff)}")
    if any(m.packed for m in bit_linears(model).values()):
        raise ValueError("the ternary model is packed (inference only); build a new one to train")
    state = predictor_class(model.config.predictor).ternary_state(fp_model.trained_state_dict())
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = ("x_encoder.", "y_encoder.")
    missing = [k for k in missing if not k.startswith(frozen) and ".norm." not in k]
    if missing or unexpected:
        raise ValueError(f"cannot convert: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def quantize(fp_model: VLJEPA) -> VLJEPA:
    """Post-training quantisation: a trained full-precision VLJEPA -> a new ternary VLJEPA in
    training (latent) state. Save it with ``save_pretrained`` to get the packed checkpoint, or
    fine-tune it first (``python train.py experiment=ternary init_from=DIR``).

    Raises ValueError if ``fp_model`` is not full precision.
    """
    if fp_model.config.predictor.quant != "none":
        raise ValueError(f"quantize takes a predictor.quant='none' model, got "
                         f"{fp_model.config.predictor.quant!r}")
    # ValueError from the kind's config when it cannot be quantised (names the kinds that can)
    cfg = dataclasses.replace(fp_model.config, predictor=dataclasses.replace(
        fp_model.config.predictor, quant="ternary"))
    model = init_from_full_precision(VLJEPA(cfg), fp_model).to(fp_model.device)
    model.answers = fp_model.answers  # the saved answer vocabulary serves the ternary copy too
    return model
