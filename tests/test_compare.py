"""eval/compare.py keeps the comparison fair: every model reads the same X-encoder features."""
import pytest
from omegaconf import OmegaConf

from eval.compare import MODELS, compose


def test_every_compared_model_reads_the_same_x_encoder():
    cfgs = {kind: compose(kind, 2, 0) for kind in MODELS}
    x = {k: OmegaConf.to_container(c.model.config.x_encoder, resolve=True) for k, c in cfgs.items()}
    assert x["VL-JEPA"] == x["baseline"] == x["baseline-MiniLM"]
    assert x["VL-JEPA"]["feature_index"] == -1 and x["VL-JEPA"]["image_size"] is None
    assert cfgs["VL-JEPA"].model.config.predictor.kind == "cached_text"  # the default predictor
    assert cfgs["VL-JEPA"].model.config.predictor.visual_pool == 2
    assert cfgs["baseline"].model.config.visual_pool == 2
    assert not cfgs["baseline"].model.config.pretrained_decoder
    assert cfgs["baseline-MiniLM"].model.config.pretrained_decoder
    assert len({c.data.batch_size for c in cfgs.values()}) == 1  # the same samples per step
    assert len({c.module.lr for c in cfgs.values()}) == 1


@pytest.mark.parametrize("kind", list(MODELS))
def test_compared_models_build_with_one_x_encoder_fingerprint(kind):
    from hydra.utils import instantiate

    m = instantiate(compose(kind, 2, 0).model, _convert_="all")
    ref = instantiate(compose("VL-JEPA", 2, 0).model, _convert_="all")
    assert m.x_encoder.fingerprint == ref.x_encoder.fingerprint
