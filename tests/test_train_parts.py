"""The trainer's parts: checkpoints, RNG states, early stopping, losses, the metrics log."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ravine.train import (
    CheckpointError,
    EarlyStopping,
    checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ravine.train.checkpoint import rng_state, set_rng_state
from ravine.train.loggers import JsonlLogger
from ravine.train.metrics import Objective, read_metrics, resolve_loss


def test_checkpoint_round_trip_is_exact_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    payload = {"w": torch.randn(3, 4, dtype=torch.float64), "step": 7, "hist": [{"a": 1.5}]}
    save_checkpoint(payload, path)
    save_checkpoint({**payload, "step": 8}, path)  # replaces the previous one
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], payload["w"]) and loaded["step"] == 8
    assert loaded["hist"] == payload["hist"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_history_is_one_json_text_in_the_checkpoint_and_resumes_exactly(tmp_path):
    """Version 3 stores fit's history as JSON text (one object to pickle and hash, not every
    number of every epoch); NaN, infinities, None, bools, ints and every float come back
    exactly, and a version-2 checkpoint (history as a list) still resumes."""
    from ravine import fit

    odd = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "none": None, "flag": True,
           "count": 3, "third": 1 / 3, "word": "x"}
    seen = []

    class Stop(Exception):
        pass

    def add(epoch, record):  # the record a callback sees is the history's own
        if epoch == 3:
            raise Stop  # before epoch 3's checkpoint: last.pt holds epochs 1 and 2
        record.update(odd)
        seen.append(dict(record))

    def net():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g), torch.randint(0, 2, (64,), generator=g)
    kw = dict(epochs=3, batch_size=16, seed=0, quiet=True)
    whole = fit(net(), (x, y), **kw).history
    with pytest.raises(Stop):
        fit(net(), (x, y), **kw, run_dir=tmp_path / "run", callbacks=[add])
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    assert ckpt["version"] >= 3 and isinstance(ckpt["history"], str)

    def same(a, b):
        return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a)
                                                  and math.isnan(b)))

    def resume():
        return fit(net(), (x, y), **kw, run_dir=tmp_path / "run",
                   resume=True).history

    resumed = resume()
    for before, after in zip(seen, resumed[:2], strict=True):
        assert list(before) == list(after)  # the same keys, in the same order
        assert all(same(before[k], after[k]) for k in before), (before, after)
    assert resumed[2]["train_loss"] == whole[2]["train_loss"]  # trained on as one run
    # a checkpoint of format version 2 kept the history as a list: it resumes the same way
    body = {k: v for k, v in ckpt.items() if k not in ("format", "version")}
    body["history"] = json.loads(ckpt["history"])
    record = {"format": "ravine-checkpoint", "version": 2, **body,
              "sha256": checkpoint.payload_digest(body)}
    torch.save(record, last)
    again = resume()
    assert again[2]["train_loss"] == whole[2]["train_loss"]
    assert same(again[0]["nan"], math.nan) and same(again[1]["count"], 3)


def test_load_refuses_missing_truncated_foreign_and_pickled_code(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(path)
    save_checkpoint({"w": torch.zeros(100)}, path)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(path)
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a ravine checkpoint"):
        load_checkpoint(path)
    torch.save({"format": "ravine-checkpoint", "version": 99}, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    # weights_only loading never runs pickled code: an arbitrary object is refused.
    torch.save({"format": "ravine-checkpoint", "version": 1, "obj": _Custom()}, path)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


class _Custom:
    pass


def test_rng_states_survive_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(10)
    np.random.seed(10)
    torch.manual_seed(10)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_python_rng_state_is_one_tensor_and_the_old_list_form_still_loads():
    random.seed(5)
    state = rng_state()
    assert isinstance(state["python"]["state"], torch.Tensor)  # not 625 ints to pickle
    expected = random.random()
    old_form = {**state, "python": {**state["python"],
                                    "state": state["python"]["state"].tolist()}}
    random.seed(6)
    set_rng_state(old_form)  # checkpoints written before the tensor form
    assert random.random() == expected
    random.seed(6)
    set_rng_state(state)
    assert random.random() == expected


def test_the_checksum_is_the_same_as_feeding_the_pieces_one_by_one():
    """The joined-bytes digest equals the piecewise one, so older checkpoints still verify."""
    import hashlib

    from ravine.train.checkpoint import payload_digest

    payload = {"a": [1, 2.5, "x", None], "t": torch.arange(6.0).reshape(2, 3),
               "e": torch.zeros(0), "n": {"k": (True, torch.tensor(3))}}

    def feed(digest, value):
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key, item in value.items():
                digest.update(f"K{key!r}".encode())
                feed(digest, item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                feed(digest, item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r}".encode())

    piecewise = hashlib.sha256()
    feed(piecewise, payload)
    assert payload_digest(payload) == piecewise.hexdigest()


def reference_early_stopping(values, *, mode, patience, min_delta, start_from_epoch):
    """Straight transcription: best so far, epochs since it, stop when that reaches patience."""
    best, best_epoch, wait = None, None, 0
    for epoch, value in enumerate(values, start=1):
        if epoch <= start_from_epoch:
            continue
        better = math.isfinite(value) and (
            best is None
            or (value < best - min_delta if mode == "min" else value > best + min_delta)
        )
        if better:
            best, best_epoch, wait = value, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return best_epoch, epoch
    return best_epoch, None


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("patience, min_delta, start", [(0, 0.0, 0), (2, 0.0, 0), (3, 0.05, 2)])
def test_early_stopping_matches_its_definition(mode, patience, min_delta, start):
    rng = np.random.default_rng(patience * 10 + start)
    for _ in range(30):
        values = list(rng.normal(size=25).cumsum() * 0.1)
        values[int(rng.integers(25))] = math.nan
        monitor = "val_loss" if mode == "min" else "val_acc"
        stopper = EarlyStopping(monitor, mode="auto", patience=patience, min_delta=min_delta,
                                start_from_epoch=start)
        assert stopper.mode == mode
        stopped_at = None
        for epoch, value in enumerate(values, start=1):
            stopper.update(epoch, {monitor: value})
            if stopper.should_stop:
                stopped_at = epoch
                break
        assert (stopper.best_epoch, stopped_at) == reference_early_stopping(
            values, mode=mode, patience=patience, min_delta=min_delta, start_from_epoch=start)


def test_early_stopping_state_round_trip_and_validation():
    a = EarlyStopping("val_loss", patience=3)
    for epoch, value in enumerate([1.0, 0.5, 0.7], start=1):
        a.update(epoch, {"val_loss": value})
    b = EarlyStopping("val_loss", patience=3)
    b.load_state_dict(a.state_dict())
    for epoch, value in enumerate([0.6, 0.8, 0.9], start=4):
        assert a.update(epoch, {"val_loss": value}) == b.update(epoch, {"val_loss": value})
    assert a.state_dict() == b.state_dict() and b.should_stop
    with pytest.raises(KeyError, match="'val_acc' is not in the epoch record"):
        EarlyStopping("val_acc").update(1, {"val_loss": 1.0})
    with pytest.raises(ValueError, match="patience must be an integer >= 0 or None, got -1"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="min_delta must be a number >= 0, got -0.1"):
        EarlyStopping(min_delta=-0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        EarlyStopping(mode="lowest")


def test_evaluation_sums_equal_the_full_batch_means():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (37,), generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)).double()
    model.train()
    mean, _ = resolve_loss("cross_entropy")
    objective = Objective("cross_entropy", classification="multiclass",
                          metrics={"max_logit": lambda out, t: out.max(1).values.mean()})
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 37, 10)]
    sums = objective.eval_sums(model, batches)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert sums[0].item() == pytest.approx(F.cross_entropy(out, y).item() * 37, rel=1e-12)
    assert sums[1].item() == (out.argmax(1) == y).sum().item()
    assert sums[2].item() == 37
    # a metric's per-batch means, weighted by batch size, average to the full-set mean
    assert sums[3].item() == pytest.approx(out.max(1).values.sum().item(), rel=1e-12)
    record = objective.summarize(sums, "val")
    assert record["val_max_logit"] == pytest.approx(out.max(1).values.mean().item(), rel=1e-12)
    assert mean(out, y).item() == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-12)


def test_mse_sum_is_the_sum_of_per_example_means():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    mean, summed = resolve_loss("mse")
    per_example = ((out - y) ** 2).mean(dim=1)
    assert summed(out, y).item() == pytest.approx(per_example.sum().item(), rel=1e-12)
    assert mean(out, y).item() == pytest.approx(per_example.mean().item(), rel=1e-12)
    column = torch.randn(6, 1, generator=g, dtype=torch.float64)
    assert mean(column, y[:, 0]).item() == pytest.approx(
        ((column[:, 0] - y[:, 0]) ** 2).mean().item(), rel=1e-12)


def test_metrics_log_truncates_to_the_checkpointed_offset(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLogger(path)
    log.write({"kind": "step", "step": 1, "loss": 0.5})
    offset = log.offset()
    log.write({"kind": "step", "step": 2, "loss": math.nan})
    log.close()
    log = JsonlLogger(path, truncate_to=offset)
    log.write({"kind": "epoch", "epoch": 1, "val_loss": math.inf})
    log.close()
    epochs, steps, summary = read_metrics(path)
    assert steps == [{"step": 1, "loss": 0.5}]
    assert epochs == [{"epoch": 1, "val_loss": None}]  # strict JSON: non-finite becomes null
    assert summary == {}
    with pytest.raises(CheckpointError, match="does not belong to this checkpoint"):
        JsonlLogger(path, truncate_to=10_000)
