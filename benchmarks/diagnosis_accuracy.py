"""Does ``diagnose`` name the pathology that is actually there, and does its fix help?

A suite of planted pathologies (issue 11, "Proof"): each case builds a small network on a
subset of MNIST-1D, plants one thing that is wrong and keeps everything else healthy (SGD at a
quarter of its stability bound ``2/λmax``, batch 32), calls
``ravine.diagnostics.diagnose(model, loss_fn, data, optimizer=opt, batch_size=m, seed=s,
history=...)`` and records the ranked finding codes. Then it follows the top finding's ``fix``
with ``ravine.diagnostics.probe`` (one fork with the fix, one baseline without it, the same
examples from the same start) and records whether the fix lowered the training loss.

Planted pathologies (the planting is measured independently of ``diagnose``: stability bounds
by :func:`ravine.diagnostics.sharpness.step_size` on all the examples at Lanczos tolerance 1e-4,
``diagnose`` uses 256 examples and tolerance 1e-2):

==========================  ================================================================
lr-too-high (sgd)           SGD with lr = 4 x 2/λmax
lr-too-high (momentum)      heavy ball α = 0.9 with lr = 4 x 2(1+α)/λmax
lr-too-high (adam)          Adam after 5 steps at lr 1e-3, then lr = 4 x its edge
                            (2+2β1)/((1-β1) λmax(P^-1/2 H P^-1/2))
lr-too-low                  SGD with lr = 1e-3 x (half the bound): 1000x too small
batch-too-small             a network trained to a low loss (where gradient noise dominates the
                            mean gradient), then SGD with batch 1
ill-conditioned             inputs rescaled feature by feature from 1x to 100x (κ of the input
                            covariance > 1e4), SGD tuned to the edge: lr = 0.8 x bound
saddle                      a one-hidden-layer tanh network at a tiny initialization (all
                            parameters x 1e-3, output bias at the log class prior): with zero
                            weights that is a strict saddle of a two-layer net
dead-units                  ReLU network with half the units of every hidden layer given a bias
                            of -100 (zero on every example)
exploding-gradients         deep tanh chain (20 layers) initialized in the chaotic phase,
                            weights N(0, 6²/fan_in); history from 10 real SGD steps
clipping-always             clip_norm = 5% of the gradient norm; history (clip fraction, norms)
                            from 10 real SGD steps
==========================  ================================================================

Architectures: an MLP (two ReLU layers of 32; depth and activation as the case needs) and a 1-D
CNN (two conv layers of 8 channels, no normalization); float64; 512 examples per seed.

Run: ``python benchmarks/diagnosis_accuracy.py [--quick] [--seeds 3] [--only CODE]
[--steps 200] [--threads 1]``. Writes benchmarks/results/diagnosis_accuracy.md (not with
``--only``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ravine import data, models, optim
from ravine.diagnostics import diagnose, probe
from ravine.diagnostics.sharpness import step_size

RESULTS = Path(__file__).parent / "results" / "diagnosis_accuracy.md"
ARCHS = ("mlp", "cnn")
EXAMPLES = 512
BATCH = 32
#: Healthy settings: SGD at this fraction of its stability bound.
HEALTHY_FRACTION = 0.25
#: lr-too-high cases plant the learning rate at this multiple of the bound.
TOO_HIGH = 4.0
#: lr-too-low: this fraction of a good learning rate (half the bound).
TOO_LOW = 1e-3
HISTORY_STEPS = 10
#: The exploding chain: tanh layers with weights N(0, gain²/fan_in), deep in the chaotic phase
#: (gain > 1), where gradients grow by a constant factor per layer toward the input.
EXPLODING_DEPTH = 20
EXPLODING_GAIN = 6.0


@dataclass
class Setup:
    """One planted case, ready for ``diagnose`` and ``probe``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: Tensor
    y: Tensor
    batch_size: int = BATCH
    history: dict[str, Any] | None = None
    planted: dict[str, float] = field(default_factory=dict)


# --- data and architectures --------------------------------------------------------------


def mnist1d_subset(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` standardized MNIST-1D training signals (float64), a seeded subset."""
    splits = data.load("mnist1d", seed=0, val_fraction=0.0, standardize=True, dtype=torch.float64)
    x, y = splits.train.x, splits.train.y
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[keep], y[keep]


def build(arch: str, *, depth: int = 2, activation: str = "relu") -> nn.Module:
    """The MLP (width 32) or the 1-D CNN (8 channels, kernel 5), no normalization, float64."""
    if arch == "mlp":
        net = models.mlp(40, [32] * depth, 10, activation=activation)
    else:
        net = models.cnn1d(40, 10, channels=(8,) * depth, norm="none", activation=activation)
    return net.double()


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The linear / conv layers before each activation (input to output)."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d))][:-1]


def bound(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> float:
    """The optimizer's stability bound, measured on all examples (tight Lanczos tolerance)."""
    return float(step_size(model, F.cross_entropy, (x, y), opt, tol=1e-4, max_hvps=300)["lr_bound"])


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def healthy_sgd(model: nn.Module, x: Tensor, y: Tensor, **kw: Any) -> optim.SGD:
    opt = optim.SGD(model.parameters(), lr=1.0, **kw)
    set_lr(opt, HEALTHY_FRACTION * bound(model, opt, x, y))
    return opt


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    steps: int,
    m: int,
    seed: int,
) -> dict[str, Any]:
    """``steps`` real training steps on seeded minibatches; the history a monitor would keep."""
    gen = torch.Generator().manual_seed(seed)
    losses, norms, clipped = [], [], []
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (m,), generator=gen)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        norms.append(opt.last_grad_norm)
        clipped.append(bool(opt.last_clipped))
    history: dict[str, Any] = {"loss_history": losses, "grad_norm_history": norms}
    if opt.clip_norm is not None:
        history.update(clip_fraction=sum(clipped) / steps, clip_norm=opt.clip_norm)
    return history


# --- the planted pathologies ---------------------------------------------------------------


def lr_too_high(kind: str) -> Callable[[str, Tensor, Tensor, int], Setup]:
    def plant(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
        model = build(arch)
        if kind == "sgd":
            opt: torch.optim.Optimizer = optim.SGD(model.parameters(), lr=1.0)
        elif kind == "momentum":
            opt = optim.Momentum(model.parameters(), lr=1.0, momentum=0.9)
        else:
            opt = optim.Adam(model.parameters(), lr=1e-3, track_grad_norm=True)
            train_steps(model, opt, x, y, 5, BATCH, seed)
        b = bound(model, opt, x, y)
        set_lr(opt, TOO_HIGH * b)
        return Setup(model, opt, x, y, planted={"lr_bound": b, "lr": TOO_HIGH * b})

    return plant


def lr_too_low(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
    model = build(arch)
    opt = optim.SGD(model.parameters(), lr=1.0)
    b = bound(model, opt, x, y)
    set_lr(opt, TOO_LOW * 0.5 * b)
    return Setup(model, opt, x, y, planted={"lr_bound": b, "lr": TOO_LOW * 0.5 * b})


def batch_too_small(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
    model = build(arch)
    pre = optim.Adam(model.parameters(), lr=1e-2, track_grad_norm=True)
    train_steps(model, pre, x, y, 300, 64, seed)
    opt = healthy_sgd(model, x, y)
    return Setup(model, opt, x, y, batch_size=1, planted={"pretrain_steps": 300})


def ill_conditioned(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
    scale = torch.logspace(0, 2, x.shape[1], dtype=x.dtype)
    x = x * scale[torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))]
    cov = torch.cov(x.T)
    eig = torch.linalg.eigvalsh(cov)
    model = build(arch)
    opt = optim.SGD(model.parameters(), lr=1.0)
    b = bound(model, opt, x, y)
    set_lr(opt, 0.8 * b)
    return Setup(model, opt, x, y, planted={"input_kappa": float(eig[-1] / eig[0])})


def saddle(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
    model = build(arch, depth=1, activation="tanh")
    out = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    prior = torch.bincount(y, minlength=out.bias.shape[0]).to(x.dtype) / y.shape[0]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-3)
        # The best constant predictor: with every weight 0 this point is an exact critical
        # point (zero gradient) with Hessian eigenvalues ±σ of the cross-covariance.
        out.bias.copy_(prior.clamp_min(1e-12).log())
    return Setup(model, healthy_sgd(model, x, y), x, y)


def dead_units(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
    model = build(arch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in hidden_layers(model):
            units = layer.bias.shape[0]
            dead = torch.randperm(units, generator=gen)[: units // 2]
            layer.bias[dead] = -100.0
    return Setup(model, healthy_sgd(model, x, y), x, y, planted={"dead_fraction": 0.5})


def exploding(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
    model = build(arch, depth=EXPLODING_DEPTH, activation="tanh")
    with torch.no_grad():
        for layer in hidden_layers(model):
            fan_in = layer.weight[0].numel()
            layer.weight.normal_(0.0, EXPLODING_GAIN / math.sqrt(fan_in))
    opt = healthy_sgd(model, x, y, track_grad_norm=True)
    history = train_steps(model, opt, x, y, HISTORY_STEPS, BATCH, seed)
    return Setup(model, opt, x, y, history=history)


def clipping(arch: str, x: Tensor, y: Tensor, seed: int) -> Setup:
    model = build(arch)
    opt = healthy_sgd(model, x, y)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    model.zero_grad()
    opt.clip_norm = 0.05 * norm
    history = train_steps(model, opt, x, y, HISTORY_STEPS, BATCH, seed)
    return Setup(model, opt, x, y, history=history, planted={"clip_norm": opt.clip_norm})


#: (case name, planted code, plant(arch, x, y, seed) -> Setup)
CASES: list[tuple[str, str, Callable[[str, Tensor, Tensor, int], Setup]]] = [
    ("lr-too-high (sgd)", "lr-too-high", lr_too_high("sgd")),
    ("lr-too-high (momentum)", "lr-too-high", lr_too_high("momentum")),
    ("lr-too-high (adam)", "lr-too-high", lr_too_high("adam")),
    ("lr-too-low", "lr-too-low", lr_too_low),
    ("batch-too-small", "batch-too-small", batch_too_small),
    ("ill-conditioned", "ill-conditioned", ill_conditioned),
    ("saddle", "saddle", saddle),
    ("dead-units", "dead-units", dead_units),
    ("exploding-gradients", "exploding-gradients", exploding),
    ("clipping-always", "clipping-always", clipping),
]


# --- running one case ----------------------------------------------------------------------


@dataclass
class Outcome:
    case: str
    planted: str
    arch: str
    seed: int
    codes: list[str]
    seconds: float
    fix: dict[str, Any]
    probe: str  # "helped", "did not help", "not probe-able", "no fix", "skipped"
    losses: tuple[float, float] | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> bool:
        return self.codes[:1] == [self.planted]

    @property
    def top2(self) -> bool:
        return self.planted in self.codes[:2]


KEY_NUMBERS = (
    "lr_ratio",
    "sharpness",
    "lambda_min",
    "b_simple",
    "b_simple_low",
    "dead_fraction",
    "grad_norm",
    "loss",
)


def run_case(
    name: str,
    code: str,
    plant: Callable[[str, Tensor, Tensor, int], Setup],
    arch: str,
    seed: int,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
) -> Outcome:
    """Plant, diagnose, and probe the top finding's fix; everything seeded with ``seed``."""
    torch.manual_seed(seed)
    s = plant(arch, x, y, seed)
    start = time.perf_counter()
    d = diagnose(
        s.model,
        F.cross_entropy,
        (s.x, s.y),
        optimizer=s.optimizer,
        batch_size=s.batch_size,
        seed=seed,
        history=s.history,
    )
    seconds = time.perf_counter() - start
    top = d.top
    fix = dict(top.fix) if top is not None else {}
    numbers = {k: d.numbers[k] for k in KEY_NUMBERS if isinstance(d.numbers.get(k), float)}
    numbers.update(s.planted)
    verdict, losses = "no fix", None
    if fix and steps > 0:
        result = probe(
            s.model,
            s.optimizer,
            (s.x, s.y),
            loss_fn=F.cross_entropy,
            fixes=[fix],
            steps=steps,
            batch_size=s.batch_size,
            seed=seed,
        )
        if result.not_probeable:
            verdict = "not probe-able"
        else:
            base, forked = result.forks
            verdict = "helped" if forked.helped else "did not help"
            losses = (base.final_loss, forked.final_loss)
    elif fix:
        verdict = "skipped"
    return Outcome(name, code, arch, seed, d.codes, seconds, fix, verdict, losses, numbers)


# --- the report ----------------------------------------------------------------------------


def _rate(hits: int, total: int) -> str:
    return f"{hits}/{total} ({100 * hits / total:.0f}%)" if total else "—"


def _fix_text(fix: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in fix.items()) or "—"


def _loss(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def report(outcomes: list[Outcome], *, header: str) -> str:
    n = len(outcomes)
    top1 = sum(o.top1 for o in outcomes)
    top2 = sum(o.top2 for o in outcomes)
    verdicts = [o.probe for o in outcomes]
    probed = [o for o in outcomes if o.probe in ("helped", "did not help")]
    helped = sum(o.probe == "helped" for o in probed)
    lines = [
        "# Diagnosis accuracy on planted pathologies (`benchmarks/diagnosis_accuracy.py`)",
        "",
        header,
        "",
        "| measure | result | goal |",
        "|---|---|---|",
        f"| planted code is the top finding | {_rate(top1, n)} | >= 90% |",
        f"| planted code among the first two | {_rate(top2, n)} | 100% |",
        f"| top finding's fix lowered the loss (probe, fix fork vs baseline) | "
        f"{_rate(helped, len(probed))} of the probed | >= 80% |",
        f"| top fix not probe-able / no fix given | {verdicts.count('not probe-able')} / "
        f"{verdicts.count('no fix')} of {n} | — |",
        f"| diagnose seconds per case: median (max) | "
        f"{statistics.median(o.seconds for o in outcomes):.2f} "
        f"({max(o.seconds for o in outcomes):.2f}) | — |",
        "",
        "## Per case",
        "",
        "| case | arch | top-1 | top-2 | fix helped | not probe-able / no fix | diagnose s "
        "(median) | top findings (first seed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((o.case, o.arch) for o in outcomes))
    for case, arch in keys:
        group = [o for o in outcomes if (o.case, o.arch) == (case, arch)]
        g_probed = [o for o in group if o.probe in ("helped", "did not help")]
        lines.append(
            f"| {case} | {arch} | {sum(o.top1 for o in group)}/{len(group)} | "
            f"{sum(o.top2 for o in group)}/{len(group)} | "
            f"{sum(o.probe == 'helped' for o in g_probed)}/{len(g_probed)} | "
            f"{sum(o.probe == 'not probe-able' for o in group)} / "
            f"{sum(o.probe == 'no fix' for o in group)} | "
            f"{statistics.median(o.seconds for o in group):.2f} | "
            f"{', '.join(group[0].codes[:3])} |"
        )
    planted = list(dict.fromkeys(o.planted for o in outcomes))
    found = list(dict.fromkeys(o.codes[0] if o.codes else "none" for o in outcomes))
    found = [c for c in planted if c in found] + [c for c in found if c not in planted]
    lines += [
        "",
        "## Confusion: planted code (rows) x top finding (columns)",
        "",
        "| planted \\ top | " + " | ".join(found) + " |",
        "|---|" + "---:|" * len(found),
    ]
    for p in planted:
        row = [o for o in outcomes if o.planted == p]
        counts = [sum((o.codes[:1] or ["none"])[0] == c for o in row) for c in found]
        lines.append(f"| {p} | " + " | ".join(str(c) if c else "·" for c in counts) + " |")
    misses = [o for o in outcomes if not o.top1]
    lines += ["", "## Misses (planted code not first)", ""]
    if not misses:
        lines.append("None.")
    for o in misses:
        nums = ", ".join(f"{k}={v:.3g}" for k, v in o.numbers.items())
        lines.append(
            f"- {o.case}, {o.arch}, seed {o.seed}: ranked {', '.join(o.codes) or 'nothing'} "
            f"({nums})"
        )
    unhelpful = [o for o in outcomes if o.probe == "did not help"]
    lines += ["", "## Fixes that did not help", ""]
    if not unhelpful:
        lines.append("None.")
    for o in unhelpful:
        base, fork = o.losses or (math.nan, math.nan)
        lines.append(
            f"- {o.case}, {o.arch}, seed {o.seed}: top {o.codes[0]}, fix {_fix_text(o.fix)}: "
            f"loss {_loss(fork)} vs baseline {_loss(base)}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, the MLP only, 50 steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default=None, help="one planted code (or case name)")
    parser.add_argument("--steps", type=int, default=200, help="probe steps per fork")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    seeds = range(1 if args.quick else args.seeds)
    archs = ARCHS[:1] if args.quick else ARCHS
    steps = 50 if args.quick else args.steps
    cases = CASES
    if args.only is not None:
        cases = [c for c in CASES if args.only in (c[0], c[1])]
        if not cases:
            names = sorted({c[1] for c in CASES})
            parser.error(f"--only must be one of {', '.join(names)}, got {args.only!r}")
    started = time.perf_counter()
    outcomes = []
    for seed in seeds:
        x, y = mnist1d_subset(EXAMPLES, seed)
        for name, code, plant in cases:
            for arch in archs:
                o = run_case(name, code, plant, arch, seed, x, y, steps=steps)
                outcomes.append(o)
                mark = "ok" if o.top1 else ("top-2" if o.top2 else "MISS")
                print(
                    f"{name:24s} {arch:4s} seed {seed}: {mark:5s} {', '.join(o.codes[:3]):50s} "
                    f"{o.seconds:5.2f} s  fix {_fix_text(o.fix)}: {o.probe}",
                    flush=True,
                )
    total = time.perf_counter() - started
    command = "python benchmarks/diagnosis_accuracy.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    header = (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s), "
        f"torch {torch.__version__}, load average {load:.1f} at the end. "
        f"Command: `{command.strip()}`; {datetime.date.today().isoformat()}; "
        f"{total:.0f} s in all.\n\n"
        f"{len(cases)} planted pathologies x {len(archs)} architecture(s) x {len(seeds)} seed(s) "
        f"= {len(outcomes)} cases; MNIST-1D, {EXAMPLES} examples per seed, float64; "
        f"`diagnose` with its default budget; `probe` of the top finding's fix for {steps} steps "
        "at the case's batch size (fix fork vs baseline fork, same examples, same start)."
    )
    text = report(outcomes, header=header)
    print()
    print(text)
    if args.only is None:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
