"""The Hugging Face X-encoder backend with a tiny random V-JEPA 2 of the real class: images are
repeated into clips, clips go through the feature cache, video files give uniform clips."""
import numpy as np
import pytest
import torch
from PIL import Image

from vljepa.config import XEncoderConfig
from vljepa.encoders import XEncoder

FRAMES = 4


@pytest.fixture(scope="module")
def encoder(tiny_vjepa2):
    return XEncoder(XEncoderConfig(backend="hf", name=tiny_vjepa2, weights=None,
                                   feature_index=None))


def test_images_are_repeated_into_clips(encoder):
    # 32 px, patch 8, tubelet 2: (4 / 2) x (32 / 8)^2 = 32 tokens of width 32
    assert (encoder.num_tokens, encoder.dim, encoder.grid, encoder.frames) == (32, 32, None, FRAMES)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    x = encoder.transform(img)
    assert x.shape == (3, 32, 32)
    from_image = encoder(x[None])
    from_clip = encoder(x[None, None].expand(1, FRAMES, -1, -1, -1))
    assert from_image.shape == (1, 32, 32) and torch.allclose(from_image, from_clip, atol=1e-6)
    with pytest.raises(ValueError, match="4 frames"):
        encoder(x[None, None].expand(1, 3, -1, -1, -1))


def test_clips_go_through_the_feature_cache(encoder, tmp_path):
    from vljepa.data.cache import FeatureCache
    from vljepa.inputs import image_key

    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(FRAMES)]
    clips = {image_key(frames): frames, image_key(frames[::-1]): frames[::-1]}
    assert len(clips) == 2  # the key depends on the frames' order
    cache = FeatureCache(tmp_path, encoder.fingerprint)
    assert cache.compute(clips, encoder, encoder.transform, progress=False) == 2
    assert cache.compute(clips, encoder, encoder.transform, progress=False) == 0  # cached
    tokens = cache.load(list(clips)).float()
    direct = encoder(torch.stack([encoder.transform(f) for f in frames])[None])
    assert tokens.shape == (2, 32, 32)
    assert torch.allclose(tokens[0], direct[0], atol=1e-2)  # the cache stores float16


def test_a_video_file_gives_a_uniform_clip(tmp_path):
    pytest.importorskip("av")
    from vljepa.video import sample_clip, write_video

    levels = [i * 12 for i in range(20)]
    write_video(tmp_path / "ramp.mp4", [np.full((32, 32, 3), v, np.uint8) for v in levels], fps=10)
    clip = sample_clip(tmp_path / "ramp.mp4", FRAMES)  # frames 0, 6, 13, 19
    got = [float(np.asarray(f).mean()) for f in clip]
    assert got == pytest.approx([levels[i] for i in (0, 6, 13, 19)], abs=4)


def test_a_model_with_the_hf_backend_trains_on_images(tiny_vjepa2):
    import vljepa

    m = vljepa.create_model({"x_encoder": {"backend": "hf", "name": tiny_vjepa2, "weights": None,
                                           "feature_index": None},
                             "predictor": {"width": 32, "depth": 1, "heads": 2}})
    z = m.embed_image([Image.new("RGB", (50, 40), (200, 30, 30))])
    assert z.shape == (1, 256) and torch.isfinite(z).all()
