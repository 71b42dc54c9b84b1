"""Diagnose your own training layer by layer: curvature, gradient, step size and noise per block.

The trainable parameters ``θ = (θ_1, ..., θ_L)`` are split into blocks (by default one per module
that owns parameters, named by its module path such as ``"net.0"``; ``by="parameter"`` gives one
block per parameter tensor). For each block b, with ``R`` the training loss on ``data``:

* ``lambda_max``: the largest eigenvalue of the diagonal Hessian block
  ``H_bb = ∂²R / ∂θ_b²``, by Lanczos on the operator ``v_b ↦ (H [v_b; 0])_b`` (one Hessian-vector
  product of the whole model per step, the other blocks' entries zero; exact, no dense matrix).
  ``H_bb`` is a principal submatrix of H, so by Cauchy interlacing ``λmax(H_bb) <= λmax(H)``:
  gradient descent that moved block b alone would diverge for ``lr > 2 / λmax(H_bb)``, and the
  block with the largest value (:attr:`LayerwiseResult.limiting_layer`) is the one that limits
  the learning rate first.
* ``trace``: ``tr(H_bb) = Σ_i e_iᵀ H_bb e_i``, exact by unit vectors when the block has at most
  ``trace_hvps`` parameters, else Hutchinson's estimate with ``trace_hvps`` Rademacher probes
  (:func:`~ravine.diagnostics.spectrum.operator_trace`). Since the diagonal blocks' traces add
  up to ``tr(H)``, ``trace_share = tr(H_bb) / Σ_c tr(H_cc)`` is the block's share of the total
  curvature (shares sum to 1; a block with negative trace has a negative share).
* ``grad_norm = |∇_{θ_b} R|`` and ``weight_norm = |θ_b|``.
* ``update_ratio = |Δθ_b| / |θ_b|`` of the optimizer's *next* step: one real
  ``optimizer.step()`` on deep copies of the model and the optimizer with the gradient of R on
  ``data``, so it is exact for any optimizer, its momentum and adaptive state included. The user's
  model and optimizer are never changed. For ravine's interim-point optimizers (Nesterov) θ and
  Δθ are those of the true parameters (``ravine.optim.base.true_params``), and so is
  ``weight_norm``. The usual rule of thumb wants it near 1e-3 per step.
* ``b_simple = tr(Σ_b) / |G_b|²``, the simple noise scale of McCandlish et al. (2018) restricted to
  the block: ``G_b`` the mean and ``Σ_b`` the covariance (over the examples of ``data``) of the
  per-example gradients' entries in block b. This is the plug-in value of ``data`` itself, as in
  :func:`~ravine.diagnostics.noise.gradient_statistics`; :func:`b_simple_interval` gives the
  bias-corrected estimate for the set ``data`` samples, with a confidence interval.

Cost: per block at most ``max_hvps`` products for λmax and ``min(n_b, trace_hvps)`` for the trace,
each a Hessian-vector product over all of ``data``; one pass of per-example gradients, kept as an
``N × dim`` matrix; with an optimizer, one forward/backward pass on the copies.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ravine._checks import check_int, check_positive
from ravine.diagnostics.hvp import (
    MODES,
    HessianOperator,
    LossFn,
    as_batches,
    batch_rng,
    check_choice,
    checked_batch,
    model_mode,
    scalar_loss,
    trainable_parameters,
)
from ravine.diagnostics.noise import _chunks, _PerExample
from ravine.diagnostics.plots import _figure, _save
from ravine.diagnostics.spectrum import operator_extremes, operator_trace
from ravine.optim.base import true_params

__all__ = [
    "LayerRow",
    "LayerwiseResult",
    "NoiseInterval",
    "layerwise",
    "b_simple_interval",
    "noise_interval",
    "parameter_blocks",
    "plot_layerwise",
]

BY = ("module", "parameter")
ROOT = "(root)"


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LayerRow:
    """The measurements of one parameter block (see the module docstring).

    Attributes:
        name: module path (``by="module"``) or parameter name (``by="parameter"``).
        n_params: number of parameters in the block.
        lambda_max: largest eigenvalue of the diagonal Hessian block ``H_bb``.
        lambda_max_converged: whether Lanczos met its tolerance (or ran to the block's size).
        trace: ``tr(H_bb)``; ``trace_exact`` says whether it is exact or Hutchinson's estimate,
            ``trace_stderr`` its standard error (0 when exact).
        trace_share: ``tr(H_bb) / Σ_c tr(H_cc)`` (nan when the total is 0).
        grad_norm, weight_norm: ``|∇_b R|`` and ``|θ_b|``.
        update_ratio: ``|Δθ_b| / |θ_b|`` of the optimizer's next step (None without optimizer).
        b_simple: ``tr(Σ_b) / |G_b|²`` (inf when ``G_b = 0``).
        hvps: Hessian-vector products spent on this block.
    """

    name: str
    n_params: int
    lambda_max: float
    lambda_max_converged: bool
    trace: float
    trace_exact: bool
    trace_stderr: float
    trace_share: float
    grad_norm: float
    weight_norm: float
    update_ratio: float | None
    b_simple: float
    hvps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return asdict(self)


@dataclass(frozen=True, repr=False)
class LayerwiseResult:
    """Per-block diagnostics from :func:`layerwise`.

    Attributes:
        rows: one :class:`LayerRow` per block, in parameter order.
        loss: the training loss R on ``data``.
        hvps: Hessian-vector products used in all.
        by: "module" or "parameter".
    """

    rows: list[LayerRow]
    loss: float
    hvps: int
    by: str

    @property
    def limiting_layer(self) -> str:
        """Name of the block with the largest ``lambda_max``: the first to limit the step."""
        return max(self.rows, key=lambda row: row.lambda_max).name

    def to_dict(self) -> dict[str, Any]:
        """``{"limiting_layer", "loss", "hvps", "by", "layers": [row dicts]}``."""
        return {
            "limiting_layer": self.limiting_layer,
            "loss": self.loss,
            "hvps": self.hvps,
            "by": self.by,
            "layers": [row.to_dict() for row in self.rows],
        }

    def to_markdown(self) -> str:
        """A Markdown table, one line per block; ``≈`` marks estimated (Hutchinson) traces."""
        header = (
            "| layer | params | λmax(H_bb) | tr(H_bb) | share of tr H | ‖∇_b R‖ | ‖θ_b‖ "
            "| ‖Δθ_b‖/‖θ_b‖ | B_simple |"
        )
        lines = [header, "|" + "---|" * 9]
        for row in self.rows:
            name = f"**{row.name}**" if row.name == self.limiting_layer else row.name
            trace = _fmt(row.trace) if row.trace_exact else f"≈{_fmt(row.trace)}"
            cells = [
                name,
                str(row.n_params),
                _fmt(row.lambda_max),
                trace,
                _fmt(row.trace_share),
                _fmt(row.grad_norm),
                _fmt(row.weight_norm),
                _fmt(row.update_ratio),
                _fmt(row.b_simple),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            f"Limiting layer: **{self.limiting_layer}** (largest λmax of its diagonal Hessian "
            f"block; gradient descent on that block alone diverges for lr > 2/λmax = "
            f"{_fmt(2.0 / max(r.lambda_max for r in self.rows))})."
        )
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Write one bar chart per quantity, blocks on the x-axis (:func:`plot_layerwise`)."""
        return plot_layerwise(self, path)

    def __repr__(self) -> str:
        return (
            f"LayerwiseResult({len(self.rows)} blocks by {self.by}, limiting_layer="
            f"{self.limiting_layer!r}, lambda_max={max(r.lambda_max for r in self.rows):.4g}, "
            f"loss={self.loss:.4g}, hvps={self.hvps})"
        )


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}"


# ---------------------------------------------------------------------------- blocks


def _block_name(module_name: str) -> str:
    # A parametrized weight (e.g. weight norm) lives in "<layer>.parametrizations.<name>";
    # it belongs to the layer.
    if module_name.startswith("parametrizations.") or module_name == "parametrizations":
        return ROOT
    module_name = module_name.split(".parametrizations.", 1)[0]
    return module_name or ROOT


def parameter_blocks(
    model: nn.Module, names: Sequence[str], params: Sequence[Tensor], by: str
) -> list[tuple[str, list[int]]]:
    """``(block name, indices into params)`` in parameter order: each leaf module owning
    parameters (``by="module"``) or each parameter tensor (``by="parameter"``)."""
    if by == "parameter":
        return [(name, [i]) for i, name in enumerate(names)]
    index = {id(p): i for i, p in enumerate(params)}
    owner: dict[int, str] = {}
    for module_name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            i = index.get(id(p))
            if i is not None and i not in owner:  # a shared parameter goes to its first owner
                owner[i] = _block_name(module_name)
    blocks: dict[str, list[int]] = {}
    for i in range(len(params)):
        blocks.setdefault(owner[i], []).append(i)
    return list(blocks.items())


def _positions(members: Sequence[int], numels: Sequence[int], device: torch.device) -> Tensor:
    """Flat positions of the parameters ``members`` in the flat parameter vector."""
    offsets = np.concatenate([[0], np.cumsum(numels)])
    return torch.cat(
        [torch.arange(int(offsets[i]), int(offsets[i + 1]), device=device) for i in members]
    )


def _block_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


# ---------------------------------------------------------------------------- pieces


def _block_curvature(
    op: HessianOperator,
    positions: Tensor,
    *,
    tol: float,
    max_hvps: int,
    trace_hvps: int,
    seed: int,
) -> tuple[float, bool, float, bool, float, int]:
    """``(lambda_max, converged, trace, trace_exact, trace_stderr, hvps)`` of ``H_bb``."""
    n = positions.numel()

    def matvec(v: Tensor) -> Tensor:
        full = torch.zeros(op.dim, dtype=torch.float64, device=op.device)
        full[positions] = v.to(torch.float64)
        return op.matvec(full)[positions]

    top = operator_extremes(
        matvec,
        n,
        tol=tol,
        max_steps=max_hvps,
        which="max",
        seed=seed,
        device=op.device,
        eps=float(torch.finfo(op.dtype).eps),
    )
    if n <= trace_hvps:
        unit = torch.zeros(n, dtype=torch.float64, device=op.device)
        trace = 0.0
        for i in range(n):
            unit[i] = 1.0
            trace += float(matvec(unit)[i])
            unit[i] = 0.0
        return top.lambda_max, top.converged, trace, True, 0.0, top.hvps + n
    estimate = operator_trace(matvec, n, n_hvps=trace_hvps, seed=seed, device=op.device)
    return (
        top.lambda_max,
        top.converged,
        estimate.estimate,
        False,
        estimate.stderr,
        top.hvps + estimate.hvps,
    )


def _per_example_matrix(
    model: nn.Module, loss_fn: LossFn, data: Any, mode: str, seed: int, chunk_size: int = 256
) -> Tensor:
    """All per-example gradients of ``data`` as one ``(N, dim)`` matrix (model dtype).

    Chunks and their dropout seeds are those of
    :func:`~ravine.diagnostics.noise.gradient_statistics`, so statistics computed from this
    matrix are the same numbers.
    """
    compute = _PerExample(model, loss_fn, mode, "auto", seed)
    chunks = (
        chunk
        for index, batch in enumerate(as_batches(data))
        for chunk in _chunks(*checked_batch(batch, index), chunk_size)
    )
    rows = [
        torch.cat([g.reshape(xc.shape[0], -1) for g in compute(xc, yc, index)], 1)
        for index, (xc, yc) in enumerate(chunks)
    ]
    if not rows:
        raise ValueError("data has no examples")
    return torch.cat(rows)


def _column_chunks(dim: int, rows: int) -> list[slice]:
    # Work on float64 copies of at most ~4M numbers at a time.
    width = max(1, (1 << 22) // max(rows, 1))
    return [slice(start, min(start + width, dim)) for start in range(0, dim, width)]


def _noise_moments(grads: Tensor) -> tuple[float, float]:
    """``(|G|², tr Σ)`` of per-example gradients ``grads`` (N, d), two-pass in float64."""
    grad_sq = trace = 0.0
    for cols in _column_chunks(grads.shape[1], grads.shape[0]):
        g = grads[:, cols].to(torch.float64)
        mean = g.mean(0)
        grad_sq += float(mean.dot(mean))
        trace += float(((g - mean) ** 2).sum(1).mean())
    return grad_sq, trace


def _noise_scale(trace_sigma: float, grad_sq: float) -> float:
    """``tr Σ / |G|²``, inf when ``G = 0`` (as in ``gradient_statistics``)."""
    return trace_sigma / grad_sq if grad_sq > 0 else math.inf


def _update_ratio(step: float, weight: float) -> float:
    """``|Δθ| / |θ|``; a zero block that moves has ratio inf, one that stays has 0."""
    if weight > 0:
        return step / weight
    return 0.0 if step == 0 else math.inf


def _norm(tensors: Sequence[Tensor], members: Sequence[int]) -> float:
    return math.sqrt(sum(float(tensors[i].double().pow(2).sum()) for i in members))


def _next_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    data: Any,
    params: Sequence[Tensor],
    mode: str,
    seed: int,
) -> tuple[list[Tensor], list[Tensor]]:
    """True parameters before and after one real step of copies of ``model`` and ``optimizer``.

    Deep-copying the model and the optimizer with one memo maps every parameter the optimizer
    holds (and its state) onto the copy's parameter. The step gets the gradient of the
    size-weighted mean loss over the batches of ``data``, through a closure (so optimizers that
    need one, such as L-BFGS, work too), with the dropout seeds of the Hessian operator.
    """
    memo: dict[int, Any] = {}
    model_copy = copy.deepcopy(model, memo)
    optimizer_copy = copy.deepcopy(optimizer, memo)
    copies = [memo[id(p)] for p in params]
    batches = as_batches(data)
    device = params[0].device

    def closure() -> Tensor:
        for p in model_copy.parameters():
            p.grad = None
        total, count = 0.0, 0
        with model_mode(model_copy, mode):
            for index, batch in enumerate(batches):
                x, y = checked_batch(batch, index)
                x, y = x.to(device), y.to(device)
                with batch_rng(mode, seed, index, device):
                    loss = scalar_loss(loss_fn, model_copy(x), y)
                (loss * x.shape[0]).backward()
                total += float(loss.detach()) * x.shape[0]
                count += x.shape[0]
        with torch.no_grad():
            for p in model_copy.parameters():
                if p.grad is not None:
                    p.grad.div_(count)
        return torch.tensor(total / count)

    with true_params(optimizer_copy):
        before = [p.detach().clone() for p in copies]
    optimizer_copy.step(closure)
    with true_params(optimizer_copy):
        after = [p.detach().clone() for p in copies]
    return before, after


# ---------------------------------------------------------------------------- public


def layerwise(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
    mode: str = "eval",
    tol: float = 1e-3,
    max_hvps: int = 60,
    trace_hvps: int = 20,
    by: str = "module",
) -> LayerwiseResult:
    """Curvature, gradient, next-step size and gradient noise of each parameter block.

    See the module docstring for the quantities and their definitions.

    Args:
        model: any ``nn.Module``; blocks are taken over its parameters with ``requires_grad``.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar batch mean.
        data: a batch ``(x, y)``, a dataset with tensors ``.x``/``.y``, or an iterable of
            batches (averaged exactly, weighted by size).
        optimizer: if given, ``update_ratio`` is measured from one step of a copy of it.
        seed: seeds the Lanczos start vectors and Hutchinson probes (one derived seed per
            block) and the dropout masks in "train" mode; same seed, same result.
        mode: "eval" (default) or "train", for batch norm and dropout (see
            :class:`~ravine.diagnostics.hvp.HessianOperator`).
        tol: Lanczos relative residual tolerance for ``lambda_max``.
        max_hvps: at most this many Lanczos steps per block (a block of at most ``max_hvps``
            parameters is solved exactly).
        trace_hvps: blocks of at most this many parameters get the exact trace, larger ones a
            Hutchinson estimate from this many probes.
        by: "module" (one block per module owning parameters) or "parameter".
    """
    check_choice("mode", mode, MODES)
    check_choice("by", by, BY)
    check_int("seed", seed, 0)
    check_positive("tol", tol)
    check_int("max_hvps", max_hvps, 1)
    check_int("trace_hvps", trace_hvps, 2)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    names, params = trainable_parameters(model)
    if optimizer is not None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not held & {id(p) for p in params}:
            raise ValueError("optimizer holds none of the model's trainable parameters")
    batches = as_batches(data)
    op = HessianOperator(model, loss_fn, batches, mode=mode, seed=seed)
    blocks = parameter_blocks(model, names, params, by)
    loss, gradient = op.loss_and_gradient()
    per_example = _per_example_matrix(model, loss_fn, batches, mode, seed)

    weights = [p.detach() for p in params]
    deltas: list[Tensor] | None = None
    if optimizer is not None:
        weights, after = _next_step(model, optimizer, loss_fn, batches, params, mode, seed)
        deltas = [a - b for a, b in zip(after, weights, strict=True)]

    rows = []
    for index, (name, members) in enumerate(blocks):
        positions = _positions(members, op.numels, op.device)
        lmax, converged, trace, exact, stderr, hvps = _block_curvature(
            op,
            positions,
            tol=tol,
            max_hvps=max_hvps,
            trace_hvps=trace_hvps,
            seed=_block_seed(seed, index),
        )
        grad_sq, trace_sigma = _noise_moments(per_example[:, positions.to(per_example.device)])
        weight_norm = _norm(weights, members)
        ratio = None if deltas is None else _update_ratio(_norm(deltas, members), weight_norm)
        rows.append(
            LayerRow(
                name=name,
                n_params=positions.numel(),
                lambda_max=lmax,
                lambda_max_converged=converged,
                trace=trace,
                trace_exact=exact,
                trace_stderr=stderr,
                trace_share=math.nan,  # set below, once all traces are known
                grad_norm=float(torch.linalg.vector_norm(gradient[positions])),
                weight_norm=weight_norm,
                update_ratio=ratio,
                b_simple=_noise_scale(trace_sigma, grad_sq),
                hvps=hvps,
            )
        )
    total = sum(row.trace for row in rows)
    rows = [replace(row, trace_share=row.trace / total if total else math.nan) for row in rows]
    return LayerwiseResult(rows=rows, loss=loss, hvps=op.hvps, by=by)


def _bootstrap_components(
    grads: Tensor, counts: Tensor
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(|Ĝ|², tr Σ̂)`` of the examples and bias-corrected ``(|G|², tr Σ)`` of each resample.

    ``counts[r, n]`` is how often example n occurs in resample r (rows sum to N). With centered
    gradients ``h_n = g_n - Ĝ`` and ``D_r = (1/N) Σ_n c_rn h_n``, a resample's plug-in values are
    ``|G_r|² = |Ĝ|² + 2 Ĝ·D_r + |D_r|²`` and ``tr Σ_r = (1/N) Σ_n c_rn |h_n|² - |D_r|²``
    (computed from the centered gradients, so nothing cancels at the scale of |Ĝ|²). Under
    resampling ``E|G_r|² = |Ĝ|² + tr Σ̂ / N`` and ``E tr Σ_r = (N-1)/N tr Σ̂``, so the corrected

    .. math:: T_r = \\tfrac{N}{N-1} \\operatorname{tr}\\Sigma_r, \\qquad
              S_r = |G_r|^2 - \\tfrac{1}{N-1} \\operatorname{tr}\\Sigma_r

    have expectations exactly ``tr Σ̂`` and ``|Ĝ|²`` (McCandlish et al.'s unbiased estimators,
    appendix A.1, applied within the bootstrap world).
    """
    n = grads.shape[0]
    counts = counts.to(torch.float64)
    grad_sq = trace = 0.0
    resamples = counts.shape[0]
    cross = torch.zeros(resamples, dtype=torch.float64)
    deviation_sq = torch.zeros(resamples, dtype=torch.float64)
    spread = torch.zeros(resamples, dtype=torch.float64)
    for cols in _column_chunks(grads.shape[1], max(n, resamples)):
        g = grads[:, cols].to(torch.float64).cpu()
        mean = g.mean(0)
        centered = g - mean
        sq = (centered**2).sum(1)
        grad_sq += float(mean.dot(mean))
        trace += float(sq.mean())
        d = counts @ centered / n
        cross += d @ mean
        deviation_sq += (d * d).sum(1)
        spread += counts @ sq / n
    resampled_grad_sq = grad_sq + 2 * cross + deviation_sq
    resampled_trace = spread - deviation_sq
    corrected_trace = resampled_trace * (n / (n - 1))
    corrected_grad_sq = resampled_grad_sq - resampled_trace / (n - 1)
    return grad_sq, trace, corrected_grad_sq.numpy(), corrected_trace.numpy()


@dataclass(frozen=True)
class NoiseInterval:
    """B_simple with its bootstrap interval, and the plug-in statistics of the sample.

    Attributes:
        b_simple, low, high: see :func:`b_simple_interval`.
        grad_sq_norm, trace_sigma: the plug-in ``|Ĝ|²`` and ``tr Σ̂`` of the examples (as
            :func:`~ravine.diagnostics.noise.gradient_statistics` reports them).
        n_examples: N.
    """

    b_simple: float
    low: float
    high: float
    grad_sq_norm: float
    trace_sigma: float
    n_examples: int

    def to_dict(self) -> dict[str, float | int]:
        """``b_simple``, ``b_simple_low``, ``b_simple_high``, ``grad_sq_norm``, ``trace_sigma``."""
        return {
            "b_simple": self.b_simple,
            "b_simple_low": self.low,
            "b_simple_high": self.high,
            "grad_sq_norm": self.grad_sq_norm,
            "trace_sigma": self.trace_sigma,
        }


def b_simple_interval(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
    mode: str = "eval",
) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of :func:`noise_interval` (see there)."""
    result = noise_interval(model, loss_fn, data, n_boot=n_boot, level=level, seed=seed, mode=mode)
    return result.b_simple, result.low, result.high


def noise_interval(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
    mode: str = "eval",
) -> NoiseInterval:
    """``B_simple = tr(Σ) / |G|²`` of the distribution ``data`` was drawn from, with a bootstrap
    confidence interval over the examples.

    The simple noise scale of McCandlish, Kaplan, Amodei et al. (2018, "An Empirical Model of
    Large-Batch Training", eq. 2.8). With per-example gradients ``g_n`` of the N examples of
    ``data``, ``Ĝ = (1/N) Σ g_n`` and ``Σ̂ = (1/N) Σ (g_n - Ĝ)(g_n - Ĝ)ᵀ``, the plug-in ratio
    ``tr Σ̂ / |Ĝ|²`` is the noise scale of ``data`` itself (what
    :func:`~ravine.diagnostics.noise.gradient_statistics` reports). As an estimate for a larger
    set that ``data`` samples (the training set, of which diagnostics see a subset) it is biased
    low: ``E|Ĝ|² = |G|² + tr Σ / N``, so it reads about ``B / (1 + B/N)``. The estimate returned
    here uses the unbiased parts (McCandlish et al., appendix A.1):

    .. math:: \\hat B = \\frac{\\tfrac{N}{N-1} \\operatorname{tr}\\hat\\Sigma}
                            {|\\hat G|^2 - \\tfrac{1}{N-1} \\operatorname{tr}\\hat\\Sigma},

    ``inf`` when the denominator is <= 0 (the mean gradient is not resolved by N examples).

    The interval: ``n_boot`` resamples of N examples drawn with replacement (seeded) give
    ``B*_r`` by the same formula, from the per-example gradients already computed (no backward
    pass per resample). In the bootstrap world the truth is the plug-in ``B_0 = tr Σ̂ / |Ĝ|²``
    of the sample, so ``B*_r / B_0`` mimics the error ``B̂ / B``, and the interval is the basic
    bootstrap interval on the log scale, ``[B̂ B_0 / B*_(hi), B̂ B_0 / B*_(lo)]`` with
    ``B*_(lo), B*_(hi)`` the ``(1-level)/2`` and ``(1+level)/2`` order statistics (no
    interpolation, so intervals of two levels with the same seed are nested). A resample whose
    denominator is <= 0 gives ``B*_r = inf``; an infinite upper quantile makes the lower end 0,
    and if ``B̂`` itself is ``inf`` the result is ``(inf, B*_(lo), inf)``: only a lower bound.
    (In simulations with Gaussian gradients this interval covered the true B at level 0.9 in
    76-92% of trials for B/N from 0.05 to 1, where the percentile interval around the plug-in
    covered it in 55-84%.)

    Args:
        data: a batch ``(x, y)``, a dataset with tensors ``.x``/``.y``, or an iterable of
            batches; at least 2 examples. Its ``N × dim`` per-example gradients are kept.
        n_boot: resamples (>= 2).
        level: confidence level in (0, 1).
        seed: seeds the resampling (and dropout masks in "train" mode).
        mode: "eval" or "train" (see :func:`~ravine.diagnostics.noise.per_example_gradients`).

    Returns:
        a :class:`NoiseInterval` (the estimate, the interval and the plug-in statistics).
    """
    check_choice("mode", mode, MODES)
    check_int("n_boot", n_boot, 2)
    check_int("seed", seed, 0)
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    grads = _per_example_matrix(model, loss_fn, data, mode, seed)
    n = grads.shape[0]
    if n < 2:
        raise ValueError(f"data must hold at least 2 examples to resample, got {n}")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (n_boot, n), generator=generator)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(n_boot, n, dtype=torch.float64)
    )
    grad_sq, trace, resampled_grad_sq, resampled_trace = _bootstrap_components(grads, counts)
    estimate = _noise_scale(trace * n / (n - 1), grad_sq - trace / (n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(resampled_grad_sq > 0, resampled_trace / resampled_grad_sq, math.inf)
    tail = (1 - level) / 2
    lower, upper = (float(q) for q in np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf"))
    stats = {"grad_sq_norm": float(grad_sq), "trace_sigma": float(trace), "n_examples": n}
    if not math.isfinite(estimate):
        return NoiseInterval(estimate, lower, math.inf, **stats)
    plug_in = trace / grad_sq
    low = estimate * plug_in / upper if math.isfinite(upper) else 0.0
    high = estimate * plug_in / lower if lower > 0 else math.inf
    return NoiseInterval(estimate, low, high, **stats)


# ---------------------------------------------------------------------------- plot


def plot_layerwise(result: LayerwiseResult, path: str | Path) -> Path:
    """One bar chart per quantity (λmax, trace share, gradient norm, weight norm, update ratio
    when measured, B_simple), blocks on the x-axis, in one figure; returns ``path``.

    The limiting layer's λmax bar is highlighted; non-finite values are left out.
    """
    panels = [
        ("lambda_max", "λmax(H_bb)"),
        ("trace_share", "share of tr H"),
        ("grad_norm", "‖∇_b R‖"),
        ("weight_norm", "‖θ_b‖"),
        ("update_ratio", "‖Δθ_b‖/‖θ_b‖"),
        ("b_simple", "B_simple"),
    ]
    rows = result.rows
    panels = [(k, t) for k, t in panels if any(getattr(r, k) is not None for r in rows)]
    labels = [r.name for r in rows]
    positions = np.arange(len(rows))
    figure = _figure(size=(max(6.0, 0.5 * len(rows) + 3.0), 1.9 * len(panels) + 0.8))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    limiting = result.limiting_layer
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [getattr(r, key) for r in rows]
        heights = [v if v is not None and math.isfinite(v) else math.nan for v in values]
        colors = ["C3" if key == "lambda_max" and r.name == limiting else "C0" for r in rows]
        ax.bar(positions, heights, color=colors)
        ax.axhline(0.0, color="gray", lw=0.6)
        ax.set_ylabel(title)
    axes[-1].set_xticks(positions, labels, rotation=45, ha="right")
    axes[0].set_title(f"Per-layer diagnostics; limiting layer: {limiting}")
    return _save(figure, path)
