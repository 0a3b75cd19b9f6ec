"""The embedding API, self-describing checkpoints and the caption data."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vljepa
from conftest import TINY_PREDICTOR


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "m"
    model.answers = ["red", "blue", "circle"]
    try:
        model.save_pretrained(d)
    finally:
        model.answers = None
    return d


def test_save_load_round_trip_is_identical(model, saved, easy_vqa_test_image):
    torch.manual_seed(1)  # the loaded model starts from another random init
    loaded = vljepa.load(saved)
    meta = json.loads((saved / "config.json").read_text())
    assert meta["answers"] == ["red", "blue", "circle"] and meta["y_encoder_fingerprint"]
    im = [easy_vqa_test_image] * 2
    assert torch.equal(model.embed_image(im), loaded.embed_image(im))
    # a text neither model has memoised: memoised embeddings depend on their first batch (padding)
    assert torch.equal(model.embed_text(["a magenta hexagon"]), loaded.embed_text(["a magenta hexagon"]))
    assert torch.equal(model.classify(im, ["red", "blue"]), loaded.classify(im, ["red", "blue"]))
    assert loaded.answer(im, ["what color?"] * 2)[0] == \
        model.answer(im, ["what color?"] * 2, ["red", "blue", "circle"])[0]
    assert vljepa.VLJEPA.from_pretrained(saved).answers == ["red", "blue", "circle"]


def test_saved_files_are_ordinary_readable_files(saved):
    # written through a 0600 temp file and renamed; others must still be able to read a model
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors"):
        assert (saved / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not [p.name for p in saved.iterdir() if p.name.startswith(".")]  # no temp file left


def _copy_with(saved: Path, tmp_path: Path, edit) -> Path:
    d = tmp_path / "edited"
    shutil.copytree(saved, d)
    meta = json.loads((d / "config.json").read_text())
    edit(meta)
    (d / "config.json").write_text(json.dumps(meta))
    return d


def test_mismatched_or_missing_encoders_are_named(saved, tmp_path):
    d = _copy_with(saved, tmp_path / "x", lambda m: m.update(x_encoder_fingerprint="0" * 16))
    with pytest.raises(ValueError, match="X-encoder built here.*efficientnet_lite0"):
        vljepa.load(d)
    d = _copy_with(saved, tmp_path / "y", lambda m: m.update(y_encoder_fingerprint="0" * 16))
    with pytest.raises(ValueError, match="Y-encoder built here.*all-MiniLM-L6-v2"):
        vljepa.load(d)
    d = _copy_with(saved, tmp_path / "w",
                   lambda m: m["model"]["x_encoder"].update(weights=str(tmp_path / "gone.pth")))
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        vljepa.load(d)
    d = _copy_with(saved, tmp_path / "t", lambda m: m["model"]["y_encoder"].update(
        name=str(tmp_path / "no-such-text-model")))
    with pytest.raises(RuntimeError, match="no-such-text-model"):
        vljepa.load(d)
    with pytest.raises(FileNotFoundError, match="could not be fetched as a hub repo id"):
        vljepa.load("nobody/no-such-vljepa-model")  # HF_HUB_OFFLINE=1: cache only


def test_lightning_checkpoint_converts_in_one_call(model, tmp_path, easy_vqa_test_image):
    ckpt = {"hyper_parameters": {"model_config": model.config.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in model.trained_state_dict().items()},
            "vljepa_answers": ["yes", "no"]}  # the layout LitVLJEPA writes
    torch.save(ckpt, tmp_path / "last.ckpt")
    out = vljepa.convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "model")
    loaded = vljepa.load(out)
    assert loaded.answers == ["yes", "no"]
    assert torch.equal(loaded.embed_image([easy_vqa_test_image]),
                       model.embed_image([easy_vqa_test_image]))


def test_every_image_input_type_gives_the_same_embedding(model, easy_vqa_test_image):
    path = easy_vqa_test_image
    pil = Image.open(path).convert("RGB")
    arr = np.array(pil)  # (H, W, 3) uint8, writable
    chw = torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W) uint8
    inputs = [path, Path(path), pil, Path(path).read_bytes(), arr, arr / 255.0, chw,
              chw.float() / 255, {"bytes": None, "path": path}]
    z = model.embed_image(inputs, batch_size=4)
    assert z.shape == (len(inputs), model.config.embed_dim)
    assert torch.allclose(z, z[:1].expand_as(z), atol=1e-4)
    batch = torch.stack([chw, chw])  # a 4-D (B, 3, H, W) tensor is a batch of B images
    assert torch.allclose(model.embed_image(batch), z[:2], atol=1e-4)
    with pytest.raises(TypeError, match="single image"):
        model.embed_image(pil)


def test_classify_averages_templates_like_open_clip(model, easy_vqa_test_image):
    labels, templates = ["red", "blue", "green"], ["{}", "a {} shape"]
    p = model.classify([easy_vqa_test_image] * 2, labels, templates)
    assert p.shape == (2, 3) and torch.allclose(p.sum(1), torch.ones(2))
    t = model.embed_text([tp.format(c) for c in labels for tp in templates]).view(3, 2, -1)
    w = torch.nn.functional.normalize(t.mean(1), dim=-1)
    logits = model.logit_scale.exp() * model.embed_image([easy_vqa_test_image]) @ w.T
    assert torch.allclose(p[0], logits.softmax(-1)[0], atol=1e-5)
    with pytest.raises(ValueError, match="slot"):
        model.classify([easy_vqa_test_image], labels, ["no slot"])


def test_retrieve_both_directions(model, easy_vqa_test_image):
    import easy_vqa
    paths = [easy_vqa.get_test_image_paths()[i] for i in range(4)]
    texts = ["red circle", "blue square", "green triangle"]
    idx, scores = model.retrieve(paths, texts, k=2, query_kind="image")
    assert idx.shape == scores.shape == (4, 2) and (scores[:, 0] >= scores[:, 1]).all()
    gallery = model.embed_image(paths)  # precomputed (B, D) embeddings pass through
    idx, scores = model.retrieve(gallery[2:3], gallery, k=10)
    assert idx[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert idx.shape == (1, 4)  # k clipped to the gallery size
    idx, _ = model.retrieve(texts, gallery, k=1)
    assert idx.shape == (3, 1)
    with pytest.raises(ValueError, match="file paths"):
        model.retrieve(paths, texts)  # path strings are ambiguous without query_kind


def test_answer_without_candidates_needs_a_saved_vocabulary(model, easy_vqa_test_image):
    with pytest.raises(ValueError, match="no saved answer vocabulary"):
        model.answer([easy_vqa_test_image], ["what color is the shape?"])


def test_caption_rows_are_query_free(model):
    from vljepa.training.features import CaptionFeatures, MixedFeatures
    from vljepa.training.features import VQAFeatures
    torch.manual_seed(0)
    feats = torch.randn(3, 49, 320).half()
    cap = CaptionFeatures(feats, torch.tensor([3, 4, 5]), ["a", "b", "c", "x", "y", "z"],
                          ["{}", "an emoji of {}"], qtype_id=1)
    ids, mask = model.tokenize_queries(["what color?", "is it a circle?"])
    vqa = VQAFeatures(feats, torch.tensor([0, 1]), ids, mask, torch.tensor([0, 1]),
                      ["a", "b", "c"], torch.tensor([0, 0]))
    batch = MixedFeatures([cap, vqa]).__getitems__([0, 4, 1])  # 2 caption rows, 1 VQA row
    assert batch["query_ids"].shape[1] == batch["query_mask"].shape[1] == mask.shape[1]
    assert not batch["query_mask"][:2].any() and batch["query_mask"][2].any()
    assert batch["answer"][0] in ("x", "an emoji of x") and batch["answer"][2] == "b"
    with torch.no_grad():
        mixed = model(batch["visual"], batch["query_ids"], batch["query_mask"])
        alone = model(feats[:2].float())  # no query at all: what embed_image computes
    assert torch.allclose(mixed[:2], alone, atol=1e-4)


def test_caption_rows_draw_their_own_extra_captions():
    from vljepa.training.features import CaptionFeatures
    feats = torch.zeros(3, 4, 8)
    extra = [["x, happy"], [], ["z, fast", "z, wind"]]
    always = CaptionFeatures(feats, torch.tensor([0, 1, 2]), ["x", "y", "z"], ["{}"], 0,
                             extra, extra_prob=1.0)
    for _ in range(20):
        b = always.__getitems__([0, 1, 2])
        # a row's own extra caption, never another row's; a row without one keeps its name
        assert b["answer"][0] == "x, happy" and b["answer"][1] == "y"
        assert b["answer"][2] in ("z, fast", "z, wind")
        assert b["answer_ids"].tolist() == [0, 1, 2]  # positives still go by the name
    never = CaptionFeatures(feats, torch.tensor([0, 1, 2]), ["x", "y", "z"], ["{}"], 0, extra)
    assert never.__getitems__([0, 1, 2])["answer"] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="one list per row"):
        CaptionFeatures(feats, torch.tensor([0, 1, 2]), ["x", "y", "z"], ["{}"], 0, extra[:2], 0.5)
    with pytest.raises(ValueError, match=r"extra_prob must be in \[0, 1\]"):
        CaptionFeatures(feats, torch.tensor([0, 1, 2]), ["x", "y", "z"], ["{}"], 0, extra, 1.5)


def test_openmoji_splits_are_disjoint_by_emoji():
    from vljepa.data.captions import emoji_caption, openmoji_codepoints, openmoji_split_codepoints
    splits = {s: set(openmoji_split_codepoints(s)) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["train"] & splits["val"])
    assert set().union(*splits.values()) == set(openmoji_codepoints())
    names = {s: {emoji_caption(c) for c in cps} for s, cps in splits.items()}
    assert not (names["train"] & names["test"])
    assert emoji_caption(0x1F600) == "grinning face"


def test_linear_baseline_ignores_the_query():
    m = vljepa.create_model({"predictor": {"kind": "linear"}})
    visual = torch.randn(2, 49, 320)
    ids, mask = m.tokenize_queries(["what color?", "what shape?"])
    with torch.no_grad():
        assert torch.equal(m(visual, ids, mask), m(visual))
        assert torch.allclose(m(visual), m.predictor.head(visual.mean(1)))
