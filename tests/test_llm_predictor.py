"""The paper's predictor from a causal LM's last layers (vljepa/llm_predictor.py), offline with a
tiny random Llama of the real class."""
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
    with pytest.raises(RuntimeError, match="could not load causal LM"):
        llm_model(str(tmp_path / "no-such-lm"))
