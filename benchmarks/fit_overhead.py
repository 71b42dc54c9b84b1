"""The cost of ``ravine.fit`` over a minimal hand-written loop, and against PyTorch Lightning.

All three train the same MNIST-1D CNN (batch norm) with ravine's Nesterov optimizer (lr 0.1,
momentum 0.9), the linear-decay schedule over the run, the same minibatches (``EpochBatches``,
batch 100) and the same evaluation (validation loss and accuracy after every epoch, at the true
parameters; test metrics once at the end):

* **hand loop** — ``for idx in batches: zero_grad; loss.backward(); opt.step(); sched.step()``
  plus the evaluation, nothing else;
* **fit** — ``ravine.fit(..., run_dir=None, quiet=True)``: the same work plus fit's bookkeeping
  (closure, non-finite check, per-step loss / grad-norm / lr accounting, early-stopping tracking);
* **fit + run dir** — additionally writes metrics.jsonl, a checkpoint every epoch and the report
  with its plots (informative: the hand loop writes nothing);
* **Lightning** — a ``LightningModule`` with the same model, optimizer and schedule (stepped per
  step), fed the same index batches, validating every epoch; logger, checkpointing, progress bar
  and model summary off. Lightning is a benchmark-only dependency, never imported by ravine.

The same three on a **map-style Dataset** (``PerItem``: one example per ``__getitem__``, collated
by torch's DataLoader, as a user's own Dataset would be):

* **hand DataLoader loop** — ``for xb, yb in DataLoader(ds, batch_sampler=<fit's index
  batches>)`` with the same step and an evaluation through ``DataLoader(val, batch_size=100)``;
* **fit (Dataset)** — ``ravine.fit(model, ds, val_ds, ...)``;
* **Lightning (Dataset)** — the LightningModule above fed ``DataLoader(ds, batch_sampler=...)``.

The methods run interleaved, ``--repeats`` times each, each round starting one method later;
the table reports the median and the minimum wall time. The machine may be shared with other
work, so the minimum is the better estimate of the intrinsic cost and the spread is reported with
it.

Run: ``python benchmarks/fit_overhead.py [--epochs 10] [--repeats 9] [--threads 1]`` (about
five minutes on one idle core). Other views of the same runs, each written to ``--out``:

* ``--interleaved ROUNDS`` — ``fit`` and the hand loop taking turns epoch by epoch inside each
  run (the hand loop as fit's callback), so both see the same phase of a shared machine;
* ``--decompose PAIRS`` — the run directory's cost split into the report and the rest.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ravine import data, models, optim, schedules
from ravine.train import fit

RESULTS = Path(__file__).parent / "results" / "fit_overhead.md"
LR, MOMENTUM, BATCH, SEED = 0.1, 0.9, 100, 0


def build_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return models.cnn1d(40, 10, norm="batch")


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # No gradient-norm tracking: fit pays for the norm it logs, the baselines do not.
    return optim.create("nesterov", models.param_groups(model, 0.0), lr=LR, momentum=MOMENTUM)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    out = model(x)
    model.train()
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).double().mean().item()


def hand_loop(splits, epochs: int) -> torch.nn.Module:
    return HandLoopEpochs(splits, epochs).run(epochs)


class PerItem(torch.utils.data.Dataset):
    """A map-style Dataset returning one ``(x, y)`` example per ``__getitem__``."""

    def __init__(self, split) -> None:
        self.x, self.y = split.x, split.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def epoch_index_lists(n: int) -> data.arrays._IndexLists:
    """fit's minibatches as a DataLoader ``batch_sampler`` (one epoch per pass)."""
    return data.arrays._IndexLists(data.EpochBatches(n, BATCH, seed=SEED))


class EpochLists:
    """fit's index batches of epoch ``epoch`` as lists, stateless across ``iter()`` calls
    (Lightning may start iterators it does not finish); Lightning's module sets ``epoch``."""

    def __init__(self, n: int) -> None:
        self.sampler, self.epoch = data.EpochBatches(n, BATCH, seed=SEED), 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for idx in self.sampler.epoch_batches(self.epoch):
            yield idx.tolist()


@torch.no_grad()
def evaluate_loader(model: torch.nn.Module, dataset) -> tuple[float, float]:
    model.eval()
    loss = correct = count = 0.0
    for xb, yb in torch.utils.data.DataLoader(dataset, batch_size=BATCH):
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
        count += len(yb)
    model.train()
    return loss / count, correct / count


def hand_dataloader_loop(splits, epochs: int) -> torch.nn.Module:
    return HandLoopEpochs(splits, epochs, dataset=True).run(epochs)


def ravine_fit_dataset(splits, epochs: int) -> torch.nn.Module:
    result = fit(build_model(), PerItem(splits.train), PerItem(splits.val),
                 test=PerItem(splits.test), optimizer="nesterov", lr=LR, schedule="linear-decay",
                 epochs=epochs, batch_size=BATCH, seed=SEED, quiet=True)
    return result.model


def ravine_fit(splits, epochs: int, run_dir: str | None = None) -> torch.nn.Module:
    result = fit(build_model(), splits.train, splits.val, test=splits.test, optimizer="nesterov",
                 lr=LR, schedule="linear-decay", epochs=epochs, batch_size=BATCH, seed=SEED,
                 run_dir=run_dir, quiet=True, overwrite=True)
    return result.model


def lightning_run(splits, epochs: int, dataset: bool = False) -> torch.nn.Module:
    import lightning as L  # noqa: N812 (Lightning's own convention)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model()
            self._true = None

        def on_train_epoch_start(self) -> None:
            train_data.epoch = self.current_epoch

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)

        def on_validation_epoch_start(self) -> None:
            self._true = optim.true_params(self.optimizers().optimizer)
            self._true.__enter__()

        def validation_step(self, batch, batch_idx):
            xb, yb = batch
            out = self.model(xb)
            self.val_metrics = (F.cross_entropy(out, yb).item(),
                                (out.argmax(1) == yb).double().mean().item())

        def on_validation_epoch_end(self) -> None:
            self._true.__exit__(None, None, None)

        def configure_optimizers(self):
            opt = make_optimizer(self.model)
            sched = schedules.create("linear-decay", opt, decay_steps=epochs * len(train_data))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Batches(torch.utils.data.IterableDataset):
        """Epoch ``epoch``'s minibatches in fit's order, gathered by tensor indexing.

        Stateless across ``iter()`` calls (Lightning may start iterators it does not finish);
        the module sets ``epoch`` at the start of every training epoch.
        """

        def __init__(self, x, y, shuffle: bool):
            self.x, self.y, self.epoch = x, y, 0
            self.sampler = data.EpochBatches(len(x), BATCH if shuffle else len(x), seed=SEED,
                                             shuffle=shuffle)

        def __len__(self) -> int:
            return len(self.sampler)

        def __iter__(self):
            order = self.sampler.order(self.epoch)
            for start in range(0, len(order), self.sampler.batch_size):
                idx = order[start : start + self.sampler.batch_size]
                yield self.x[idx], self.y[idx]

    torch.manual_seed(SEED)
    train_data = Batches(splits.train.x, splits.train.y, shuffle=True)
    train_batches = torch.utils.data.DataLoader(train_data, batch_size=None)
    val_batches = torch.utils.data.DataLoader(Batches(splits.val.x, splits.val.y, shuffle=False),
                                              batch_size=None)
    if dataset:
        train_data = EpochLists(len(splits.train))
        train_batches = torch.utils.data.DataLoader(PerItem(splits.train),
                                                    batch_sampler=train_data)
        val_batches = torch.utils.data.DataLoader(PerItem(splits.val), batch_size=BATCH)
    module = Module()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_batches, val_batches)
    module.optimizers().optimizer.to_true_params()
    evaluate(module.model, splits.test.x, splits.test.y)
    return module.model


def baseline_of(method: str) -> str:
    """In-memory methods against the hand loop; Dataset methods against the hand DataLoader loop."""
    return "hand DataLoader loop" if "Dataset" in method or "DataLoader" in method else "hand loop"


def median_interval(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval (percentile method, fixed seed) for the median of ``values``:
    how far the table's median of per-round ratios could move on another run of as many rounds
    on an equally noisy machine."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def decompose(splits, pairs: int, threads: int, epochs: int = 3) -> str:
    """What a run directory costs, split into the report and the rest, from many short runs.

    Runs of a few epochs, the hand loop, ``fit`` without a run directory, with one but no report
    (the report writer replaced by a no-op), and with one, run in alternating order (ABCD DCBA
    ...), so that the slow drift of a shared machine falls equally on each; the median of each
    round's difference from (and ratio to) its own hand loop is reported. The report is drawn
    once per run, so its cost is fixed; the rest grows with the epochs (a checkpoint and
    ``best.pt`` per epoch, the log).
    """
    import ravine.train.loop as loop_module

    draw = loop_module.write_report

    def run(kind: str) -> float:
        if kind == "hand loop":
            start = time.perf_counter()
            hand_loop(splits, epochs)
            return time.perf_counter() - start
        loop_module.write_report = draw if kind == "fit + run dir" else (lambda root: None)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            ravine_fit(splits, epochs, None if kind == "fit" else os.path.join(tmp, "r"))
            return time.perf_counter() - start

    kinds = ["hand loop", "fit", "fit + run dir, no report", "fit + run dir"]
    try:
        for kind in kinds:  # warm-up
            run(kind)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for r in range(pairs):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                times[kind].append(run(kind))
    finally:
        loop_module.write_report = draw
    base = times["hand loop"]
    lines = [
        "# fit() overhead: the run directory's parts",
        "",
        f"MNIST-1D CNN as above, {epochs} epochs a run, {pairs} rounds in alternating order. "
        f"torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPUs.",
        "",
        "| method | median (s) | median extra over the hand loop, same round (ms) "
        "| median of per-round ratios |",
        "|---|---|---|---|",
    ]
    for kind in kinds:
        pairs_ = list(zip(times[kind], base, strict=True))
        extra = statistics.median(t - b for t, b in pairs_)
        ratio = statistics.median(t / b for t, b in pairs_)
        lines.append(f"| {kind} | {statistics.median(times[kind]):.3f} | {extra * 1e3:.0f} "
                     f"| {ratio:.3f} |")
    return "\n".join(lines) + "\n"


class HandLoopEpochs:
    """The hand loop, one epoch per call, timed: over the tensors (``x[idx], y[idx]`` for each of
    fit's index batches) or, ``dataset=True``, through ``DataLoader(PerItem(train),
    batch_sampler=<the same index batches>)``, evaluating through a ``DataLoader`` too.

    :meth:`run` trains it end to end (the whole-run table's hand loops); as a ``fit`` callback it
    trains one epoch after each of fit's (the epoch-by-epoch table).
    """

    def __init__(self, splits, epochs: int, dataset: bool = False) -> None:
        start = time.perf_counter()
        self.splits, self.dataset = splits, dataset
        self.model = build_model()
        self.batches = data.EpochBatches(len(splits.train.x), BATCH, seed=SEED)
        if dataset:
            train = PerItem(splits.train)
            self.loader = torch.utils.data.DataLoader(
                train, batch_sampler=epoch_index_lists(len(train)))
        self.opt = make_optimizer(self.model)
        self.sched = schedules.create("linear-decay", self.opt,
                                      decay_steps=epochs * len(self.batches))
        torch.manual_seed(SEED)
        self.seconds = time.perf_counter() - start
        self.in_callbacks = 0.0  # the part of self.seconds spent inside fit's callbacks

    def evaluate(self, split) -> tuple[float, float]:
        if self.dataset:
            return evaluate_loader(self.model, PerItem(split))
        return evaluate(self.model, split.x, split.y)

    def __call__(self, epoch: int, record: dict) -> None:
        start = time.perf_counter()
        model, opt, sched = self.model, self.opt, self.sched
        x, y = self.splits.train.x, self.splits.train.y
        batches = self.loader if self.dataset else ((x[idx], y[idx]) for idx in self.batches)
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
        with optim.true_params(opt):
            self.evaluate(self.splits.val)
        took = time.perf_counter() - start
        self.seconds += took
        self.in_callbacks += took

    def finish(self) -> torch.nn.Module:
        start = time.perf_counter()
        self.opt.to_true_params()
        self.evaluate(self.splits.test)
        self.seconds += time.perf_counter() - start
        return self.model

    def run(self, epochs: int) -> torch.nn.Module:
        for epoch in range(1, epochs + 1):
            self(epoch, {})
        return self.finish()


def interleaved(splits, rounds: int, epochs: int, threads: int) -> str:
    """``fit`` and the hand loop taking turns epoch by epoch, so both see the same machine.

    In each run ``fit`` gets a callback that trains one epoch of the hand loop (its own model,
    optimizer and batches; the hand DataLoader loop when ``fit`` trains on the map-style
    Dataset) after each of fit's epochs; the hand loop's time is what its setup,
    epochs and final test evaluation took, and fit's time the rest of the call (setup, its
    epochs, checkpoints, report, close). The two alternate every quarter second, so a slow
    phase of a shared machine, which lasts seconds, falls on both alike; the whole-run table
    alternates whole runs of several seconds. ``fit`` writes its checkpoint after the callback,
    and the writes finish during fit's next epoch, before the hand loop's turn.
    """
    kinds = ["fit", "fit + run dir", "fit (Dataset)"]
    ratios: dict[str, list[float]] = {kind: [] for kind in kinds}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    hand_seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        def one(kind: str, run_epochs: int = epochs) -> tuple[float, float, bool]:
            dataset = kind == "fit (Dataset)"
            hand = HandLoopEpochs(splits, run_epochs, dataset=dataset)
            train, val, test = ((PerItem(splits.train), PerItem(splits.val), PerItem(splits.test))
                                if dataset else (splits.train, splits.val, splits.test))
            start = time.perf_counter()
            result = fit(build_model(), train, val, test=test, optimizer="nesterov", lr=LR,
                         schedule="linear-decay", epochs=run_epochs, batch_size=BATCH,
                         seed=SEED, quiet=True, overwrite=True, callbacks=[hand],
                         run_dir=os.path.join(tmp, "r") if kind == "fit + run dir" else None)
            total = time.perf_counter() - start
            model = hand.finish()
            same = all(torch.equal(a, b) for a, b in zip(
                result.model.state_dict().values(), model.state_dict().values(), strict=True))
            return total - hand.in_callbacks, hand.seconds, same

        same = all(one(kind, 2)[2] for kind in kinds)
        for kind in kinds:  # warm-up
            one(kind)
        for r in range(rounds):
            for kind in kinds[r % 3:] + kinds[: r % 3]:
                fit_s, hand_s, _ = one(kind)
                ratios[kind].append(fit_s / hand_s)
                seconds[kind].append(fit_s)
                hand_seconds[kind].append(hand_s)
    lines = [
        "# fit() overhead, epoch by epoch",
        "",
        f"MNIST-1D CNN as in the table, {epochs} epochs a run; `fit` and the hand loop take "
        f"turns epoch by epoch inside each run (the hand loop as fit's callback; for `fit` on "
        f"the map-style Dataset, the hand DataLoader loop), {rounds} rounds of the three, each "
        f"round starting one later, after a warm-up. torch {torch.__version__}, "
        f"{threads} thread(s), {os.cpu_count()} CPUs. Bit-identical parameters and buffers "
        f"to the hand loop after 2 epochs: {'yes' if same else 'NO'}.",
        "",
        "| method | median (s) | its hand loop, same runs, median (s) | median of per-run ratios "
        "| its 95% interval |",
        "|---|---|---|---|---|",
    ]
    for kind in kinds:
        low, high = median_interval(ratios[kind])
        lines.append(f"| {kind} | {statistics.median(seconds[kind]):.3f} "
                     f"| {statistics.median(hand_seconds[kind]):.3f} "
                     f"| {statistics.median(ratios[kind]):.3f} | {low:.3f}-{high:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-lightning", action="store_true")
    parser.add_argument("--methods", default=None,
                        help="comma-separated method names to time (default: all), e.g. "
                        "'hand loop,fit + run dir'; their baselines are always timed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the table")
    parser.add_argument("--decompose", type=int, default=0, metavar="PAIRS",
                        help="instead of the table: split the run directory's cost into the "
                        "report and the rest, from PAIRS rounds of short (3-epoch) runs")
    parser.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                        help="instead of the table: fit, fit + run dir and fit (Dataset) against "
                        "their hand loops taking turns epoch by epoch in the same run, ROUNDS "
                        "runs each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's advice about workers and loggers
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    splits = data.load("mnist1d", seed=SEED, val_fraction=0.1)
    if args.interleaved:
        text = interleaved(splits, args.interleaved, args.epochs, args.threads)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        return
    if args.decompose:
        text = decompose(splits, args.decompose, args.threads)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        return

    reference = hand_loop(splits, 2).state_dict()

    def same_as_hand_loop(model: torch.nn.Module) -> str:
        state = model.state_dict()
        return "yes" if all(torch.equal(state[k], v) for k, v in reference.items()) else "NO"

    same = {"fit": same_as_hand_loop(ravine_fit(splits, 2)),
            "hand DataLoader loop": same_as_hand_loop(hand_dataloader_loop(splits, 2)),
            "fit (Dataset)": same_as_hand_loop(ravine_fit_dataset(splits, 2))}
    if not args.no_lightning:
        same["Lightning"] = same_as_hand_loop(lightning_run(splits, 2))
        same["Lightning (Dataset)"] = same_as_hand_loop(lightning_run(splits, 2, dataset=True))
    methods = {"hand loop": lambda: hand_loop(splits, args.epochs),
               "fit": lambda: ravine_fit(splits, args.epochs)}
    with tempfile.TemporaryDirectory() as tmp:
        methods["fit + run dir"] = lambda: ravine_fit(splits, args.epochs, os.path.join(tmp, "r"))
        if not args.no_lightning:
            methods["Lightning"] = lambda: lightning_run(splits, args.epochs)
        methods["hand DataLoader loop"] = lambda: hand_dataloader_loop(splits, args.epochs)
        methods["fit (Dataset)"] = lambda: ravine_fit_dataset(splits, args.epochs)
        if not args.no_lightning:
            methods["Lightning (Dataset)"] = lambda: lightning_run(splits, args.epochs, True)
        if args.methods is not None:
            wanted = {name.strip() for name in args.methods.split(",")}
            unknown = wanted - set(methods)
            if unknown:
                parser.error(f"unknown method(s) {sorted(unknown)}; choose from {list(methods)}")
            wanted |= {baseline_of(name) for name in wanted}
            methods = {name: run for name, run in methods.items() if name in wanted}
        for run in methods.values():  # warm-up: imports, allocator, first-call costs
            run()
        times: dict[str, list[float]] = {name: [] for name in methods}
        names = list(methods)
        for r in range(args.repeats):
            # Each round starts one method later, so that a slow phase of a shared machine (runs
            # of the same method here vary by ±25%) does not always fall on the same method.
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - start)

    steps = len(data.EpochBatches(len(splits.train), BATCH))
    baseline = {name: baseline_of(name) for name in methods}
    lines = [
        "# fit() overhead",
        "",
        f"MNIST-1D CNN (batch norm), Nesterov + linear decay, batch {BATCH}, {args.epochs} "
        f"epochs ({args.epochs * steps} steps), validation every epoch; {args.repeats} interleaved "
        f"repeats after a warm-up. torch {torch.__version__}, {args.threads} thread(s), "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        "Bit-identical parameters and buffers to the hand loop after 2 epochs: "
        + ", ".join(f"{name}: {answer}" for name, answer in same.items()) + ".",
        "",
        "| method | median (s) | min (s) | baseline | median / baseline | min / baseline "
        "| median of per-round ratios | its 95% interval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        base = times[baseline[name]]
        # Each round's time over its own baseline's: a slow phase spanning a round cancels.
        ratios = [t / b for t, b in zip(ts, base, strict=True)]
        low, high = median_interval(ratios)
        lines.append(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | "
                     f"{baseline[name]} | {statistics.median(ts) / statistics.median(base):.3f} "
                     f"| {min(ts) / min(base):.3f} | {statistics.median(ratios):.3f} "
                     f"| {low:.3f}-{high:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
