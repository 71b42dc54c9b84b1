"""A checkpoint with flipped bytes is refused in one line, never resumed from or trusted."""

from __future__ import annotations

import pytest
import torch
from reliability_helpers import write_run_config

from ravine.commands import EXIT_USAGE, main
from ravine.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def flip_a_weight_byte(path):
    """Flip one bit inside the bytes of the checkpoint's first weight tensor."""
    ckpt = load_checkpoint(path)
    weight = next(iter(ckpt["model"].values()))
    raw = weight.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    content = bytearray(path.read_bytes())
    at = content.find(raw)
    assert at >= 0
    content[at + len(raw) // 2] ^= 0x04
    path.write_bytes(bytes(content))


def test_a_flipped_tensor_byte_fails_the_checksum(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.randn(64, 8)}, "step": 3}, path)
    assert load_checkpoint(path)["step"] == 3
    flip_a_weight_byte(path)
    with pytest.raises(CheckpointError, match="do not match the SHA-256 checksum"):
        load_checkpoint(path)


def test_resume_and_diagnose_refuse_a_flipped_checkpoint_in_one_line(tmp_path, capsys):
    config = write_run_config(tmp_path, epochs=1)
    assert main(["train", str(config), "--quiet"]) == 0
    flip_a_weight_byte(tmp_path / "run" / "checkpoints" / "last.pt")
    capsys.readouterr()
    for argv in (["train", str(config), "--quiet", "--resume", "--set", "epochs=2"],
                 ["diagnose", str(tmp_path / "run"), "--examples", "64"]):
        assert main(argv) == EXIT_USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "checksum" in err[0], err
