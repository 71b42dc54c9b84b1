r"""Data-parallel training on ``torch.distributed``: launching, process groups, failure reports.

ravine does not ship its own scheme: processes are started by torch's launcher
(``torch.distributed.run``, alias ``torchrun``), gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on CUDA).

One machine, N processes::

    ravine train CONFIG.yaml --nproc N

Several machines (run on every machine; ``run_dir`` and the data on a shared file system)::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        --rdzv-id RUN_ID -m ravine train CONFIG.yaml

How a run is split
------------------
``batch_size`` stays the *global* minibatch m. Every rank builds the same shuffled epoch order
(same seed) and takes its contiguous m / N slice of each global batch
(:class:`ravine.data.EpochBatches` with ``rank``/``world_size``; m must be divisible by N). Rank r
minimises the weighted loss

.. math:: \ell_r = \frac{b_r N}{b} \cdot \frac{1}{b_r}\sum_{i \in \text{shard}_r} L_i ,

where :math:`b_r` is its share and :math:`b = \sum_r b_r` the global batch of the step. DDP
averages the ranks' gradients, :math:`\frac1N \sum_r \nabla\ell_r = \frac1b \sum_i \nabla L_i`:
exactly the single-process gradient, including an uneven last batch of an epoch (for full
batches the weight is exactly 1). Each step's loss sum and correct count are all-reduced while
the gradient is computed, so every rank logs the same numbers and agrees on a non-finite loss
(which then stops or skips the step before the optimizer updates). Optimizer state is
replicated: every rank applies the same update to the same averaged gradient, so ravine's
interim-point methods (Nesterov, RMSProp-Nesterov) stay exact and every rank can move to the
true parameters for evaluation. Gradient clipping happens inside ``optimizer.step``, after DDP's
all-reduce, so it uses the global norm of the averaged gradient. Validation and test sets are
split across ranks and their sums all-reduced. Dropout draws different masks on every rank
(global generators seeded from ``(seed, rank)``, :func:`rank_seed`).

Batch norm
----------
By default batch norm normalizes with each rank's own m / N examples, so results differ from one
process with the same m. The running statistics used for evaluation are rank 0's (an average
over its own shares), copied to the other ranks after every epoch (:func:`sync_buffers`).
DDP's default instead broadcasts them before every forward pass; in training mode batch norm
does not read them, so the result is the same, but that costs a collective per step (measured:
a third of a DDP step of the MNIST-1D CNN at m = 100 on two CPU cores). A model whose training
forward pass reads buffers that change during training would see each rank's own values.
``sync_batchnorm: true`` converts the layers to :class:`~torch.nn.SyncBatchNorm`, which
normalizes with the statistics of the global batch; torch implements it only on GPUs, so ravine
rejects it on CPU.

Files and resume
----------------
Only rank 0 writes ``metrics.jsonl``, checkpoints, plots and the report; checkpoints are
written atomically. A checkpoint holds every rank's random-generator states, and every rank
reads it on ``--resume``, which therefore needs the same number of processes.

Failures
--------
A rank that fails reports ``ravine train: rank R: <message>`` and exits nonzero; torch's launcher
then stops the other ranks. Under :func:`launch` (``--nproc``) workers record their message in a
folder instead of printing it, and the launcher prints the message of the rank that failed
first, once, rather than the follow-up errors of the ranks that lost their peer.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Communicator",
    "is_worker",
    "worker_env",
    "backend_for",
    "process_group",
    "join",
    "rank_seed",
    "wrap",
    "sync_buffers",
    "check_sync_batchnorm",
    "convert_sync_batchnorm",
    "launch",
    "report_failure",
    "is_peer_failure",
    "ERRORS_ENV",
]

# Set by launch(): the folder where each worker records why it failed, for the launcher to read.
ERRORS_ENV = "RAVINE_RANK_ERRORS"
# Signals torch's elastic agent takes over in the launching process (restored afterwards).
_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


@dataclass(frozen=True)
class Communicator:
    """This process's place in a data-parallel job, and the collectives the loop uses.

    A single process is rank 0 of 1 and every collective is a no-op there, so the training loop
    has no branches on the number of processes. In a job started by torchrun the values come
    from ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; only rank 0 writes files.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place (and return it)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def all_reduce_async(self, tensor: torch.Tensor) -> Any:
        """Start summing ``tensor`` over ranks; ``.wait()`` on the result before reading it."""
        if self.world_size > 1:
            return dist.all_reduce(tensor, async_op=True)
        return _Done()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), indexed by rank."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (e.g. batch-norm running statistics) to every rank."""
        if self.world_size > 1:
            sync_buffers(model)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DDP on ``device`` (:func:`wrap`); the model itself in one process."""
        return wrap(model, device) if self.world_size > 1 else model

    def no_sync(self, net: nn.Module) -> Any:
        """DDP's ``no_sync()`` (skip the gradient all-reduce), or nothing in one process."""
        return net.no_sync() if self.world_size > 1 else contextlib.nullcontext()

    def seed(self, seed: int) -> int:
        """This rank's seed for the global generators (:func:`rank_seed`)."""
        return rank_seed(seed, self.rank)


class _Done:
    def wait(self) -> None:
        return None


def _env_int(name: str, minimum: int) -> int:
    text = os.environ[name]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name} must be >= {minimum}, got {value}")
    return value


def is_worker() -> bool:
    """Whether torchrun started this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` are set)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def worker_env() -> Communicator | None:
    """The data-parallel environment torchrun set up, or ``None`` in an ordinary process.

    Raises:
        ValueError: the variables are present but malformed (e.g. ``RANK`` >= ``WORLD_SIZE``).
    """
    if not is_worker():
        return None
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if rank >= world_size:
        raise ValueError(f"environment variable RANK must be < WORLD_SIZE={world_size}, got {rank}")
    return Communicator(rank, world_size, local_rank)


def backend_for(device: str | torch.device) -> str:
    """``"nccl"`` for CUDA devices, ``"gloo"`` otherwise (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _init(env: Communicator, device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend_for(device), rank=env.rank, world_size=env.world_size)


@contextlib.contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[Communicator | None]:
    """Join torchrun's process group for the duration of the block (and leave it afterwards).

    Outside torchrun, or when the default group already exists, it does nothing. On CUDA each
    process uses the GPU numbered by its ``LOCAL_RANK``.

    Yields:
        The :class:`Communicator`, or ``None`` outside torchrun.
    """
    env = worker_env()
    if env is None or dist.is_initialized():
        yield env
        return
    _init(env, device)
    try:
        yield env
    finally:
        _leave()


def join(device: str | torch.device = "cpu") -> Communicator:
    """This process's :class:`Communicator`, joining torchrun's group if not done yet.

    :func:`ravine.fit` calls this, so a script started by torchrun needs no setup of its own;
    a group created here is left at interpreter exit. Outside torchrun: rank 0 of 1.
    """
    env = worker_env()
    if not dist.is_initialized():
        if env is None:
            return Communicator()
        _init(env, device)
        atexit.register(_leave)
    local = env.local_rank if env is not None else 0
    return Communicator(dist.get_rank(), dist.get_world_size(), local)


def _leave() -> None:
    # Objects of the group's last collectives can survive in reference cycles; freed only by the
    # interpreter's shutdown, they abort the process now and then ("terminate called without an
    # active exception": 4 of 32 runs with gloo here). Collect them while everything is alive.
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s global generators (dropout): ``seed`` itself on rank 0.

    Other ranks get a seed mixed from ``(seed, rank)`` (:class:`numpy.random.SeedSequence`), so
    their dropout masks are independent of rank 0's rather than copies of them.
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


def check_sync_batchnorm(device: torch.device) -> None:
    """Raise ``ValueError`` unless ``device`` is a CUDA device (torch's SyncBatchNorm needs one)."""
    if device.type != "cuda":
        raise ValueError(
            f"sync_batchnorm needs CUDA devices (torch's SyncBatchNorm does not run on "
            f"{device.type}), got device={str(device)!r}; leave sync_batchnorm off and batch "
            "norm uses each process's own batch statistics"
        )


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace the batch-norm layers by :class:`~torch.nn.SyncBatchNorm` (same parameters).

    Raises:
        ValueError: on a device other than CUDA (:func:`check_sync_batchnorm`).
    """
    check_sync_batchnorm(device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` on ``device``.

    The wrapper's backward pass averages gradients over ranks; its constructor copies rank 0's
    parameters to every rank. Buffers are not broadcast before every forward pass (DDP's
    default): call :func:`sync_buffers` before the buffers are used (see the module docstring).
    """
    device_ids = None
    if device.type == "cuda":
        device_ids = [torch.cuda.current_device() if device.index is None else device.index]
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers (now deprecated) to forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(ddp).parameters:
        return ddp(model, device_ids=device_ids, forward_sync_buffers=False)
    return ddp(model, device_ids=device_ids, broadcast_buffers=False)


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (e.g. batch-norm running statistics) to every rank."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says that another rank went away rather than what went wrong there.

    torch raises :class:`torch.distributed.DistError` subclasses for most communication
    failures, but gloo reports a peer that died as a plain ``RuntimeError`` naming the closed
    connection.
    """
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "Connection closed by peer" in text or "Connection reset by peer" in text
    )


def report_failure(
    command: str, message: str, exit_code: int, exc: BaseException | None = None
) -> None:
    """Tell the user why this process stops.

    Prints ``ravine COMMAND: MESSAGE`` on standard error; in a data-parallel worker the line
    names the rank (``ravine COMMAND: rank R: MESSAGE``), and a worker started by :func:`launch`
    records it in the launcher's folder instead, so the launcher can print the root cause once.

    Args:
        command: the subcommand, e.g. ``"train"``.
        message: one line.
        exit_code: the status the process exits with.
        exc: the exception, to tell a lost peer (a consequence) from a root cause.
    """
    try:
        env = worker_env()
    except ValueError:
        env = None
    if env is None:
        print(f"ravine {command}: {message}", file=sys.stderr)
        return
    line = f"ravine {command}: rank {env.rank}: {message}"
    folder = os.environ.get(ERRORS_ENV)
    if not folder:
        print(line, file=sys.stderr)
        return
    record = {
        "rank": env.rank,
        "message": line,
        "text": message,
        "exit_code": exit_code,
        "peer_failure": exc is not None and is_peer_failure(exc),
        "time": time.time(),
    }
    # Written before the process exits, hence before its peers can notice that it is gone.
    path = Path(folder) / f"rank-{env.rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, path)


def _read_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in folder.glob("rank-*.json"):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return records


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _root_cause(
    records: list[dict[str, Any]], failures: dict[int, Any], command: str, nproc: int
) -> tuple[str, int]:
    """The line to print and the exit status, given the workers' records and torch's failures.

    Order of preference: the earliest recorded error that is not a lost peer; a rank that died
    without a record (killed, or crashed in native code) other than by the SIGTERM with which
    torch stops the survivors; the earliest lost-peer record; whatever torch reports.
    """
    causes = sorted((r for r in records if not r["peer_failure"]),
                    key=lambda r: (r["time"], r["rank"]))
    if causes:
        # An error every rank raised together (a non-finite loss) is reported for rank 0.
        first = min((r for r in causes if r["text"] == causes[0]["text"]),
                    key=lambda r: r["rank"])
        return first["message"], int(first["exit_code"])
    recorded = {r["rank"] for r in records}
    silent = sorted(
        (f.timestamp, rank, f.exitcode) for rank, f in failures.items()
        if rank not in recorded and f.exitcode != -signal.SIGTERM
    )
    if silent:
        _, rank, exitcode = silent[0]
        how = (f"was killed by {_signal_name(exitcode)}" if exitcode < 0
               else f"exited with status {exitcode}")
        return f"ravine {command}: rank {rank} {how}; stopped all {nproc} processes", 1
    lost = sorted(records, key=lambda r: (r["time"], r["rank"]))
    if lost:
        return lost[0]["message"], int(lost[0]["exit_code"])
    rank, failure = min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    return (f"ravine {command}: rank {rank} failed (exit status {failure.exitcode}); "
            f"stopped all {nproc} processes"), 1


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _agent_scope(debug: bool) -> Iterator[None]:
    """Restore the signal handlers torch's agent installs; silence its log unless ``debug``."""
    handlers = {name: signal.getsignal(getattr(signal, name))
                for name in _AGENT_SIGNALS if hasattr(signal, name)}
    if not debug:
        # The agent logs every worker's exit and its own shutdown; the launcher reports the
        # one failure that matters itself.
        logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        if not debug:
            logging.disable(logging.NOTSET)
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launch(
    args: Sequence[str], nproc: int, *, command: str = "train", debug: bool = False
) -> int:
    """Run ``python -m ravine COMMAND ARGS`` in ``nproc`` processes with ``torch.distributed.run``.

    The same as ``torchrun --standalone --nproc-per-node NPROC -m ravine COMMAND ARGS``, except
    that a failure is reported as one line: the message of the rank that failed first (see the
    module docstring). Without ``OMP_NUM_THREADS`` in the environment each worker gets
    ``max(1, cores // nproc)`` threads (torchrun would give 1).

    Args:
        args: the arguments after the subcommand (without ``--nproc``).
        nproc: number of processes (>= 1).
        command: the ravine subcommand the workers run.
        debug: keep torch's launcher log and pass failures through unchanged.

    Returns:
        0 when every rank succeeded, else the exit status of the failed rank (1 when it was
        killed or crashed); 128 + the signal number when interrupted (130 for Ctrl-C).
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launcher_args = torchrun.get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "ravine", command, *args]
    )
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, _cores() // nproc)))
    with (tempfile.TemporaryDirectory(prefix="ravine-ranks-") as folder,
          _environment(**{ERRORS_ENV: folder, "OMP_NUM_THREADS": threads}),
          _agent_scope(debug)):
        try:
            torchrun.run(launcher_args)
        except ChildFailedError as exc:
            if debug:
                raise
            line, status = _root_cause(_read_records(Path(folder)), exc.failures, command,
                                       nproc)
            print(line, file=sys.stderr)
            return status
        except SignalException as exc:
            print(f"ravine {command}: interrupted ({exc.sigval.name}); stopped all {nproc} "
                  "processes", file=sys.stderr)
            return 128 + int(exc.sigval)
    return 0
