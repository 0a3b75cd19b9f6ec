"""Lightning glue for the token-generating VLM baseline (vljepa/baseline.py).

It reuses :class:`vljepa.lit.LitVLJEPA`'s optimiser, schedule, checkpoint trimming and
per-question-type test metrics, and changes what a step computes: cross-entropy on the answer
tokens in training, and lowest-perplexity answering over the datamodule's candidates in
validation and test. The data modules are VL-JEPA's own, unchanged.
"""
from __future__ import annotations

import torch

from .baseline import BaselineConfig, VLMBaseline
from .lit import LitVLJEPA


class LitVLMBaseline(LitVLJEPA):
    """Trains :class:`VLMBaseline` (LLaVA-style: generate the answer text)."""

    def __init__(self, model: VLMBaseline, lr: float = 2e-3, weight_decay: float = 0.05,
                 warmup_frac: float = 0.05, min_lr_frac: float = 0.01,
                 templates: tuple[str, ...] = ("{}", "an emoji of {}")):
        super().__init__(model, lr, weight_decay, warmup_frac, min_lr_frac)
        self.templates = list(templates)

    def setup(self, stage: str) -> None:
        # The decoder's softmax covers the tokens of every text the data can ask it to write
        # (answers, captions, caption templates); decided here, once the data is set up.
        if self.model.decoder is None:
            vocab = list(self.trainer.datamodule.vocab)
            self.model.set_output_vocab(vocab + [t.format("x") for t in self.templates])
        self.hparams["model_config"] = self.model.config.to_dict()  # with its output vocabulary

    def training_step(self, batch, batch_idx):
        loss = self.model.loss(batch["visual"], batch["query_ids"], batch["query_mask"],
                               batch["answer"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["answer"]))
        return loss

    def _embed_candidates(self) -> None:
        self._candidates = list(self.trainer.datamodule.vocab)

    def _answer_ids(self, batch) -> torch.Tensor:
        scores = self.model.candidate_scores(batch["visual"], batch["query_ids"],
                                             batch["query_mask"], self._candidates)
        return scores.argmax(1).to(batch["answer_ids"].device)  # lowest perplexity, (B,)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        found = checkpoint.get("hyper_parameters", {}).get("model_config")
        if found is None:
            raise ValueError("checkpoint has no model_config: not written by vljepa's train.py")
        found = BaselineConfig.from_dict(found)  # raises on a VL-JEPA checkpoint's config
        if found.output_vocab is not None and found.output_vocab != self.model.config.output_vocab:
            raise ValueError("the checkpoint's decoder vocabulary differs from this data's")
