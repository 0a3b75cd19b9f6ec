"""Feature extraction as a streaming, resumable Lightning predict job (vljepa/training/extract.py)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vljepa.data.cache import FeatureCache
from vljepa.data.streaming import StreamingCaptions
from vljepa.training.extract import extract_features


def write_parquet(path, n=10):
    import datasets
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (20 * i, 255 - 20 * i, 0)).save(buf, "PNG")
        rows.append({"jpg": {"bytes": buf.getvalue(), "path": None}, "txt": f"colour {i}"})
    ds = datasets.Dataset.from_list(rows).cast_column("jpg", datasets.Image())
    ds.to_parquet(str(path))


def test_streamed_images_are_cached_once_and_resume(model, tmp_path):
    write_parquet(tmp_path / "part-0.parquet")
    data = StreamingCaptions("parquet", data_files=str(tmp_path / "part-*.parquet"),
                             image_column="jpg", caption_column="txt",
                             transform=model.x_encoder.transform)
    rows = list(data)
    assert len(rows) == 10 and rows[0]["caption"] == "colour 0"
    assert rows[0]["pixels"].shape == model.x_encoder.transform(Image.new("RGB", (8, 8))).shape
    cache_dir = tmp_path / "cache"
    assert extract_features(model, data, cache_dir, batch_size=4, num_workers=2) == 10
    cache = FeatureCache(cache_dir, model.x_encoder.fingerprint)
    tokens = cache.load([r["key"] for r in rows]).float()
    direct = model.x_encoder(torch.stack([r["pixels"] for r in rows[:2]]))
    assert torch.allclose(tokens[:2], direct, atol=2e-2)  # float16 in the cache
    # a second run (resume) finds everything cached and encodes nothing
    assert extract_features(model, data, cache_dir, batch_size=4) == 0


def test_streamed_videos_become_clips(tmp_path, tiny_vjepa2):
    pytest.importorskip("av")
    import json

    from vljepa.config import XEncoderConfig
    from vljepa.encoders import XEncoder
    from vljepa.video import write_video

    enc = XEncoder(XEncoderConfig(backend="hf", name=tiny_vjepa2, weights=None, feature_index=None))
    lines = []
    for i in range(3):
        write_video(tmp_path / f"v{i}.mp4", [np.full((32, 32, 3), 20 * (i + j), np.uint8)
                                             for j in range(8)], fps=8)
        lines.append(json.dumps({"video": str(tmp_path / f"v{i}.mp4"), "caption": f"clip {i}"}))
    (tmp_path / "clips.jsonl").write_text("\n".join(lines))
    data = StreamingCaptions("json", data_files=str(tmp_path / "clips.jsonl"), image_column=None,
                             video_column="video", transform=enc.transform, frames=4)
    rows = list(data)
    assert [r["pixels"].shape for r in rows] == [(4, 3, 32, 32)] * 3

    class Holder:  # extract_features needs only model.x_encoder
        x_encoder = enc
    assert extract_features(Holder, data, tmp_path / "cache", batch_size=2) == 3
    assert FeatureCache(tmp_path / "cache", enc.fingerprint).load([r["key"] for r in rows]).shape \
        == (3, enc.num_tokens, enc.dim)


def test_bad_columns_are_named(model, tmp_path):
    write_parquet(tmp_path / "p.parquet", n=2)
    data = StreamingCaptions("parquet", data_files=str(tmp_path / "p.parquet"),
                             image_column="image", caption_column="txt",
                             transform=model.x_encoder.transform)
    with pytest.raises(ValueError, match=r"no column\(s\) \['image'\]"):
        list(data)


def test_train_py_on_a_local_caption_dataset(tmp_path, cache_dir):
    from conftest import compose
    from train import train

    for split, n in (("train", 24), ("val", 6), ("test", 6)):
        write_parquet(tmp_path / f"{split}.parquet", n)
    files = "{" + ", ".join(f"{s}: {tmp_path / s}.parquet" for s in ("train", "val", "test")) + "}"
    cfg = compose(["data=hf_captions", "model.config.predictor.width=32",
                   "model.config.predictor.depth=1", "model.config.predictor.heads=2",
                   "trainer.enable_progress_bar=false", f"data.source_kwargs.data_files={files}",
                   "data.source_kwargs.image_column=jpg", "data.source_kwargs.caption_column=txt",
                   f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={cache_dir}",
                   "run_name=test", "data.batch_size=8", "trainer.max_epochs=1"])
    metrics = train(cfg)
    assert "test/acc" in metrics and 0 <= metrics["test/acc"] <= 1
