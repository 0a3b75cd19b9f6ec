"""The token-generating VLM baseline (issue 5) and its prefix-LM text decoder."""
import pytest
import torch

import vljepa
from vljepa.baseline import VLMBaseline, create_baseline
from vljepa.decoders.text_decoder import CausalTextDecoder

from conftest import compose

BOS, EOS, PAD = 1, 2, 0


def tiny_decoder(**kw) -> CausalTextDecoder:
    torch.manual_seed(0)
    table = torch.randn(20, 8)
    return CausalTextDecoder(table, width=32, depth=2, heads=2, max_prefix=4, max_len=8,
                             bos_id=BOS, eos_id=EOS, pad_id=PAD, **kw)


def test_prefix_lm_mask_text_sees_prefix_and_only_earlier_text():
    dec = tiny_decoder().eval()
    prefix, pm = torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    ids = torch.tensor([[BOS, 5, 6, 7]])
    m = torch.ones_like(ids, dtype=torch.bool)
    base = dec(prefix, pm, ids, m)
    later = dec(prefix, pm, torch.tensor([[BOS, 5, 9, 11]]), m)
    assert torch.allclose(base[:, :2], later[:, :2], atol=1e-6)  # the future is not seen
    assert not torch.allclose(base[:, 2:], later[:, 2:])
    other = dec(torch.randn(1, 3, 32), pm, ids, m)
    assert not torch.allclose(base[:, 0], other[:, 0])  # the prefix is seen from position 0


def test_decoder_learns_to_write_and_rank_texts():
    dec = tiny_decoder()
    prefix = torch.randn(3, 2, 32)
    pm = torch.ones(3, 2, dtype=torch.bool)
    texts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    ids = torch.full((3, 6), PAD)
    for i, t in enumerate(texts):
        ids[i, :len(t) + 2] = torch.tensor([BOS, *t, EOS])
    mask = ids != PAD
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = dec.loss(prefix, pm, ids, mask)
        loss.backward()
        opt.step()
    dec.eval()
    assert loss.item() < 0.05
    assert dec.generate(prefix, pm) == texts  # greedy stops at EOS
    assert dec.generate(prefix, pm, num_beams=3) == texts
    assert [len(t) for t in dec.generate(prefix, pm, max_new_tokens=2)] == [2, 2, 2]
    # each prefix gives its own text the highest log-probability
    lp = torch.stack([dec.sequence_logprob(prefix, pm, ids[c].expand(3, -1), mask[c].expand(3, -1))
                      for c in range(3)], 1)  # (prefix, candidate)
    assert torch.equal(lp.argmax(1), torch.arange(3))


def test_tokens_outside_the_output_vocabulary_are_an_error():
    dec = tiny_decoder(output_vocab=torch.tensor([5, 6]))
    ids = torch.tensor([[BOS, 5, 7, EOS]])
    with pytest.raises(ValueError, match="output_vocab"):
        dec.loss(torch.randn(1, 2, 32), torch.ones(1, 2, dtype=torch.bool), ids,
                 torch.ones_like(ids, dtype=torch.bool))


@pytest.fixture(scope="module")
def baseline():
    torch.manual_seed(0)
    m = create_baseline({"width": 32, "depth": 1, "heads": 2, "visual_pool": 2})
    m.set_output_vocab(["red", "blue", "yes", "no", "an emoji of x"])
    return m.eval()


def test_baseline_has_the_same_query_tokens_and_saves_and_loads(baseline, model, tmp_path):
    q = ["what color is the shape?", "is there a circle?"]
    assert all(torch.equal(a, b) for a, b in zip(baseline.tokenize_queries(q), model.tokenize_queries(q)))
    visual = torch.randn(2, 49, 320)
    ids, mask = baseline.tokenize_queries(q)
    scores = baseline.candidate_scores(visual, ids, mask, ["red", "blue", "yes"])
    assert scores.shape == (2, 3) and (scores <= 0).all()
    baseline.save_pretrained(tmp_path / "bl")
    loaded = vljepa.load(tmp_path / "bl")
    assert isinstance(loaded, VLMBaseline)
    assert torch.equal(loaded.candidate_scores(visual, ids, mask, ["red", "blue", "yes"]), scores)
    assert loaded.generate(visual, ids, mask) == baseline.generate(visual, ids, mask)
    with pytest.raises(ValueError, match="output_vocab"):
        baseline.candidate_scores(visual, ids, mask, ["green"])  # never in the vocabulary


def test_train_py_model_vlm_baseline(tmp_path, cache_dir):
    from train import train

    cfg = compose(["model=vlm_baseline", f"paths.output_dir={tmp_path}",
                   f"paths.cache_dir={cache_dir}", "run_name=test", "data.max_train_samples=300",
                   "data.max_test_samples=100", "data.val_fraction=0.2", "data.batch_size=32",
                   "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                   "model.config.width=32", "model.config.depth=1", "model.config.heads=2",
                   "model.config.visual_pool=2"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "test/acc_color" in metrics
    a, b = vljepa.load(tmp_path / "model"), vljepa.load(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(a, VLMBaseline) and isinstance(b, VLMBaseline)
    visual = torch.randn(1, 49, 320)
    ids, mask = a.tokenize_queries(["what shape is this?"])
    assert torch.equal(a.candidate_scores(visual, ids, mask, a.answers),
                       b.candidate_scores(visual, ids, mask, a.answers))


# ---- the baseline from the same pretrained start as VL-JEPA's predictor (issue 13) ----

@pytest.fixture(scope="module")
def pretrained_baseline():
    torch.manual_seed(0)
    m = create_baseline({"pretrained_decoder": True, "visual_pool": 2})
    m.set_output_vocab(["red", "blue", "yes", "no", "grinning face", "an emoji of x"])
    return m.eval()


def test_pretrained_decoder_starts_from_the_exact_minilm_weights(pretrained_baseline):
    from vljepa.predictors.queries import load_text_encoder

    minilm, _ = load_text_encoder("all-MiniLM-L6-v2")
    dec = pretrained_baseline.decoder
    assert len(dec.layers) == len(minilm.encoder.layer) == 6 and dec.width == 384
    ref = minilm.encoder.layer.state_dict()
    got = dec.layers.state_dict()
    assert got.keys() == ref.keys() and len(ref) > 90
    assert all(torch.equal(got[k], ref[k]) for k in ref)  # bit-identical, every tensor
    emb = minilm.embeddings
    assert torch.equal(dec.position_embeddings.weight, emb.position_embeddings.weight)
    assert torch.equal(dec.type_embedding, emb.token_type_embeddings.weight[0])
    assert torch.equal(dec.embed_norm.weight, emb.LayerNorm.weight)
    assert torch.equal(dec.embed_norm.bias, emb.LayerNorm.bias)
    assert torch.equal(dec.table, emb.word_embeddings.weight)  # the token table it reads and ties
    # the query is read by MiniLM's own embeddings (the same tokens as VL-JEPA's predictor)
    ids, mask = pretrained_baseline.tokenize_queries(["what color is the shape?"])
    with torch.no_grad():
        assert torch.allclose(dec.embed_tokens(ids), emb(input_ids=ids), atol=1e-6)
    # and the pretrained weights train (at lr x pretrained_lr_mult), they are not frozen
    groups = pretrained_baseline.param_groups(1e-3, 0.05)
    layer_params = {id(p) for p in dec.layers.parameters()}
    assert all(p.requires_grad for p in dec.layers.parameters())
    lrs = {g["lr"] for g in groups if any(id(p) in layer_params for p in g["params"])}
    assert len(lrs) == 1 and lrs.pop() == pytest.approx(1e-4)
    assert pretrained_baseline.query_proj is None  # no random projection in front of the query


def test_pretrained_decoder_is_causal_over_the_text_and_saves_and_loads(pretrained_baseline,
                                                                         tmp_path):
    bl = pretrained_baseline
    visual = torch.randn(2, 49, 320)
    ids, mask = bl.tokenize_queries(["what color is the shape?", "is it red?"])
    with torch.no_grad():
        p, pm = bl.prefix(visual, ids, mask)
        assert p.shape == (2, 16 + ids.shape[1], 384)
        t = torch.tensor([[101, 2417, 2630, 2748]])  # [CLS] red blue yes
        other = torch.tensor([[101, 2417, 2053, 2053]])  # [CLS] red no no
        m = torch.ones_like(t, dtype=torch.bool)
        a, b = bl.decoder(p[:1], pm[:1], t, m), bl.decoder(p[:1], pm[:1], other, m)
        assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)  # the future is not seen
        assert not torch.allclose(a[:, 2:], b[:, 2:])
        c = bl.decoder(p[1:], pm[1:], t, m)  # another image and question: another prediction
        assert not torch.allclose(a[:, 0], c[:, 0])
    scores = bl.candidate_scores(visual, ids, mask, ["red", "blue", "yes"])
    assert scores.shape == (2, 3) and (scores <= 0).all()
    bl.save_pretrained(tmp_path / "bl")
    loaded = vljepa.load(tmp_path / "bl")
    assert loaded.config.pretrained_decoder
    assert torch.equal(loaded.candidate_scores(visual, ids, mask, ["red", "blue", "yes"]), scores)
    assert loaded.generate(visual) == bl.generate(visual)


def test_pretrained_decoder_learns(pretrained_baseline):
    import copy

    bl = copy.deepcopy(pretrained_baseline).train()
    torch.manual_seed(0)
    visual = torch.randn(4, 49, 320)
    ids, mask = bl.tokenize_queries(["what color is the shape?"] * 4)
    answers = ["red", "blue", "red", "blue"]
    visual[[0, 2]] += 1.0  # the answer is in the image
    opt = torch.optim.AdamW(bl.param_groups(3e-3, 0.0))
    before = bl.decoder.layers[0].attention.self.query.weight.detach().clone()
    for _ in range(40):
        opt.zero_grad()
        loss = bl.loss(visual, ids, mask, answers)
        loss.backward()
        opt.step()
    bl.eval()
    assert loss.item() < 0.1
    assert not torch.equal(before, bl.decoder.layers[0].attention.self.query.weight)
    s = bl.candidate_scores(visual, ids, mask, ["red", "blue"])
    assert s.argmax(1).tolist() == [0, 1, 0, 1]
