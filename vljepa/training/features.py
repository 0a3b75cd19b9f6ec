"""Datasets over cached features: what a training batch holds.

VL-JEPA batches (:class:`VQAFeatures`, :class:`CaptionFeatures`, :class:`MixedFeatures`) are
dicts with the same keys, so one LightningModule trains on any of them:
``visual`` (B, N, Dx) float16 cached visual tokens, ``query_ids`` / ``query_mask`` (B, L),
``answer_ids`` (B,) int64 into the datamodule's candidates (equal ids are InfoNCE positives),
``answer`` (B target texts) and ``qtype_ids`` (B,) int64 into its question types. Indexing a list
of rows returns a whole batch (``__getitems__``), so a batch is a few tensor gathers rather than
B small copies, and the DataLoader's collate is :func:`as_batch`.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset


def as_batch(batch):
    """The DataLoader collate of datasets that batch themselves (module level, so DataLoader
    workers can pickle it)."""
    return batch


class VQAFeatures(Dataset):
    """Questions over cached visual tokens. Indexing a list of rows returns a whole batch
    (``__getitems__``), so a batch is a few tensor gathers rather than B small copies.

    Batch: visual (B, N, Dx) float16, query_ids (B, L) int64, query_mask (B, L) bool,
    answer_ids (B,) int64 into the candidates, answer (B strings), qtype_ids (B,) int64 into the
    question types.

    Args:
        features: visual tokens (M, N, Dx) float16 of the M distinct images.
        image_rows: (Q,) int64, the image row of each of the Q questions.
        query_ids, query_mask: (Q, L) the tokenised questions.
        answer_ids: (Q,) int64 into ``candidates``; candidates: the answer texts.
        qtype_ids: (Q,) int64 question types.
    """

    def __init__(self, features, image_rows, query_ids, query_mask, answer_ids, candidates,
                 qtype_ids):
        self.features, self.image_rows = features, image_rows
        self.query_ids, self.query_mask = query_ids, query_mask
        self.answer_ids, self.candidates, self.qtype_ids = answer_ids, candidates, qtype_ids

    def __len__(self) -> int:
        return len(self.answer_ids)

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        mask = self.query_mask[rows]
        L = int(mask.sum(1).max())  # trim padding to this batch's longest question
        answer_ids = self.answer_ids[rows]
        return {"visual": self.features[self.image_rows[rows]],
                "query_ids": self.query_ids[rows, :L], "query_mask": mask[:, :L],
                "answer_ids": answer_ids,
                "answer": [self.candidates[i] for i in answer_ids.tolist()],
                "qtype_ids": self.qtype_ids[rows]}

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])


class CaptionFeatures(Dataset):
    """Captions over cached visual tokens, batched as :class:`VQAFeatures`. The target text of a
    row is its caption (``candidates[caption_ids[row]]``) wrapped in a template drawn at random per row (``"{}"`` keeps it bare); rows of the same image share
    ``answer_ids`` and so count as positives of each other in InfoNCE."""

    def __init__(self, features: torch.Tensor, caption_ids: torch.Tensor, candidates: list[str],
                 templates: Sequence[str], qtype_id: int):
        self.features, self.caption_ids, self.candidates = features, caption_ids, candidates
        self.templates, self.qtype_id = list(templates), qtype_id

    def __len__(self) -> int:
        return len(self.caption_ids)

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        ids = self.caption_ids[rows]
        B = len(rows)
        return {"visual": self.features[rows],
                "query_ids": torch.zeros(B, 1, dtype=torch.long),
                "query_mask": torch.zeros(B, 1, dtype=torch.bool),  # no query: VL-JEPA_BASE
                "answer_ids": ids,
                "answer": [random.choice(self.templates).format(self.candidates[i])
                           for i in ids.tolist()],
                "qtype_ids": torch.full((B,), self.qtype_id)}


class MixedFeatures(Dataset):
    """Several feature datasets as one; a batch gathers from each and pads the query tokens."""

    def __init__(self, parts: list[Dataset]):
        self.parts = [p for p in parts if p is not None and len(p)]
        self.offsets = torch.tensor([0] + [len(p) for p in self.parts]).cumsum(0)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        part = torch.searchsorted(self.offsets, rows, right=True) - 1
        batches = [p.__getitems__((rows[part == i] - self.offsets[i]).tolist())
                   for i, p in enumerate(self.parts) if (part == i).any()]
        L_max = max(b["query_ids"].shape[1] for b in batches)
        out: dict[str, Any] = {}
        for key in batches[0]:
            if key == "answer":
                out[key] = [a for b in batches for a in b[key]]
            elif key in ("query_ids", "query_mask"):
                out[key] = torch.cat([torch.nn.functional.pad(b[key], (0, L_max - b[key].shape[1]))
                                      for b in batches])
            elif key == "visual":
                out[key] = torch.cat([b[key].float() for b in batches])
            else:
                out[key] = torch.cat([b[key] for b in batches])
        return out

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])


class TextSet(Dataset):
    """Texts and their target embeddings, for the Y-decoder.

    Batch: {"embedding": (B, D) float32 unit vectors, "text": B strings}.
    """

    def __init__(self, embeddings: torch.Tensor, texts: list[str]):
        self.embeddings, self.texts = embeddings, texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        return {"embedding": self.embeddings[torch.as_tensor(rows)],
                "text": [self.texts[i] for i in rows]}

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])
