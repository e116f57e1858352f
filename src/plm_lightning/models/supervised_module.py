"""The labelled reference (``method.name=supervised``): not the method, and not unsupervised.

It trains the same student (backbone + embedding head) with the training split's class labels, by a normalised
softmax classifier (cosine logits over one learnable weight vector per class, divided by a temperature: "Classification
is a Strong Baseline for Deep Metric Learning", Zhai & Wu, BMVC 2019). Two uses:
- the supervised upper bound of a benchmark: what labels on the same training classes would give zero-shot;
- pretraining a backbone on a labelled source task (the glyphs benchmark's analogue of ImageNet pretraining).
Batches are plain random batches (RetrievalDataModule with sampling="random"); evaluation is the same zero-shot
retrieval as for every method.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plm_lightning.data.transforms import flatten_views
from plm_lightning.models.derived import training_views
from plm_lightning.models.embedding_module import EmbeddingModule


class SupervisedModule(EmbeddingModule):
    def __init__(self, config: dict[str, Any], in_channels: int, class_ids: Sequence[int]):
        """class_ids: the training split's label values (RetrievalDataset.class_ids), one classifier row each."""
        super().__init__(config, in_channels, class_ids=[int(c) for c in class_ids])
        ids = torch.tensor(sorted(int(c) for c in class_ids), dtype=torch.long)
        if ids.numel() < 2:
            raise ValueError(f"method.name=supervised needs at least 2 training classes, got {ids.numel()}")
        self.register_buffer("class_ids", ids, persistent=False)
        self.temperature = float(self.cfg.method.supervised.temperature)
        dim = self.cfg.model.embedding_dim
        self.classifier = nn.Parameter(torch.randn(ids.numel(), dim) / dim**0.5)

    def class_index(self, labels: torch.Tensor) -> torch.Tensor:
        """Positions of the label values in the sorted class_ids (the classifier's rows)."""
        index = torch.searchsorted(self.class_ids, labels)
        if bool((index >= self.class_ids.numel()).any()) or not torch.equal(
            self.class_ids[index.clamp_max(self.class_ids.numel() - 1)], labels
        ):
            raise ValueError("a training label is not among the class_ids the supervised module was built with")
        return index

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels = batch[0], batch[1]
        if training_views(self.cfg) > 1:  # every view is a labelled example
            labels = labels.repeat(images.shape[1])
            images = flatten_views(images)
        z = F.normalize(self.student(images).float(), dim=1)
        logits = z @ F.normalize(self.classifier.float(), dim=1).T / self.temperature
        target = self.class_index(labels)
        loss = F.cross_entropy(logits, target)
        self.require_finite(loss=loss)
        accuracy = (logits.argmax(1) == target).float().mean()
        b = images.shape[0]
        self.log_dict({"train/loss": loss, "train/accuracy": accuracy}, on_step=True, on_epoch=True, batch_size=b)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=b, logger=False)
        return {"loss": loss}

    def extra_param_groups(self) -> list[dict[str, Any]]:
        optim = self.cfg.optim
        return [
            {
                "params": [self.classifier],
                "lr": optim.head_lr if optim.head_lr is not None else optim.lr,
                "weight_decay": 0.0,
                "name": "classifier",
            }
        ]
