"""Lightning glue for training the Y-decoder on text alone (vljepa/y_decoder.py).

The VL-JEPA it decodes for is loaded (``init_from``) and frozen; only the Y-decoder trains. Each
text t of a corpus is embedded once by the frozen Y-encoder + head (S_Y(t), unit norm), and the
decoder learns to write t back from S_Y(t). Predicted embeddings Ŝ_Y are near, not on, their
targets (InfoNCE aligns directions only up to the temperature), so training perturbs S_Y with
random noise of relative norm up to ``noise`` (then re-normalises): the decoder learns to read a
neighbourhood of each target, which is what ``decode(predict(image, query))`` hands it.

    python train.py experiment=y_decoder init_from=checkpoints/scenes/model
"""
from __future__ import annotations

import random
import unicodedata
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import YDecoderConfig
from .model import VLJEPA
from .text_decoder import corpus_vocab
from .y_decoder import special_ids

# The text sources a corpus can draw from (any text serves: the decoder never sees images).
TEXT_SOURCES = ("easy_vqa", "openmoji", "scenes", "unicode")


def corpus_texts(source: str, split: str, seed: int = 0) -> list[str]:
    """The texts of one source and split ("train", "val" or "test"), de-duplicated, in order.

    easy_vqa: the questions and the 13 answers ("train" only: its questions are templates that
        the test split shares).
    openmoji: emoji names of that split (split by emoji: test names are never trained on).
    scenes: captions of :func:`vljepa.data.captions.scenes` of that split.
    unicode: names of Unicode symbols (category So) that are not OpenMoji glyphs, a general
        vocabulary of symbol names ("train" only).
    """
    from .data import captions as cap
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}; use some of {TEXT_SOURCES}")
    if source in ("easy_vqa", "unicode") and split != "train":
        return []
    if source == "easy_vqa":
        import easy_vqa as ev
        return list(dict.fromkeys(list(ev.get_train_questions()[0]) + list(ev.get_answers())))
    if source == "openmoji":
        return list(dict.fromkeys(cap.emoji_caption(c) for c in cap.openmoji_split_codepoints(split)))
    if source == "scenes":
        return list(dict.fromkeys(cap.scenes(split)["caption"]))
    emoji = set(cap.openmoji_codepoints())
    return list(dict.fromkeys(
        unicodedata.name(chr(c)).lower() for c in range(0x110000)
        if c not in emoji and unicodedata.category(chr(c)) == "So" and unicodedata.name(chr(c), "")))


class TextCorpusDataModule(L.LightningDataModule):
    """Texts and their frozen target embeddings S_Y, for the Y-decoder.

    Args:
        model: the (frozen) VL-JEPA whose Y-encoder + head define the space decoded.
        sources: which of :data:`TEXT_SOURCES` to draw texts from.
        templates: each training text is also added wrapped in these (``"{}"`` = bare), as the
            caption targets were; validation and test texts are bare.
        max_texts: keep at most this many training texts (a fixed random subset), None: all.
        batch_size: texts per step.

    Validation and test texts are those of the val / test splits that no training text equals
    (e.g. the held-out emoji names), so the test measures ``decode(S_Y(t)) ≈ t`` on texts the
    decoder has never been trained to write.
    Batches: {"embedding": (B, D) float32 unit vectors, "text": B strings}.
    """

    def __init__(self, model: VLJEPA, sources: Sequence[str] = ("easy_vqa", "openmoji"),
                 templates: Sequence[str] = ("{}",), max_texts: int | None = None,
                 batch_size: int = 128, eval_batch_size: int = 512, seed: int = 0):
        super().__init__()
        if not sources:
            raise ValueError("no text sources given")
        if any("{}" not in t for t in templates):
            raise ValueError(f"every template needs a '{{}}' slot, got {list(templates)}")
        self.model, self.sources, self.templates = model, list(sources), list(templates)
        self.max_texts, self.seed = max_texts, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.texts: dict[str, list[str]] = {}
        self.vocab: list[str] = []  # every text the decoder may be asked to write in training

    def setup(self, stage: str | None = None) -> None:
        if self.texts:
            return
        raw = [t for src in self.sources for t in corpus_texts(src, "train")]
        train = list(dict.fromkeys(tpl.format(t) for t in raw for tpl in self.templates))
        seen = set(raw) | set(train)
        held = {s: list(dict.fromkeys(t for src in self.sources for t in corpus_texts(src, s)
                                      if t not in seen)) for s in ("val", "test")}
        if self.max_texts is not None and len(train) > self.max_texts:
            train = sorted(random.Random(self.seed).sample(train, self.max_texts), key=train.index)
        self.texts = {"train": train, **held}
        self.vocab = train
        self.sets = {}
        for split, texts in self.texts.items():
            emb = self.model.embed_text(texts) if texts else torch.zeros(0, self.model.config.embed_dim)
            self.sets[split] = TextSet(emb, texts)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self.sets[split], batch_size=batch_size, shuffle=shuffle,
                          collate_fn=lambda rows: {"embedding": torch.stack([r[0] for r in rows]),
                                                   "text": [r[1] for r in rows]})

    def train_dataloader(self):
        return self._loader("train", self.batch_size, True)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size, False)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size, False)


class TextSet(torch.utils.data.Dataset):
    def __init__(self, embeddings: torch.Tensor, texts: list[str]):
        self.embeddings, self.texts = embeddings, texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return self.embeddings[i], self.texts[i]


class LitYDecoder(L.LightningModule):
    """Trains ``model.y_decoder`` (added here if the model has none); everything else is frozen.

    Args:
        model: a trained VL-JEPA (``init_from``).
        decoder: :class:`vljepa.config.YDecoderConfig` fields for a new Y-decoder.
        lr, weight_decay, warmup_frac: AdamW with linear warm-up then cosine decay.
        noise: training perturbation of S_Y, the largest relative norm (see the module doc).
        max_new_tokens: generation length at test time.

    Logs train/loss (token cross-entropy, nats) and, on the held-out val / test texts,
    {val,test}/exact (fraction written back exactly, case-insensitive) and {val,test}/cider
    (CIDEr-D, pycocoevalcap).
    """

    def __init__(self, model: VLJEPA, decoder: dict | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_frac: float = 0.05, noise: float = 0.5,
                 max_new_tokens: int = 24):
        super().__init__()
        self.model = model
        self.decoder_cfg = dict(decoder or {})
        self.lr, self.weight_decay, self.warmup_frac = lr, weight_decay, warmup_frac
        self.noise, self.max_new_tokens = noise, max_new_tokens
        self._outputs: list[tuple[str, str]] = []
        self.strict_loading = False  # checkpoints hold the trained tensors only, not the encoders
        self.save_hyperparameters(ignore=["model", "decoder"])
        self.hparams["decoder"] = {k: v for k, v in self.decoder_cfg.items()}  # plain data

    def setup(self, stage: str) -> None:
        if self.model.y_decoder is None:
            # the softmax covers exactly the tokens of the training texts (decided once, saved)
            cfg = YDecoderConfig(**self.decoder_cfg)
            ids, mask = self.model.y_encoder.tokenize(self.trainer.datamodule.vocab, cfg.max_len)
            cfg.output_vocab = corpus_vocab(ids, mask,
                                            special_ids(self.model.y_encoder.model.tokenizer)[0])
            self.model.add_y_decoder(cfg)
        self.model.requires_grad_(False)
        self.model.y_decoder.requires_grad_(True)
        self.hparams["model_config"] = self.model.config.to_dict()  # loads with vljepa.load

    def _perturb(self, e: torch.Tensor) -> torch.Tensor:
        if self.noise <= 0:
            return e
        n = F.normalize(torch.randn_like(e), dim=-1)
        r = torch.rand(len(e), 1, device=e.device) * self.noise  # relative norm in [0, noise)
        return F.normalize(e + r * n, dim=-1)

    def training_step(self, batch, batch_idx):
        loss = self.model.y_decoder.loss(self._perturb(batch["embedding"]), batch["text"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss

    # Held-out texts are scored by decoding them (their tokens need not be in the training
    # vocabulary, so a held-out cross-entropy is not defined): exact match and CIDEr.
    def validation_step(self, batch, batch_idx):
        hyps = self.model.y_decoder.decode(batch["embedding"], self.max_new_tokens)
        self._outputs += list(zip(batch["text"], hyps))

    test_step = validation_step

    def _log_decoding(self, split: str) -> None:
        from .evaluate import cider
        if not self._outputs:
            return
        refs, hyps = zip(*self._outputs)
        self._outputs = []
        exact = sum(r.lower() == h.lower() for r, h in zip(refs, hyps)) / len(refs)
        self.log(f"{split}/exact", exact, prog_bar=True)
        self.log(f"{split}/cider", cider(list(refs), list(hyps)), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_decoding("val")

    def on_test_epoch_end(self) -> None:
        self._log_decoding("test")

    def configure_optimizers(self):
        params = [p for p in self.model.y_decoder.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, self.trainer.estimated_stepping_batches)
        warm = max(1, int(total * self.warmup_frac))
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, 0.01, 1.0, warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total - warm), self.lr * 0.01)],
            [warm])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from .factory import trained_state_dict
        keep = {f"model.{k}" for k in trained_state_dict(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self.model.answers:
            checkpoint["vljepa_answers"] = list(self.model.answers)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # resuming: build the decoder with the saved vocabulary before the weights arrive
        cfg = checkpoint.get("hyper_parameters", {}).get("model_config", {}).get("y_decoder")
        if cfg is not None and self.model.y_decoder is None:
            self.model.add_y_decoder(cfg)
