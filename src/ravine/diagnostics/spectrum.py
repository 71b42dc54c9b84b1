"""Hessian spectrum: extreme eigenvalues (Lanczos), trace (Hutchinson, Hutch++), density (SLQ).

Each method exists twice: on any symmetric linear operator given as a ``matvec`` callable on flat
float64 vectors (:func:`operator_extremes`, :func:`operator_trace`, :func:`operator_density`), and
on the Hessian of a model's training loss (:func:`hessian_extremes`, :func:`hessian_trace`,
:func:`spectral_density`), which build a :class:`~ravine.diagnostics.hvp.HessianOperator`.

Lanczos vectors, the tridiagonal matrix and all reductions are float64 even for a float32 model
(only the Hessian-vector product itself runs in the model's dtype), and every Lanczos run keeps
its basis and reorthogonalizes fully against it (classical Gram-Schmidt, twice). The basis costs
``8 * dim * steps`` bytes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ravine._checks import check_int, check_positive
from ravine.diagnostics.hvp import (
    HessianOperator,
    LossFn,
    check_choice,
)
from ravine.diagnostics.plots import negative_mass_sentence, plot_spectral_density

__all__ = [
    "ExtremesResult",
    "TraceResult",
    "SpectralDensity",
    "operator_extremes",
    "operator_trace",
    "operator_density",
    "hessian_extremes",
    "hessian_trace",
    "spectral_density",
]

Matvec = Callable[[Tensor], Tensor]

WHICH = ("both", "max", "min")
TRACE_METHODS = ("hutchinson", "hutch++")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian(dim: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(dim, generator=generator, dtype=torch.float64).to(device)


def _rademacher(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    signs = torch.randint(0, 2, shape, generator=generator).to(torch.float64).mul_(2).sub_(1)
    return signs.to(device)


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    j = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if j > 1:
        off = np.asarray(betas[: j - 1], dtype=np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return t


@dataclass
class _Lanczos:
    """The state of one Lanczos run: ``H Q_j = Q_j T_j + beta_j q_{j+1} e_j^T``."""

    basis: Tensor
    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    exact: bool = False

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), eigenvectors of T, and residual norms ``|beta_j s_{j,i}|``."""
        # torch's eigh follows torch.set_num_threads; numpy's threaded BLAS can be 10x slower
        # on these small matrices when the cores are busy.
        t = torch.from_numpy(_tridiagonal(self.alphas, self.betas))
        values, vectors = (a.numpy() for a in torch.linalg.eigh(t))
        residuals = np.abs(self.betas[-1] * vectors[-1, :])
        return values, vectors, residuals


def _lanczos(
    matvec: Matvec,
    start: Tensor,
    max_steps: int,
    stop: Callable[[_Lanczos], bool] | None = None,
) -> _Lanczos:
    """Run at most ``max_steps`` Lanczos steps from ``start`` with full reorthogonalization.

    Stops early when ``stop(state)`` is true after a step, or (setting ``exact``) after ``dim``
    steps or on breakdown (``beta_j`` at round-off level): the Krylov space is then invariant
    and its Ritz values are exact eigenvalues.
    """
    dim = start.numel()
    capacity = min(max_steps, dim, 16)
    basis = torch.empty(capacity, dim, dtype=torch.float64, device=start.device)
    basis[0] = start / torch.linalg.vector_norm(start)
    state = _Lanczos(basis)
    for j in range(min(max_steps, dim)):
        q = state.basis[j]
        w = matvec(q).to(torch.float64)
        alpha = float(torch.dot(q, w))
        w -= alpha * q
        if j > 0:
            w -= state.betas[-1] * state.basis[j - 1]
        # Twice is enough (Kahan-Parlett): one more pass restores orthogonality to round-off.
        for _ in range(2):
            active = state.basis[: j + 1]
            w -= active.t().mv(active.mv(w))
        beta = float(torch.linalg.vector_norm(w))
        state.alphas.append(alpha)
        state.betas.append(beta)
        scale = max(max(abs(a) for a in state.alphas), max(state.betas))
        if j + 1 == dim or beta <= 1e-12 * scale:
            state.exact = True
            break
        if j + 1 == max_steps:
            break
        if stop is not None and stop(state):
            break
        if j + 1 == state.basis.shape[0]:
            grown = torch.empty(
                min(2 * (j + 1), max_steps, dim), dim, dtype=torch.float64, device=start.device
            )
            grown[: j + 1] = state.basis
            state.basis = grown
        state.basis[j + 1] = w / beta
    state.basis = state.basis[: state.steps]
    return state


# ---------------------------------------------------------------------------- extremes


@dataclass(frozen=True)
class ExtremesResult:
    """Extreme eigenvalues of a symmetric operator from one Lanczos run.

    Attributes:
        lambda_max, lambda_min: the largest and smallest (algebraic) Ritz values. By Cauchy
            interlacing ``lambda_min <= lambda_min_ritz`` and ``lambda_max_ritz <= lambda_max``
            for the true eigenvalues, and some true eigenvalue lies within ``residual_*`` of each.
        condition_number: ``|lambda_max| / |lambda_min|`` (``inf`` if ``lambda_min == 0``). Note
            the lecture's κ uses the eigenvalue of smallest *magnitude*, an interior eigenvalue
            Lanczos does not target; the two agree when H is positive definite.
        residual_max, residual_min: Ritz residual norms ``||H y - θ y|| = |β_j s_{j,i}|``.
        top, bottom: the k largest (descending) and k smallest (ascending) Ritz values, with
            ``top_residuals`` / ``bottom_residuals``.
        hvps: matrix-vector (Hessian-vector) products used.
        converged: whether the requested end(s) met ``residual <= max(tol * |θ|, atol)``.
        negative_curvature: ``lambda_min < -negative_threshold``; a negative Ritz value proves a
            negative eigenvalue, and the threshold ``sqrt(eps) * |lambda_max|`` (eps of the
            product's dtype) keeps round-off from counting.
        eigenvectors_max, eigenvectors_min: ``(k, dim)`` float64 Ritz vectors if asked for.
    """

    lambda_max: float
    lambda_min: float
    condition_number: float
    residual_max: float
    residual_min: float
    top: tuple[float, ...]
    bottom: tuple[float, ...]
    top_residuals: tuple[float, ...]
    bottom_residuals: tuple[float, ...]
    hvps: int
    converged: bool
    negative_curvature: bool
    negative_threshold: float
    eigenvectors_max: Tensor | None = None
    eigenvectors_min: Tensor | None = None

    def to_dict(self) -> dict[str, float | int | bool]:
        """Flat JSON-friendly numbers (no eigenvectors)."""
        return {
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "condition_number": self.condition_number,
            "residual_max": self.residual_max,
            "residual_min": self.residual_min,
            "hvps": self.hvps,
            "converged": self.converged,
            "negative_curvature": self.negative_curvature,
        }

    def __repr__(self) -> str:
        vectors = [
            f"{name}: {tuple(v.shape)}"
            for name, v in (("max", self.eigenvectors_max), ("min", self.eigenvectors_min))
            if v is not None
        ]
        return (
            f"ExtremesResult(lambda_max={self.lambda_max:.6g}, lambda_min={self.lambda_min:.6g}, "
            f"condition_number={self.condition_number:.4g}, hvps={self.hvps}, "
            f"converged={self.converged}, negative_curvature={self.negative_curvature}"
            + (f", k={len(self.top)}" if len(self.top) > 1 else "")
            + (f", eigenvectors {', '.join(vectors)}" if vectors else "")
            + ")"
        )


def operator_extremes(
    matvec: Matvec,
    dim: int,
    *,
    k: int = 1,
    tol: float = 1e-3,
    atol: float = 0.0,
    max_steps: int = 300,
    which: str = "both",
    seed: int = 0,
    device: torch.device | str = "cpu",
    eps: float = float(np.finfo(np.float64).eps),
    return_eigenvectors: bool = False,
    deadline: float | None = None,
) -> ExtremesResult:
    """Largest and smallest eigenvalues of a symmetric operator by Lanczos (one run, both ends).

    Lanczos builds an orthonormal basis ``Q_j`` of the Krylov space
    ``span{q, Hq, ..., H^{j-1} q}`` and the tridiagonal ``T_j = Q_j^T H Q_j``; the eigenvalues θ
    of ``T_j`` (Ritz values) converge to both ends of the spectrum first. A Ritz pair
    ``(θ_i, y_i = Q_j s_i)`` has residual ``||H y_i - θ_i y_i|| = |β_j s_{j,i}|``, and the run
    stops when the k extreme Ritz values at the requested end(s) satisfy
    ``|β_j s_{j,i}| <= max(tol * |θ_i|, atol)`` (checked after every step up to 100, then every
    ``1 + j // 100`` steps).

    Args:
        matvec: ``v -> H v`` on flat float64 tensors of length ``dim``.
        dim: the operator's dimension.
        k: number of eigenvalues wanted at each end.
        tol: relative residual tolerance; the eigenvalue error is at most the residual (and
            typically near ``residual**2 / gap``).
        atol: absolute residual floor, for eigenvalues near zero.
        max_steps: at most this many products (capped at ``dim``).
        which: "both", "max" or "min": the end(s) whose convergence ends the run.
        seed: seeds the Gaussian start vector.
        device: where the Lanczos vectors live.
        eps: relative round-off of ``matvec`` (sets the negative-curvature threshold).
        return_eigenvectors: also return the Ritz vectors.
        deadline: a ``time.perf_counter()`` value after which the run stops (with
            ``converged`` false unless it had converged), for callers with a time budget.
    """
    check_int("dim", dim, 1)
    check_int("k", k, 1)
    check_positive("tol", tol)
    check_positive("atol", atol, allow_zero=True)
    check_int("max_steps", max_steps, 1)
    check_choice("which", which, WHICH)
    check_int("seed", seed, 0)
    device = torch.device(device)
    ends = ("max", "min") if which == "both" else (which,)

    def converged(values: np.ndarray, residuals: np.ndarray) -> bool:
        if len(values) < k:
            return False
        picks = {"max": slice(len(values) - k, None), "min": slice(0, k)}
        return all(
            np.all(residuals[picks[end]] <= np.maximum(tol * np.abs(values[picks[end]]), atol))
            for end in ends
        )

    def stop(state: _Lanczos) -> bool:
        if deadline is not None and time.perf_counter() > deadline:
            return True
        # Each check diagonalizes T_j (O(j³)); past 100 steps, check every 1 + j//100 steps,
        # which costs at most ~1% extra products.
        if state.steps > 100 and state.steps % (1 + state.steps // 100):
            return False
        values, _, residuals = state.ritz()
        return converged(values, residuals)

    start = _gaussian(dim, _generator(seed), device)
    state = _lanczos(matvec, start, max_steps, stop)
    values, vectors, residuals = state.ritz()
    # After dim steps, or on breakdown, the Krylov space is invariant: the Ritz values are exact.
    exact = state.exact
    if exact:
        residuals = np.zeros_like(residuals)
    kk = min(k, len(values))
    lmax, lmin = float(values[-1]), float(values[0])
    threshold = math.sqrt(eps) * abs(lmax)
    vec_max = vec_min = None
    if return_eigenvectors:
        s = torch.as_tensor(vectors, dtype=torch.float64, device=device)
        ritz_vectors = s.t() @ state.basis
        vec_max = ritz_vectors[len(values) - kk :].flip(0)
        vec_min = ritz_vectors[:kk]
    return ExtremesResult(
        lambda_max=lmax,
        lambda_min=lmin,
        condition_number=abs(lmax) / abs(lmin) if lmin != 0 else math.inf,
        residual_max=float(residuals[-1]),
        residual_min=float(residuals[0]),
        top=tuple(float(t) for t in values[::-1][:kk]),
        bottom=tuple(float(t) for t in values[:kk]),
        top_residuals=tuple(float(r) for r in residuals[::-1][:kk]),
        bottom_residuals=tuple(float(r) for r in residuals[:kk]),
        hvps=state.steps,
        converged=exact or converged(values, residuals),
        negative_curvature=lmin < -threshold,
        negative_threshold=threshold,
        eigenvectors_max=vec_max,
        eigenvectors_min=vec_min,
    )


# ---------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class TraceResult:
    """A stochastic estimate of ``tr(H)``.

    Attributes:
        estimate: the trace estimate.
        stderr: its standard error, ``std(samples) / sqrt(len(samples))`` (for Hutch++ the
            standard error of the stochastic part, given the sketch).
        hvps: products used.
        method: "hutchinson" or "hutch++".
        samples: the per-probe values ``z^T A z`` of the stochastic part.
    """

    estimate: float
    stderr: float
    hvps: int
    method: str
    samples: tuple[float, ...]

    def to_dict(self) -> dict[str, float | int]:
        """Flat JSON-friendly numbers."""
        return {"trace": self.estimate, "trace_stderr": self.stderr, "trace_hvps": self.hvps}

    def __repr__(self) -> str:
        # The per-probe samples (one per product) stay out of the repr; they are .samples.
        return (
            f"TraceResult(estimate={self.estimate:.6g}, stderr={self.stderr:.2g}, "
            f"method={self.method!r}, hvps={self.hvps})"
        )


def _stderr(samples: np.ndarray) -> float:
    return (
        float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.inf
    )


def operator_trace(
    matvec: Matvec,
    dim: int,
    *,
    method: str = "hutchinson",
    n_hvps: int = 90,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> TraceResult:
    """Trace of a symmetric operator from ``n_hvps`` products with Rademacher probes.

    Hutchinson (1990): ``tr(A) ≈ (1/n) Σ_i z_iᵀ A z_i`` with ``z_i ∈ {±1}^d``; unbiased, with
    variance ``2 (||A||_F² - Σ_i A_ii²) / n``.

    Hutch++ (Meyer, Musco, Musco & Woodruff, 2021): split the budget in thirds, ``s = n // 3``;
    sketch ``Q = orth(A S)`` with ``S ∈ {±1}^{d×s}``, take the top part exactly and Hutchinson on
    the deflated rest with ``r = n - 2s`` probes ``G``:

    .. math:: \\operatorname{tr}(A) ≈ \\operatorname{tr}(Q^T A Q)
              + \\frac{1}{r} \\operatorname{tr}\\big(G^T (I - QQ^T) A (I - QQ^T) G\\big).

    Far fewer products for the same accuracy when a few eigenvalues dominate the trace; when the
    bulk dominates (as for the MNIST-1D MLP of the benchmarks) both are about equally accurate,
    so the simpler Hutchinson is the default. The standard error of Hutch++ is that of the
    second term given ``Q``.
    """
    check_int("dim", dim, 1)
    check_choice("method", method, TRACE_METHODS)
    check_int("n_hvps", n_hvps, 3 if method == "hutch++" else 2)
    check_int("seed", seed, 0)
    device = torch.device(device)
    generator = _generator(seed)
    if method == "hutchinson":
        probes = _rademacher((n_hvps, dim), generator, device)
        samples = np.array([float(torch.dot(z, matvec(z).to(torch.float64))) for z in probes])
        return TraceResult(float(samples.mean()), _stderr(samples), n_hvps, method, tuple(samples))
    sketch_size = min(n_hvps // 3, dim)
    n_probes = n_hvps - 2 * sketch_size
    sketch = _rademacher((sketch_size, dim), generator, device)
    a_sketch = torch.stack([matvec(s).to(torch.float64) for s in sketch])
    q, _ = torch.linalg.qr(a_sketch.t())
    a_q = torch.stack([matvec(col).to(torch.float64) for col in q.t()])
    exact_part = float(torch.einsum("ij,ji->", q.t(), a_q.t()))
    probes = _rademacher((n_probes, dim), generator, device)
    deflated = probes - (probes @ q) @ q.t()
    samples = np.array([float(torch.dot(g, matvec(g).to(torch.float64))) for g in deflated])
    return TraceResult(
        exact_part + float(samples.mean()),
        _stderr(samples),
        2 * sketch_size + n_probes,
        method,
        tuple(samples),
    )


# ---------------------------------------------------------------------------- density


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature estimate of the spectral density ``(1/d) Σ_i δ(t - λ_i)``.

    Each probe ``v`` (a normalized Rademacher vector) gives a Gauss quadrature rule: the
    eigenvalues θ of its Lanczos matrix ``T`` are the nodes and the squared first components of
    its eigenvectors the weights, so that ``Σ_l w_l f(θ_l) = vᵀ f(H) v`` exactly for polynomials
    f of degree < 2·steps. Averaging over probes estimates ``tr f(H) / d``.

    Attributes:
        nodes, weights: per probe, ``(steps,)`` arrays; the weights of one probe sum to 1.
        sigma: width of the Gaussian broadening used for ``density``.
        grid, density: the broadened density ``Σ_probes Σ_l w_l N(t; θ_l, σ²) / n_probes``.
        hvps: products used.
    """

    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    sigma: float
    grid: np.ndarray
    density: np.ndarray
    hvps: int

    @property
    def n_probes(self) -> int:
        """Number of random starts."""
        return len(self.nodes)

    def _per_probe(self, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.array(
            [float(np.sum(w * f(t))) for t, w in zip(self.nodes, self.weights, strict=True)]
        )

    def moment(self, p: int) -> float:
        """``Σ w θ^p`` averaged over probes: unbiased for ``tr(H^p) / d`` when p < 2·steps."""
        check_int("p", p, 0)
        return float(self._per_probe(lambda t: t**p).mean())

    def moment_stderr(self, p: int) -> float:
        """Standard error of :meth:`moment` from the spread over probes."""
        check_int("p", p, 0)
        return _stderr(self._per_probe(lambda t: t**p))

    @property
    def negative_mass(self) -> float:
        """Estimated fraction of eigenvalues below zero: the quadrature weight on negative nodes."""
        return float(self._per_probe(lambda t: (t < 0).astype(np.float64)).mean())

    @property
    def lambda_max(self) -> float:
        """Largest node (a lower bound on the largest eigenvalue)."""
        return float(max(t.max() for t in self.nodes))

    @property
    def lambda_min(self) -> float:
        """Smallest node (an upper bound on the smallest eigenvalue)."""
        return float(min(t.min() for t in self.nodes))

    def to_dict(self) -> dict[str, float | int]:
        """Flat JSON-friendly numbers."""
        return {
            "density_negative_mass": self.negative_mass,
            "density_lambda_max": self.lambda_max,
            "density_lambda_min": self.lambda_min,
            "density_hvps": self.hvps,
        }

    def __repr__(self) -> str:
        # Nodes, weights and the density on its grid are arrays; the repr gives what they say.
        return (
            f"SpectralDensity(n_probes={self.n_probes}, hvps={self.hvps}, "
            f"lambda_min={self.lambda_min:.4g}, lambda_max={self.lambda_max:.4g}, "
            f"negative_mass={self.negative_mass:.3g}, sigma={self.sigma:.3g})\n"
            f"    {negative_mass_sentence(self.negative_mass, self.lambda_min, self.lambda_max)}"
        )

    def plot(self, path: str | Path) -> Path:
        """Write the density as a PNG (:func:`~ravine.diagnostics.plots.plot_spectral_density`)."""
        return plot_spectral_density(self, path)


def operator_density(
    matvec: Matvec,
    dim: int,
    *,
    n_probes: int = 4,
    steps: int = 64,
    sigma: float | None = None,
    grid_size: int = 512,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SpectralDensity:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

    ``n_probes`` Lanczos runs of ``steps`` products each (Ubaru, Chen & Saad, 2017; Ghorbani,
    Krishnan & Xiao, 2019). ``sigma`` defaults to 1% of the node range.
    """
    check_int("dim", dim, 1)
    check_int("n_probes", n_probes, 1)
    check_int("steps", steps, 1)
    check_int("grid_size", grid_size, 2)
    check_int("seed", seed, 0)
    if sigma is not None:
        check_positive("sigma", sigma)
    device = torch.device(device)
    generator = _generator(seed)
    nodes, weights = [], []
    hvps = 0
    for _ in range(n_probes):
        probe = _rademacher((dim,), generator, device)
        state = _lanczos(matvec, probe, steps)
        values, vectors, _ = state.ritz()
        nodes.append(values)
        weights.append(vectors[0, :] ** 2)
        hvps += state.steps
    low = min(t.min() for t in nodes)
    high = max(t.max() for t in nodes)
    if sigma is None:
        sigma = 0.01 * (high - low) if high > low else 0.01 * max(abs(high), 1.0)
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, grid_size)
    density = np.zeros_like(grid)
    for t, w in zip(nodes, weights, strict=True):
        density += (w[None, :] * np.exp(-0.5 * ((grid[:, None] - t[None, :]) / sigma) ** 2)).sum(1)
    density /= n_probes * sigma * math.sqrt(2 * math.pi)
    return SpectralDensity(tuple(nodes), tuple(weights), float(sigma), grid, density, hvps)


# ---------------------------------------------------------------------------- on a model


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def hessian_extremes(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    k: int = 1,
    tol: float = 1e-3,
    atol: float = 0.0,
    max_hvps: int = 300,
    which: str = "both",
    seed: int = 0,
    mode: str = "eval",
    backend: str = "auto",
    return_eigenvectors: bool = False,
) -> ExtremesResult:
    """Largest and smallest Hessian eigenvalues of the training loss, by Lanczos.

    ``data`` is any data form of ``ravine.fit`` (:func:`~ravine.diagnostics.hvp.as_batches`; see
    :class:`~ravine.diagnostics.hvp.HessianOperator` for ``mode`` and ``backend``); the other
    arguments are those of :func:`operator_extremes` (``max_hvps`` = ``max_steps``). The start
    vector depends only on ``seed``, so results are reproducible. Ritz vectors (if asked) are
    flat, ordered like ``model.named_parameters()``.
    """
    check_int("max_hvps", max_hvps, 1)
    op = HessianOperator(model, loss_fn, data, mode=mode, backend=backend, seed=seed)
    return operator_extremes(
        op.matvec,
        op.dim,
        k=k,
        tol=tol,
        atol=atol,
        max_steps=max_hvps,
        which=which,
        seed=seed,
        device=op.device,
        eps=_eps(op.dtype),
        return_eigenvectors=return_eigenvectors,
    )


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    method: str = "hutchinson",
    n_hvps: int = 90,
    seed: int = 0,
    mode: str = "eval",
    backend: str = "auto",
) -> TraceResult:
    """Trace of the training-loss Hessian (Hutchinson or Hutch++; see :func:`operator_trace`)."""
    op = HessianOperator(model, loss_fn, data, mode=mode, backend=backend, seed=seed)
    return operator_trace(
        op.matvec, op.dim, method=method, n_hvps=n_hvps, seed=seed, device=op.device
    )


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    n_probes: int = 4,
    steps: int = 64,
    sigma: float | None = None,
    grid_size: int = 512,
    seed: int = 0,
    mode: str = "eval",
    backend: str = "auto",
) -> SpectralDensity:
    """Spectral density of the training-loss Hessian by SLQ (see :func:`operator_density`)."""
    op = HessianOperator(model, loss_fn, data, mode=mode, backend=backend, seed=seed)
    return operator_density(
        op.matvec,
        op.dim,
        n_probes=n_probes,
        steps=steps,
        sigma=sigma,
        grid_size=grid_size,
        seed=seed,
        device=op.device,
    )
