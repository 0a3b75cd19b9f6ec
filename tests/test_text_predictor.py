"""The language-aware predictors (issue 13): they start from the pretrained text encoder's exact
weights, attend both ways, ignore padding, save and load exactly, and refuse a checkpoint whose
text encoder differs from the one found here."""
from __future__ import annotations

import json

import pytest
import torch

import vljepa
from vljepa.encoders.text_backbone import run_layers

SMALL = {"width": 32, "depth": 1, "heads": 2, "max_query_len": 24, "visual_pool": 2}
# kind=text takes its width and heads from the pretrained encoder
SMALL_TEXT = {"max_query_len": 24, "visual_pool": 2}
QUESTIONS = ["what color is the shape?", "name the colour of the figure."]


@pytest.fixture(scope="module")
def cached():
    torch.manual_seed(0)
    return vljepa.create_model(predictor={**SMALL, "kind": "cached_text"}).eval()


@pytest.fixture(scope="module")
def text():
    torch.manual_seed(0)
    return vljepa.create_model(predictor={**SMALL_TEXT, "kind": "text", "text_layers": 2}).eval()


def _minilm_states(model, ids, mask):
    bert = model.y_encoder.model[0].auto_model  # the Y-encoder's own all-MiniLM-L6-v2
    return bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state


@torch.no_grad()
def test_cached_text_query_is_the_text_encoders_own_hidden_states(cached):
    ids, mask = cached.tokenize_queries(QUESTIONS)
    states = cached.predictor.embed_query(ids)
    assert torch.equal(states[mask], _minilm_states(cached, ids, mask)[mask])
    assert cached.predictor.embed_query(ids) is not states  # kept per question, same values
    assert torch.equal(cached.predictor.embed_query(ids), states)


@torch.no_grad()
def test_text_predictor_starts_from_the_exact_pretrained_layers(text):
    """With no visual tokens, its layers over the query give the text encoder's hidden states."""
    ids, mask = text.tokenize_queries(QUESTIONS)
    out = run_layers(text.predictor.layers, text.predictor.embed_query(ids), mask)
    assert torch.allclose(out[mask], _minilm_states(text, ids, mask)[mask], atol=1e-5)


@pytest.mark.parametrize("kind", ["cached", "text"])
@torch.no_grad()
def test_attention_is_bidirectional_and_padding_changes_nothing(kind, cached, text):
    model = {"cached": cached, "text": text}[kind]
    p = model.predictor
    visual = torch.randn(1, model.x_encoder.num_tokens, model.x_encoder.dim)
    first_visual = {}

    def hook(module, args, output):  # the first layer's output at the first visual position
        out = output[0] if isinstance(output, tuple) else output
        first_visual["v"] = out[:, 0].clone()

    layer = p.layers[-1] if kind == "text" else p.blocks.layers[-1]
    handle = layer.register_forward_hook(hook)
    try:
        a_ids, a_mask = model.tokenize_queries(["is the shape red?"])
        model(visual, a_ids, a_mask)
        v_red = first_visual["v"]
        b_ids, b_mask = model.tokenize_queries(["is the shape blue?"])  # the late token differs
        model(visual, b_ids, b_mask)
        assert not torch.allclose(v_red, first_visual["v"])  # a visual token saw the query
    finally:
        handle.remove()
    # extra padding: the same question padded to 20 tokens predicts the same Ŝ_Y
    pad_id = 0
    padded = torch.full((1, 20), pad_id, dtype=torch.long)
    padded[0, :a_ids.shape[1]] = a_ids[0]
    padded_mask = torch.zeros(1, 20, dtype=torch.bool)
    padded_mask[0, :a_ids.shape[1]] = True
    assert torch.allclose(model(visual, a_ids, a_mask), model(visual, padded, padded_mask),
                          atol=1e-5)


@pytest.mark.parametrize("kind", ["cached", "text"])
def test_save_load_gives_identical_predictions(kind, cached, text, tmp_path, easy_vqa_test_image):
    model = {"cached": cached, "text": text}[kind]
    model.save_pretrained(tmp_path / "m")
    loaded = vljepa.load(tmp_path / "m")
    assert type(loaded.predictor) is type(model.predictor)
    images = [easy_vqa_test_image] * 2
    assert torch.equal(model.predict(images, QUESTIONS), loaded.predict(images, QUESTIONS))


def test_a_different_text_encoder_is_an_error_naming_it(text, tmp_path):
    text.save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["predictor_fingerprint"] = "0123456789abcdef"  # trained with another text encoder
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="pretrained weights of the predictor.*all-MiniLM-L6-v2"):
        vljepa.load(tmp_path / "m")


def test_pretrained_layers_train_at_their_own_learning_rate():
    m = vljepa.create_model(predictor={**SMALL_TEXT, "kind": "text", "text_layers": 1,
                                       "text_lr_mult": 0.1})
    groups = m.param_groups(1e-3, 0.05)
    layer_params = {id(p) for p in m.predictor.layers.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        if ids & layer_params:
            assert ids <= layer_params and g["lr"] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in groups) == \
        sum(1 for p in m.parameters() if p.requires_grad)


def test_visual_slots_pool_tokens_by_learned_attention():
    """(B, N, Dx) -> (B, M, H); each slot is a weighted mean of the tokens' features, so it does
    not depend on token order and equals the feature itself when all tokens are the same."""
    from torch.nn import functional as F

    from vljepa.predictors.visual import VisualSlots
    torch.manual_seed(0)
    slots = VisualSlots(24, 16, 4)
    x = torch.randn(3, 256, 24)
    out = slots(x)
    assert out.shape == (3, 4, 16)
    assert torch.allclose(slots(x[:, torch.randperm(256)]), out, atol=1e-5)
    same = x[:, :1].expand(3, 256, 24)
    feature = F.gelu(slots.proj(slots.norm(x[:, :1])))  # (3, 1, 16)
    assert torch.allclose(slots(same), feature.expand(3, 4, 16), atol=1e-5)
    with pytest.raises(ValueError, match="visual_slots"):
        vljepa.create_model(predictor={"visual_slots": -1})


def test_the_default_model_is_the_lite_recipe():
    """create_model() is NAMED_CONFIGS["lite"]: the language-aware predictor over 4 slots of
    EfficientNet-Lite0's stride-4 tokens at 64 px; its slots are trained and saved."""
    model = vljepa.create_model()
    cfg = model.config
    assert (cfg.predictor.kind, cfg.predictor.visual_slots, cfg.x_encoder.image_size,
            cfg.x_encoder.feature_index) == ("cached_text", 4, 64, -4)
    assert (model.x_encoder.num_tokens, model.x_encoder.dim) == (256, 24)  # 16x16 tokens
    assert any(k.startswith("predictor.slots.") for k in model.trained_state_dict())
    visual = torch.randn(2, 256, 24)
    ids, mask = model.tokenize_queries(QUESTIONS)
    with torch.no_grad():
        out = model.predictor(visual, model.predictor.embed_query(ids), mask)
    assert out.shape == (2, model.config.embed_dim)


@torch.no_grad()
def test_query_free_rows_give_the_visual_only_prediction(cached):
    """Caption batches (stage 1) have no query: all-pad ids, all-False mask. Such a row predicts
    from the visual tokens alone, whatever the other rows of its batch ask."""
    visual = torch.randn(3, cached.x_encoder.num_tokens, cached.x_encoder.dim)
    none_ids, none_mask = torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.bool)
    alone = cached(visual, none_ids, none_mask)
    ids, mask = cached.tokenize_queries(QUESTIONS)
    ids = torch.cat([ids, torch.zeros_like(ids[:1])])
    mask = torch.cat([mask, torch.zeros_like(mask[:1])])
    mixed = cached(visual, ids, mask)
    assert torch.allclose(mixed[2], alone[2], atol=1e-5)
    assert not torch.allclose(mixed[0], alone[0], atol=1e-3)  # a question changes the answer


def test_query_noise_acts_in_training_only():
    """``predictor.query_noise`` perturbs the query states in training (two passes differ, and
    more noise moves the prediction further); in eval mode the prediction is deterministic and
    equals that of the same weights built without noise. Negative noise is an error."""
    torch.manual_seed(0)
    noisy = vljepa.create_model(predictor={**SMALL, "kind": "cached_text", "query_noise": 1.0})
    quiet = vljepa.create_model(predictor={**SMALL, "kind": "cached_text", "query_noise": 0.0})
    quiet.load_state_dict(noisy.state_dict())
    visual = torch.randn(2, noisy.x_encoder.num_tokens, noisy.x_encoder.dim)
    ids, mask = noisy.tokenize_queries(QUESTIONS)
    with torch.no_grad():
        noisy.train()
        a, b = noisy(visual, ids, mask), noisy(visual, ids, mask)
        assert not torch.allclose(a, b, atol=1e-4)
        noisy.eval(), quiet.eval()
        clean = noisy(visual, ids, mask)
        assert torch.equal(clean, noisy(visual, ids, mask))
        assert torch.allclose(clean, quiet(visual, ids, mask), atol=1e-6)
        noisy.predictor.cfg.query_noise = 0.1  # less noise: closer to the clean prediction
        noisy.train()
        small = (noisy(visual, ids, mask) - clean).norm()
        noisy.predictor.cfg.query_noise = 1.0
        assert small < (a - clean).norm()
    with pytest.raises(ValueError, match="query_noise"):
        vljepa.create_model(predictor={**SMALL, "query_noise": -0.5})


def test_query_noise_is_relative_to_each_state_and_spares_padding():
    """The noise is std x each state's own scale: through a LayerNorm, states at any scale get
    the same perturbation as N(0, std^2) added to the layer-normalised state; all-zero
    (padding) states stay zero."""
    from vljepa.predictors.queries import add_query_noise
    ln = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=0.0)  # noqa: E731
    torch.manual_seed(0)
    q = torch.randn(2, 6, 384) + 3.0
    q[:, 4:] = 0  # padding
    torch.manual_seed(1)
    eps = torch.randn_like(q)
    for scale in (0.01, 1.0, 100.0):
        torch.manual_seed(1)
        out = add_query_noise(q * scale, 0.5)
        assert torch.allclose(ln(out[:, :4]), ln(ln(q[:, :4]) + 0.5 * eps[:, :4]), atol=1e-4)
        assert torch.equal(out[:, 4:], torch.zeros_like(out[:, 4:]))
    assert add_query_noise(q, 0.0) is q


def test_visual_token_drop_reads_fewer_tokens_in_training_only():
    """``predictor.visual_token_drop`` (FLIP): in training the joint layers read a random
    (1 - drop) share of the visual tokens, a new choice each pass; in eval mode every token, as
    the same weights without it. Out of [0, 1), or with slots, it is an error."""
    torch.manual_seed(0)
    cfg = {**SMALL, "kind": "cached_text", "visual_slots": 0}
    drop = vljepa.create_model(predictor={**cfg, "visual_token_drop": 0.5})
    full = vljepa.create_model(predictor=cfg)
    full.load_state_dict(drop.state_dict())
    n = drop.predictor.visual_pos.shape[1]  # visual tokens after pooling
    visual = torch.randn(2, drop.x_encoder.num_tokens, drop.x_encoder.dim)
    ids, mask = drop.tokenize_queries(QUESTIONS[:2])
    seen = []  # visual tokens the joint layers read, per pass
    orig = drop.predictor.joint_input

    def spy(*a, **k):
        x, keep = orig(*a, **k)
        seen.append(x.shape[1] - ids.shape[1])
        return x, keep
    drop.predictor.joint_input = spy
    with torch.no_grad():
        drop.train()
        a, b = drop(visual, ids, mask), drop(visual, ids, mask)
        assert seen == [round(n / 2)] * 2 and not torch.allclose(a, b, atol=1e-4)
        drop.eval(), full.eval()
        assert torch.allclose(drop(visual, ids, mask), full(visual, ids, mask), atol=1e-6)
        assert seen[-1] == n
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="visual_token_drop"):
            vljepa.create_model(predictor={**cfg, "visual_token_drop": bad})
    with pytest.raises(ValueError, match="visual_slots=0"):
        vljepa.create_model(predictor={**cfg, "visual_slots": 4, "visual_token_drop": 0.5})


def test_mix_style_mixes_token_statistics_between_pictures():
    """MixStyle (Zhou et al. 2021): each picture keeps its normalised tokens and takes the
    lam-mix of its own and another picture's per-channel token mean and std."""
    from vljepa.predictors.base import mix_style
    torch.manual_seed(0)
    x = torch.randn(6, 49, 8) * torch.rand(6, 1, 8) * 3 + torch.randn(6, 1, 8)
    torch.manual_seed(1)
    out = mix_style(x)
    torch.manual_seed(1)
    lam = torch.distributions.Beta(0.1, 0.1).sample((6, 1, 1))
    perm = torch.randperm(6)
    mu, sig = x.mean(1, keepdim=True), (x.var(1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(out.mean(1, keepdim=True), lam * mu + (1 - lam) * mu[perm], atol=1e-5)
    assert torch.allclose(out.std(1, keepdim=True), lam * sig + (1 - lam) * sig[perm], atol=1e-4)
    # the tokens' pattern within a picture is kept: the same normalised tokens
    assert torch.allclose((out - out.mean(1, keepdim=True)) / out.std(1, keepdim=True),
                          (x - mu) / x.std(1, keepdim=True), atol=1e-4)
    assert torch.equal(mix_style(x[:1]), x[:1])  # nothing to mix with


def test_visual_mixstyle_acts_in_training_only():
    torch.manual_seed(0)
    cfg = {**SMALL, "kind": "cached_text", "visual_slots": 0}
    mixed = vljepa.create_model(predictor={**cfg, "visual_mixstyle": 1.0})
    plain = vljepa.create_model(predictor=cfg)
    plain.load_state_dict(mixed.state_dict())
    visual = torch.randn(4, mixed.x_encoder.num_tokens, mixed.x_encoder.dim)
    ids, mask = mixed.tokenize_queries((QUESTIONS * 4)[:4])
    with torch.no_grad():
        mixed.train(), plain.train()
        assert not torch.allclose(mixed(visual, ids, mask), plain(visual, ids, mask), atol=1e-4)
        mixed.eval(), plain.eval()
        assert torch.allclose(mixed(visual, ids, mask), plain(visual, ids, mask), atol=1e-6)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="visual_mixstyle"):
            vljepa.create_model(predictor={**cfg, "visual_mixstyle": bad})
