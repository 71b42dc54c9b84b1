"""cliffs-clipping: a steep cliff sends a gradient step far away; clipping the norm prevents it.

The lecture ("Gradient clipping"): where the curvature is very large the gradient is huge, and
a gradient step of the usual learning rate throws the parameters far away; clipping computes the
gradient as usual and re-normalizes it to norm ``clip_norm`` when it exceeds the threshold,
``g ← g · clip_norm / |g|`` (``ravine.optim.SGD(clip_norm=...)``).

The cliff is that of Pascanu, Mikolov & Bengio (2013, fig. 6; the source of the book's cliff
figure): one recurrent unit run for T = 50 steps,

.. math:: x_t = w\\,\\sigma(x_{t-1}) + b,\\quad x_0 = 0.5,\\qquad L(w, b) = (x_T - 0.7)^2,

whose loss jumps across the line in the (w, b) plane where the recurrence changes from one
stable fixed point to two (a bifurcation): there the derivative of x_T grows without bound.
Plain gradient descent (ε = ``LR``) and the same with ``clip_norm = CLIP`` start from the same
random points on the low side of the cliff (w ∈ [5, 9], b ∈ [−6, −5]) and climb towards it.

Measured per step: the loss, the pre-clip gradient norm (``optimizer.last_grad_norm``) and the
step length |Δθ|. A *jump* is a step longer than ``JUMP`` = 1 (a fifth of the start region's
width; the clipped step is at most ε·CLIP = 0.2 by construction). Agreement: more than half of
the plain runs jump at least once, and the clipped runs end at a loss no worse (median over
starts) than 10x the plain runs' median.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ravine import optim
from ravine.gallery import Figure
from ravine.gallery._common import figure, save

NAME = "cliffs-clipping"
ORDER = 70
CLAIM = (
    "A steep cliff of the loss sends a gradient step far away; clipping the gradient's norm "
    "prevents the jump."
)
T = 50
LR = 0.02
CLIP = 10.0
JUMP = 1.0


class Recurrence(nn.Module):
    """x_t = w σ(x_{t−1}) + b for T steps from x_0; the output is x_T."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for _ in range(T):
            x = self.w * torch.sigmoid(x) + self.b
        return x


def landscape(w: Tensor, b: Tensor) -> Tensor:
    """The loss on a grid of (w, b) (the same recurrence, vectorized)."""
    x = torch.full_like(w, 0.5)
    for _ in range(T):
        x = w * torch.sigmoid(x) + b
    return (x - 0.7) ** 2


def _train(start: Tensor, steps: int, clip: float | None) -> dict[str, list[float]]:
    net = Recurrence(float(start[0]), float(start[1]))
    opt = optim.SGD(net.parameters(), lr=LR, clip_norm=clip, track_grad_norm=True)
    x0 = torch.tensor(0.5, dtype=torch.float64)
    trace: dict[str, list[float]] = {"loss": [], "norm": [], "step": [], "w": [], "b": []}
    for _ in range(steps):
        before = torch.stack([net.w.detach(), net.b.detach()])
        opt.zero_grad()
        loss = (net(x0) - 0.7) ** 2
        loss.backward()
        opt.step()
        after = torch.stack([net.w.detach(), net.b.detach()])
        trace["loss"].append(float(loss.detach()))
        trace["norm"].append(float(opt.last_grad_norm))
        trace["step"].append(float((after - before).norm()))
        trace["w"].append(float(before[0]))
        trace["b"].append(float(before[1]))
    with torch.no_grad():
        trace["final_loss"] = [float((net(x0) - 0.7) ** 2)]
    return trace


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Plain and clipped gradient descent from the same starts; landscape, traces, norms."""
    n_starts, steps = (3, 150) if quick else (8, 300)
    generator = torch.Generator().manual_seed(seed)
    low = torch.tensor([5.0, -6.0], dtype=torch.float64)
    width = torch.tensor([4.0, 1.0], dtype=torch.float64)
    starts = [
        low + width * torch.rand(2, generator=generator, dtype=torch.float64)
        for _ in range(n_starts)
    ]
    runs = {
        "plain": [_train(s, steps, None) for s in starts],
        "clipped": [_train(s, steps, CLIP) for s in starts],
    }
    labels = {"plain": f"plain GD (ε = {LR:g})", "clipped": f"clipped at |g| = {CLIP:g}"}
    colors = {"plain": "C3", "clipped": "C0"}

    fig, axes = figure(1, 3, size=(15.0, 4.4))
    ax = axes[0][0]
    w, b = torch.meshgrid(
        torch.linspace(-1, 10, 300, dtype=torch.float64),
        torch.linspace(-6.5, 1, 300, dtype=torch.float64),
        indexing="xy",
    )
    surface = ax.contourf(
        w.numpy(), b.numpy(), np.log10(landscape(w, b).numpy() + 1e-8), 40, cmap="viridis"
    )
    fig.colorbar(surface, ax=ax, label="log10 loss")
    for method, traces in runs.items():
        for i, trace in enumerate(traces):
            ax.plot(
                trace["w"],
                trace["b"],
                ".-",
                ms=2,
                lw=0.8,
                color=colors[method],
                label=labels[method] if i == 0 else None,
            )
    ax.set_xlim(-1, 10)
    ax.set_ylim(-6.5, 1)
    ax.set_xlabel("w")
    ax.set_ylabel("b")
    ax.set_title("the cliff and the paths taken")
    ax.legend(fontsize=8, loc="upper right")
    for method, traces in runs.items():
        for i, trace in enumerate(traces):
            label = labels[method] if i == 0 else None
            axes[0][1].semilogy(trace["loss"], color=colors[method], lw=0.8, label=label)
            axes[0][2].semilogy(trace["norm"], color=colors[method], lw=0.8, label=label)
    axes[0][2].axhline(CLIP, color="k", ls=":", lw=1, label="clip threshold")
    axes[0][1].set_ylim(1e-8, None)
    axes[0][2].set_ylim(1e-3, None)
    axes[0][1].set_ylabel("loss")
    axes[0][1].set_title("loss per step")
    axes[0][2].set_ylabel("gradient norm before clipping")
    axes[0][2].set_title("gradient norm per step")
    for ax in axes[0][1:]:
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    image = save(fig, out_dir / f"{NAME}.png")

    def longest(method: str) -> np.ndarray:
        return np.array([max(t["step"]) for t in runs[method]])

    def finals(method: str) -> np.ndarray:
        return np.array([t["final_loss"][0] for t in runs[method]])

    jumped = longest("plain") > JUMP
    max_norm = {m: max(max(t["norm"]) for t in runs[m]) for m in runs}
    agrees = bool(
        jumped.mean() > 0.5
        and np.median(finals("clipped")) <= 10 * max(np.median(finals("plain")), 1e-12)
    )
    measured = (
        f"{int(jumped.sum())} of {n_starts} plain runs jump (longest step "
        f"{longest('plain').max():.3g}, median of the runs' longest "
        f"{np.median(longest('plain')):.3g}; "
        f"largest gradient norm {max_norm['plain']:.3g}); the clipped runs' longest step is "
        f"{longest('clipped').max():.3g} (largest pre-clip norm {max_norm['clipped']:.3g}). Final "
        f"loss after {steps} steps, median over starts: plain {np.median(finals('plain')):.2g}, "
        f"clipped {np.median(finals('clipped')):.2g}."
    )
    numbers = {
        "plain_longest_step": longest("plain").tolist(),
        "clipped_longest_step": longest("clipped").tolist(),
        "plain_final_loss": finals("plain").tolist(),
        "clipped_final_loss": finals("clipped").tolist(),
        "plain_max_grad_norm": max_norm["plain"],
        "clipped_max_grad_norm": max_norm["clipped"],
        "jump": JUMP,
        "bound": LR * CLIP,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
