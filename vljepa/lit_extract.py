"""Feature extraction at scale: stream an image- or video-caption dataset through the frozen
X-encoder once, across ranks, into the feature cache (Lightning ``predict`` + a prediction writer).

    dataset (HF datasets, streaming) ──split by rank and worker──► decode + preprocess in
    DataLoader workers (images; videos as uniform clips with PyAV) ──► X-encoder (predict_step)
    ──► FeatureWriter: one atomic cache shard per batch, per rank

Resumable: the cache is keyed by content, so a rerun (after a crash, or on more ranks) skips
what is already cached and encodes only the rest. Training then reads the cache as usual.

    from vljepa.lit_extract import StreamingCaptions, extract_features
    data = StreamingCaptions("parquet", data_files="captions/*.parquet", image_column="jpg",
                             caption_column="txt", transform=model.x_encoder.transform)
    extract_features(model, data, cache_dir, trainer_kwargs={"devices": 8, "strategy": "ddp"})
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset

from .data.cache import FeatureCache, _pixels
from .images import image_key


class StreamingCaptions(IterableDataset):
    """An image- or video-caption dataset streamed with ``datasets.load_dataset(...,
    streaming=True)``, yielding {"key", "pixels", "caption"} per row.

    Args:
        path, name, split, data_files: as ``datasets.load_dataset`` (a hub name, or "parquet" /
            "json" / "webdataset" with local ``data_files``).
        image_column / video_column: the column holding the image (PIL, bytes, path or
            ``{"bytes", "path"}``), or the video file path; exactly one is given.
        caption_column: the target text.
        transform: PIL image -> (3, H, W), the X-encoder's preprocessing.
        frames: clip length for videos (uniform over the video, vljepa.video.sample_clip).
        skip_keys: keys already cached (a resumed run); their rows are not decoded twice.

    Rows are split across ranks (``datasets.distributed.split_dataset_by_node``) and across
    DataLoader workers by ``datasets`` itself (by file shard: give at least as many files as
    workers), so each row is read once per job. A row that fails to
    decode raises ValueError naming the row: silent skips would hide a broken dataset.
    """

    def __init__(self, path: str, name: str | None = None, split: str = "train",
                 data_files: Any = None, image_column: str | None = "image",
                 video_column: str | None = None, caption_column: str = "caption",
                 transform: Callable | None = None, frames: int = 16,
                 skip_keys: set[str] | None = None):
        if (image_column is None) == (video_column is None):
            raise ValueError("give exactly one of image_column and video_column")
        self.load_kwargs = dict(path=path, name=name, split=split, data_files=data_files,
                                streaming=True)
        self.image_column, self.video_column = image_column, video_column
        self.caption_column, self.transform, self.frames = caption_column, transform, frames
        self.skip_keys = skip_keys or set()
        self.rank, self.world_size = 0, 1

    def _rows(self):
        import datasets
        from datasets.distributed import split_dataset_by_node

        ds = datasets.load_dataset(**self.load_kwargs)
        column = self.image_column or self.video_column
        missing = {column, self.caption_column} - set(ds.column_names or [column, self.caption_column])
        if missing:
            raise ValueError(f"dataset {self.load_kwargs['path']!r} has no column(s) "
                             f"{sorted(missing)}; it has {ds.column_names}")
        if self.image_column:
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        return split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from .video import sample_clip

        # inside a DataLoader worker, a streaming dataset reads only that worker's shards (files)
        for i, row in enumerate(self._rows()):
            try:
                if self.video_column:
                    item = sample_clip(row[self.video_column], self.frames)
                else:
                    item = row[self.image_column]
                key = image_key(item)
                if key in self.skip_keys:
                    continue
                pixels = _pixels(item, self.transform)
            except (OSError, ValueError) as e:
                raise ValueError(f"row {i} (rank {self.rank}) could not be decoded: {e}") from e
            yield {"key": key, "pixels": pixels, "caption": row[self.caption_column]}


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
        self.cache._write_shard(list(prediction["key"]), prediction["tokens"].cpu())
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
    data.skip_keys = set(cache._index())
    writer = FeatureWriter(cache)
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, "logger": False,
                           "enable_progress_bar": False, **(trainer_kwargs or {})},
                        callbacks=[writer])
    data.rank, data.world_size = trainer.global_rank, trainer.world_size
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    trainer.predict(FeatureExtractor(model.x_encoder), loader, return_predictions=False)
    return writer.written
