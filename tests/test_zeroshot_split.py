"""Zero-shot evaluation holds out the emoji the model's training held out: the OpenMoji split
depends on the training seed (data.seed), and train.py records it in the model card."""
import copy

import datasets
import pytest
import torch

import vljepa.metrics as ev
from vljepa.data.captions import openmoji_split_codepoints


def test_another_seed_holds_out_other_emoji():
    test0 = set(openmoji_split_codepoints("test", seed=0))
    train1 = set(openmoji_split_codepoints("train", seed=1))
    assert len(test0 & train1) > len(test0) // 2  # scoring seed 1 on seed 0's test would leak


def test_evaluate_uses_the_split_seed_of_the_model_card(model, monkeypatch):
    seen = []

    def fake_openmoji(split, seed=0, **kw):
        seen.append((split, seed))
        return datasets.Dataset.from_dict({"image": [b"a", b"b", b"c"],
                                           "caption": ["cat face", "dog face", "cat face"]})

    monkeypatch.setattr(ev, "openmoji", fake_openmoji)
    monkeypatch.setattr(ev, "cached_visual_tokens", lambda m, images, *a, **k: torch.randn(
        len(images), m.x_encoder.num_tokens, m.x_encoder.dim))
    m = copy.copy(model)  # a shallow copy: its own card
    m.card = {"split_seed": 3}
    r = ev.evaluate(m, tasks=["openmoji", "retrieval"])
    assert seen == [("test", 3)] and r["openmoji"]["split_seed"] == 3
    assert r["retrieval"]["split_seed"] == 3 and r["openmoji"]["classes"] == 2
    ev.evaluate(m, tasks=["openmoji"], split_seed=0)  # an explicit seed wins
    m.card = {}
    ev.evaluate(m, tasks=["openmoji"])  # no record: the default split
    assert seen[1:] == [("test", 0), ("test", 0)]


def test_exclude_codepoints_drops_emoji_the_model_has_seen(model, monkeypatch):
    """A model trained on the emoji corpus has seen other pictures of most held-out OpenMoji
    emoji: ``exclude_codepoints`` scores only the others (their names are the classes)."""
    def fake_openmoji(split, seed=0, **kw):
        return datasets.Dataset.from_dict({
            "image": [b"a", b"b", b"c", b"d"], "codepoint": [0x1F431, 0x1F436, 0x1F431, 0x1F98A],
            "caption": ["cat face", "dog face", "cat face", "fox face"]})

    images = []
    monkeypatch.setattr(ev, "openmoji", fake_openmoji)
    monkeypatch.setattr(ev, "cached_visual_tokens", lambda m, imgs, *a, **k: images.append(
        list(imgs)) or torch.randn(len(imgs), m.x_encoder.num_tokens, m.x_encoder.dim))
    r = ev.evaluate(model, tasks=["openmoji", "retrieval"], exclude_codepoints={0x1F431, 0x1F600})
    assert images == [[b"b", b"d"]]
    assert r["openmoji"]["n"] == 2 and r["openmoji"]["classes"] == 2
    assert r["openmoji"]["excluded"] == 2 and r["retrieval"]["n"] == 2
    with pytest.raises(ValueError, match="no held-out emoji"):
        ev.evaluate(model, tasks=["openmoji"], exclude_codepoints={0x1F431, 0x1F436, 0x1F98A})
