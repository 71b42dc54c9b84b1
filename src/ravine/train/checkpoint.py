"""Atomic checkpoint files and the random-number-generator states they carry.

A checkpoint is one ``torch.save`` file holding a plain dictionary (tensors, numbers, strings,
lists, dicts) so that it loads with ``torch.load(weights_only=True)``: no pickled code is ever
executed when a run is resumed. A *packed* checkpoint (``fit``'s ``last.pt``) holds the same
dictionary with its tensors gathered into one flat tensor per dtype (:func:`pack`): pickling
costs time per tensor object, not per byte, so a checkpoint of many small tensors is several
times cheaper to write packed. :func:`load_checkpoint` returns the unpacked dictionary.

A checkpoint is written atomically: to a temporary file in the same directory, flushed and
``fsync``-ed, then renamed over the old file with :func:`os.replace`, and the directory is
``fsync``-ed so the rename itself survives a crash (all by :func:`ravine._io.write_atomic`). A
process killed at any moment therefore leaves either the previous checkpoint or the new one,
never a torn file.

:class:`AsyncCheckpointWriter` takes the writing off the training loop: it copies the payload
to CPU memory at once, on the calling thread, and writes the copy by the same atomic procedure
on one background thread while training goes on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravine._io import write_atomic

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "payload_digest",
    "AsyncCheckpointWriter",
    "snapshot",
    "pack",
    "unpack",
    "rng_state",
    "set_rng_state",
]

FORMAT = "ravine-checkpoint"
VERSION = 4
# Version 1 (before checksums) is still read; versions 2 to 4 carry "sha256" and must match
# it. Version 3 stores fit's history as JSON text (RunState.state_dict), which versions 1 and 2
# stored as a list of dicts. Version 4 may be packed (a "packed" entry, see pack()).
READABLE = (1, 2, 3, 4)
PACKED = "packed"
_TENSOR = "__ravine_tensor__"  # a packed tree's stand-in for tensor number i: {_TENSOR: i}


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, corrupted, foreign or does not fit the run."""


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str], *,
                    packed: bool = False) -> None:
    """Write ``payload`` (plus the format marker and its SHA-256) to ``path`` atomically, with
    :func:`ravine._io.write_atomic`.

    The temporary file lives next to ``path`` so that the final :func:`os.replace` is a rename
    within one file system, which POSIX makes atomic.

    ``packed``: store the payload :func:`pack`-ed (one flat tensor per dtype). A payload that
    is already ``{"packed": pack(...)}`` is stored as it is either way.
    """
    body = _body(payload)
    if packed and PACKED not in body:
        body = {PACKED: pack(body)}
    record = {"format": FORMAT, "version": VERSION, **body, "sha256": payload_digest(body)}
    # One writer per run directory (rank 0), so a fixed temporary name suffices: a file left
    # behind by a killed process is simply overwritten by the next save.
    write_atomic(path, lambda f: torch.save(record, f), binary=True, single_writer=True)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``).

    Raises:
        CheckpointError: with a one-line message when the file is missing, cannot be read as a
            torch file (truncated or corrupted), or is not a ravine checkpoint of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({type(exc).__name__}: {reason})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ravine checkpoint")
    version = payload.get("version")
    if version not in READABLE:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; "
            f"this ravine reads versions {', '.join(map(str, READABLE))}"
        )
    if version >= 2:
        if payload.pop("sha256", None) != payload_digest(_body(payload)):
            raise CheckpointError(
                f"checkpoint {path} is corrupted: its contents do not match the SHA-256 "
                "checksum written with them (flipped bytes on disk?)"
            )
    if PACKED in payload:
        return {"format": FORMAT, "version": version, **unpack(payload[PACKED])}
    return payload


def _body(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without the file's own markers (format, version, checksum)."""
    return {k: v for k, v in payload.items() if k not in ("format", "version", "sha256")}


def payload_digest(payload: Any) -> str:
    """SHA-256 over a checkpoint payload: its structure, keys, plain values and every tensor's
    dtype, shape and bytes (torch's zip container carries no checksum that ``torch.load``
    verifies, so a flipped bit in a tensor would otherwise load silently)."""
    chunks: list[Any] = []
    _feed(chunks, payload)
    # SHA-256 is a stream: the digest of the pieces fed in order. The small pieces are joined
    # between the large ones (fewer calls; this runs beside training, holding the GIL), and
    # the large ones (tensor bytes) are fed without a copy: hashlib lets go of the GIL there.
    digest, small = hashlib.sha256(), []
    for chunk in chunks:
        if len(chunk) < 4096:
            small.append(chunk)
            continue
        if small:
            digest.update(b"".join(small))
            small = []
        digest.update(chunk)
    digest.update(b"".join(small))
    return digest.hexdigest()


def _feed(chunks: list[Any], value: Any) -> None:
    if isinstance(value, torch.Tensor):
        if value.layout is not torch.strided:  # sparse: digested as its dense values
            chunks.append(f"S{value.layout}".encode())
            value = value.to_dense()
        flat = value.detach().cpu().contiguous().reshape(-1)
        chunks.append(f"T{value.dtype}{tuple(value.shape)}".encode())
        if flat.numel():
            chunks.append(flat.view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        chunks.append(f"D{len(value)}".encode())
        for key, item in value.items():
            chunks.append(f"K{key!r}".encode())
            _feed(chunks, item)
    elif isinstance(value, (list, tuple)):
        chunks.append(f"L{len(value)}".encode())
        for item in value:
            _feed(chunks, item)
    else:
        chunks.append(f"V{type(value).__name__}:{value!r}".encode())


def snapshot(payload: Any, *, owned: tuple[Any, ...] = ()) -> Any:
    """A copy of ``payload`` that shares no memory with it: every tensor copied to CPU.

    Dicts (their type and attributes kept, e.g. a ``state_dict``'s ``_metadata``), lists and
    tuples are rebuilt around the copies; a tensor that appears twice is copied once and stays
    shared in the copy; every other value is deep-copied.

    ``owned``: values (dicts, lists, tensors) inside ``payload`` that the caller hands over and
    never changes again, such as a fresh copy of the best weights; the copy shares them as they
    are (a CPU tensor among them is not copied again).
    """
    memo: dict[int, Any] = {}
    for value in owned:
        _keep(value, memo)
    return _rebuild(payload, memo, _copy_tensor)


def _keep(value: Any, memo: dict[int, Any]) -> None:
    """Mark ``value`` and what it holds as shared, not copied, by :func:`_rebuild`."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu" and not value.requires_grad:
            memo[id(value)] = value
        return
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return
    shared = True
    for item in items:
        _keep(item, memo)
        shared = shared and (type(item) in _ATOMS or id(item) in memo)
    if shared:
        memo[id(value)] = value


_ATOMS = (int, float, str, bytes, bool, type(None), torch.dtype, torch.device)


def _copy_tensor(value: torch.Tensor) -> torch.Tensor:
    return value.detach().to("cpu", copy=True)


def _rebuild(value: Any, memo: dict[int, Any], tensor: Callable[[torch.Tensor], Any],
             special: Callable[[dict[Any, Any]], Any] | None = None) -> Any:
    """``value`` with its dicts (their type and attributes kept), lists and tuples rebuilt,
    ``tensor(t)`` in place of each tensor ``t`` and every other value deep-copied; a value met
    twice is rebuilt once and stays shared. ``special(d)``, if given, may answer for a dict
    ``d`` instead (anything but ``None``)."""
    if type(value) in _ATOMS:  # immutable: nothing to copy
        return value
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, torch.Tensor):
        out: Any = tensor(value)
    elif isinstance(value, dict):
        out = None if special is None else special(value)
        if out is not None:
            return out
        out = copy.copy(value)
        if hasattr(out, "__dict__"):
            out.__dict__ = copy.deepcopy(value.__dict__)
        for key, item in value.items():
            out[key] = _rebuild(item, memo, tensor, special)
    elif isinstance(value, list):
        out = type(value)(_rebuild(item, memo, tensor, special) for item in value)
    elif isinstance(value, tuple):
        items = [_rebuild(item, memo, tensor, special) for item in value]
        out = type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    else:
        out = copy.deepcopy(value)
    memo[id(value)] = out
    return out


def pack(payload: Any) -> dict[str, Any]:
    """``payload`` with its tensors' contents gathered into one flat CPU tensor per device and
    dtype: ``{"tree": ..., "tensors": ..., "data": [flat, ...]}``, sharing no memory with it.

    ``tree`` is ``payload`` rebuilt as :func:`snapshot` would, with each strided tensor replaced
    by ``{"__ravine_tensor__": i}`` (a tensor that appears twice gets one number); ``tensors``
    is a JSON text listing, for tensor ``i``, ``[group, offset, shape]``: its elements are
    ``data[group][offset : offset + prod(shape)]`` in row-major order. Other tensors (sparse,
    quantized, ...) stay in the tree as copies. :func:`unpack` inverts it.

    Pickling (``torch.save``) and hashing cost time per object, and a tensor is a dozen
    objects, so a payload of many small tensors (a network's parameters and optimizer state)
    is several times cheaper to write packed. The gathering itself is one ``torch.cat`` per
    group.
    """
    tensors: list[torch.Tensor] = []

    def stand_in(value: torch.Tensor) -> Any:
        if value.layout is not torch.strided or value.is_quantized:
            return _copy_tensor(value)
        tensors.append(value)
        return {_TENSOR: len(tensors) - 1}

    def refuse(value: dict[Any, Any]) -> None:
        if _TENSOR in value:
            raise ValueError(f"a checkpoint payload may not use the key {_TENSOR!r}")

    tree = _rebuild(payload, {}, stand_in, refuse)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(i)
    layout: list[list[Any]] = [[]] * len(tensors)
    data = []
    for group, members in enumerate(groups.values()):
        offset = 0
        for i in members:
            layout[i] = [group, offset, list(tensors[i].shape)]
            offset += tensors[i].numel()
        flats = [tensors[i].detach().reshape(-1) for i in members]
        # cat copies (even a single tensor), so nothing is shared with the live tensors
        data.append(torch.cat(flats).to("cpu"))
    return {"tree": tree, "tensors": json.dumps(layout, separators=(",", ":")), "data": data}


def unpack(packed: dict[str, Any]) -> Any:
    """The payload that :func:`pack` packed, each tensor in memory of its own."""
    data = packed["data"]
    made: list[torch.Tensor] = []
    for group, offset, shape in json.loads(packed["tensors"]):
        numel = math.prod(shape)
        made.append(data[group][offset : offset + numel].view(shape).clone())

    def tensor_of(value: dict[Any, Any]) -> torch.Tensor | None:
        return made[value[_TENSOR]] if len(value) == 1 and _TENSOR in value else None

    # a tensor left in the tree (sparse, quantized) is already the loaded file's own
    return _rebuild(packed["tree"], {}, lambda tensor: tensor, tensor_of)


class AsyncCheckpointWriter:
    """Write checkpoints on a background thread, from a CPU snapshot taken at submission.

    :meth:`submit` copies the payload (:func:`snapshot`) before it returns, so the caller may
    change its parameters and optimizer state right away; a single background thread then
    writes the copies in submission order with :func:`save_checkpoint` (temporary file,
    ``fsync``, rename), so the file on disk is always the previous complete checkpoint or the
    new complete one. At most one write per path is in flight: a new :meth:`submit` to a path
    first waits for that path's previous write (writes to other paths, e.g. ``best.pt`` right
    before ``last.pt``, queue behind it without blocking the caller).

    An error of a background write is raised once, by the first :meth:`submit` after the write
    has finished (at the latest the next submit to the same path) or by :meth:`wait` or
    :meth:`close`; that submit then writes nothing. Use the writer as a context
    manager, or call :meth:`close`, so the last checkpoint is on disk before the run ends.
    Do not write the same path with :func:`save_checkpoint` while a write is in flight.

    Args:
        synchronous: write in :meth:`submit` itself, on the calling thread, with
            :func:`save_checkpoint` (for debugging and tests).

    Example:
        >>> with AsyncCheckpointWriter() as writer:  # doctest: +SKIP
        ...     for epoch in range(epochs):
        ...         train_one_epoch()
        ...         writer.submit({"model": model.state_dict()}, "run/checkpoints/last.pt")
    """

    def __init__(self, *, synchronous: bool = False) -> None:
        self.synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Path, Future[None]]] = []
        self._held: list[tuple[dict[str, Any], Path, Callable[[], object] | None]] | None = None
        self._closed = False

    def submit(
        self,
        payload: dict[str, Any],
        path: str | os.PathLike[str],
        *,
        before: Callable[[], object] | None = None,
        owned: tuple[Any, ...] = (),
        packed: bool = False,
    ) -> None:
        """Snapshot ``payload`` now and write it to ``path`` in the background.

        ``before`` (optional) runs on the writing thread just before the write, e.g. an
        ``fsync`` of a log the checkpoint refers to, so that it is durable first. ``owned``
        (optional): parts of ``payload`` the caller never changes again, shared instead of
        copied (:func:`snapshot`). ``packed``: write it :func:`pack`-ed (the packing is the
        snapshot; ``owned`` is then copied too, in the same ``torch.cat``).

        Raises:
            BaseException: the error of an earlier background write, if one failed.
            RuntimeError: the writer is closed.
        """
        if self._closed:
            raise RuntimeError("AsyncCheckpointWriter.submit after close()")
        path = Path(path)
        self._settle(lambda target, future: target == path or future.done())
        if self.synchronous:
            if before is not None:
                before()
            save_checkpoint(payload, path, packed=packed)
            return
        copied = {PACKED: pack(_body(payload))} if packed else snapshot(payload, owned=owned)
        if self._held is not None:
            self._held.append((copied, path, before))
            return
        self._start(copied, path, before)

    def _start(self, copied: dict[str, Any], path: Path,
               before: Callable[[], object] | None) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ravine-checkpoint")
        self._pending.append((path, self._executor.submit(_write, copied, path, before)))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Take the snapshots of the submits inside the block at once, but start writing them
        only when it ends (in submission order; an exception in the block drops them).

        Snapshotting is Python work that needs the GIL, as is the background thread's
        pickling: taking every snapshot of an epoch before the first write starts keeps the
        two from taking turns (``best.pt`` and then ``last.pt`` at the end of an epoch).
        """
        if self._held is not None or self.synchronous:
            yield
            return
        self._held = []
        try:
            yield
            held, self._held = self._held, None
            for item in held:
                self._start(*item)
        finally:
            self._held = None

    def _settle(self, which: Callable[[Path, Future[None]], bool]) -> None:
        """Wait for the pending writes ``which`` selects (in submission order) and forget them;
        raise the first error among them."""
        marks = [(item, which(*item)) for item in self._pending]  # once: done() may change
        chosen = [item for item, mark in marks if mark]
        self._pending = [item for item, mark in marks if not mark]
        error: BaseException | None = None
        for _, future in chosen:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, first one wins
                error = error or exc
        if error is not None:
            raise error

    def wait(self) -> None:
        """Block until every submitted checkpoint is on disk; raise a write error, if any."""
        self._settle(lambda _path, _future: True)

    def close(self) -> None:
        """Wait for the last writes (raising an error) and stop the background thread."""
        try:
            self.wait()
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def __enter__(self) -> AsyncCheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write(payload: dict[str, Any], path: Path, before: Callable[[], object] | None) -> None:
    if before is not None:
        before()
    save_checkpoint(payload, path)


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators as weights-only types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        # 625 words as one tensor, not 625 Python ints to pickle and hash at every checkpoint
        "python": {
            "version": version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    py = state["python"]
    words = py["state"]  # a tensor; a list in checkpoints written before 2026-11-30
    words = words.tolist() if isinstance(words, torch.Tensor) else words
    random.setstate((py["version"], tuple(int(w) for w in words), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
