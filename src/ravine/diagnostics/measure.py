"""Flat numbers for training logs: :func:`measure` returns a dict of JSON-friendly numbers
(λmax, λmin, κ, trace, gradient noise, ...) for a training loop to log every few steps."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ravine._checks import check_int, check_positive, suggest
from ravine.diagnostics.hvp import HessianOperator, LossFn, as_batches
from ravine.diagnostics.noise import gradient_statistics
from ravine.diagnostics.spectrum import operator_extremes, operator_trace

__all__ = ["WHAT", "check_what", "measure"]

WHAT = ("loss", "grad_norm", "lambda_max", "lambda_min", "trace", "noise")


def check_what(what: str | Sequence[str]) -> tuple[str, ...]:
    items = (what,) if isinstance(what, str) else tuple(what)
    for item in items:
        if item not in WHAT:
            raise ValueError(
                f"what entries must be among {', '.join(map(repr, WHAT))}, got {item!r}"
                f"{suggest(str(item), WHAT)}"
            )
    return items


def measure(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    what: str | Sequence[str] = ("loss", "grad_norm", "lambda_max", "noise"),
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "eval",
    backend: str = "auto",
    tol: float = 1e-3,
    max_hvps: int = 100,
    trace_hvps: int = 30,
    chunk_size: int = 256,
) -> dict[str, float | int | bool]:
    """Measure diagnostics at the current parameters; a flat dict of JSON-friendly numbers.

    ``data`` is a batch ``(x, y)``, a dataset with ``.x``/``.y`` or an iterable of batches (for
    logging during training, a fixed subset of the training set of a few hundred to a few
    thousand examples keeps the cost bounded). ``what`` selects (keys produced in brackets):

    * "loss" [``loss``], "grad_norm" [``grad_norm``]: the loss and |∇R| on ``data``.
    * "lambda_max" [``lambda_max``, ``lambda_max_residual``, ``lr_bound`` = 2/λmax, and with
      ``lr`` also ``lr_times_lambda_max``]: Lanczos to relative residual ``tol``, targeting the top.
    * "lambda_min" [``lambda_min``, ``lambda_min_residual``, ``condition_number``,
      ``negative_curvature``]: with "lambda_max" one Lanczos run converging at both ends.
      Either adds ``lanczos_converged`` (false if ``max_hvps`` ran out first).
    * "trace" [``trace``, ``trace_stderr``]: Hutchinson with ``trace_hvps`` products.
    * "noise" [``grad_sq_norm``, ``trace_sigma``, ``b_simple``, and with ``batch_size`` also
      ``noise_std`` = √(tr Σ / m)]: per-example gradients of all examples in ``data``.

    Always present: ``hvps`` (Hessian-vector products used) and ``seconds`` (wall time).
    Infinite values (κ when λmin = 0, B_simple when G = 0) are returned as ``inf``.
    """
    items = check_what(what)
    if lr is not None:
        check_positive("lr", lr)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_int("max_hvps", max_hvps, 1)
    start = time.perf_counter()
    data = as_batches(data, seed=seed)  # read once: the operator and the noise share the batches
    out: dict[str, float | int | bool] = {}
    if batch_size is not None:
        out["batch_size"] = batch_size
    if lr is not None:
        out["lr"] = lr
    hvps = 0
    needs_operator = {"loss", "grad_norm", "lambda_max", "lambda_min", "trace"} & set(items)
    if needs_operator:
        op = HessianOperator(model, loss_fn, data, mode=mode, backend=backend, seed=seed)
        if "loss" in items or "grad_norm" in items:
            loss, gradient = op.loss_and_gradient()
            if "loss" in items:
                out["loss"] = loss
            if "grad_norm" in items:
                out["grad_norm"] = float(torch.linalg.vector_norm(gradient))
        ends = [e for e in ("lambda_max", "lambda_min") if e in items]
        if ends:
            which = "both" if len(ends) == 2 else ends[0].removeprefix("lambda_")
            ext = operator_extremes(
                op.matvec,
                op.dim,
                tol=tol,
                max_steps=max_hvps,
                which=which,
                seed=seed,
                device=op.device,
                eps=float(torch.finfo(op.dtype).eps),
            )
            hvps += ext.hvps
            out["lanczos_converged"] = ext.converged
            if "lambda_max" in items:
                out["lambda_max"] = ext.lambda_max
                out["lambda_max_residual"] = ext.residual_max
                out["lr_bound"] = 2.0 / ext.lambda_max if ext.lambda_max > 0 else math.inf
                if lr is not None:
                    out["lr_times_lambda_max"] = lr * ext.lambda_max
            if "lambda_min" in items:
                out["lambda_min"] = ext.lambda_min
                out["lambda_min_residual"] = ext.residual_min
                out["condition_number"] = ext.condition_number
                out["negative_curvature"] = ext.negative_curvature
        if "trace" in items:
            tr = operator_trace(op.matvec, op.dim, n_hvps=trace_hvps, seed=seed, device=op.device)
            hvps += tr.hvps
            out.update(tr.to_dict())
            out.pop("trace_hvps")
    if "noise" in items:
        stats = gradient_statistics(
            model, loss_fn, data, mode=mode, chunk_size=chunk_size, seed=seed
        )
        out.update(stats.to_dict())
        if batch_size is not None:
            out["noise_std"] = math.sqrt(stats.trace_sigma / batch_size)
    out["hvps"] = hvps
    out["seconds"] = time.perf_counter() - start
    return out
