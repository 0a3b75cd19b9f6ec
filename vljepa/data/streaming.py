"""Image- and video-caption datasets streamed with Hugging Face ``datasets``, split across ranks
and DataLoader workers: the input of feature extraction at scale
(:func:`vljepa.training.extract.extract_features`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import datasets
from datasets.distributed import split_dataset_by_node
from torch.utils.data import IterableDataset

from ..inputs import image_key
from ..video import sample_clip
from .cache import to_pixels


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
                pixels = to_pixels(item, self.transform)
            except (OSError, ValueError) as e:
                raise ValueError(f"row {i} (rank {self.rank}) could not be decoded: {e}") from e
            yield {"key": key, "pixels": pixels, "caption": row[self.caption_column]}
