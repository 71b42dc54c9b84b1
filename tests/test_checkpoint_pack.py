"""Packed checkpoints: every tensor in one flat tensor per dtype, unpacked exactly on load."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from ravine.train import checkpoint
from ravine.train.checkpoint import (
    PACKED,
    AsyncCheckpointWriter,
    CheckpointError,
    load_checkpoint,
    pack,
    save_checkpoint,
    unpack,
)


def awkward_payload():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(3, 4, generator=g)
    weights = OrderedDict(w=torch.randn(2, 5, generator=g), b=shared)
    weights._metadata = OrderedDict({"": {"version": 1}})  # a state_dict's extra attribute
    return {
        "model": weights,
        "optimizer": {"state": {0: {"momentum_buffer": torch.randn(2, 5, generator=g),
                                    "step": torch.tensor(7.0)}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "again": shared,  # the same tensor twice: one copy, still shared after loading
        "transposed": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "half": torch.randn(5, generator=g).to(torch.bfloat16),
        "flags": torch.tensor([True, False, True]),
        "ints": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "bytes": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "complex": torch.randn(2, generator=g, dtype=torch.complex64),
        "sparse": torch.eye(3).to_sparse(),  # not strided: kept as a tensor of its own
        "pair": (torch.ones(2), (1, "x", None, math.nan, -math.inf)),
        "history": '[{"epoch": 1, "loss": NaN}]',
        "empty_list": [],
    }


def assert_same(a, b, where="payload"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape, a.layout) == (b.dtype, b.shape, b.layout), where
        if a.layout is torch.strided:
            assert torch.equal(a, b), where
        else:
            assert torch.equal(a.to_dense(), b.to_dense()), where
        return
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def test_pack_then_unpack_gives_back_every_value_type_and_sharing():
    payload = awkward_payload()
    packed = pack(payload)
    out = unpack(packed)
    assert_same(payload, out)
    assert out["again"] is out["model"]["b"]  # shared as it was
    assert out["model"]._metadata == payload["model"]._metadata
    # one flat CPU tensor per dtype (the sparse tensor stays in the tree)
    assert sorted(str(d.dtype) for d in packed["data"]) == [
        "torch.bfloat16", "torch.bool", "torch.complex64", "torch.float32", "torch.float64",
        "torch.int64", "torch.uint8"]
    assert all(d.dim() == 1 and d.device.type == "cpu" for d in packed["data"])


def test_packing_copies_so_later_changes_do_not_leak_in():
    payload = awkward_payload()
    packed = pack(payload)
    payload["model"]["w"].add_(1.0)
    payload["optimizer"]["state"][0]["momentum_buffer"].zero_()
    payload["transposed"].mul_(0)
    out = unpack(packed)
    assert not torch.equal(out["model"]["w"], payload["model"]["w"])
    assert torch.equal(out["transposed"], torch.arange(12.0).reshape(3, 4).t())
    assert out["optimizer"]["state"][0]["momentum_buffer"].abs().sum() > 0
    # unpacked tensors have memory of their own, not views of the flat buffer
    a, b = out["model"]["w"], out["optimizer"]["state"][0]["momentum_buffer"]
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    assert a.untyped_storage().nbytes() == a.numel() * a.element_size()


@pytest.mark.parametrize("synchronous", [False, True])
def test_a_packed_checkpoint_loads_as_the_payload_and_is_verified(tmp_path, synchronous):
    path = tmp_path / "last.pt"
    payload = awkward_payload()
    with AsyncCheckpointWriter(synchronous=synchronous) as writer:
        writer.submit(payload, path, packed=True)
    raw = torch.load(path, weights_only=True)  # still a plain weights-only torch file
    assert raw["version"] == checkpoint.VERSION and set(raw) == {"format", "version", PACKED,
                                                                 "sha256"}
    loaded = load_checkpoint(path)
    assert loaded.pop("format") == checkpoint.FORMAT
    assert loaded.pop("version") == checkpoint.VERSION
    assert_same(payload, loaded)
    # a flipped bit in the flat data is caught by the checksum
    raw[PACKED]["data"][0].view(torch.uint8)[5] ^= 1
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_an_unpacked_checkpoint_of_the_same_payload_loads_the_same(tmp_path):
    payload = awkward_payload()
    save_checkpoint(payload, tmp_path / "plain.pt")
    save_checkpoint(payload, tmp_path / "packed.pt", packed=True)
    assert PACKED not in torch.load(tmp_path / "plain.pt", weights_only=True)
    assert_same(load_checkpoint(tmp_path / "plain.pt"), load_checkpoint(tmp_path / "packed.pt"))


def test_the_reserved_key_is_refused():
    with pytest.raises(ValueError, match="__ravine_tensor__"):
        pack({"x": {"__ravine_tensor__": 0}})


def test_fit_writes_last_pt_packed_and_best_pt_as_a_plain_state_dict(tmp_path):
    from ravine import fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g), torch.randint(0, 2, (64,), generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8),
                              torch.nn.Linear(8, 2))
    result = fit(net, (x, y), (x, y), optimizer="adam", lr=0.01, epochs=2, batch_size=16,
                 seed=0, quiet=True, run_dir=tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    raw = torch.load(folder / "last.pt", weights_only=True)
    # float32, int64 (batch norm's count and the generators' states) and uint8 (torch's)
    assert PACKED in raw and len(raw[PACKED]["data"]) == 3
    last = load_checkpoint(folder / "last.pt")
    for key, value in net.state_dict().items():
        assert torch.equal(last["model"][key], value), key
    best = torch.load(folder / "best.pt", weights_only=True)
    assert set(best["model"]) == set(net.state_dict())
    assert result.best_epoch in (1, 2)
