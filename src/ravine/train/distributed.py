r"""Data-parallel training on ``torch.distributed``: the communicator, process groups, DDP.

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
then stops the other ranks. Starting the processes (``--nproc``) and reporting failures belong to
the command line, :mod:`ravine.commands.launcher`; this module holds only what a training
process itself uses.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ravine._io import exit_now

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
]

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


def exit_worker(status: int) -> None:
    """End a data-parallel worker process with ``status``, skipping the interpreter's teardown.

    Even after :func:`_leave`, gloo objects that outlive the process group are now and then
    destroyed during interpreter shutdown with a thread still joinable, and the process aborts
    ("terminate called without an active exception", SIGABRT) after its work is done and on
    disk. The group is destroyed here, then the process exits at once (:func:`ravine._io.exit_now`).
    """
    _leave()
    exit_now(status)


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
