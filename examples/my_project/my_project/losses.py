"""How a batch (a dict of tensors) becomes a loss: ravine's ``compute_loss`` contract."""

from __future__ import annotations

import torch.nn.functional as F


def compute_loss(model, batch):
    """The batch's mean loss, plus per-batch metrics that ravine averages over the epoch."""
    logits = model(batch["signal"], batch["meta"])
    loss = F.cross_entropy(logits, batch["label"])
    return loss, {"acc": (logits.argmax(1) == batch["label"]).float().mean()}
