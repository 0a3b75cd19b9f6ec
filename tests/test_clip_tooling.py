"""CLIP tooling runs on a VL-JEPA through open_clip's conventions only: clip_benchmark's own
zero-shot classification and retrieval, and open_clip's build_zero_shot_classifier, agree with
``model.classify`` on the same images."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import vljepa
from vljepa.inputs import load_image

RELEASED = Path(__file__).resolve().parents[1] / "checkpoints" / "vljepa-easyvqa-lite0"
SHAPES = ["circle", "rectangle", "triangle"]
TEMPLATES = ["{}", "a {} shape"]


class ShapeImages(Dataset):
    """easy-VQA test images (B, 3, H, W) after ``preprocess``, with their shape class (and, for
    retrieval, their caption "red circle")."""

    classes = SHAPES  # clip_benchmark reads dataset.classes, as torchvision datasets have it

    def __init__(self, rows, preprocess, captions: bool = False):
        self.rows, self.preprocess, self.captions = rows, preprocess, captions

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        image, caption = self.rows[i]
        x = self.preprocess(load_image(image))
        return (x, [caption]) if self.captions else (x, SHAPES.index(caption.split()[-1]))


@pytest.fixture(scope="module")
def clip_style():
    """The released model through open_clip's entry points. Its predictor was trained on
    questions only, so images are embedded as the answer to "what shape is this?"
    (``default_prompt``), which makes shape names a meaningful zero-shot task."""
    from vljepa.data.captions import easy_vqa_captions

    model, _, preprocess = vljepa.create_model_and_transforms(str(RELEASED))
    model.config.default_prompt = "what shape is this?"
    tokenizer = vljepa.get_tokenizer(str(RELEASED))
    ds = easy_vqa_captions("test").select(range(60))
    rows = list(zip(ds["image"], ds["caption"]))
    return model, preprocess, tokenizer, rows


def test_get_tokenizer_follows_open_clip(clip_style):
    model, _, tokenizer, _ = clip_style
    ids = tokenizer(["red circle", "a much longer caption than the other one"])
    assert ids.dtype == torch.long and ids.shape == (2, tokenizer.context_length)
    assert tokenizer(["x"], context_length=8).shape == (1, 8)
    assert (ids[0] == tokenizer.pad_id).sum() > (ids[1] == tokenizer.pad_id).sum()
    # token tensors and strings embed the same
    z_ids = model.encode_text(ids, normalize=True)
    z_str = model.encode_text(["red circle", "a much longer caption than the other one"],
                              normalize=True)
    assert torch.allclose(z_ids, z_str, atol=1e-5)
    with pytest.raises(TypeError, match="token ids"):
        model.encode_text(torch.zeros(2, 4))


def test_encode_image_takes_preprocessed_pixels_as_is(clip_style):
    model, preprocess, _, rows = clip_style
    images = [r[0] for r in rows[:3]]
    x = torch.stack([preprocess(load_image(im)) for im in images])  # normalised pixels
    z = model.encode_image(x, normalize=True)
    assert z.dtype == torch.float32 and z.shape == (3, model.config.embed_dim)
    assert torch.allclose(z, model.embed_image(images), atol=1e-6)  # no second normalisation
    raw = model.encode_image(x)  # open_clip's default: not normalised
    assert torch.allclose(F.normalize(raw, dim=-1), z, atol=1e-6)
    assert torch.allclose(model.encode_image(images, normalize=True), z, atol=1e-6)  # PIL etc.


def _topk_accuracy(output, target, topk=(1,)):
    """clip_benchmark's ``accuracy`` with ``.item()``: its own (1.6.2) calls ``float()`` on a
    1-element array, which NumPy >= 2.4 refuses. Only this count is replaced; the classifier,
    the embeddings and the predictions are clip_benchmark's own code."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def test_clip_benchmark_zero_shot_and_retrieval_match_classify(clip_style, monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    monkeypatch.setattr(zeroshot_classification, "accuracy", _topk_accuracy)
    model, preprocess, tokenizer, rows = clip_style
    loader = DataLoader(ShapeImages(rows, preprocess), batch_size=16)
    templates = [t.replace("{}", "{c}") for t in TEMPLATES]  # clip_benchmark's slot is {c}
    metrics = zeroshot_classification.evaluate(model, loader, tokenizer, SHAPES, templates,
                                               device="cpu", amp=False)
    targets = torch.tensor([SHAPES.index(c.split()[-1]) for _, c in rows])
    probs = model.classify([r[0] for r in rows], SHAPES, TEMPLATES)
    ours = (probs.argmax(1) == targets).float().mean().item()
    print(f"clip_benchmark zero-shot: top-1 {metrics['acc1']:.4f} top-5 {metrics['acc5']:.4f}; "
          f"model.classify top-1 {ours:.4f} ({len(rows)} easy-VQA test images, 3 shapes)")
    assert abs(metrics["acc1"] - ours) <= 0.01
    assert metrics["acc1"] > 0.6  # a meaningful task: chance is 1/3

    retrieval_loader = DataLoader(ShapeImages(rows, preprocess, captions=True), batch_size=16,
                                  collate_fn=lambda b: (torch.stack([x for x, _ in b]),
                                                        [t for _, t in b]))
    r = zeroshot_retrieval.evaluate(model, retrieval_loader, tokenizer, device="cpu", amp=False,
                                    recall_k_list=[1, 5])
    print("clip_benchmark retrieval: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
    for direction in ("image_retrieval", "text_retrieval"):
        assert 0 <= r[f"{direction}_recall@1"] <= r[f"{direction}_recall@5"] <= 1


def test_open_clip_zero_shot_classifier_matches_classify(clip_style):
    from open_clip import build_zero_shot_classifier

    model, preprocess, tokenizer, rows = clip_style
    weights = build_zero_shot_classifier(model, tokenizer, SHAPES, TEMPLATES, device="cpu")
    images = [r[0] for r in rows[:24]]
    x = torch.stack([preprocess(load_image(im)) for im in images])
    theirs = (model.encode_image(x, normalize=True) @ weights).argmax(1)
    ours = model.classify(images, SHAPES, TEMPLATES).argmax(1)
    assert torch.equal(theirs, ours)
