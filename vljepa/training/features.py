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

    def queries(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The asked questions and their answers of ``rows`` (B,): query ids, mask (B, L) and
        answer ids (B,)."""
        return self.query_ids[rows], self.query_mask[rows], self.answer_ids[rows]

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        ids, mask, answer_ids = self.queries(rows)
        L = int(mask.sum(1).max())  # trim padding to this batch's longest question
        return {"visual": self.features[self.image_rows[rows]],
                "query_ids": ids[:, :L], "query_mask": mask[:, :L],
                "answer_ids": answer_ids,
                "answer": [self.candidates[i] for i in answer_ids.tolist()],
                "qtype_ids": self.qtype_ids[rows]}

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])


class RewordedVQAFeatures(VQAFeatures):
    """:class:`VQAFeatures` whose rows each ask, with probability ``p`` per draw, a generated
    rewording of their question (vljepa.data.rewordings) instead: one of the rewordings of the
    row's group (its question's meaning), drawn uniformly, with that rewording's answer (a
    negated rewording of a yes/no question flips it). Batches as :class:`VQAFeatures`.

    Draws come from the dataset's own ``torch.Generator`` (seeded with ``seed``; in a DataLoader
    worker, with the seed and the worker id), whose state the StatefulDataLoader saves with a
    checkpoint (``state_dict``), so a resumed run draws as the uninterrupted one would.

    Args:
        base: the training rows as :class:`VQAFeatures`.
        p: probability in [0, 1] that a row asks a rewording.
        row_group: (Q,) int64, each row's group; -1: never reworded.
        group_start, group_size: (G,) int64, each group's span of the rewordings (size >= 1).
        query_ids, query_mask: (R, L) the R tokenised rewordings, grouped.
        answer_ids: (R,) int64 each rewording's answer, into ``base.candidates``.
        questions: the R rewordings as text (for inspection and tests).
        seed: the draws' seed.

    Raises ValueError for ``p`` outside [0, 1] or a group without rewordings.
    """

    def __init__(self, base: VQAFeatures, p: float, row_group: torch.Tensor,
                 group_start: torch.Tensor, group_size: torch.Tensor, query_ids: torch.Tensor,
                 query_mask: torch.Tensor, answer_ids: torch.Tensor, questions: list[str],
                 seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"rewording probability must be in [0, 1], got {p}")
        if len(group_size) and int(group_size.min()) < 1:
            raise ValueError("every rewording group needs at least one rewording")
        # one width for the training questions and the rewordings, so rows can swap
        L = max(base.query_ids.shape[1], query_ids.shape[1])
        pad = lambda t: torch.nn.functional.pad(t, (0, L - t.shape[1]))  # noqa: E731
        super().__init__(base.features, base.image_rows, pad(base.query_ids),
                         pad(base.query_mask), base.answer_ids, base.candidates, base.qtype_ids)
        self.p, self.row_group = p, row_group
        self.group_start, self.group_size = group_start, group_size
        self.rw_ids, self.rw_mask, self.rw_answer_ids = pad(query_ids), pad(query_mask), answer_ids
        self.questions, self.seed = questions, seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker: int | None = None

    def _draw(self, n: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:  # workers draw apart, not in lockstep
            self._worker = info.id
            self.generator.manual_seed(self.seed * 1_000_003 + info.id + 1)
        return torch.rand(n, generator=self.generator)

    def queries(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask, answer_ids = super().queries(rows)
        group = self.row_group[rows]
        swap = (self._draw(len(rows)) < self.p) & (group >= 0)
        if swap.any():
            g = group[swap]
            pick = self.group_start[g] + (self._draw(len(g)) * self.group_size[g]).long() \
                .clamp(max=self.group_size[g] - 1)
            ids, mask, answer_ids = ids.clone(), mask.clone(), answer_ids.clone()
            ids[swap], mask[swap], answer_ids[swap] = (self.rw_ids[pick], self.rw_mask[pick],
                                                       self.rw_answer_ids[pick])
        return ids, mask, answer_ids

    def state_dict(self) -> dict[str, Any]:
        """The draws' generator state (saved by the StatefulDataLoader with a checkpoint)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class CaptionFeatures(Dataset):
    """Captions over cached visual tokens, batched as :class:`VQAFeatures`. The target text of a
    row is its caption (``candidates[caption_ids[row]]``) wrapped in a template drawn at random
    per row (``"{}"`` keeps it bare); rows with the same caption share ``answer_ids`` and so
    count as positives of each other in InfoNCE.

    ``extra_texts`` (one list of strings per row, e.g. a corpus's keyword captions "an emoji of
    a grinning face, smile, happy"): with probability ``extra_prob`` a row's target text is one
    of its own extra texts, drawn at random, instead of the templated caption; its
    ``answer_ids`` stay the caption's. Rows with no extra text always use the caption.
    """

    def __init__(self, features: torch.Tensor, caption_ids: torch.Tensor, candidates: list[str],
                 templates: Sequence[str], qtype_id: int,
                 extra_texts: Sequence[Sequence[str]] | None = None, extra_prob: float = 0.0):
        self.features, self.caption_ids, self.candidates = features, caption_ids, candidates
        self.templates, self.qtype_id = list(templates), qtype_id
        if not 0.0 <= extra_prob <= 1.0:
            raise ValueError(f"extra_prob must be in [0, 1], got {extra_prob}")
        if extra_prob > 0 and (extra_texts is None or len(extra_texts) != len(caption_ids)):
            raise ValueError("extra_prob > 0 needs extra_texts with one list per row "
                             f"({len(caption_ids)} rows)")
        self.extra_texts = [list(t) for t in extra_texts] if extra_prob > 0 else None
        self.extra_prob = extra_prob

    def _text(self, row: int, caption_id: int) -> str:
        if self.extra_texts and self.extra_texts[row] and random.random() < self.extra_prob:
            return random.choice(self.extra_texts[row])
        return random.choice(self.templates).format(self.candidates[caption_id])

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
                "answer": [self._text(r, i) for r, i in zip(rows.tolist(), ids.tolist())],
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
