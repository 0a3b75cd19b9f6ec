"""eval/emoji_cells.py --feature-cache: the test pictures' visual tokens come from the feature
cache training filled, and only when every picture is there."""
import io

import torch
from PIL import Image

from eval.emoji_cells import cached_visual_tokens, visual_tokens
from vljepa.data.cache import FeatureCache
from vljepa.inputs import image_key


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


def test_cached_tokens_are_read_only_when_every_picture_is_cached(model, tmp_path, monkeypatch):
    monkeypatch.setenv("VLJEPA_CACHE", str(tmp_path))
    images = [png("red"), png("blue"), png("red")]  # a repeated picture is one cache entry
    assert cached_visual_tokens(model, images) is None  # nothing cached yet
    cache = FeatureCache(tmp_path, model.x_encoder.fingerprint)
    cache.compute({image_key(images[0]): {"bytes": images[0]}}, model.x_encoder,
                  model.x_encoder.transform, progress=False)
    assert cached_visual_tokens(model, images) is None  # blue is missing: no partial read
    cache.compute({image_key(images[1]): {"bytes": images[1]}}, model.x_encoder,
                  model.x_encoder.transform, progress=False)
    got = cached_visual_tokens(model, images)
    want = visual_tokens(model, images)  # the X-encoder's own float32 pass
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)  # float16 in the cache
    assert torch.equal(got[0], got[2])


def test_evaluate_embeds_each_name_once_and_scores_as_per_cell_classifiers(model, monkeypatch):
    from eval.emoji_cells import CELLS, ENSEMBLE, evaluate, topk

    names = {CELLS[0]: ["cat", "dog", "owl"], CELLS[1]: ["sun", "moon", "star"],
             CELLS[2]: ["sun", "star"]}  # held-out names recur across the new-name cells
    colors = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
    rows, images = [], []
    for cell, ns in names.items():
        for n in ns * 2:
            rows.append({"cell": cell, "name": n})
            images.append(png(colors[len(images) % len(colors)]))
    visual = visual_tokens(model, images)

    seen = []
    embed_text = model.embed_text
    monkeypatch.setattr(model, "embed_text",
                        lambda texts, *a, **kw: (seen.extend(texts), embed_text(texts, *a, **kw))[1])
    got = evaluate(model, rows, visual)
    monkeypatch.undo()
    every = {n for ns in names.values() for n in ns}
    assert len(seen) == len(every) * (1 + len(ENSEMBLE))  # each name once per template set

    z = model.embed_visual(visual)
    for cell, ns in names.items():
        idx = [i for i, r in enumerate(rows) if r["cell"] == cell]
        cls = sorted(set(ns))
        gold = torch.tensor([cls.index(rows[i]["name"]) for i in idx])
        for how, templates in (("plain", None), ("ensemble", ENSEMBLE)):
            s = z[idx] @ model.text_classifier(cls, templates).T
            assert got[cell][f"{how}_top1"] == topk(s, gold, 1)
            assert got[cell][f"{how}_top5"] == topk(s, gold, 5)
