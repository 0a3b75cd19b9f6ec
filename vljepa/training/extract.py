"""Feature extraction at scale: stream an image- or video-caption dataset through the frozen
X-encoder once, across ranks, into the feature cache (Lightning ``predict`` + a prediction writer).
The dataset is :class:`vljepa.data.streaming.StreamingCaptions`.

    dataset (HF datasets, streaming) ──split by rank and worker──► decode + preprocess in
    DataLoader workers (images; videos as uniform clips with PyAV) ──► X-encoder (predict_step)
    ──► FeatureWriter: one atomic cache shard per batch, per rank

Resumable: the cache is keyed by content, so a rerun (after a crash, or on more ranks) skips
what is already cached and encodes only the rest. Training then reads the cache as usual.

    from vljepa.data.streaming import StreamingCaptions
    from vljepa.training.extract import extract_features
    data = StreamingCaptions("parquet", data_files="captions/*.parquet", image_column="jpg",
                             caption_column="txt", transform=model.x_encoder.transform)
    extract_features(model, data, cache_dir, trainer_kwargs={"devices": 8, "strategy": "ddp"})
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from ..data.cache import FeatureCache
from ..data.streaming import StreamingCaptions


class FeatureExtractor(L.LightningModule):
    """``predict_step``: a batch of pixels (B, 3, H, W) or clips (B, T, 3, H, W) -> visual
    tokens (B, N, Dx) through the frozen X-encoder."""

    def __init__(self, x_encoder):
        super().__init__()
        self.x_encoder = x_encoder

    def predict_step(self, batch, batch_idx):
        return {"key": batch["key"], "tokens": self.x_encoder(batch["pixels"])}


class FeatureWriter(BasePredictionWriter):
    """Writes each predicted batch as one atomic feature-cache shard (per rank, no gathering)."""

    def __init__(self, cache: FeatureCache):
        super().__init__(write_interval="batch")
        self.cache, self.written = cache, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0):
        self.cache.write_shard(list(prediction["key"]), prediction["tokens"].cpu())
        self.written += len(prediction["key"])


def _collate(rows: list[dict]) -> dict[str, Any]:
    return {"key": [r["key"] for r in rows], "pixels": torch.stack([r["pixels"] for r in rows]),
            "caption": [r["caption"] for r in rows]}


def extract_features(model, data: StreamingCaptions, cache_dir, batch_size: int = 64,
                     num_workers: int = 0, trainer_kwargs: dict | None = None) -> int:
    """Encode every row of ``data`` not yet in the cache; returns how many this rank wrote.

    ``trainer_kwargs`` go to ``lightning.Trainer`` (devices, num_nodes, strategy, precision);
    each rank streams its own part of the dataset.
    """
    cache = FeatureCache(cache_dir, model.x_encoder.fingerprint)
    data.skip_keys = set(cache.index())
    writer = FeatureWriter(cache)
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, "logger": False,
                           "enable_progress_bar": False, **(trainer_kwargs or {})},
                        callbacks=[writer])
    data.rank, data.world_size = trainer.global_rank, trainer.world_size
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    trainer.predict(FeatureExtractor(model.x_encoder), loader, return_predictions=False)
    return writer.written
