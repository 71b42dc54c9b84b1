"""AsyncCheckpointWriter: snapshot at submit, atomic background writes, errors that surface."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import OrderedDict

import pytest
import torch

from ravine.train import checkpoint
from ravine.train.checkpoint import (
    AsyncCheckpointWriter,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    snapshot,
)


class GatedSave:
    """Stands in for save_checkpoint on the writer thread and writes only once opened."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def __call__(self, payload, path):
        self.calls += 1
        self.started.set()
        assert self.gate.wait(timeout=30)
        save_checkpoint(payload, path)


def test_the_file_holds_the_values_of_submit_time(tmp_path, monkeypatch):
    gated = GatedSave()
    monkeypatch.setattr(checkpoint, "save_checkpoint", gated)
    net = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    counts = [1, 2]
    path = tmp_path / "last.pt"
    with AsyncCheckpointWriter() as writer:
        writer.submit({"model": net.state_dict(), "counts": counts, "pair": (net.bias, 7)}, path)
        assert gated.started.wait(timeout=30)
        with torch.no_grad():  # the training goes on before the write has happened
            for p in net.parameters():
                p.add_(1.0)
        counts.append(3)
        gated.gate.set()
    loaded = load_checkpoint(path)
    assert loaded["counts"] == [1, 2]
    assert loaded["pair"][1] == 7 and torch.equal(loaded["pair"][0], before["bias"])
    for key, value in before.items():
        assert torch.equal(loaded["model"][key], value)
        assert not torch.equal(loaded["model"][key], net.state_dict()[key])


def test_snapshot_shares_no_memory_and_keeps_structure():
    shared = torch.arange(6.0).reshape(2, 3)
    state = OrderedDict(w=shared, alias=shared, step=torch.tensor(4), lr=0.1)
    state._metadata = {"": {"version": 1}}
    payload = {
        "model": state,
        "history": [{"loss": 1.5}],
        "pair": (shared, "x"),
        "grad": torch.ones(2, requires_grad=True),
    }
    copied = snapshot(payload)
    assert type(copied["model"]) is OrderedDict and copied["model"]._metadata == state._metadata
    assert copied["model"]._metadata is not state._metadata
    assert copied["model"]["w"] is copied["model"]["alias"] is copied["pair"][0]  # still tied
    assert copied["model"]["w"].untyped_storage().data_ptr() != shared.untyped_storage().data_ptr()
    assert torch.equal(copied["model"]["w"], shared)
    assert copied["history"] == payload["history"] and copied["history"] is not payload["history"]
    assert copied["history"][0] is not payload["history"][0]
    assert not copied["grad"].requires_grad
    shared.add_(1)
    assert torch.equal(copied["model"]["w"], torch.arange(6.0).reshape(2, 3))


def test_snapshot_shares_what_the_caller_hands_over_and_copies_the_rest():
    best = {"w": torch.ones(3), "b": torch.zeros(1)}  # a private copy, never changed again
    live = torch.arange(3.0)
    payload = {"model": {"w": live}, "best_state": best, "pair": [best["w"], live]}
    copied = snapshot(payload, owned=(best,))
    assert copied["best_state"] is best and copied["pair"][0] is best["w"]  # shared as they are
    assert copied["model"]["w"] is not live and copied["pair"][1] is copied["model"]["w"]
    assert copied["pair"] is not payload["pair"]
    live.add_(1)
    assert torch.equal(copied["model"]["w"], torch.arange(3.0))
    # a tensor that needs its gradient (or lives off the CPU) is copied all the same, and a
    # dict handed over that holds one is rebuilt around the copy
    mixed = {"t": torch.ones(2), "g": torch.ones(2, requires_grad=True), "log": [1, 2]}
    again = snapshot({"m": mixed}, owned=(mixed,))
    assert again["m"] is not mixed and again["m"]["t"] is mixed["t"]
    assert again["m"]["g"] is not mixed["g"] and not again["m"]["g"].requires_grad
    assert again["m"]["log"] is mixed["log"]  # handed over: shared


def test_held_snapshots_now_and_writes_when_the_block_ends(tmp_path, monkeypatch):
    written = []
    real_write = checkpoint._write

    def write(payload, path, before):
        written.append(path.name)
        real_write(payload, path, before)

    monkeypatch.setattr(checkpoint, "_write", write)
    net = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with AsyncCheckpointWriter() as writer:
        with writer.held():
            writer.submit({"model": net.state_dict()}, tmp_path / "best.pt")
            writer.submit({"model": net.state_dict(), "step": 1}, tmp_path / "last.pt")
            with torch.no_grad():
                net.weight.add_(1.0)  # changed after submit, inside the block
            assert written == [] and not (tmp_path / "best.pt").exists()
        writer.wait()
        assert written == ["best.pt", "last.pt"]  # in submission order
        for name in written:
            assert torch.equal(load_checkpoint(tmp_path / name)["model"]["weight"],
                               before["weight"])
        # an error inside the block drops its submits: nothing is written
        with pytest.raises(RuntimeError, match="boom"), writer.held():
            writer.submit({"step": 2}, tmp_path / "other.pt")
            raise RuntimeError("boom")
        writer.submit({"step": 3}, tmp_path / "last.pt")  # the writer still works
    assert not (tmp_path / "other.pt").exists() and written[-1] == "last.pt"
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_snapshot_copies_cuda_tensors_to_cpu():
    x = torch.randn(5, device="cuda")
    copied = snapshot({"x": x})["x"]
    assert copied.device.type == "cpu" and torch.equal(copied, x.cpu())


def test_at_most_one_write_in_flight(tmp_path, monkeypatch):
    gated = GatedSave()
    monkeypatch.setattr(checkpoint, "save_checkpoint", gated)
    writer = AsyncCheckpointWriter()
    writer.submit({"i": 0}, tmp_path / "a.pt")
    assert gated.started.wait(timeout=30)
    second = threading.Thread(target=writer.submit, args=({"i": 1}, tmp_path / "a.pt"))
    second.start()
    second.join(timeout=0.3)
    assert second.is_alive() and gated.calls == 1  # waits for the first write
    gated.gate.set()
    second.join(timeout=30)
    assert not second.is_alive()
    writer.close()
    assert gated.calls == 2 and load_checkpoint(tmp_path / "a.pt")["i"] == 1


def test_the_old_checkpoint_stays_until_the_complete_new_one_is_renamed_over_it(
    tmp_path, monkeypatch
):
    path = tmp_path / "last.pt"
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        # At the moment of the rename: the target still holds the previous checkpoint and
        # the temporary file already holds the complete new one.
        seen.append(
            (
                load_checkpoint(dst)["i"] if os.path.exists(dst) else None,
                load_checkpoint(src)["i"],
                os.path.dirname(src) == os.path.dirname(dst),
            )
        )
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with AsyncCheckpointWriter() as writer:
        for i in range(3):
            writer.submit({"i": i, "w": torch.full((1000,), float(i))}, path)
    assert seen == [(None, 0, True), (0, 1, True), (1, 2, True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


WRITER_LOOP = textwrap.dedent("""
    import sys, torch
    from ravine.train.checkpoint import AsyncCheckpointWriter
    path = sys.argv[1]
    w = torch.zeros(2_000_000)
    with AsyncCheckpointWriter() as writer:
        i = 0
        while True:
            w.fill_(float(i))
            writer.submit({"i": i, "w": w, "nested": {"copy": [w, i]}}, path)
            w.fill_(-1.0)  # changed while the write is in flight: must never reach the file
            if i == 1:
                print("writing", flush=True)
            i += 1
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    rng = random.Random(1234)
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER_LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline() == "writing\n"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stdout.close()
        loaded = load_checkpoint(path)  # never torn, whatever the moment of the kill
        i = loaded["i"]
        assert i >= 0
        assert torch.equal(loaded["w"], torch.full((2_000_000,), float(i)))
        assert loaded["nested"]["copy"][1] == i
        assert torch.equal(loaded["nested"]["copy"][0], loaded["w"])


TORN_WRITE = textwrap.dedent("""
    import io, sys, time, torch
    from ravine.train.checkpoint import AsyncCheckpointWriter
    real_save = torch.save

    def half_save(obj, f):
        # The second checkpoint stops half-written in its temporary file, and waits there.
        if obj["i"] == 0:
            return real_save(obj, f)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        print("torn", flush=True)
        time.sleep(600)

    torch.save = half_save
    with AsyncCheckpointWriter() as writer:
        for i in range(2):
            writer.submit({"i": i, "w": torch.full((1000,), float(i))}, sys.argv[1])
""")


def test_sigkill_in_the_middle_of_a_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", TORN_WRITE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "torn\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    torn = tmp_path / ".last.pt.tmp"
    assert torn.stat().st_size > 0
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(torn)
    loaded = load_checkpoint(path)
    assert loaded["i"] == 0 and torch.equal(loaded["w"], torch.zeros(1000))
    with AsyncCheckpointWriter() as writer:  # the next run writes over the leftover
        writer.submit({"i": 5}, path)
    assert load_checkpoint(path)["i"] == 5 and not torn.exists()


def test_a_failed_background_write_surfaces_on_the_next_call(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "ckpt.pt"  # its folder cannot be created: a file stands there
    good = tmp_path / "ok.pt"

    writer = AsyncCheckpointWriter()
    writer.submit({"i": 0}, bad)  # returns at once; the error happens on the thread
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # raised once, then cleared
    writer.submit({"i": 1}, good)
    writer.wait()
    assert load_checkpoint(good)["i"] == 1

    writer.submit({"i": 2}, bad)
    with pytest.raises(OSError):
        writer.submit({"i": 3}, bad)  # waits for the path's previous write: its error, not lost
    writer.submit({"i": 4}, good)
    writer.submit({"i": 5}, bad)
    with pytest.raises(OSError):
        writer.close()
    assert load_checkpoint(good)["i"] == 4
    with pytest.raises(RuntimeError, match="after close"):
        writer.submit({"i": 6}, good)

    with pytest.raises(OSError), AsyncCheckpointWriter() as writer:
        writer.submit({"i": 7}, bad)


def test_a_write_to_another_path_queues_without_waiting(tmp_path):
    """best.pt then last.pt: the second submit returns while the first is still writing; both
    land, in order, and the first one's error still surfaces."""
    release = threading.Event()
    order: list[str] = []
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    writer = AsyncCheckpointWriter()
    writer.submit(
        {"i": 0}, tmp_path / "best.pt", before=lambda: (release.wait(10), order.append("best"))
    )
    writer.submit({"i": 1}, tmp_path / "last.pt", before=lambda: order.append("last"))
    assert order == []  # neither has been written: the caller did not wait for best.pt
    release.set()
    writer.wait()
    assert order == ["best", "last"]
    assert load_checkpoint(tmp_path / "best.pt")["i"] == 0
    assert load_checkpoint(tmp_path / "last.pt")["i"] == 1

    release.clear()
    writer.submit({"i": 2}, blocker / "best.pt", before=lambda: release.wait(10))
    writer.submit({"i": 3}, tmp_path / "last.pt")  # the failing write has not finished yet
    release.set()
    with pytest.raises(OSError):
        writer.close()
    assert load_checkpoint(tmp_path / "last.pt")["i"] == 3


def test_synchronous_mode_writes_before_submit_returns(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    threads = []
    real_save = checkpoint.save_checkpoint

    def save(payload, target, **options):
        threads.append(threading.current_thread())
        real_save(payload, target, **options)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    with AsyncCheckpointWriter(synchronous=True) as writer:
        writer.submit({"i": 1}, path)
        assert load_checkpoint(path)["i"] == 1
        with pytest.raises(OSError):
            writer.submit({"i": 2}, path / "below-a-file.pt")
    assert threads == [threading.main_thread()] * 2


def test_loads_and_errors_are_those_of_save_checkpoint(tmp_path):
    with AsyncCheckpointWriter() as writer:
        writer.submit({"w": torch.arange(3)}, tmp_path / "deep" / "er" / "c.pt")
    loaded = load_checkpoint(tmp_path / "deep" / "er" / "c.pt")
    assert loaded["format"] == checkpoint.FORMAT and torch.equal(loaded["w"], torch.arange(3))
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
