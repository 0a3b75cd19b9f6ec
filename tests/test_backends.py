"""The other encoder backends build offline (random init) and keep the shape contract."""
import pytest
import torch

from vljepa.config import XEncoderConfig, YEncoderConfig
from vljepa.encoders import XEncoder, YEncoder


def test_open_clip_visual_tower_gives_visual_tokens():
    enc = XEncoder(XEncoderConfig(backend="open_clip", name="ViT-B-32", weights=None,
                                  feature_index=None))
    tokens = enc(torch.randn(2, 3, 224, 224))
    assert tokens.shape == (2, enc.num_tokens, enc.dim) and enc.num_tokens == 49  # 7x7 patches
    assert not any(p.requires_grad for p in enc.parameters())


def test_open_clip_text_tower_as_y_encoder():
    enc = YEncoder(YEncoderConfig(backend="open_clip", name="ViT-B-32"))
    out = enc(["a red circle", "a blue square"])
    assert out.shape == (2, enc.dim) and enc.dim == 512
    ids, mask = enc.tokenize(["a red circle", "hi"], max_length=16)
    assert ids.shape == mask.shape and mask[0].sum() > mask[1].sum()


def test_timm_local_weights_file_and_feature_index(tmp_path):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    enc = XEncoder(XEncoderConfig(name="resnet18", weights=str(path), feature_index=-1,
                                  crop_pct=None))
    assert enc(torch.randn(1, 3, 224, 224)).shape == (1, 49, 512)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        XEncoder(XEncoderConfig(name="resnet18", weights=str(tmp_path / "absent.pth")))


def test_unknown_backends_are_clear_errors():
    with pytest.raises(ValueError, match="unknown X-encoder backend"):
        XEncoder(XEncoderConfig(backend="keras"))
    with pytest.raises(ValueError, match="unknown Y-encoder backend"):
        YEncoder(YEncoderConfig(backend="keras"))
