"""Inputs that used to end in a torch traceback now fail with one line naming the problem."""

from __future__ import annotations

import pytest
import torch

from ravine import fit, models

X = torch.randn(40, 5)
Y = (X[:, 0] > 0).long()


def one_line(match: str, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fit(kwargs.pop("model", models.mlp(5, [4], 2)), kwargs.pop("train", (X, Y)), quiet=True,
            **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only torch")
def test_a_cuda_device_on_a_cpu_only_torch():
    one_line("device 'cuda': this torch .* sees no CUDA GPU; use device: cpu", device="cuda")


def test_a_device_that_cannot_train():
    one_line("cannot train on device 'meta': use cpu, cuda", device="meta")


def test_mse_on_class_labels():
    one_line("loss 'mse' needs floating-point targets, but train's targets are integer class "
             "labels", loss="mse")


def test_a_loss_that_returns_a_vector():
    def per_example(output, target):
        return torch.nn.functional.cross_entropy(output, target, reduction="none")

    one_line(r"loss must return the batch's mean loss as a scalar tensor, got \(16,\)",
             loss=per_example, batch_size=16)


def test_a_frozen_model():
    model = models.mlp(5, [4], 2)
    for p in model.parameters():
        p.requires_grad_(False)
    one_line("the model has no trainable parameters", model=model)
