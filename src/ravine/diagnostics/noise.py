"""Minibatch gradient noise: per-example gradients, its 1/√m law, and the simple noise scale.

With per-example gradients ``g_n`` of the N examples of a dataset, the full gradient and the
per-example covariance are

.. math:: G = \\frac{1}{N} \\sum_n g_n, \\qquad
          \\Sigma = \\frac{1}{N} \\sum_n (g_n - G)(g_n - G)^T .

A minibatch B of m examples drawn independently (with replacement) has gradient
``g_B = (1/m) Σ_{n∈B} g_n`` with ``E[g_B] = G`` and ``E ||g_B - G||² = tr(Σ) / m``: its standard
deviation shrinks as ``1/√m`` (the lecture's "diminishing return" of larger batches).
:func:`gradient_noise` measures ``sqrt(E ||g_B - G||²)`` at several m from real minibatch gradients
and fits the exponent, and reports the simple noise scale of McCandlish, Kaplan, Amodei et al.
(2018, "An Empirical Model of Large-Batch Training")

.. math:: B_{simple} = \\operatorname{tr}(\\Sigma) / |G|^2 ,

the batch size at which the noise and the signal of a minibatch gradient have equal size.
:func:`noise_scale_two_batch` and :class:`NoiseScaleEstimator` estimate ``|G|²`` and ``tr(Σ)``
cheaply during training from gradient norms at two batch sizes.

Per-example gradients use ``torch.func.vmap(grad(functional_call))``. Where a model cannot be
vmapped, a loop replaces it, with a one-line warning saying why. Batch norm in train mode always
takes the loop: it couples the examples of a batch, so the "per-example gradient" there is the
gradient of example n's loss term *within its chunk* (batch statistics of the chunk), whose mean
over the chunk is the chunk's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ravine._checks import check_int
from ravine.diagnostics.hvp import (
    LossFn,
    all_examples,
    as_batches,
    batch_rng,
    check_choice,
    model_mode,
    scalar_loss,
    trainable_parameters,
    warn,
    warn_mode_dependence,
)
from ravine.diagnostics.plots import plot_gradient_noise

__all__ = [
    "GradientStatistics",
    "GradientNoiseResult",
    "NoiseScaleEstimator",
    "per_example_gradients",
    "gradient_statistics",
    "gradient_noise",
    "noise_scale_two_batch",
]

PER_EXAMPLE_METHODS = ("auto", "vmap", "loop")


def as_tensors(dataset: Any, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(x, y)`` tensors of all examples of ``dataset``, in order.

    Accepts every data form of ``ravine.fit`` (a batch ``(x, y)``, an ``ArrayDataset`` or
    ``TensorDataset``, a map-style Dataset of ``(x_i, y_i)`` items, a ``DataLoader``, an iterable
    of batches): :func:`~ravine.diagnostics.hvp.all_examples`, the same conversion the Hessian
    operator uses. ``seed`` fixes the one pass over a shuffling DataLoader.
    """
    return all_examples(dataset, seed=seed)


def _has_train_batch_norm(model: nn.Module, mode: str) -> bool:
    return mode == "train" and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )


class _PerExample:
    """Per-example gradients of one model, chunk by chunk, remembering whether vmap works.

    A call returns one ``(n, *param.shape)`` tensor per trainable parameter. The loop has two
    forms: without coupling between examples, one forward and backward pass per example; with
    batch norm in train mode, one forward pass of the chunk and one backward pass per example's
    loss term through it (every term depends on the whole chunk, so this costs O(n²)).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, mode: str, method: str, seed: int):
        check_choice("method", method, PER_EXAMPLE_METHODS)
        check_choice("mode", mode, ("eval", "train"))
        self.model, self.loss_fn, self.mode, self.seed = model, loss_fn, mode, seed
        self.names, self.params = trainable_parameters(model)
        self.device = self.params[0].device
        self.coupled = _has_train_batch_norm(model, mode)
        self.method = "loop" if method == "loop" else "vmap"
        if method != "loop" and self.coupled:
            reason = (
                "batch norm in train mode couples the examples of a batch, so they cannot be "
                "vmapped one by one"
            )
            self._fall_back(reason, method)

    def _fall_back(self, reason: str, method: str) -> None:
        if method == "vmap":
            raise ValueError(f"method='vmap' is not possible here: {reason}")
        warn(f"per-example gradients: {reason}; using a loop over examples instead (slower)")
        self.method = "loop"

    def _vmap(self, x: Tensor, y: Tensor) -> list[Tensor]:
        params = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}

        def example_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            out = functional_call(self.model, p, (xi.unsqueeze(0),))
            return scalar_loss(self.loss_fn, out, yi.unsqueeze(0))

        grads = vmap(grad(example_loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)
        return [grads[n] for n in self.names]

    def _loop(self, x: Tensor, y: Tensor) -> list[Tensor]:
        rows: list[list[Tensor]] = [[] for _ in self.params]
        out = self.model(x) if self.coupled else None
        for i in range(x.shape[0]):
            if out is None:
                loss = scalar_loss(self.loss_fn, self.model(x[i : i + 1]), y[i : i + 1])
            else:
                loss = scalar_loss(self.loss_fn, out[i : i + 1], y[i : i + 1])
            grads = torch.autograd.grad(
                loss, self.params, retain_graph=out is not None, allow_unused=True
            )
            for row, g, p in zip(rows, grads, self.params, strict=True):
                row.append(torch.zeros_like(p) if g is None else g)
        return [torch.stack(row) for row in rows]

    def __call__(self, x: Tensor, y: Tensor, index: int) -> list[Tensor]:
        """Per-parameter ``(len(x), *shape)`` gradients of chunk ``index`` (model dtype)."""
        x, y = x.to(self.device), y.to(self.device)
        with model_mode(self.model, self.mode), batch_rng(self.mode, self.seed, index, self.device):
            if self.method == "vmap":
                try:
                    return self._vmap(x, y)
                except (RuntimeError, NotImplementedError, ValueError) as error:
                    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    self._fall_back(f"vmap failed ({type(error).__name__}: {first_line})", "auto")
            return self._loop(x, y)


def _chunks(x: Tensor, y: Tensor, chunk_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, x.shape[0], chunk_size):
        yield x[start : start + chunk_size], y[start : start + chunk_size]


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    x: Any,
    y: Tensor | None = None,
    *,
    mode: str = "eval",
    method: str = "auto",
    chunk_size: int = 256,
    seed: int = 0,
) -> Tensor:
    """Gradients of each example's loss, as an ``(N, dim)`` tensor in the model's dtype.

    Row n is ``∇_θ loss_fn(model(x[n:n+1]), y[n:n+1])``, flattened in
    ``model.named_parameters()`` order (trainable parameters; unused ones give zeros).
    ``method="auto"`` vmaps and falls back to a loop with a warning; "vmap" raises instead of
    falling back; "loop" always loops. See the module docstring for batch norm in train mode,
    where examples are coupled within each chunk of ``chunk_size``.

    ``x, y`` are the inputs and targets; or pass any data form of ``ravine.fit`` as ``x`` alone
    (``y=None``): its examples in order (:func:`as_tensors`, ``seed`` fixing a shuffling
    DataLoader's pass).
    """
    check_int("chunk_size", chunk_size, 1)
    check_int("seed", seed, 0)
    x, y = as_tensors(x if y is None else (x, y), seed=seed)
    compute = _PerExample(model, loss_fn, mode, method, seed)
    dim = sum(p.numel() for p in compute.params)
    result = torch.empty(x.shape[0], dim, dtype=compute.params[0].dtype, device=compute.device)
    for index, (xc, yc) in enumerate(_chunks(x, y, chunk_size)):
        rows = slice(index * chunk_size, index * chunk_size + xc.shape[0])
        torch.cat([g.reshape(xc.shape[0], -1) for g in compute(xc, yc, index)], 1, out=result[rows])
    return result


@dataclass(frozen=True)
class GradientStatistics:
    """Exact gradient statistics of a dataset from its per-example gradients (float64).

    Attributes:
        n_examples: N.
        mean_gradient: G (flat, float64).
        grad_sq_norm: ``|G|²``.
        trace_sigma: ``tr(Σ) = (1/N) Σ_n ||g_n - G||²``.
        b_simple: ``tr(Σ) / |G|²`` (``inf`` if ``G = 0``).
        method: "vmap" or "loop", how the per-example gradients were computed.
    """

    n_examples: int
    mean_gradient: Tensor
    grad_sq_norm: float
    trace_sigma: float
    b_simple: float
    method: str

    def to_dict(self) -> dict[str, float | int]:
        """Flat JSON-friendly numbers."""
        return {
            "grad_sq_norm": self.grad_sq_norm,
            "trace_sigma": self.trace_sigma,
            "b_simple": self.b_simple,
        }

    def __repr__(self) -> str:
        # One line: the mean gradient (dim floats) is left out; it is .mean_gradient.
        return (
            f"GradientStatistics(n_examples={self.n_examples}, "
            f"grad_sq_norm={self.grad_sq_norm:.4g}, trace_sigma={self.trace_sigma:.4g}, "
            f"b_simple={self.b_simple:.4g}, method={self.method!r})"
        )


def _statistics(
    compute: _PerExample, chunks: Iterable[tuple[Tensor, Tensor]]
) -> GradientStatistics:
    # Chan, Golub & LeVeque's pairwise update merges chunk means and sums of squared deviations
    # exactly, so no (N, dim) matrix is kept and no |E g|² - ... cancellation occurs.
    count, mean, m2 = 0, None, 0.0
    for index, (xc, yc) in enumerate(chunks):
        grads = compute(xc, yc, index)
        n_b = xc.shape[0]
        # Within a chunk the reductions run in the model's dtype (torch sums pairwise, and a
        # float64 copy of the (n, dim) gradients would cost more than computing them); the
        # merge across chunks is float64.
        means = [g.mean(0) for g in grads]
        mean_b = torch.cat([mu.reshape(-1) for mu in means]).to(torch.float64)
        m2_b = sum(float(((g - mu) ** 2).sum()) for g, mu in zip(grads, means, strict=True))
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * (n_b / total)
        m2 += m2_b + float(delta.dot(delta)) * count * n_b / total
        count = total
    if mean is None:
        raise ValueError("data has no examples")
    grad_sq = float(mean.dot(mean))
    trace = m2 / count
    b_simple = trace / grad_sq if grad_sq > 0 else math.inf
    return GradientStatistics(count, mean, grad_sq, trace, b_simple, compute.method)


def gradient_statistics(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    mode: str = "eval",
    method: str = "auto",
    chunk_size: int = 256,
    seed: int = 0,
) -> GradientStatistics:
    """``|G|²``, ``tr(Σ)`` and ``B_simple`` of ``data`` from its per-example gradients.

    ``data`` is any data form of ``ravine.fit``, converted as for
    :class:`~ravine.diagnostics.hvp.HessianOperator` (:func:`~ravine.diagnostics.hvp.as_batches`).
    One pass of per-example gradients in chunks of at most ``chunk_size`` examples of each batch
    (see :func:`per_example_gradients`); memory is ``chunk_size × dim``.
    """
    check_int("chunk_size", chunk_size, 1)
    check_int("seed", seed, 0)
    batches = as_batches(data, seed=seed)
    warn_mode_dependence(model, mode, "the per-example gradients")
    compute = _PerExample(model, loss_fn, mode, method, seed)
    chunks = (chunk for batch in batches for chunk in _chunks(*batch, chunk_size))
    return _statistics(compute, chunks)


@dataclass(frozen=True)
class GradientNoiseResult:
    """Measured minibatch gradient noise (see :func:`gradient_noise`).

    Attributes:
        std_by_m: ``{m: sqrt(mean_b ||g_B - G||²)}`` over ``n_batches`` minibatches of size m.
        predicted_std_by_m: ``{m: sqrt(tr(Σ) / m)}``, the i.i.d.-sampling prediction.
        exponent: least-squares slope of ``log std`` on ``log m`` (-0.5 under i.i.d. sampling).
        trace_sigma, grad_sq_norm, b_simple: exact statistics of the dataset (per-example).
        n_examples, n_batches: dataset size and minibatches per m.
        method: how per-example gradients were computed ("vmap" or "loop").
    """

    std_by_m: dict[int, float]
    predicted_std_by_m: dict[int, float]
    exponent: float
    trace_sigma: float
    grad_sq_norm: float
    b_simple: float
    n_examples: int
    n_batches: int
    method: str

    def to_dict(self) -> dict[str, float | int]:
        """Flat JSON-friendly numbers (``std_m{m}`` for each m)."""
        out: dict[str, float | int] = {
            "trace_sigma": self.trace_sigma,
            "grad_sq_norm": self.grad_sq_norm,
            "b_simple": self.b_simple,
            "noise_exponent": self.exponent,
        }
        out.update({f"std_m{m}": s for m, s in self.std_by_m.items()})
        return out

    def __repr__(self) -> str:
        sizes = sorted(self.std_by_m)
        shown = ", ".join(f"{m}: {self.std_by_m[m]:.3g}" for m in sizes[:6])
        more = f", ... ({len(sizes)} sizes)" if len(sizes) > 6 else ""
        return (
            f"GradientNoiseResult(exponent={self.exponent:.3f}, b_simple={self.b_simple:.4g}, "
            f"trace_sigma={self.trace_sigma:.4g}, grad_sq_norm={self.grad_sq_norm:.4g},\n"
            f"    std_by_m={{{shown}{more}}}, n_examples={self.n_examples}, "
            f"n_batches={self.n_batches}, method={self.method!r})"
        )

    def plot(self, path: str | Path) -> Path:
        """Write std vs m as a PNG (:func:`~ravine.diagnostics.plots.plot_gradient_noise`)."""
        return plot_gradient_noise(self, path)


def gradient_noise(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Any,
    batch_sizes: Sequence[int] = (8, 16, 32, 64, 128),
    *,
    seed: int = 0,
    n_batches: int = 100,
    mode: str = "eval",
    method: str = "auto",
    chunk_size: int = 256,
) -> GradientNoiseResult:
    """Measure how the minibatch gradient's deviation from the full gradient scales with m.

    For each m, ``n_batches`` minibatches are drawn independently, with replacement, from the
    dataset (seeded); each minibatch gradient ``g_B`` is the gradient of ``loss_fn`` on that batch
    (one forward/backward pass, in ``mode``), and

    .. math:: \\text{std}(m) = \\sqrt{\\tfrac{1}{n_{batches}} \\sum_B ||g_B - G||^2}
              \\;\\approx\\; \\sqrt{\\operatorname{tr}(\\Sigma)/m}.

    ``G``, ``tr(Σ)``, ``|G|²`` and ``B_simple`` are exact, from per-example gradients of all
    examples (:func:`gradient_statistics`). The exponent is the least-squares slope of
    ``log std(m)`` against ``log m``.

    Args:
        dataset: any data form of ``ravine.fit`` (a batch ``(x, y)``, an ``ArrayDataset`` or
            ``TensorDataset``, a map-style Dataset of ``(x_i, y_i)``, a ``DataLoader``, an
            iterable of batches); its examples are taken in order (:func:`as_tensors`).
        batch_sizes: at least two distinct sizes, each between 1 and N.
        n_batches: minibatches per size (>= 2); the relative error of ``std(m)`` falls like
            ``1/sqrt(n_batches)``.
        mode, method, chunk_size: see :func:`per_example_gradients`.
    """
    check_int("seed", seed, 0)
    check_int("n_batches", n_batches, 2)
    check_int("chunk_size", chunk_size, 1)
    x, y = as_tensors(dataset, seed=seed)
    n = x.shape[0]
    for m in batch_sizes:
        check_int("batch_sizes entries", m, 1)
        if m > n:
            raise ValueError(f"batch_sizes entries must be <= {n} (the dataset size), got {m}")
    sizes = sorted({int(m) for m in batch_sizes})
    if len(sizes) < 2:
        raise ValueError(
            f"batch_sizes must hold at least 2 distinct sizes (to fit the exponent), "
            f"got {batch_sizes!r}"
        )
    warn_mode_dependence(model, mode, "the gradient noise")
    compute = _PerExample(model, loss_fn, mode, method, seed)
    stats = _statistics(compute, _chunks(x, y, chunk_size))
    full = stats.mean_gradient
    params = compute.params
    device = compute.device
    generator = torch.Generator().manual_seed(seed)
    std_by_m: dict[int, float] = {}
    with model_mode(model, mode):
        for m in sizes:
            total = 0.0
            for b in range(n_batches):
                idx = torch.randint(0, n, (m,), generator=generator)
                # A dropout seed per (m, b), apart from the chunk indices of the statistics pass.
                with batch_rng(mode, seed, 1_000_003 * m + b, device):
                    loss = scalar_loss(loss_fn, model(x[idx].to(device)), y[idx].to(device))
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                flat = torch.cat(
                    [
                        torch.zeros(p.numel(), dtype=torch.float64, device=device)
                        if g is None
                        else g.reshape(-1).to(torch.float64)
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
                total += float(((flat - full) ** 2).sum())
            std_by_m[m] = math.sqrt(total / n_batches)
    log_m = np.log(np.array(sizes, dtype=np.float64))
    log_std = np.log(np.array([std_by_m[m] for m in sizes]))
    exponent = float(np.polyfit(log_m, log_std, 1)[0])
    return GradientNoiseResult(
        std_by_m=std_by_m,
        predicted_std_by_m={m: math.sqrt(stats.trace_sigma / m) for m in sizes},
        exponent=exponent,
        trace_sigma=stats.trace_sigma,
        grad_sq_norm=stats.grad_sq_norm,
        b_simple=stats.b_simple,
        n_examples=n,
        n_batches=n_batches,
        method=stats.method,
    )


# ---------------------------------------------------------------------------- during training


def _check_batch_pair(b_small: float, b_big: float) -> None:
    for name, value in (("b_small", b_small), ("b_big", b_big)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 1:
            raise ValueError(f"{name} must be a number >= 1, got {value!r}")
    if not b_big > b_small:
        raise ValueError(f"b_big must be > b_small, got b_big={b_big!r} and b_small={b_small!r}")


def noise_scale_two_batch(
    small_grad_sq_norm: float, big_grad_sq_norm: float, b_small: float, b_big: float
) -> tuple[float, float]:
    """Unbiased ``(|G|², tr(Σ))`` from squared gradient norms at two batch sizes.

    McCandlish et al. (2018, appendix A.1): since ``E |g_B|² = |G|² + tr(Σ) / B``,

    .. math:: |G|^2 ≈ \\frac{B_{big} |g_{big}|^2 - B_{small} |g_{small}|^2}{B_{big} - B_{small}},
              \\qquad
              \\operatorname{tr}(\\Sigma) ≈ \\frac{|g_{small}|^2 - |g_{big}|^2}
                                              {1/B_{small} - 1/B_{big}} .

    Each is unbiased; single estimates are noisy (and can be negative), so average them over
    steps before taking the ratio ``B_simple = tr(Σ) / |G|²`` (:class:`NoiseScaleEstimator`).
    """
    _check_batch_pair(b_small, b_big)
    grad_sq = (b_big * big_grad_sq_norm - b_small * small_grad_sq_norm) / (b_big - b_small)
    trace = (small_grad_sq_norm - big_grad_sq_norm) / (1.0 / b_small - 1.0 / b_big)
    return float(grad_sq), float(trace)


class NoiseScaleEstimator:
    """Streaming ``B_simple`` from gradient norms at two batch sizes, for use during training.

    Each :meth:`update` turns one pair of squared norms into the unbiased estimates of
    :func:`noise_scale_two_batch` and folds them into exponential moving averages
    (bias-corrected as in Adam); ``b_simple`` is the ratio of the averages, as McCandlish et al.
    recommend. Typical sources of the two norms in one step of batch m: the gradients of the two
    halves of the batch (``B_small = m/2``, the mean of their squared norms) and of the whole
    batch (``B_big = m``); or, under data parallelism, one worker's and the all-reduced gradient.

    Args:
        b_small, b_big: the two batch sizes (1 <= b_small < b_big).
        beta: EMA decay in [0, 1); 0 keeps only the latest step.
    """

    def __init__(self, b_small: float, b_big: float, *, beta: float = 0.95) -> None:
        _check_batch_pair(b_small, b_big)
        if not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.b_small, self.b_big, self.beta = float(b_small), float(b_big), float(beta)
        self.n_updates = 0
        self._grad_sq = 0.0
        self._trace = 0.0

    def update(self, small_grad_sq_norm: float, big_grad_sq_norm: float) -> None:
        """Fold in one step's squared gradient norms at ``b_small`` and ``b_big``."""
        grad_sq, trace = noise_scale_two_batch(
            small_grad_sq_norm, big_grad_sq_norm, self.b_small, self.b_big
        )
        self._grad_sq = self.beta * self._grad_sq + (1 - self.beta) * grad_sq
        self._trace = self.beta * self._trace + (1 - self.beta) * trace
        self.n_updates += 1

    def _corrected(self, value: float) -> float | None:
        if self.n_updates == 0:
            return None
        return value / (1 - self.beta**self.n_updates)

    @property
    def grad_sq_norm(self) -> float | None:
        """Averaged estimate of ``|G|²`` (None before the first update)."""
        return self._corrected(self._grad_sq)

    @property
    def trace_sigma(self) -> float | None:
        """Averaged estimate of ``tr(Σ)`` (None before the first update)."""
        return self._corrected(self._trace)

    @property
    def b_simple(self) -> float | None:
        """``tr(Σ) / |G|²`` of the averages (None before the first update, inf if |G|² <= 0)."""
        if self.n_updates == 0:
            return None
        return self._trace / self._grad_sq if self._grad_sq > 0 else math.inf

    def state_dict(self) -> dict[str, float | int]:
        """Everything needed to resume the averages exactly."""
        return {"n_updates": self.n_updates, "grad_sq": self._grad_sq, "trace": self._trace}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Restore the averages saved by :meth:`state_dict`."""
        self.n_updates = int(state["n_updates"])
        self._grad_sq = float(state["grad_sq"])
        self._trace = float(state["trace"])
