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
