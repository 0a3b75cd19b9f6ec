"""The predictor contract (vljepa.predictors): every kind composes from its Hydra config group,
runs forward and survives save/load; a field a kind does not read, and a quantisation it cannot
run, are errors at config time; predictors build from dims alone."""
import dataclasses

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

import vljepa
from vljepa.config import (LEGACY_PREDICTOR_DEFAULTS, PREDICTOR_CONFIGS, LinearPredictorConfig,
                           TransformerPredictorConfig, predictor_config)
from vljepa.predictors import PREDICTORS, Predictor, PredictorDims, create_predictor

from conftest import compose

QUESTIONS = ["what color is the shape?", "is there a circle?"]
# small sizes per kind, so each builds in seconds (text and llm take the pretrained model's)
SMALL = {"transformer": ["width=32", "depth=1", "heads=2"],
         "cached_text": ["width=32", "depth=1", "heads=2"], "text": ["text_layers=1"],
         "llm": ["llm_layers=1"], "linear": []}


def test_every_kind_has_one_config_and_one_implementation():
    assert {c.KIND for c in PREDICTORS} == set(PREDICTOR_CONFIGS)
    for cfg_cls, cls in PREDICTORS.items():
        assert issubclass(cls, Predictor) and cls.Config is cfg_cls
        assert cls.query_form in ("token_table", "cached_states", "none")


@pytest.mark.parametrize("kind", sorted(PREDICTOR_CONFIGS))
def test_each_kind_composes_runs_and_round_trips(kind, tmp_path, tiny_llama):
    overrides = [f"predictor={kind}"] + [f"model.config.predictor.{o}" for o in SMALL[kind]]
    if kind == "llm":
        overrides.append(f"model.config.predictor.llm={tiny_llama}")
    cfg = compose(overrides)
    assert cfg.model.config.predictor.kind == kind
    model = instantiate(cfg.model).eval()
    assert type(model.predictor).Config is PREDICTOR_CONFIGS[kind]
    visual = torch.randn(2, model.x_encoder.num_tokens, model.x_encoder.dim)
    ids, mask = model.tokenize_queries(QUESTIONS)
    with torch.no_grad():
        out = model(visual, ids, mask)
        free = model(visual)  # query-free (captioning)
    assert out.shape == free.shape == (2, model.config.embed_dim) and torch.isfinite(out).all()
    # every trained tensor of the predictor is saved; frozen pretrained parts are not
    saved = {k for k in model.trained_state_dict() if k.startswith("predictor.")}
    trained = {f"predictor.{n}" for n, p in model.predictor.named_parameters() if p.requires_grad}
    assert trained <= saved
    model.save_pretrained(tmp_path)
    again = vljepa.load(tmp_path)
    assert again.config.predictor == model.config.predictor
    with torch.no_grad():
        assert torch.allclose(again(visual, ids, mask), out, atol=1e-6)
    assert again.predictor.describe() in (tmp_path / "README.md").read_text()


def test_a_field_the_kind_does_not_read_is_an_error():
    with pytest.raises(ValueError, match=r"kind 'linear' does not use width=64.*reads \['quant'\]"):
        predictor_config(kind="linear", width=64)
    with pytest.raises(ValueError, match="kind 'llm' does not use visual_slot_dim=3|"
                                         "kind 'llm' does not use width=3"):
        predictor_config(kind="llm", llm="x", width=3)
    with pytest.raises(ValueError, match="unknown predictor kind 'mlp'"):
        predictor_config(kind="mlp")
    # setting only model.config.predictor.kind keeps the old kind's fields: an error with a hint
    cfg = compose(["model.config.predictor.kind=linear"])
    with pytest.raises(InstantiationException, match=r"does not use .*width=128.*predictor=linear"):
        instantiate(cfg.model)
    # from Python, another kind starts from its own defaults
    assert vljepa.create_model(predictor={"kind": "linear"}).config.predictor == \
        LinearPredictorConfig()


@pytest.mark.parametrize("kind", ["linear", "text", "llm"])
def test_ternary_on_a_kind_that_cannot_be_quantised_is_refused(kind):
    with pytest.raises(ValueError, match=r"quant='ternary' is not supported by predictor kind "
                                         rf"'{kind}'; the kinds that support it: "
                                         r"\['transformer', 'cached_text'\]"):
        predictor_config(kind=kind, quant="ternary")
    cfg = compose([f"predictor={kind}", "model.config.predictor.quant=ternary"])
    with pytest.raises(InstantiationException, match="not supported by predictor kind"):
        instantiate(cfg.model)


def test_quantize_refuses_a_linear_model():
    with pytest.raises(ValueError, match="not supported by predictor kind 'linear'"):
        vljepa.quantize(vljepa.create_model(predictor={"kind": "linear"}))


def test_ternary_kind_saves_packed_and_says_so(tmp_path):
    m = vljepa.create_model(predictor={"width": 32, "depth": 1, "heads": 2, "quant": "ternary"})
    m.save_pretrained(tmp_path)
    from safetensors.torch import load_file
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.endswith("weight_packed") for k in keys)
    assert "ternary (BitNet b1.58, packed)" in (tmp_path / "README.md").read_text()


def test_a_config_saved_by_an_older_vljepa_loads_and_a_set_unused_field_does_not():
    flat = {**LEGACY_PREDICTOR_DEFAULTS, "kind": "cached_text", "width": 128, "visual_slots": 4}
    cfg = predictor_config(flat)
    assert type(cfg).KIND == "cached_text" and cfg.width == 128
    with pytest.raises(ValueError, match="kind 'cached_text' does not use llm_layers=4"):
        predictor_config({**flat, "llm_layers": 4})


def test_predictors_build_from_dims_without_encoders():
    dims = PredictorDims(visual_dim=24, num_visual_tokens=16, grid=(4, 4), embed_dim=8,
                         query_dim=12)
    cfg = TransformerPredictorConfig(width=16, depth=1, heads=2, visual_pool=2)
    p = create_predictor(cfg, dims)
    out = p(torch.randn(3, 16, 24), torch.randn(3, 5, 12), torch.ones(3, 5, dtype=torch.bool))
    assert out.shape == (3, 8)
    with pytest.raises(RuntimeError, match="no query reader"):
        p.tokenize(QUESTIONS)
    with pytest.raises(ValueError, match="visual_pool > 1 needs an X-encoder with a token grid"):
        create_predictor(cfg, dataclasses.replace(dims, grid=None))
    with pytest.raises(ValueError, match="needs dims.query_dim"):
        create_predictor(cfg, dataclasses.replace(dims, query_dim=None))
