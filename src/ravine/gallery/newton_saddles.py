"""newton-saddles: Newton's method is drawn to a saddle point; gradient descent escapes it.

The lecture ("Conditioning"): Newton's method removes curvature problems locally, but it cannot
be used when the Hessian has negative eigenvalues. Newton's step

.. math:: \\theta \\leftarrow \\theta - (H + \\lambda I)^{-1} g

jumps to the critical point of the local quadratic model — whichever kind it is. Near a saddle
the model's critical point *is* the saddle, so Newton converges to it (quadratically), while
gradient descent, θ ← θ − εg, grows the component along each negative-curvature direction by
the factor 1 + ε|λ| per step and escapes.

The saddle: a tanh MLP (4-8-1, float64) for least-squares regression with every weight zero and
the output bias at the mean target is a critical point (the hidden units output tanh(0) = 0 and
the output weights are 0, so every weight's gradient vanishes), and its Hessian couples each
output weight with its unit's input weights as ``[[0, c], [cᵀ, 0]]``, c = −2 Cov(x, y): eigenvalues
±|c|, a saddle. Both methods start from the same random points at distance ``START`` from it.

Newton's step is Hessian-free: conjugate gradient (:func:`conjugate_gradient`) on
Hessian-vector products (:class:`ravine.diagnostics.HessianOperator`) with a small damping
``DAMPING`` ≪ |λmin| (the Hessian also has zero eigenvalues; the damping keeps CG's system
nonsingular without removing the negative curvature). Plain CG, not Steihaug's truncated
variant: truncating at negative curvature is one of the fixes that turn Newton back into a
descent method, and the claim is about Newton itself. Gradient descent is ``ravine.optim.SGD``.

The zero network is not an isolated saddle: with the input weights zero, the hidden biases and
the output weights can move together with the output bias without changing the (constant)
output, so the saddle lies on a manifold of critical points with the same loss, and Newton (its
damped step is large along those zero-curvature directions) may end anywhere on it. So the
measure is the gradient norm, not the distance to θ*.

Agreement: from every start, Newton ends at a critical point (|g| below 1e-6 of its start) with
the saddle's loss (to 1e-6, relative), where Lanczos (:func:`ravine.diagnostics.hessian_extremes`)
proves a negative eigenvalue, and gradient descent ends with a loss at least 10% below the
saddle's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ravine import diagnostics, models, optim
from ravine.gallery import Figure
from ravine.gallery._common import figure, save

NAME = "newton-saddles"
ORDER = 65
CLAIM = (
    "Newton's method removes curvature problems locally but cannot be used when the Hessian "
    "has negative eigenvalues: near a saddle it converges to the saddle, where gradient descent "
    "escapes."
)
START = 0.05
"""Distance of the starting points from the saddle."""
DAMPING = 1e-4
"""λ of the damped Newton step (H + λI) p = −g."""
GD_LR = 0.2


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, *, tol: float = 1e-10, max_iter: int = 200
) -> tuple[Tensor, int]:
    """Solve ``A x = b`` for symmetric ``A`` by conjugate gradients (Hestenes & Stiefel, 1952).

    ``x_0 = 0``; each iteration: α = rᵀr / pᵀAp, x ← x + αp, r ← r − αAp,
    p ← r + (r_newᵀr_new / rᵀr) p; stops when |r| ≤ tol·|b|. ``A`` need not be positive
    definite (the iteration is then not a minimization, but still solves a nonsingular system
    unless pᵀAp = 0). Returns the solution and the number of products with ``A``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    bound = tol * float(b.norm())
    for k in range(max_iter):
        if rr**0.5 <= bound:
            return x, k
        ap = matvec(p)
        alpha = rr / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr, rr_old = float(r @ r), rr
        p = r + (rr / rr_old) * p
    return x, max_iter


def newton_step(
    model: nn.Module, loss_fn: Callable, batch: tuple[Tensor, Tensor], damping: float
) -> tuple[float, float, int]:
    """One damped Newton step in place: θ ← θ + p with (H + λI) p = −g by CG on HVPs.

    Returns the loss and gradient norm before the step and the number of HVPs."""
    op = diagnostics.HessianOperator(model, loss_fn, batch, backend="double-backward")
    loss, gradient = op.loss_and_gradient()
    step, hvps = conjugate_gradient(
        lambda v: op.matvec(v) + damping * v, -gradient, max_iter=4 * op.dim
    )
    with torch.no_grad():
        for param, delta in zip(op.params, op.unflatten(step), strict=True):
            param.add_(delta)
    return loss, float(gradient.norm()), hvps


def _problem(seed: int, n: int) -> tuple[tuple[Tensor, Tensor], nn.Module, Tensor]:
    """Regression data, the tanh MLP and its saddle θ* (zero weights, output bias = mean y)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    direction = torch.tensor([1.0, -0.5, 0.25, 0.0], dtype=torch.float64)
    y = torch.tanh(2 * x @ direction) + 0.1 * torch.randn(n, generator=generator, dtype=x.dtype)
    net = models.mlp(4, [8], 1, activation="tanh").double()
    with torch.no_grad():
        for param in net.parameters():
            param.zero_()
        net.out.bias.fill_(float(y.mean()))
    saddle = nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    return (x, y[:, None]), net, saddle


def _set(net: nn.Module, vector: Tensor) -> None:
    nn.utils.vector_to_parameters(vector.clone(), net.parameters())


def _loss_and_gradient_norm(
    net: nn.Module, loss_fn: Callable, batch: tuple[Tensor, Tensor]
) -> tuple[float, float]:
    loss, gradient = diagnostics.HessianOperator(net, loss_fn, batch).loss_and_gradient()
    return loss, float(gradient.norm())


def _finish(
    net: nn.Module, loss_fn: Callable, batch: tuple[Tensor, Tensor], losses: list, norms: list
) -> None:
    """Append the loss and gradient norm at the final point."""
    loss, norm = _loss_and_gradient_norm(net, loss_fn, batch)
    losses.append(loss)
    norms.append(norm)


def _distance(net: nn.Module, saddle: Tensor) -> float:
    return float((nn.utils.parameters_to_vector(net.parameters()).detach() - saddle).norm())


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Newton-CG and gradient descent from the same points near the saddle; draw both."""
    loss_fn = nn.functional.mse_loss
    n_starts = 2 if quick else 5
    newton_iters, gd_steps = (12, 150) if quick else (15, 400)
    batch, net, saddle = _problem(seed, 128 if quick else 256)
    saddle_loss, _ = _loss_and_gradient_norm(net, loss_fn, batch)
    runs: dict[str, dict[str, list[list[float]]]] = {
        m: {"loss": [], "gradient": []} for m in ("newton", "gd")
    }
    final_lambda_min, final_negative, newton_moved, newton_hvps = [], [], [], 0
    for start in range(n_starts):
        generator = torch.Generator().manual_seed(seed * 1000 + start)
        offset = torch.randn(saddle.numel(), generator=generator, dtype=torch.float64)
        theta0 = saddle + START * offset / offset.norm()

        _set(net, theta0)
        losses, norms = [], []
        for _ in range(newton_iters):
            loss, norm, hvps = newton_step(net, loss_fn, batch, DAMPING)
            losses.append(loss)
            norms.append(norm)
            newton_hvps += hvps
        _finish(net, loss_fn, batch, losses, norms)
        runs["newton"]["loss"].append(losses)
        runs["newton"]["gradient"].append(norms)
        newton_moved.append(_distance(net, saddle))
        ev = diagnostics.hessian_extremes(net, loss_fn, batch, backend="double-backward")
        final_lambda_min.append(ev.lambda_min)
        final_negative.append(ev.negative_curvature)

        _set(net, theta0)
        opt = optim.SGD(net.parameters(), lr=GD_LR, track_grad_norm=True)
        losses, norms = [], []
        for _ in range(gd_steps):
            opt.zero_grad()
            loss = loss_fn(net(batch[0]), batch[1])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            norms.append(opt.last_grad_norm)
        _finish(net, loss_fn, batch, losses, norms)
        runs["gd"]["loss"].append(losses)
        runs["gd"]["gradient"].append(norms)

    fig, axes = figure(1, 2, size=(11.0, 4.2))
    labels = {"newton": f"Newton-CG (λ = {DAMPING:g})", "gd": f"gradient descent (ε = {GD_LR:g})"}
    for color, (method, record) in zip(("C0", "C1"), runs.items(), strict=True):
        steps = np.arange(len(record["loss"][0]))
        for i, (losses, norms) in enumerate(zip(record["loss"], record["gradient"], strict=True)):
            label = labels[method] if i == 0 else None
            axes[0][0].plot(steps, losses, color=color, lw=1, label=label)
            axes[0][1].plot(steps, norms, color=color, lw=1, label=label)
    axes[0][0].axhline(saddle_loss, color="k", ls=":", lw=1, label="loss at the saddle")
    axes[0][0].set_xscale("symlog", linthresh=10)
    axes[0][0].set_ylabel("training loss (MSE)")
    axes[0][0].set_title("loss")
    axes[0][1].set_xscale("symlog", linthresh=10)
    axes[0][1].set_yscale("log")
    axes[0][1].set_ylabel("gradient norm |g|")
    axes[0][1].set_title(f"{n_starts} starts at distance {START:g} from the saddle")
    for ax in axes[0]:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    image = save(fig, out_dir / f"{NAME}.png")

    newton_gradient = np.array([v[-1] for v in runs["newton"]["gradient"]])
    newton_start_gradient = np.array([v[0] for v in runs["newton"]["gradient"]])
    gd_final_loss = np.array([v[-1] for v in runs["gd"]["loss"]])
    newton_final_loss = np.array([v[-1] for v in runs["newton"]["loss"]])
    agrees = bool(
        (newton_gradient <= 1e-6 * newton_start_gradient).all()
        and (np.abs(newton_final_loss - saddle_loss) <= 1e-6 * saddle_loss).all()
        and all(final_negative)
        and (gd_final_loss <= 0.9 * saddle_loss).all()
    )
    measured = (
        f"from {n_starts} starts at distance {START:g}, Newton-CG ends after {newton_iters} steps "
        f"at a critical point (|g| {newton_start_gradient.mean():.2g} → "
        f"{newton_gradient.max():.1g} at worst) with the saddle's loss "
        f"{newton_final_loss.mean():.4f} (the saddle's: {saddle_loss:.4f}; it drifted "
        f"{np.mean(newton_moved):.2g} along the saddle's flat directions), where λmin = "
        f"{np.mean(final_lambda_min):.3f} (negative eigenvalue proven at "
        f"{sum(final_negative)}/{n_starts}); gradient descent ends at loss "
        f"{gd_final_loss.mean():.4f} ± {gd_final_loss.std(ddof=1) if n_starts > 1 else 0:.4f} "
        f"after {gd_steps} steps ({newton_hvps / (n_starts * newton_iters):.0f} HVPs per Newton "
        "step)."
    )
    numbers = {
        "saddle_loss": saddle_loss,
        "newton_start_gradient_norm": newton_start_gradient.tolist(),
        "newton_final_gradient_norm": newton_gradient.tolist(),
        "newton_distance_moved": newton_moved,
        "newton_final_loss": newton_final_loss.tolist(),
        "newton_final_lambda_min": final_lambda_min,
        "newton_final_negative_curvature": final_negative,
        "gd_final_loss": gd_final_loss.tolist(),
        "start_distance": START,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
