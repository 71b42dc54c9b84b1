"""Plain NumPy transcriptions of the book's algorithm boxes 8.1-8.7.

Independent of ravine's torch code: one function per box, written line by line as the box reads,
operating on a single flat float64 vector θ. ``grad(θ)`` returns the loss gradient. The learning
rate may change every step (``lrs[k]``). Two additions every box leaves to the caller:

* clipping by re-normalization: if ``‖g‖ > τ`` then ``g ← g τ/‖g‖`` (raw loss gradient);
* L2 weight decay ``λ``: ``g ← g + λθ`` at the point where the gradient was taken.

Each function returns the list of iterates ``θ_1, ..., θ_K`` (the true θ, never an interim point).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Grad = Callable[[np.ndarray], np.ndarray]


def regularized_gradient(
    grad: Grad, point: np.ndarray, weight_decay: float, clip_norm: float | None
) -> tuple[np.ndarray, float]:
    """Gradient at ``point`` after clipping and L2 weight decay, and the pre-clip norm."""
    g = grad(point)
    norm = float(np.sqrt(np.sum(g * g)))
    if clip_norm is not None and norm > clip_norm:
        g = g * (clip_norm / norm)
    return g + weight_decay * point, norm


def sgd(theta, grad, lrs, *, weight_decay=0.0, clip_norm=None):
    """Algorithm 8.1."""
    theta = theta.copy()
    out = []
    for eps in lrs:
        g, _ = regularized_gradient(grad, theta, weight_decay, clip_norm)
        theta = theta - eps * g
        out.append(theta.copy())
    return out


def momentum(theta, grad, lrs, *, alpha, weight_decay=0.0, clip_norm=None):
    """Algorithm 8.2."""
    theta = theta.copy()
    v = np.zeros_like(theta)
    out = []
    for eps in lrs:
        g, _ = regularized_gradient(grad, theta, weight_decay, clip_norm)
        v = alpha * v - eps * g
        theta = theta + v
        out.append(theta.copy())
    return out


def nesterov(theta, grad, lrs, *, alpha, weight_decay=0.0, clip_norm=None):
    """Algorithm 8.3: the gradient is taken at the interim point θ + αv."""
    theta = theta.copy()
    v = np.zeros_like(theta)
    out = []
    for eps in lrs:
        interim = theta + alpha * v
        g, _ = regularized_gradient(grad, interim, weight_decay, clip_norm)
        v = alpha * v - eps * g
        theta = theta + v
        out.append(theta.copy())
    return out


def adagrad(theta, grad, lrs, *, delta, weight_decay=0.0, clip_norm=None):
    """Algorithm 8.4."""
    theta = theta.copy()
    r = np.zeros_like(theta)
    out = []
    for eps in lrs:
        g, _ = regularized_gradient(grad, theta, weight_decay, clip_norm)
        r = r + g * g
        theta = theta - eps / (delta + np.sqrt(r)) * g
        out.append(theta.copy())
    return out


def rmsprop(theta, grad, lrs, *, rho, delta, weight_decay=0.0, clip_norm=None):
    """Algorithm 8.5 (δ inside the square root, as in the box)."""
    theta = theta.copy()
    r = np.zeros_like(theta)
    out = []
    for eps in lrs:
        g, _ = regularized_gradient(grad, theta, weight_decay, clip_norm)
        r = rho * r + (1 - rho) * g * g
        theta = theta - eps / np.sqrt(delta + r) * g
        out.append(theta.copy())
    return out


def rmsprop_nesterov(theta, grad, lrs, *, rho, alpha, delta, weight_decay=0.0, clip_norm=None):
    """Algorithm 8.6, with ravine's documented δ inside the root (the box has √r)."""
    theta = theta.copy()
    r = np.zeros_like(theta)
    v = np.zeros_like(theta)
    out = []
    for eps in lrs:
        interim = theta + alpha * v
        g, _ = regularized_gradient(grad, interim, weight_decay, clip_norm)
        r = rho * r + (1 - rho) * g * g
        v = alpha * v - eps / np.sqrt(delta + r) * g
        theta = theta + v
        out.append(theta.copy())
    return out


def adam(theta, grad, lrs, *, rho1, rho2, delta, weight_decay=0.0, decoupled=False, clip_norm=None):
    """Algorithm 8.7; ``decoupled=True`` is AdamW (θ ← θ(1 - ελ) before the update)."""
    theta = theta.copy()
    s = np.zeros_like(theta)
    r = np.zeros_like(theta)
    t = 0
    out = []
    for eps in lrs:
        g, _ = regularized_gradient(grad, theta, 0.0 if decoupled else weight_decay, clip_norm)
        if decoupled:
            theta = theta * (1 - eps * weight_decay)
        t = t + 1
        s = rho1 * s + (1 - rho1) * g
        r = rho2 * r + (1 - rho2) * g * g
        s_hat = s / (1 - rho1**t)
        r_hat = r / (1 - rho2**t)
        theta = theta - eps * s_hat / (np.sqrt(r_hat) + delta)
        out.append(theta.copy())
    return out


def run(name: str, theta: np.ndarray, grad: Grad, lrs: Sequence[float], **hp) -> list[np.ndarray]:
    """Dispatch by ravine registry name, translating ravine's hyperparameter names."""
    wd = hp.get("weight_decay", 0.0)
    clip = hp.get("clip_norm")
    common = dict(weight_decay=wd, clip_norm=clip)
    if name == "sgd":
        return sgd(theta, grad, lrs, **common)
    if name == "momentum":
        return momentum(theta, grad, lrs, alpha=hp["momentum"], **common)
    if name == "nesterov":
        return nesterov(theta, grad, lrs, alpha=hp["momentum"], **common)
    if name == "adagrad":
        return adagrad(theta, grad, lrs, delta=hp["eps"], **common)
    if name == "rmsprop":
        return rmsprop(theta, grad, lrs, rho=hp["rho"], delta=hp["eps"], **common)
    if name == "rmsprop-nesterov":
        return rmsprop_nesterov(
            theta, grad, lrs, rho=hp["rho"], alpha=hp["momentum"], delta=hp["eps"], **common
        )
    if name in ("adam", "adamw"):
        b1, b2 = hp["betas"]
        return adam(
            theta, grad, lrs, rho1=b1, rho2=b2, delta=hp["eps"], decoupled=name == "adamw", **common
        )
    raise KeyError(name)
