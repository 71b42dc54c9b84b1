"""Data-parallel throughput: ``ravine.fit`` in 1 process against 2 DDP processes on this CPU.

Workload: the MNIST-1D CNN (``ravine.models.cnn1d``, batch norm, 23k parameters), ravine's
Nesterov optimizer (lr 0.1, momentum 0.9), epoch batching, 3600 training examples, no
validation set (training throughput only). Three setups, each on the same global batch m:

* **1 process, 1 thread** and **1 process, 2 threads** (torch's intra-op parallelism);
* **2 processes x 1 thread**: ``fit`` under ``torch.distributed.run`` (DDP over gloo), every
  process taking m/2 examples of each step.

Two measurements per setup, run inside the worker processes so that start-up is not counted:

1. **fit throughput** — one ``fit(..., epochs=E)`` per launch, launches repeated with the
   setups interleaved; examples/s = E·N / ``wall_time`` (everything fit does per step,
   including the small all-reduce of the step's loss statistics).
2. **step anatomy** (DDP only, first round) — a bare forward/backward/step loop, timed per step
   with DDP's defaults, with the wrapper fit uses (no per-step buffer broadcast) and inside
   ``no_sync()`` (no communication), alternating in blocks. The differences are the time lost
   to communication; a DDP communication hook also times each gradient all-reduce from launch
   to completion. The latency of a 2-number all-reduce (what fit adds per step for its loss
   statistics) is timed on its own.

Run: ``python benchmarks/ddp_throughput.py [--epochs 5] [--repeats 5] [--steps 300]``
(about two and a half minutes on two idle cores). Writes ``benchmarks/results/ddp_throughput.md``.
"""

# No `from __future__ import annotations`: DDP checks the comm hook's annotations at run time.
import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from ravine import data, models, optim
from ravine.train import distributed, fit

RESULTS = Path(__file__).parent / "results" / "ddp_throughput.md"
OPTIMIZER = {"name": "nesterov", "lr": 0.1, "momentum": 0.9}
SEED = 0
# (label, processes, threads per process)
SETUPS = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
          ("2 processes x 1 thread (DDP)", 2, 1)]


def build_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return models.cnn1d(40, 10, norm="batch")


def fit_rate(splits: data.Splits, batch: int, epochs: int) -> float:
    """Training examples per second of ``fit`` over ``epochs`` (after a 1-epoch warm-up)."""
    fit(build_model(), splits.train, optimizer=OPTIMIZER, epochs=1, batch_size=batch, seed=SEED,
        quiet=True)
    result = fit(build_model(), splits.train, optimizer=OPTIMIZER, epochs=epochs,
                 batch_size=batch, seed=SEED, quiet=True)
    return epochs * len(splits.train) / result.wall_time


def timed_allreduce(
    durations: list[float], bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce, recording the time from launch to completion."""
    start = time.perf_counter()

    def done(fut: torch.futures.Future) -> torch.Tensor:
        durations.append(time.perf_counter() - start)
        return fut.value()

    return default_hooks.allreduce_hook(None, bucket).then(done)


MODES = ("ddp", "no_buffer_sync", "no_sync")


def step_anatomy(splits: data.Splits, batch: int, steps: int) -> dict[str, float]:
    """Median step time of a bare DDP loop in three modes, and the all-reduce times.

    ``ddp``: DDP's defaults (rank 0's buffers broadcast before every forward, gradients
    all-reduced); ``no_buffer_sync``: the wrapper fit uses (:func:`ravine.train.distributed.wrap`,
    no per-step buffer broadcast); ``no_sync``: inside ``no_sync()``, no communication at all.
    The modes alternate in blocks of steps.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    durations: list[float] = []
    nets, opts = {}, {}
    for mode in ("ddp", "no_buffer_sync"):
        model = build_model()
        opts[mode] = optim.create("nesterov", models.param_groups(model, 0.0), lr=0.1,
                                  momentum=0.9)
        nets[mode] = (torch.nn.parallel.DistributedDataParallel(model) if mode == "ddp"
                      else distributed.wrap(model, torch.device("cpu")))
        nets[mode].register_comm_hook(durations, timed_allreduce)
    nets["no_sync"], opts["no_sync"] = nets["ddp"], opts["ddp"]
    x, y = splits.train.x, splits.train.y
    batches = data.EpochBatches(len(x), batch, seed=SEED, rank=rank, world_size=world)
    stream = itertools.chain.from_iterable(itertools.repeat(batches))  # epoch after epoch
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    allreduce_per_step: list[float] = []
    block = 25
    for i in range(len(MODES) * (steps // block + 1)):
        mode = MODES[i % len(MODES)]
        net, opt = nets[mode], opts[mode]
        dist.barrier()
        for _ in range(block):
            idx = next(stream)
            durations.clear()
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with net.no_sync() if mode == "no_sync" else contextlib.nullcontext():
                F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            elapsed = time.perf_counter() - start
            if i >= len(MODES):  # the first block of each mode warms up
                times[mode].append(elapsed)
                if mode == "ddp":
                    allreduce_per_step.append(sum(durations))
    stats = torch.zeros(2, dtype=torch.float64)
    small = []
    for i in range(1200):
        start = time.perf_counter()
        dist.all_reduce(stats)
        if i >= 200:
            small.append(time.perf_counter() - start)
    result = {f"step_{mode}": statistics.median(times[mode]) for mode in MODES}
    result["allreduce"] = statistics.median(allreduce_per_step)
    result["small_allreduce"] = statistics.median(small)
    return result


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    splits = data.load("mnist1d", seed=SEED)
    with distributed.process_group("cpu") as env:
        result: dict = {"rate": fit_rate(splits, args.batch, args.epochs)}
        if args.anatomy:
            result.update(step_anatomy(splits, args.batch, args.steps))
        if env is None or env.rank == 0:
            Path(args.out).write_text(json.dumps(result))


def launch(processes: int, threads: int, batch: int, args: argparse.Namespace, *,
           anatomy: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        worker_args = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads),
                       "--batch", str(batch), "--epochs", str(args.epochs),
                       "--steps", str(args.steps), "--out", str(out)]
        if anatomy:
            worker_args.append("--anatomy")
        prefix = [sys.executable]
        if processes > 1:
            prefix += ["-m", "torch.distributed.run", "--standalone",
                       f"--nproc-per-node={processes}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(prefix + worker_args, check=True, env=env)
        return json.loads(out.read_text())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(results: dict[tuple[int, int], dict], args: argparse.Namespace,
           load_before: float) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Data-parallel throughput (DDP, gloo, CPU)",
        "",
        f"MNIST-1D CNN (batch norm, 23k parameters), Nesterov, {args.epochs} epochs of 3600 "
        f"examples per timed run (after a 1-epoch warm-up in the same process), best and "
        f"median of {args.repeats} runs, the setups interleaved. torch {torch.__version__}, "
        f"{cores} cores ({cpu_name()}), load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after.",
        "",
        "## fit() training throughput",
        "",
        "| global batch m | setup | examples/s (best) | examples/s (median) "
        "| vs 1 process, 1 thread | vs 1 process, 2 threads |",
        "|---|---|---|---|---|---|",
    ]
    for batch in args.batches:
        base1 = max(results[(batch, 0)]["rates"])
        base2 = max(results[(batch, 1)]["rates"])
        for i, (label, _, _) in enumerate(SETUPS):
            rates = results[(batch, i)]["rates"]
            best = max(rates)
            lines.append(f"| {batch} | {label} | {best:,.0f} | {statistics.median(rates):,.0f} "
                         f"| {best / base1:.2f}x | {best / base2:.2f}x |")
    for batch in args.batches:
        best = {label: max(results[(batch, i)]["rates"]) for i, (label, _, _) in
                enumerate(SETUPS)}
        ddp = best[SETUPS[-1][0]]
        lines += ["", f"m = {batch}: two DDP processes reach {ddp / best[SETUPS[0][0]]:.2f}x the "
                      f"examples/s of one 1-thread process and {ddp / best[SETUPS[1][0]]:.2f}x "
                      f"those of one 2-thread process; fastest here: {max(best, key=best.get)}."]
    lines += [
        "",
        "## Where a DDP step's time goes (2 processes x 1 thread, bare training loop)",
        "",
        "| global batch m | DDP defaults (ms/step) | as fit runs DDP (ms/step) "
        "| no communication, no_sync (ms/step) | communication share as fit runs DDP "
        "| gradient all-reduce, launch to completion (ms) | 2-number all-reduce (us) |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in args.batches:
        r = results[(batch, len(SETUPS) - 1)]
        share = (r["step_no_buffer_sync"] - r["step_no_sync"]) / r["step_no_buffer_sync"]
        lines.append(
            f"| {batch} | {1e3 * r['step_ddp']:.2f} | {1e3 * r['step_no_buffer_sync']:.2f} "
            f"| {1e3 * r['step_no_sync']:.2f} | {100 * share:.0f}% "
            f"| {1e3 * r['allreduce']:.2f} | {1e6 * r['small_allreduce']:.0f} |")
    lines += ["", NOTES.strip()]
    return "\n".join(lines) + "\n"


NOTES = """
Notes:

* Step times are medians over the steps of a bare loop (forward, backward, optimizer step) on each
  rank's m/2 examples. "DDP defaults" broadcasts rank 0's buffers (batch-norm statistics) before
  every forward pass; fit turns that off and copies rank 0's statistics once per epoch instead,
  which gives the same results (see `ravine.train.distributed`). "no_sync" skips all
  communication. The communication share is (as fit - no_sync) / as fit: the time a step loses
  to communicating, including the wait for the slower rank, since synchronous data parallelism
  makes every step as slow as the slower of the two.
* The gradient (23k parameters, 94 KB) fits in one DDP bucket, so its all-reduce starts when the
  backward pass ends and cannot overlap with it; "launch to completion" includes waiting for the
  other rank to get there.
* fit adds one 2-number all-reduce per step (the global loss sum and correct count), which runs
  while the backward pass computes the gradient; its latency on its own is the last column. The
  throughput table includes it.
* What a 2-core machine can show: that the DDP path is correct, and what data parallelism costs
  per step for this model when the compute per rank (m/2 examples of a 23k-parameter CNN, a few
  milliseconds) is small: the fixed latency of each collective over loopback TCP (gloo) against
  that compute, how the balance improves with a larger m, and whether two 1-thread processes beat
  one 2-thread process on the same cores.
* What it cannot show: scaling beyond 2 workers; communication over a real network (loopback has
  no network latency or bandwidth limit; gloo's all-reduce across machines costs far more); NCCL
  on GPUs; or clean 2x scaling at all: both processes share the same two cores (and caches and
  memory bandwidth) with gloo's communication threads, the launcher, the operating system and
  whatever else runs, so "2 processes" never means 2 otherwise idle cores. The numbers here are
  not a prediction for a cluster.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300,
                        help="steps of each kind in the step anatomy")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--anatomy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    load_before = os.getloadavg()[0]
    results: dict[tuple[int, int], dict] = {}
    # Rounds interleave the setups, so a passing load spike hits all of them alike.
    for round_ in range(args.repeats):
        for batch in args.batches:
            for i, (label, processes, threads) in enumerate(SETUPS):
                anatomy = round_ == 0 and processes > 1
                result = launch(processes, threads, batch, args, anatomy=anatomy)
                entry = results.setdefault((batch, i), {"rates": []})
                entry["rates"].append(result.pop("rate"))
                entry.update(result)
                print(f"round {round_ + 1}  m={batch:4d}  {label:30s} "
                      f"{entry['rates'][-1]:9,.0f} examples/s", flush=True)
    text = report(results, args, load_before)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
