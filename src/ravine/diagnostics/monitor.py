"""Ranked findings inside any training loop: :class:`Monitor`.

Call ``monitor.step(loss)`` after ``optimizer.step()`` in a plain torch loop::

    monitor = diagnostics.Monitor(model, loss_fn, probe, opt, log="diagnostics.jsonl")
    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        monitor.step(loss)
    monitor.report("out")          # out/monitor.md: the latest ranked findings and the plots

Between measurements the monitor only keeps cheap per-step numbers in bounded windows: the
training loss (kept as a tensor, so no host synchronisation per step; converted when a
measurement needs it), and, where the optimizer records them (ravine's optimizers with
``clip_norm=`` or ``track_grad_norm=True``), the pre-clip gradient norm and whether clipping fired.
Every ``every`` steps it calls :func:`ravine.diagnostics.diagnosis.diagnose` on ``probe_data`` at
the true parameters (the optimizer's ``θ``, not the interim point of Nesterov-type methods) and
hands it those windows as ``history``.

A measurement never changes training: it runs with forked torch RNGs (CPU and every CUDA device
the model uses) and saved Python/NumPy global RNG states, and afterwards every module's
``training`` flag and every buffer (batch-norm running statistics) is restored. The parameters
are bit-identical with and without a monitor (tested, also for dropout in train mode and for
ravine's Nesterov).

Each measurement is appended to ``log`` as one JSON line (the whole line written, then flushed,
so a crash leaves no torn line) and kept in :attr:`Monitor.records`.

Cost: a measurement costs what ``diagnose`` costs at the given ``budget``; the default ``every``
keeps the wall time of training the MNIST-1D CNN at most 1.10x its time without the monitor
(``benchmarks/monitor_overhead.py``). For comparison, Cockpit reports about 1.5x per step for its
"economy" and 21x for its "full" configuration on a GPU (Schneider, Dangel & Hennig 2021,
"Cockpit: A Practical Debugging Tool for the Training of Deep Neural Networks").
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ravine._checks import check_int, suggest
from ravine._io import json_ready, write_atomic
from ravine.diagnostics.diagnosis import diagnose, untouched
from ravine.diagnostics.findings import Diagnosis
from ravine.optim import RavineOptimizer

__all__ = [
    "Monitor",
    "Overhead",
    "check_schedule",
    "DEFAULT_EVERY",
    "DEFAULT_BUDGET",
    "DEFAULT_WINDOW",
]

#: The default schedule: measure whenever the training time since the last measurement is at
#: least the last measurement's cost divided by ``target_overhead`` (so measuring adds at most
#: that fraction to the wall time, whatever the model, data or machine).
DEFAULT_EVERY = "auto"
DEFAULT_TARGET_OVERHEAD = 0.10
DEFAULT_BUDGET: dict[str, float] = {"hvps": 40, "seconds": 3.0}
DEFAULT_WINDOW = 1000
MODES = ("eval", "train")


def check_schedule(
    *,
    every: int | str,
    window: int,
    seed: int,
    mode: str,
    batch_size: int | None,
    target_overhead: float = DEFAULT_TARGET_OVERHEAD,
) -> None:
    """Validate :class:`Monitor`'s scheduling options (one-line ``ValueError`` naming the value)."""
    if every != "auto":
        if isinstance(every, str):
            raise ValueError(f"every must be an integer >= 1 or 'auto', got {every!r}")
        check_int("every", every, 1)
    if not isinstance(target_overhead, (int, float)) or not 0 < target_overhead <= 10:
        raise ValueError(f"target_overhead must be in (0, 10], got {target_overhead!r}")
    check_int("window", window, 1)
    check_int("seed", seed, 0)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    if mode not in MODES:
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}{suggest(mode, MODES)}")


@dataclass(frozen=True)
class Overhead:
    """Where the wall time between :meth:`Monitor.step` calls went.

    Attributes:
        measuring: seconds spent inside :meth:`Monitor.step` (measurements and recording).
        total: seconds from the end of the first ``step()`` call to the end of the latest.
    """

    measuring: float
    total: float

    @property
    def ratio(self) -> float:
        """Wall time with the monitor over wall time without it: ``total / (total - measuring)``
        (1.0 before two steps)."""
        training = self.total - self.measuring
        return self.total / training if training > 0 else 1.0


class Monitor:
    """Diagnose a model every few steps of the user's own training loop.

    Args:
        model: the model being trained.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar batch-mean loss.
        probe_data: what the measurements use: a batch ``(x, y)``, a dataset or an iterable of
            batches, as for :func:`~ravine.diagnostics.diagnosis.diagnose` (a fixed subset of a
            few hundred to a few thousand training examples keeps the cost bounded).
        optimizer: the optimizer being stepped (any ``torch.optim.Optimizer``); its learning
            rate and state enter the findings, and for ravine's interim-point optimizers the
            measurement is taken at the true ``θ``.
        every: "auto" (the default): measure when the training time since the last
            measurement reaches the last measurement's cost divided by ``target_overhead`` (the
            first one after ``budget``'s seconds / ``target_overhead`` of training, 3 s /
            ``target_overhead`` without a time budget), so the monitor adds about
            ``target_overhead`` to the wall time at most; or an integer: after every
            ``every``-th call of :meth:`step`.
        target_overhead: the wall-time fraction "auto" allows the measurements (default 0.10).
        budget: ``diagnose``'s budget: ``None``, a number of Hessian-vector products, or
            ``{"hvps": int, "seconds": float}``.
        log: a JSONL file; one line per measurement is appended (earlier lines are kept).
        seed: the measurement at step ``k`` uses seed ``seed + k``.
        mode: "eval" (batch norm on its running statistics, dropout off) or "train".
        batch_size: the training batch size, for the batch-size findings.
        window: how many recent steps the per-step histories keep (>= 1).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        probe_data: Any,
        optimizer: torch.optim.Optimizer,
        *,
        every: int | str = DEFAULT_EVERY,
        budget: int | dict[str, float] | None = DEFAULT_BUDGET,
        target_overhead: float = DEFAULT_TARGET_OVERHEAD,
        log: str | Path | None = None,
        seed: int = 0,
        mode: str = "eval",
        batch_size: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        check_schedule(
            every=every,
            window=window,
            seed=seed,
            mode=mode,
            batch_size=batch_size,
            target_overhead=target_overhead,
        )
        self.target_overhead = float(target_overhead)
        self.model, self.loss_fn, self.probe_data = model, loss_fn, probe_data
        self.optimizer = optimizer
        self.every, self.budget, self.seed, self.mode = every, budget, seed, mode
        self.batch_size, self.window = batch_size, window
        self.log = None if log is None else Path(log)
        self.steps = 0
        self.records: list[dict[str, Any]] = []
        self.latest: Diagnosis | None = None
        # (step, value) pairs; values stay tensors until a measurement or a reader needs floats.
        self._losses: deque[tuple[int, Tensor | float]] = deque(maxlen=window)
        self._grad_norms: deque[tuple[int, Tensor]] = deque(maxlen=window)
        self._clipped: deque[Tensor] = deque(maxlen=window)
        self._start: float | None = None
        self._last: float | None = None
        self._measuring = 0.0
        # "auto": the training time (wall time between steps minus measuring) due for the next
        seconds = budget.get("seconds") if isinstance(budget, dict) else None
        self._due_at = (seconds or 3.0) / self.target_overhead

    @property
    def clip_norm(self) -> float | None:
        """The optimizer's clipping threshold, or None without clipping."""
        return getattr(self.optimizer, "clip_norm", None)

    @property
    def overhead(self) -> Overhead:
        """Seconds spent measuring against the total wall time between steps."""
        if self._start is None or self._last is None:
            return Overhead(0.0, 0.0)
        return Overhead(self._measuring, self._last - self._start)

    def step(self, loss: Tensor | float | None = None) -> Diagnosis | None:
        """Record one training step (call it after ``optimizer.step()``); measure if due.

        Args:
            loss: the step's training loss (a scalar tensor is kept as is, without a host
                synchronisation, until the next measurement), or None.

        Returns:
            The :class:`~ravine.diagnostics.findings.Diagnosis` when this step measured, else
            None.
        """
        entered = time.perf_counter()
        self.steps += 1
        if loss is not None:
            if isinstance(loss, Tensor):
                if loss.numel() != 1:
                    raise ValueError(
                        f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}"
                    )
                self._losses.append((self.steps, loss.detach()))
            else:
                self._losses.append((self.steps, float(loss)))
        if isinstance(self.optimizer, RavineOptimizer):
            # The tensors the optimizer recorded at its last step (public properties would
            # force a host synchronisation every step).
            norm, clipped = self.optimizer._last_norm, self.optimizer._last_clipped
            if norm is not None:
                self._grad_norms.append((self.steps, norm))
            if clipped is not None:
                self._clipped.append(clipped)
        diagnosis = self.measure() if self._due(entered) else None
        now = time.perf_counter()
        if self._start is None:
            self._start = now
        else:
            self._measuring += now - entered
        self._last = now
        return diagnosis

    def _due(self, now: float) -> bool:
        if self.every != "auto":
            return self.steps % self.every == 0
        if self._start is None:
            return False
        return (now - self._start) - self._measuring >= self._due_at

    def history(self) -> dict[str, Any]:
        """The per-step windows as ``diagnose`` receives them: ``loss_history`` and
        ``grad_norm_history`` (floats, oldest first), and with clipping configured
        ``clip_fraction`` (share of the window's steps where clipping fired) and ``clip_norm``."""
        out: dict[str, Any] = {
            "loss_history": _floats([v for _, v in self._losses]),
            "grad_norm_history": _floats([v for _, v in self._grad_norms]),
        }
        if self.clip_norm is not None:
            fired = _floats(list(self._clipped))
            out["clip_fraction"] = sum(fired) / len(fired) if fired else 0.0
            out["clip_norm"] = float(self.clip_norm)
        return out

    def measure(self) -> Diagnosis:
        """Diagnose now (``step()`` calls this every ``every`` steps); record and log it."""
        start = time.perf_counter()
        history = self.history()
        with untouched(self.model):
            diagnosis = diagnose(
                self.model,
                self.loss_fn,
                self.probe_data,
                optimizer=self.optimizer,
                batch_size=self.batch_size,
                seed=self.seed + self.steps,
                mode=self.mode,
                budget=self.budget,
                history=history,
            )
        record = {
            "step": self.steps,
            "time": 0.0 if self._start is None else start - self._start,
            "seconds": time.perf_counter() - start,
            **diagnosis.to_dict(),
        }
        self.records.append(record)
        self.latest = diagnosis
        if self._start is not None:
            training = (start - self._start) - self._measuring
            self._due_at = training + record["seconds"] / self.target_overhead
        if self.log is not None:
            line = json.dumps(json_ready(record), default=_json_default) + "\n"
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
        return diagnosis

    def plot(self, path: str | Path) -> Path:
        """Draw the measured numbers over the steps into the PNG ``path``; returns ``path``.

        Panels (each when its numbers exist): the training loss per step and on the probe;
        the sharpness (λmax, or the preconditioned sharpness for adaptive methods) against
        the stability edge, the sharpness at which the current learning rate would reach
        ``lr_bound``; B_simple with its interval against the batch size; the gradient norm
        (per step before clipping, and on the probe) with the clipping threshold; the
        fraction of dead units.
        """
        return _plot(self, Path(path))

    def report(self, out_dir: str | Path, title: str = "Training monitor") -> Path:
        """Write ``out_dir/monitor.md`` (the latest ranked findings, the numbers of every
        measurement, the plots in ``out_dir/monitor.png``) atomically; returns its path.

        Measures now if nothing was measured yet.
        """
        out_dir = Path(out_dir)
        if self.latest is None:
            self.measure()
        assert self.latest is not None
        image = self.plot(out_dir / "monitor.png")
        overhead = self.overhead
        lines = [
            f"# {title}",
            "",
            f"{len(self.records)} measurement(s) over {self.steps} steps; the last at step "
            f"{self.records[-1]['step']}. Time spent measuring: {overhead.measuring:.2f} s of "
            f"{overhead.total:.2f} s ({overhead.ratio:.3f}x the training time).",
            "",
            self.latest.to_markdown(title=f"Findings at step {self.records[-1]['step']}").strip(),
            "",
            "## Over the run",
            "",
            f"![monitor]({image.name})",
            "",
            *_numbers_table(self.records),
        ]
        path = out_dir / "monitor.md"
        write_atomic(path, lambda handle: handle.write("\n".join(lines) + "\n"))
        return path


def _floats(values: list[Tensor | float]) -> list[float]:
    """Floats of scalars and scalar tensors, with one host transfer per device."""
    out: list[float | None] = [v if isinstance(v, float) else None for v in values]
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, Tensor):
            by_device.setdefault(v.device, []).append(i)
    for indices in by_device.values():
        stacked = torch.stack([values[i].reshape(()).to(torch.float64) for i in indices])
        for i, x in zip(indices, stacked.cpu().tolist(), strict=True):
            out[i] = float(x)
    return out  # type: ignore[return-value]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, Tensor)) and getattr(value, "size", 1) in (1, ()):
        return json_ready(float(value))
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the monitor log")


_TABLE = ("loss", "grad_norm", "sharpness", "lr_ratio", "b_simple", "dead_fraction")


def _numbers_table(records: list[dict[str, Any]]) -> list[str]:
    keys = [k for k in _TABLE if any(k in r.get("numbers", {}) for r in records)]
    lines = [
        "| step | " + " | ".join(keys) + " | top finding |",
        "|---" * (len(keys) + 2) + "|",
    ]
    for r in records:
        numbers = r.get("numbers", {})
        cells = [_cell(numbers.get(k)) for k in keys]
        findings = r.get("findings") or [{}]
        lines.append(
            f"| {r['step']} | " + " | ".join(cells) + f" | {findings[0].get('code', '')} |"
        )
    return lines


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _positive(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r["numbers"][key]) for r in records if _positive(r["numbers"].get(key))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _stability_edge(numbers: dict[str, Any], sharpness: float) -> float | None:
    """The sharpness at which the current learning rate reaches ``lr_bound``:
    ``sharpness · lr_bound / lr`` (``2/lr`` for SGD)."""
    ratio = numbers.get("lr_ratio")
    if _positive(ratio):
        return sharpness / ratio
    lr, bound = numbers.get("lr"), numbers.get("lr_bound")
    if _positive(lr) and _positive(bound):
        return sharpness * bound / lr
    return None


def _plot(monitor: Monitor, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = monitor.records
    for r in records:
        r.setdefault("numbers", {})
    panels: list[Callable[[Any], None]] = []

    losses = [
        (s, v)
        for s, v in zip(
            [s for s, _ in monitor._losses], monitor.history()["loss_history"], strict=True
        )
        if _positive(v)
    ]
    probe_loss = _series(records, "loss")
    if losses or probe_loss[0]:

        def draw_loss(ax: Any) -> None:
            if losses:
                ax.plot(*zip(*losses, strict=True), lw=0.6, alpha=0.6, label="training loss")
            if probe_loss[0]:
                ax.plot(*probe_loss, "o-", ms=3, label="loss on the probe")
            ax.set_yscale("log")
            ax.set_ylabel("loss")
            ax.legend(fontsize="small")

        panels.append(draw_loss)

    key = "sharpness" if any("sharpness" in r["numbers"] for r in records) else "lambda_max"
    sharp = _series(records, key)
    if sharp[0]:
        edge = [
            (r["step"], _stability_edge(r["numbers"], float(r["numbers"][key])))
            for r in records
            if _positive(r["numbers"].get(key))
        ]
        edge = [(s, e) for s, e in edge if e is not None]

        def draw_sharpness(ax: Any) -> None:
            kinds = {r["numbers"].get("sharpness_kind") for r in records}
            label = "preconditioned sharpness" if "preconditioned" in kinds else "λmax"
            ax.plot(*sharp, "o-", ms=3, label=label)
            if edge:
                ax.plot(*zip(*edge, strict=True), "--", label="stability edge (lr = lr_bound)")
            ax.set_yscale("log")
            ax.set_ylabel("curvature")
            ax.legend(fontsize="small")

        panels.append(draw_sharpness)

    b_simple = _series(records, "b_simple")
    if b_simple[0]:

        def draw_b_simple(ax: Any) -> None:
            rows = [r for r in records if _positive(r["numbers"].get("b_simple"))]
            low = [r["numbers"].get("b_simple_low") for r in rows]
            high = [r["numbers"].get("b_simple_high") for r in rows]
            if all(_positive(v) for v in low + high):
                errors = [
                    [b - lo for b, lo in zip(b_simple[1], low, strict=True)],
                    [hi - b for b, hi in zip(b_simple[1], high, strict=True)],
                ]
                ax.errorbar(
                    *b_simple, yerr=errors, fmt="o-", ms=3, capsize=2, label="B_simple (interval)"
                )
            else:
                ax.plot(*b_simple, "o-", ms=3, label="B_simple")
            batch = _series(records, "batch_size")
            if batch[0]:
                ax.step(*batch, where="post", ls="--", label="batch size")
            ax.set_yscale("log")
            ax.set_ylabel("examples")
            ax.legend(fontsize="small")

        panels.append(draw_b_simple)

    window = [
        (s, v)
        for s, v in zip(
            [s for s, _ in monitor._grad_norms], monitor.history()["grad_norm_history"], strict=True
        )
        if _positive(v)
    ]
    probe_norm = _series(records, "grad_norm")
    if window or probe_norm[0]:

        def draw_grad_norm(ax: Any) -> None:
            if window:
                ax.plot(
                    *zip(*window, strict=True), lw=0.6, alpha=0.6, label="per step, before clipping"
                )
            if probe_norm[0]:
                ax.plot(*probe_norm, "o-", ms=3, label="on the probe")
            if monitor.clip_norm is not None:
                ax.axhline(monitor.clip_norm, ls="--", color="gray", label="clip_norm")
            ax.set_yscale("log")
            ax.set_ylabel("gradient norm")
            ax.legend(fontsize="small")

        panels.append(draw_grad_norm)

    dead = [
        (r["step"], r["numbers"]["dead_fraction"])
        for r in records
        if isinstance(r["numbers"].get("dead_fraction"), (int, float))
    ]
    if dead:

        def draw_dead(ax: Any) -> None:
            ax.plot(*zip(*dead, strict=True), "o-", ms=3)
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("dead units (fraction)")

        panels.append(draw_dead)

    if not panels:
        raise ValueError("nothing to plot yet: no measurement and no loss recorded")
    figure = Figure(figsize=(6.4, 2.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, draw in zip(axes, panels, strict=True):
        draw(ax)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    # Beside the target, then renamed: a reader never sees a half-written image.
    write_atomic(path, lambda f: figure.savefig(f, dpi=80, format="png"), binary=True)
    return path
