r"""Checked advice: fork short continuations of training and see which change actually helps.

Advice such as "halve the learning rate" comes from a local model of the loss (the step-size
bound :math:`\varepsilon < 2/\lambda_{\max}`, the noise scale :math:`B_{\text{simple}}`, ...).
:func:`probe` checks it on the user's own model: from the current parameters and optimizer
state it trains several copies for the same number of *examples* — the baseline (no change)
first, then one fork per candidate fix — and ranks them by the decrease of the training loss
per example seen and per second of training.

What every fork shares (so that the only difference between forks is the fix):

* the starting point: a deep copy of the model and of the optimizer (velocity, shift, adaptive
  accumulators and step counts carried over). A fix that names *another* optimizer class starts
  that optimizer fresh — there is no state to carry — from the true parameters ``θ`` (for
  ravine's interim-point methods the copy is first moved from ``θ + αv`` to ``θ`` with
  ``to_true_params``);
* the examples: one seeded shuffle-then-blocks stream (:class:`ravine.data.EpochBatches`, whose
  epoch orders depend only on the seed), cut into minibatches of the fork's batch size. Every
  fork therefore sees exactly the same examples in the same order; a fork with another batch
  size sees them grouped differently. Each fork trains on ``steps × batch_size`` examples (the
  baseline's batch size); the last minibatch is cut short if needed;
* the random stream of dropout and other layers: reseeded with ``seed`` at the start of every
  fork (the caller's global generators are left as they were);
* the measurement: the mean training loss on a fixed evaluation set (``eval_data``, by default
  a seeded subset of at most 1024 training examples, :func:`ravine.data.sources.fixed_examples`)
  in eval mode, at the *true* parameters (:func:`ravine.optim.true_params`), at the start and
  every ``eval_every`` examples. ``seconds`` counts training steps only, not the evaluations.

Forks hold the learning rate constant: a schedule of the original run does not continue into
them. A fork whose loss becomes NaN or infinite, or grows past :data:`BLOWUP` times
``max(|initial loss|, 1)``, is marked ``diverged`` and stopped (in float64 a blown-up loss can
take many steps to overflow); the others go on. The caller's model and optimizer are never modified.

Fix keys (:data:`FIX_KEYS`; each applied to every parameter group):

==================  ==========================================================================
``lr``              the learning rate (absolute)
``lr_scale``        the current learning rate times this factor
``batch_size``      the fork's minibatch size (the learning rate is unchanged unless given)
``momentum``        momentum coefficient α (optimizers that have one)
``clip_norm``       clip the global gradient norm to this (``None``: no clipping)
``weight_decay``    L2 weight decay (every group, biases included)
``optimizer``       a :func:`ravine.optim.names` name; with another class than the current one,
                    a fresh optimizer over the same parameter groups, with ``lr`` given, or
                    that optimizer's default learning rate (times ``lr_scale``)
==================  ==========================================================================

A fix with any other key, or one that does not apply to the optimizer (``momentum`` for plain
SGD), is not run: :attr:`ProbeResult.not_probeable` lists it with the reason.

Example::

    result = diagnostics.probe(net, opt, (x, y), loss_fn=F.cross_entropy, batch_size=64,
                               fixes=[{"lr_scale": 0.5}, {"batch_size": 256, "lr": 0.2}])
    print(result.to_markdown())       # ranked table and "lr x 0.5 helped: loss ..." sentences
    result.plot("probe.png")
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, IterableDataset, Subset

from ravine import optim
from ravine._checks import suggest
from ravine._io import write_atomic
from ravine.data.sources import (
    EVAL_BATCH_SIZE,
    as_tensors,
    batch_examples,
    eval_batches,
    fixed_examples,
    to_device,
    training_source,
)
from ravine.optim.registry import hyperparameters, lookup

__all__ = ["probe", "ProbeResult", "Fork", "FIX_KEYS", "DEFAULT_FIXES", "EVAL_EXAMPLES"]

FIX_KEYS = ("lr", "lr_scale", "batch_size", "momentum", "clip_norm", "weight_decay", "optimizer")
DEFAULT_FIXES: tuple[dict[str, Any], ...] = ({"lr_scale": 0.5}, {"lr_scale": 2.0})
#: Size of the default evaluation subset of the training data.
EVAL_EXAMPLES = 1024
# Evaluation points of a fork when eval_every is not given.
EVAL_POINTS = 20

#: A loss this many times ``max(|initial loss|, 1)`` counts as diverged.
BLOWUP = 1e6

BASELINE = "baseline"


@dataclass(repr=False)
class Fork:
    """One continuation: its fix, what it cost, and the loss curve it produced.

    Attributes:
        label: e.g. ``"baseline"``, ``"lr x 0.5"``, ``"adam, lr 0.001"``.
        fix: the fix as given (``{}`` for the baseline).
        optimizer: class name of the fork's optimizer.
        lr: learning rate of the fork's first parameter group.
        batch_size: the fork's minibatch size.
        steps: optimizer steps taken.
        examples: training examples seen (all forks: the same, unless diverged).
        seconds: wall time of the training steps (evaluations excluded).
        losses: ``(examples_seen, loss)`` on the evaluation set, from ``(0, initial loss)``.
        diverged: the loss became NaN or infinite or blew up (module docstring); the fork was
            stopped there.
        helped: ``final_loss`` below the baseline's (``None`` for the baseline itself). A fork
            that diverged did not help; any fork that did not diverge helped a baseline that did.
    """

    label: str
    fix: dict[str, Any]
    optimizer: str
    lr: float
    batch_size: int
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    diverged: bool = False
    helped: bool | None = None

    @property
    def initial_loss(self) -> float:
        return self.losses[0][1]

    @property
    def final_loss(self) -> float:
        """The last measured loss (non-finite or blown up for a fork that diverged)."""
        return self.losses[-1][1]

    @property
    def decrease(self) -> float:
        """``initial_loss - final_loss`` (NaN when diverged)."""
        return math.nan if self.diverged else self.initial_loss - self.final_loss

    @property
    def decrease_per_example(self) -> float:
        return self.decrease / self.examples if self.examples else math.nan

    @property
    def decrease_per_second(self) -> float:
        return self.decrease / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "fix": _plain(self.fix),
            "optimizer": self.optimizer,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "examples": self.examples,
            "seconds": self.seconds,
            "losses": [[n, loss] for n, loss in self.losses],
            "initial_loss": self.initial_loss,
            "final_loss": self.final_loss,
            "decrease": self.decrease,
            "decrease_per_example": self.decrease_per_example,
            "decrease_per_second": self.decrease_per_second,
            "diverged": self.diverged,
            "helped": self.helped,
        }

    def __repr__(self) -> str:
        end = "diverged" if self.diverged else f"{self.final_loss:.4g}"
        return (
            f"Fork({self.label!r}: loss {self.initial_loss:.4g} -> {end} after "
            f"{self.examples:,} examples, {self.seconds:.3g} s)"
        )


@dataclass(repr=False)
class ProbeResult:
    """The forks of :func:`probe`, ranked by loss decrease per example.

    Attributes:
        forks: the baseline first, then one :class:`Fork` per probe-able fix, in the given order.
        not_probeable: ``(label, fix, reason)`` of the fixes that were not run.
        examples: training examples every fork was given (``steps × batch_size``).
        batch_size: the baseline's minibatch size.
        eval_examples: size of the evaluation set.
        seed: seed of the example order and of the forks' random streams.
    """

    forks: list[Fork]
    not_probeable: list[tuple[str, dict[str, Any], str]]
    examples: int
    batch_size: int
    eval_examples: int
    seed: int

    @property
    def baseline(self) -> Fork:
        return self.forks[0]

    @property
    def ranking(self) -> list[str]:
        """Fork labels, best first: by decrease per example; diverged forks last."""

        def key(fork: Fork) -> tuple[bool, float]:
            rate = fork.decrease_per_example
            return fork.diverged, -rate if math.isfinite(rate) else math.inf

        return [f.label for f in sorted(self.forks, key=key)]

    @property
    def best(self) -> Fork | None:
        """The first-ranked fork, or ``None`` when every fork diverged."""
        first = self.fork(self.ranking[0])
        return None if first.diverged else first

    def fork(self, label: str) -> Fork:
        """The fork called ``label``."""
        for fork in self.forks:
            if fork.label == label:
                return fork
        raise KeyError(f"no fork {label!r}{suggest(label, [f.label for f in self.forks])}")

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "examples": self.examples,
            "batch_size": self.batch_size,
            "eval_examples": self.eval_examples,
            "seed": self.seed,
            "ranking": self.ranking,
            "best": None if best is None else best.label,
            "forks": [f.to_dict() for f in self.forks],
            "not_probeable": [
                {"label": label, "fix": _plain(fix), "reason": reason}
                for label, fix, reason in self.not_probeable
            ],
            "verdicts": self.verdicts(),
        }

    def verdicts(self) -> list[str]:
        """One sentence per fix: whether it helped, with the losses it is judged on."""
        base = self.baseline
        after = f"after {self.examples:,} examples"
        sentences = []
        for fork in self.forks[1:]:
            if fork.diverged:
                sentences.append(
                    f"{fork.label} diverged (loss {_num(fork.final_loss)} after "
                    f"{fork.examples:,} examples)."
                )
                continue
            verdict = "helped" if fork.helped else "did not help"
            than = (
                "the baseline diverged" if base.diverged else f"vs baseline {_num(base.final_loss)}"
            )
            sentences.append(
                f"{fork.label} {verdict}: loss {_num(fork.initial_loss)} -> "
                f"{_num(fork.final_loss)} {than} {after}."
            )
        for label, _, reason in self.not_probeable:
            sentences.append(f"{label} was not probed: {reason}.")
        return sentences

    def to_markdown(self, *, title: str | None = "Probe: counterfactual forks") -> str:
        """A ranked table of the forks and one sentence per fix."""
        head = [f"## {title}", ""] if title else []
        head.append(
            f"Each fork trained on the same {self.examples:,} examples from the same start; "
            f"loss on {self.eval_examples:,} fixed training examples, ranked by decrease per "
            "example."
        )
        rows = [
            "| rank | fork | loss start | loss end | decrease / 1k examples | decrease / s "
            "| steps | seconds | helped |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for rank, label in enumerate(self.ranking, 1):
            f = self.fork(label)
            helped = "—" if f.helped is None else ("yes" if f.helped else "no")
            end = "diverged" if f.diverged else _num(f.final_loss)
            rows.append(
                f"| {rank} | {f.label} | {_num(f.initial_loss)} | {end} | "
                f"{_num(1000 * f.decrease_per_example)} | {_num(f.decrease_per_second)} | "
                f"{f.steps} | {f.seconds:.3g} | {helped} |"
            )
        body = "\n".join(f"- {s}" for s in self.verdicts())
        return "\n".join([*head, "", *rows, "", body, ""])

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Save the forks' loss curves against examples seen (one colour per fork) as a PNG,
        written atomically; returns ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        # The axes fit the forks that did not diverge: a diverging curve leaves at the top.
        kept = [v for f in self.forks if not f.diverged for _, v in f.losses]
        kept += [f.initial_loss for f in self.forks if math.isfinite(f.initial_loss)]
        top = max(kept) if kept else 1.0
        bottom = min(kept) if kept else 0.0
        logy = bottom > 0 and top / bottom > 20
        top = top * 2 if logy else top + 0.1 * (top - bottom or abs(top) or 1.0)
        for i, fork in enumerate(self.forks):
            points = [(n, min(v, top)) for n, v in fork.losses if math.isfinite(v)]
            label = fork.label + (" (diverged)" if fork.diverged else "")
            colour = f"C{i % 10}"
            ax.plot(
                [n for n, _ in points],
                [v for _, v in points],
                color=colour,
                lw=1.6,
                marker="o",
                ms=2.5,
                label=label,
            )
            if fork.diverged:
                ax.plot([fork.losses[-1][0]], [top], "x", color=colour, ms=9, mew=2, clip_on=False)
        if logy:
            ax.set_yscale("log")
        ax.set_ylim(top=top)
        ax.set_xlabel("training examples seen")
        ax.set_ylabel("training loss (fixed evaluation set)")
        ax.set_title(f"Forked continuations, {self.examples:,} examples each")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = Path(path)
        image = path.suffix.lstrip(".") or "png"
        write_atomic(path, lambda f: figure.savefig(f, format=image), binary=True)
        return path

    def __repr__(self) -> str:
        best = self.best
        return (
            f"ProbeResult({len(self.forks)} forks of {self.examples:,} examples, best="
            f"{None if best is None else best.label!r}, not probed: "
            f"{len(self.not_probeable)})"
        )


def _num(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _plain(value: Any) -> Any:
    """``value`` with anything JSON cannot hold as its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


# --- fixes ---------------------------------------------------------------------------------


def _fix_label(fix: Mapping[str, Any]) -> str:
    if not fix:
        return "no change"
    parts = []
    if "optimizer" in fix:
        parts.append(str(fix["optimizer"]))
    for key, value in fix.items():
        if key == "optimizer":
            continue
        if key == "lr_scale":
            parts.append(
                f"lr x {value:g}" if isinstance(value, (int, float)) else f"lr x {value!r}"
            )
        elif key == "batch_size":
            parts.append(f"batch {value}")
        elif key in FIX_KEYS:
            parts.append(
                f"{key} {value:g}"
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                else f"{key} {value}"
            )
        else:
            parts.append(f"{key}={value!r}")
    return ", ".join(parts)


def _number(
    key: str, value: Any, low: float, *, inclusive: bool, below: float | None = None
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if inclusive else value > low)
    ok = ok and (below is None or value < below)
    if not ok:
        rule = f"{'>=' if inclusive else '>'} {low:g}" + (f" and < {below:g}" if below else "")
        raise ValueError(f"fix {key} must be a finite number {rule}, got {value!r}")
    return float(value)


def _check_fix(fix: Mapping[str, Any]) -> None:
    """``ValueError`` for a bad value of a known key (unknown keys are handled by the caller)."""
    if "lr" in fix and "lr_scale" in fix:
        raise ValueError(f"fix {dict(fix)!r} gives both lr and lr_scale; give one")
    if "lr" in fix:
        _number("lr", fix["lr"], 0, inclusive=False)
    if "lr_scale" in fix:
        _number("lr_scale", fix["lr_scale"], 0, inclusive=False)
    if "momentum" in fix:
        _number("momentum", fix["momentum"], 0, inclusive=True, below=1)
    if "weight_decay" in fix:
        _number("weight_decay", fix["weight_decay"], 0, inclusive=True)
    if fix.get("clip_norm") is not None:
        _number("clip_norm", fix["clip_norm"], 0, inclusive=False)
    if "batch_size" in fix:
        size = fix["batch_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"fix batch_size must be an integer >= 1, got {size!r}")
    if "optimizer" in fix:
        lookup(fix["optimizer"])


def _not_probeable(fix: Mapping[str, Any], optimizer: Optimizer) -> str | None:
    """Why ``fix`` cannot be run on ``optimizer``, or ``None``."""
    unknown = [k for k in fix if k not in FIX_KEYS]
    if unknown:
        hint = suggest(unknown[0], FIX_KEYS)
        return (
            f"{'keys' if len(unknown) > 1 else 'key'} {', '.join(map(repr, unknown))} "
            f"cannot be probed{hint} (probe-able: {', '.join(FIX_KEYS)})"
        )
    if "optimizer" in fix and lookup(fix["optimizer"]) is not type(optimizer):
        options = hyperparameters(fix["optimizer"])
        for key in ("momentum", "weight_decay"):
            if key in fix and key not in options:
                return f"{fix['optimizer']} has no {key}"
        return None
    name = type(optimizer).__name__
    for key in ("momentum", "weight_decay"):
        if key in fix and not all(key in g for g in optimizer.param_groups):
            return f"{name} has no {key}"
    return None


def _fixes(fixes: Sequence[Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """``(label, fix)`` pairs with unique labels (``ValueError`` for a malformed item)."""
    items = DEFAULT_FIXES if fixes is None else fixes
    if isinstance(items, Mapping) or isinstance(items, str):
        raise ValueError(
            f"fixes must be a sequence of dicts or (label, dict) pairs, got {type(items).__name__}"
        )
    out: list[tuple[str, dict[str, Any]]] = []
    seen = {BASELINE}
    for item in items:
        if (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Mapping)
        ):
            label, fix = item[0], dict(item[1])
        elif isinstance(item, Mapping):
            fix = dict(item)
            label = _fix_label(fix)
        else:
            raise ValueError(f"each fix must be a dict or a (label, dict) pair, got {item!r}")
        base, n = label, 2
        while label in seen:
            label, n = f"{base} #{n}", n + 1
        seen.add(label)
        out.append((label, fix))
    return out


# --- one fork ------------------------------------------------------------------------------


def _copy(model: nn.Module, optimizer: Optimizer) -> tuple[nn.Module, Optimizer]:
    """Deep copies of ``model`` and ``optimizer`` whose parameters are shared between the two
    (one memo: the optimizer's groups and state refer to the copied model's parameters)."""
    memo: dict[int, Any] = {}
    model_copy = copy.deepcopy(model, memo)
    return model_copy, copy.deepcopy(optimizer, memo)


def _apply(
    fix: Mapping[str, Any], opt: Optimizer, make_optimizer: Callable[..., Optimizer]
) -> tuple[Optimizer, float | None]:
    """The fork's optimizer with ``fix`` applied, and the clip norm the loop must apply itself
    (for optimizers without ravine's ``clip_norm``)."""
    clip = getattr(opt, "clip_norm", None) if isinstance(opt, optim.RavineOptimizer) else None
    if "clip_norm" in fix:
        clip = None if fix["clip_norm"] is None else float(fix["clip_norm"])
    name = fix.get("optimizer")
    if name is not None and lookup(name) is not type(opt):
        to_true = getattr(opt, "to_true_params", None)
        if to_true is not None:
            to_true()
        lr = fix.get("lr", hyperparameters(name)["lr"] * fix.get("lr_scale", 1.0))
        hp: dict[str, Any] = {"lr": lr}
        if "momentum" in fix:
            hp["momentum"] = fix["momentum"]
        groups = []
        for group in opt.param_groups:
            new = {"params": group["params"]}
            if "weight_decay" in fix or "weight_decay" in group:
                new["weight_decay"] = fix.get("weight_decay", group.get("weight_decay"))
            groups.append(new)
        opt = make_optimizer(name, groups, clip_norm=clip, **hp)
        return opt, None
    for group in opt.param_groups:
        if "lr" in fix:
            group["lr"] = float(fix["lr"])
        elif "lr_scale" in fix:
            group["lr"] = group["lr"] * float(fix["lr_scale"])
        for key in ("momentum", "weight_decay"):
            if key in fix:
                group[key] = float(fix[key])
    if isinstance(opt, optim.RavineOptimizer):
        opt.clip_norm = clip
        return opt, None
    return opt, clip


def _head(batch: Any, k: int) -> Any:
    """The first ``k`` examples of ``batch`` (every tensor cut along its first dimension)."""
    if isinstance(batch, Tensor):
        return batch[:k] if batch.dim() > 0 else batch
    if isinstance(batch, Mapping):
        return type(batch)({key: _head(v, k) for key, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_head(v, k) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_head(v, k) for v in batch)
    return batch


def _minibatches(
    data: Any, batch_size: int, total: int, seed: int, device: torch.device
) -> Iterator[tuple[Any, int]]:
    """``(batch, examples)`` on ``device`` until ``total`` examples: the seeded epoch order of
    :class:`~ravine.data.EpochBatches` (the same for every batch size), cut in blocks."""
    source = training_source(
        data,
        batch_size=batch_size,
        batching="epoch",
        seed=seed,
        rank=0,
        world_size=1,
        device=device,
    )
    seen = 0
    while seen < total:
        for micro, _ in source:
            batch = micro[0]
            n = batch_examples(batch)
            if seen + n > total:
                n = total - seen
                batch = _head(batch, n)
            yield to_device(batch, device), n
            seen += n
            if seen >= total:
                return


def _loss_function(
    loss_fn: Callable[..., Tensor] | None, compute_loss: Callable[..., Any] | None
) -> Callable[[nn.Module, Any], Tensor]:
    if (loss_fn is None) == (compute_loss is None):
        raise ValueError(
            "give exactly one of loss_fn=fn(output, target) and compute_loss=fn(model, batch)"
        )
    if compute_loss is not None:

        def batch_loss(model: nn.Module, batch: Any) -> Tensor:
            out = compute_loss(model, batch)
            return out[0] if isinstance(out, tuple) else out
    else:

        def batch_loss(model: nn.Module, batch: Any) -> Tensor:
            x, y = batch
            return loss_fn(model(x), y)

    return batch_loss


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    opt: Optimizer,
    batches: list[tuple[Any, int]],
    batch_loss: Callable[[nn.Module, Any], Tensor],
) -> float:
    """Mean loss over the evaluation batches, in eval mode, at the true parameters.

    Batch means are weighted by batch size in float64; one batch's mean is returned as it is
    (``mean × n / n`` could differ from it in the last bit).
    """
    was_training = model.training
    model.eval()
    losses = []
    try:
        with optim.true_params(opt):
            for batch, n in batches:
                losses.append((batch_loss(model, batch).detach().double().cpu(), n))
    finally:
        model.train(was_training)
    if len(losses) == 1:
        return float(losses[0][0])
    return float(sum(loss * n for loss, n in losses) / sum(n for _, n in losses))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Plan:
    """What every fork shares: the data, the budget, the evaluation and the seed."""

    data: Any
    total: int
    eval_every: int
    eval_set: list[tuple[Any, int]]
    batch_loss: Callable[[nn.Module, Any], Tensor]
    seed: int
    device: torch.device
    make_optimizer: Callable[..., Optimizer]


def _start(
    model: nn.Module, optimizer: Optimizer, fix: Mapping[str, Any], plan: _Plan
) -> tuple[nn.Module, Optimizer, float | None]:
    """A fork's model and optimizer (copies, on the plan's device, ``fix`` applied) and the
    clip norm its loop applies."""
    model_copy, opt_copy = _copy(model, optimizer)
    if any(p.device != plan.device for p in model_copy.parameters()):
        model_copy.to(plan.device)
        # Loading moves the state to the parameters' device.
        opt_copy.load_state_dict(opt_copy.state_dict())
    opt_copy, clip = _apply(fix, opt_copy, plan.make_optimizer)
    model_copy.train()
    return model_copy, opt_copy, clip


def _step(
    model: nn.Module,
    opt: Optimizer,
    batch: Any,
    batch_loss: Callable[[nn.Module, Any], Tensor],
    clip: float | None,
) -> None:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = batch_loss(model, batch)
        loss.backward()
        if clip is not None:
            optim.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        return loss

    opt.step(closure)


def _run_fork(
    fork: Fork,
    model: nn.Module,
    optimizer: Optimizer,
    plan: _Plan,
    tick: Callable[[int], None],
) -> None:
    """Train ``fork`` from copies of ``model`` and ``optimizer``, filling in its record.

    One untimed step on a throw-away copy first, so that one-time costs (first kernel calls,
    ``torch.compile``) do not count against the fork's seconds.
    """
    first = next(_minibatches(plan.data, fork.batch_size, plan.total, plan.seed, plan.device))
    warm, warm_opt, clip = _start(model, optimizer, fork.fix, plan)
    torch.manual_seed(plan.seed)
    _step(warm, warm_opt, first[0], plan.batch_loss, clip)
    del warm, warm_opt, first
    net, opt, clip = _start(model, optimizer, fork.fix, plan)
    fork.optimizer = type(opt).__name__
    fork.lr = float(opt.param_groups[0]["lr"])
    torch.manual_seed(plan.seed)
    fork.losses.append((0, _evaluate(net, opt, plan.eval_set, plan.batch_loss)))
    if not math.isfinite(fork.losses[0][1]):
        fork.diverged = True
        tick(plan.total)
        return
    limit = BLOWUP * max(abs(fork.losses[0][1]), 1.0)
    mark = plan.eval_every
    started = time.perf_counter()
    for batch, n in _minibatches(plan.data, fork.batch_size, plan.total, plan.seed, plan.device):
        _step(net, opt, batch, plan.batch_loss, clip)
        fork.steps += 1
        fork.examples += n
        tick(n)
        if fork.examples >= mark or fork.examples == plan.total:
            _sync(plan.device)
            fork.seconds += time.perf_counter() - started
            loss = _evaluate(net, opt, plan.eval_set, plan.batch_loss)
            fork.losses.append((fork.examples, loss))
            if not math.isfinite(loss) or abs(loss) > limit:
                fork.diverged = True
                tick(plan.total - fork.examples)
                return
            while mark <= fork.examples:
                mark += plan.eval_every
            started = time.perf_counter()


# --- the entry point -----------------------------------------------------------------------


def _eval_set(data: Any, eval_data: Any, seed: int, device: torch.device) -> list[tuple[Any, int]]:
    """The evaluation batches, on ``device``, built once (every fork sees the same batches)."""
    if eval_data is None:
        tensors = as_tensors(data)
        n = tensors[0].shape[0] if tensors is not None else len(data)
        idx = fixed_examples(n, EVAL_EXAMPLES, seed)
        eval_data = (
            (tensors[0][idx], tensors[1][idx])
            if tensors is not None
            else Subset(data, idx.tolist())
        )
    batches = [
        to_device(b, device)
        for b in eval_batches(
            eval_data,
            name="eval_data",
            batch_size=EVAL_BATCH_SIZE,
            rank=0,
            world_size=1,
            device=device,
        )
    ]
    out = [(b, batch_examples(b)) for b in batches]
    if not out or sum(n for _, n in out) == 0:
        raise ValueError("eval_data holds no examples")
    return out


class _Bar:
    """A rich progress bar over all forks' examples (rich imported only when shown)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]probe {task.fields[fork]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task("probe", total=total, fork="")
        self.progress.start()

    def __call__(self, label: str, advance: int) -> None:
        self.progress.update(self.task, advance=advance, fork=label)

    def close(self) -> None:
        self.progress.stop()


def probe(
    model: nn.Module,
    optimizer: Optimizer,
    data: Any,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    compute_loss: Callable[..., Any] | None = None,
    fixes: Sequence[Any] | None = None,
    steps: int = 200,
    batch_size: int | None = None,
    eval_data: Any = None,
    eval_every: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    make_optimizer: Callable[..., Optimizer] | None = None,
    progress: bool | Callable[[str, int], None] = False,
) -> ProbeResult:
    """Fork short continuations of training, one per fix, and rank them (module docstring).

    Args:
        model: the network as it is now (not modified).
        optimizer: its optimizer with its current state (not modified); any torch optimizer.
        data: training data: a pair ``(x, y)`` of tensors, a :class:`ravine.data.ArrayDataset`,
            a ``TensorDataset`` or a map-style ``Dataset`` of ``(x, y)`` items (with
            ``compute_loss``: of any items ``default_collate`` handles).
        loss_fn: ``loss_fn(model(x), y)`` -> batch-mean loss; or
        compute_loss: ``fn(model, batch)`` -> batch-mean loss (or ``(loss, metrics)``).
        fixes: dicts of :data:`FIX_KEYS` (or ``(label, dict)`` pairs); default
            :data:`DEFAULT_FIXES` (lr × 0.5, lr × 2). The baseline always runs first.
        steps: baseline optimizer steps; every fork trains on ``steps × batch_size`` examples.
        batch_size: the baseline's minibatch size (the one training uses).
        eval_data: where the loss is measured (any form of ``data``); default: a fixed seeded
            subset of ``data`` of at most :data:`EVAL_EXAMPLES` examples.
        eval_every: examples between measurements (default: about 20 points per fork).
        seed: seed of the example order, the evaluation subset and the forks' random streams.
        device: where the forks train (default: the model's device).
        make_optimizer: ``make_optimizer(name, param_groups, **hp)`` builds the optimizer of a
            fix that switches optimizer (default :func:`ravine.optim.create`); the groups carry
            ``params`` and ``weight_decay``, ``hp`` is ``lr``, ``clip_norm`` and ``momentum``
            when the fix gives it.
        progress: ``True`` shows a rich progress bar on standard error; a callable is called
            as ``progress(fork_label, examples_advanced)``.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: a bad argument or fix value (unknown fix *keys* are listed in
            ``not_probeable`` instead), or data that cannot be indexed (a DataLoader or stream).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if batch_size is None:
        raise ValueError(
            "batch_size is needed: the baseline continues with the minibatch size training uses"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if eval_every is not None and (
        not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 1
    ):
        raise ValueError(f"eval_every must be an integer >= 1 (examples), got {eval_every!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(data, (DataLoader, IterableDataset)):
        raise ValueError(
            f"probe needs data it can index to give every fork the same examples "
            f"(tensors or a map-style Dataset), got {type(data).__name__}"
        )
    batch_loss = _loss_function(loss_fn, compute_loss)
    make = optim.create if make_optimizer is None else make_optimizer
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)

    runnable: list[tuple[str, dict[str, Any]]] = [(BASELINE, {})]
    skipped: list[tuple[str, dict[str, Any], str]] = []
    for label, fix in _fixes(fixes):
        reason = _not_probeable(fix, optimizer)
        if reason is None:
            _check_fix(fix)
            runnable.append((label, fix))
        else:
            skipped.append((label, fix, reason))

    total = steps * batch_size
    if eval_every is None:
        eval_every = math.ceil(steps / EVAL_POINTS) * batch_size
    eval_set = _eval_set(data, eval_data, seed, device)
    plan = _Plan(data, total, eval_every, eval_set, batch_loss, seed, device, make)
    cuda = (
        []
        if device.type != "cuda"
        else [device.index if device.index is not None else torch.cuda.current_device()]
    )
    bar = _Bar(total * len(runnable)) if progress is True else None
    report = bar if bar is not None else (progress if callable(progress) else None)
    forks = []
    try:
        for label, fix in runnable:
            fork = Fork(
                label,
                fix,
                type(optimizer).__name__,
                math.nan,
                int(fix.get("batch_size", batch_size)),
            )

            def tick(n: int, label: str = label) -> None:
                if report is not None:
                    report(label, n)

            with torch.random.fork_rng(devices=cuda):
                _run_fork(fork, model, optimizer, plan, tick)
            forks.append(fork)
    finally:
        if bar is not None:
            bar.close()
    base = forks[0]
    for fork in forks[1:]:
        fork.helped = (
            False if fork.diverged else True if base.diverged else fork.final_loss < base.final_loss
        )
    return ProbeResult(forks, skipped, total, batch_size, sum(n for _, n in eval_set), seed)
