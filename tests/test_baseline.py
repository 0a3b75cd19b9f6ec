"""The token-generating VLM baseline (issue 5) and its prefix-LM text decoder."""
import pytest
import torch

import vljepa
from vljepa.baseline import VLMBaseline, create_baseline
from vljepa.modules.text_decoder import CausalTextDecoder

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
