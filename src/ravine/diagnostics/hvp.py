"""Hessian-vector products of a training loss, for any ``nn.Module`` and loss.

The operator is the Hessian of the empirical risk over the given data,

.. math:: R(\\theta) = \\frac{1}{N} \\sum_b n_b \\, L_b(\\theta), \\qquad
          H v = \\nabla_\\theta \\big( \\nabla_\\theta R(\\theta)^\\top v \\big)
              = \\frac{1}{N} \\sum_b n_b \\, H_b v ,

where ``L_b = loss_fn(model(x_b), y_b)`` is the mean loss of batch b (the data come in any form
``ravine.fit`` takes, converted once by :func:`as_batches`), ``n_b`` its number of
examples and ``N = sum_b n_b``: batches of a loader are averaged exactly, weighted by their size
(``loss_fn`` must average over its batch, like ``nn.CrossEntropyLoss()``). Vectors are flat, in the
order of ``model.named_parameters()`` restricted to parameters with ``requires_grad``; a parameter
the loss does not use has a zero gradient and a zero Hessian block.

Two backends compute the same product:

* ``"double-backward"``: reverse-over-reverse, ``autograd.grad(g, θ, grad_outputs=v)`` with
  ``g = autograd.grad(L, θ, create_graph=True)``. For a single batch the graph of ``g`` is built
  once and reused, so each product costs one backward pass through it.
* ``"forward-over-reverse"``: ``torch.func.jvp(torch.func.grad(L), (θ,), (v,))`` through
  ``torch.func.functional_call``; nothing is retained between products.

``backend="auto"`` times one product of each on the first batch and keeps the faster; the choice is
cached per model (and mode, batch shape, dtype, device).

Train/eval mode changes the operator when the model has batch norm (running vs. batch statistics)
or dropout; the mode is therefore an explicit argument (default ``"eval"``), a warning names the
modules concerned, and the model's own mode and buffers are restored afterwards. In ``"train"``
mode batch norm uses each batch's statistics without updating its running averages, and dropout
masks come from a fixed seed per batch, so every product sees the same masks (the Hessian of one
sampled loss).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ravine._checks import check_choice, check_int
from ravine.data.arrays import ArrayDataset
from ravine.data.sources import as_tensors, first_item

__all__ = [
    "HessianOperator",
    "hvp",
    "model_mode",
    "as_batches",
    "all_examples",
    "checked_batch",
    "data_form",
    "DiagnosticsWarning",
    "MODES",
    "BACKENDS",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]

MODES = ("eval", "train")
BACKENDS = ("auto", "double-backward", "forward-over-reverse")

# model -> {(mode, single batch?, batch shape, dtype, device): backend}
_BACKEND_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = weakref.WeakKeyDictionary()


class DiagnosticsWarning(UserWarning):
    """The category of every warning ``ravine.diagnostics`` issues (a measurement that depends on
    the model's mode, a slower fallback for per-example gradients).

    A category of its own lets a program catch these and say them once in its own words
    (``warnings.catch_warnings(record=True)``, then ``issubclass(w.category,
    DiagnosticsWarning)``) while library users still see ordinary ``UserWarning`` s. The warning
    is attributed to the first caller outside ravine, so its source line is the user's.
    """


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message: str) -> None:
    """Issue ``message`` as a :class:`DiagnosticsWarning` at the first frame outside ravine."""
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DiagnosticsWarning, stacklevel=level)


# ---------------------------------------------------------------------------- data forms


def _is_batch(obj: Any) -> bool:
    return (
        isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)
    )


_BATCH_FORM = "a batch (x, y)"


def data_form(data: Any) -> str:
    """A short name of what ``data`` is, for messages ("a DataLoader", "a TensorDataset", ...)."""
    if _is_batch(data):
        return _BATCH_FORM
    for kind in (ArrayDataset, TensorDataset, DataLoader, IterableDataset):
        if isinstance(data, kind):
            return f"a{'n' if kind.__name__[0] in 'AEIOU' else ''} {kind.__name__}"
    if isinstance(data, Dataset):
        return f"a Dataset ({type(data).__name__})"
    if isinstance(data, (list, tuple)):
        return f"a {type(data).__name__} of {len(data)} batches"
    return f"a {type(data).__name__}"


def _describe_item(item: Any) -> str:
    if isinstance(item, Mapping):
        keys = ", ".join(repr(k) for k in list(item)[:4]) + (", ..." if len(item) > 4 else "")
        return f"a dict (keys {keys})"
    if isinstance(item, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in item[:4]) + (", ..." if len(item) > 4 else "")
        return f"a {type(item).__name__} of {len(item)} ({kinds})"
    return f"a {type(item).__name__}"


_NOT_A_PAIR = "diagnostics compute loss_fn(model(x), y) and need (x, y) pairs"


def _dataset_batch(data: Dataset, form: str) -> Batch:
    """All examples of a map-style Dataset as one batch, collated like a DataLoader would."""
    tensors = as_tensors(data)  # ArrayDataset, two-tensor TensorDataset: no copy
    if tensors is not None:
        return tensors
    if isinstance(data, TensorDataset):
        raise TypeError(
            f"data is a TensorDataset of {len(data.tensors)} tensors; diagnostics need two "
            "(inputs x and targets y)"
        )
    if isinstance(data, IterableDataset):
        raise TypeError(
            "data is an IterableDataset (a stream); diagnostics pass over the same examples "
            "many times: pass a DataLoader over a finite part of it, or a list of (x, y) batches"
        )
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"data is {form} without __len__; give it one") from None
    if n == 0:
        raise ValueError(f"data ({form}) holds no examples")
    first = first_item(data)
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise TypeError(f"data is {form} whose items are {_describe_item(first)}; {_NOT_A_PAIR}")
    x, y = default_collate([data[i] for i in range(n)])
    return x, y


def _loader_batches(loader: DataLoader, seed: int) -> list[Any]:
    """One pass of ``loader``, drawn under a forked global RNG seeded with ``seed``.

    The global stream decides a shuffling sampler's order and the workers' seeds when the loader
    has no generator of its own, so the same seed reads the same batches; the caller's global
    stream and the loader's generator are left as they were (measuring changes nothing).
    """
    generator = loader.generator
    saved = generator.get_state() if generator is not None else None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return list(loader)
    finally:
        if generator is not None:
            generator.set_state(saved)


def as_batches(data: Any, *, seed: int = 0) -> list[Batch]:
    """The data forms of ``ravine.fit``, as a list of checked ``(x, y)`` batches.

    This is the one conversion of data for every diagnostic (the Hessian operator takes the
    batches, per-example gradients :func:`all_examples`):

    ====================================  ================================================
    ``data``                              batches
    ====================================  ================================================
    a batch ``(x, y)`` of tensors         that batch
    ``ravine.data.ArrayDataset``, a       one batch of all examples, its own tensors
    two-tensor ``TensorDataset``, an
    object with tensors ``.x`` / ``.y``
    any other map-style torch Dataset     one batch of all its ``(x_i, y_i)`` items, in index
    of ``(x_i, y_i)`` items               order, collated like a DataLoader would
    a ``DataLoader``                      its batches, one pass read once (a shuffling loader
                                          reads the same batches for the same ``seed``; the
                                          global RNG and the loader's generator are untouched)
    an iterable of ``(x, y)`` batches     its batches, read once
    ====================================  ================================================

    The data are read once, so every Hessian-vector product sees exactly the same batches
    (random augmentation in a loader is frozen into one draw). Batches stay where they are and
    are moved to the model's device when used.

    Raises:
        TypeError: one line naming the form that cannot work (a tensor, an ``IterableDataset``,
            dict items or batches: diagnostics have no ``compute_loss``).
        ValueError: no examples, a batch with non-finite values, or a batch that is one example.
    """
    form = data_form(data)
    if _is_batch(data):
        batches: list[Any] = [(data[0], data[1])]
    elif isinstance(data, Dataset):
        batches = [_dataset_batch(data, form)]
    elif isinstance(getattr(data, "x", None), Tensor) and isinstance(
        getattr(data, "y", None), Tensor
    ):
        batches = [(data.x, data.y)]
    elif isinstance(data, DataLoader):
        batches = _loader_batches(data, seed)
    elif isinstance(data, Iterable) and not isinstance(data, (Tensor, str, bytes, Mapping)):
        batches = list(data)
    else:
        raise TypeError(
            "data must be a batch (x, y) of tensors, an ArrayDataset or TensorDataset, a "
            "map-style Dataset of (x, y) items, a DataLoader or an iterable of (x, y) batches, "
            f"got {form}"
        )
    if not batches:
        raise ValueError(f"data ({form}) has no batches")
    return [checked_batch(batch, index, form) for index, batch in enumerate(batches)]


def all_examples(data: Any, *, seed: int = 0) -> Batch:
    """Every example of ``data`` (any form of :func:`as_batches`) as one ``(x, y)``, in order.

    Batches are concatenated (one batch is returned as it is, without a copy); for consumers that
    index single examples, such as per-example gradients and random minibatches.

    Raises:
        ValueError: batches that do not concatenate, or x and y of different lengths.
    """
    batches = as_batches(data, seed=seed)
    if len(batches) == 1:
        x, y = batches[0]
    else:
        try:
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
        except RuntimeError:
            shapes = sorted({tuple(b[0].shape[1:]) for b in batches})
            raise ValueError(
                f"the batches of data ({data_form(data)}) cannot be joined into one tensor of "
                f"examples (x shapes per example: {shapes[:3]})"
            ) from None
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must have the same length, got {x.shape[0]} and "
            f"{y.shape[0] if y.ndim else 'a scalar y'}"
        )
    return x, y


def checked_batch(batch: Any, index: int, form: str | None = None) -> Batch:
    """Return ``batch`` as ``(x, y)`` or raise one line saying what batch ``index`` was.

    ``form`` (from :func:`data_form`) names the data the batch came from, at the end of the
    message (left out for a single batch, where it says nothing new).
    """
    where = f"batch {index} of data"
    of = f" (data is {form})" if form and form != _BATCH_FORM else ""
    if not _is_batch(batch):
        raise TypeError(
            f"{where} must be a pair (x, y) of tensors, got {_describe_item(batch)}; "
            f"{_NOT_A_PAIR}{of}"
        )
    x, y = batch
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{where} is empty (x has shape {tuple(x.shape)}){of}")
    if y.ndim == 0:
        raise ValueError(
            f"{where} looks like one example, not a batch (its y is a scalar){of}; pass examples "
            "as a Dataset (e.g. TensorDataset(x, y)) or batch them with a DataLoader"
        )
    for name, tensor in (("x", x), ("y", y)):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{where}: {name} holds {bad} non-finite values "
                f"(NaN or inf); the curvature of such a loss is meaningless{of}"
            )
    return x, y


def scalar_loss(loss_fn: LossFn, output: Tensor, y: Tensor) -> Tensor:
    """``loss_fn(output, y)``, checked to be a scalar (the mean over the batch)."""
    loss = loss_fn(output, y)
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (the batch mean), got {shape}")
    return loss


def trainable_parameters(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and parameters with ``requires_grad``, in ``named_parameters()`` order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no parameters with requires_grad=True")
    return [n for n, _ in named], [p for _, p in named]


def mode_dependent_modules(model: nn.Module) -> list[str]:
    """Names of batch-norm and dropout (p > 0) submodules, whose output depends on the mode."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            names.append(name or type(module).__name__)
        elif isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            names.append(name or type(module).__name__)
    return names


def refuse_fused_weight_norm(model: nn.Module) -> None:
    """``ValueError`` for torch's own weight-norm parametrization: its fused kernel
    (``torch._weight_norm``) has a wrong second derivative on CPU in torch 2.13, so every Hessian
    of such a model would be silently wrong. ravine.models use
    :class:`~ravine.models.ExactWeightNorm`."""
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) and any(
            type(p) is _WeightNorm for p in module
        ):
            where = name.removesuffix(".parametrizations.weight") or "(root)"
            raise ValueError(
                f"{where}: torch's weight_norm has a wrong second derivative (torch._weight_norm), "
                "so its Hessian cannot be measured; use ravine.models.exact_weight_norm(layer) "
                "instead of torch.nn.utils.parametrizations.weight_norm"
            )


def warn_mode_dependence(model: nn.Module, mode: str, what: str) -> None:
    """Warn (one line) that batch norm / dropout make ``what`` depend on the mode."""
    modules = mode_dependent_modules(model)
    if not modules:
        return
    meaning = (
        "batch norm uses its running statistics, dropout is off"
        if mode == "eval"
        else "batch norm uses each batch's statistics, dropout masks come from a fixed seed"
    )
    listed = ", ".join(modules[:4]) + (", ..." if len(modules) > 4 else "")
    warn(
        f"batch norm/dropout ({listed}) make {what} depend on the model's mode; "
        f"using mode={mode!r} ({meaning})"
    )


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in ``mode`` ("eval" or "train") and restore every module's mode afterwards.

    In "train" mode, batch-norm layers temporarily stop tracking running statistics (their
    output, computed from the batch statistics, is unchanged) and all buffers are restored on
    exit, so measuring never changes the model.
    """
    check_choice("mode", mode, MODES)
    saved_modes = [(m, m.training) for m in model.modules()]
    untracked: list[nn.Module] = []
    saved_buffers: list[tuple[Tensor, Tensor]] = []
    model.train(mode == "train")
    if mode == "train":
        saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.track_running_stats = False
                untracked.append(m)
    try:
        yield
    finally:
        for m in untracked:
            m.track_running_stats = True
        with torch.no_grad():
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
        for m, training in saved_modes:
            m.training = training


@contextlib.contextmanager
def batch_rng(mode: str, seed: int, index: int, device: torch.device) -> Iterator[None]:
    """In "train" mode, a forked RNG seeded by ``(seed, index)``: fixed dropout masks per batch."""
    if mode != "train":
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
        yield


class HessianOperator:
    """The Hessian of the training loss as a linear operator on flat parameter vectors.

    Args:
        model: any ``nn.Module``; the Hessian is taken with respect to its parameters with
            ``requires_grad``, at their values when the operator is first applied (for a single
            batch the graph of the gradient is cached; build a new operator after changing the
            parameters).
        loss_fn: ``loss_fn(model(x), y)`` -> scalar batch mean.
        data: any data form of ``ravine.fit`` (see :func:`as_batches`): a batch ``(x, y)``, an
            ``ArrayDataset`` or ``TensorDataset``, a map-style Dataset of ``(x, y)`` items (one
            batch of all its examples), a ``DataLoader`` or an iterable of batches (averaged
            exactly, weighted by batch size). The data are read once, so every product sees the
            same batches.
        mode: "eval" (default) or "train"; see the module docstring.
        backend: "auto", "double-backward" or "forward-over-reverse".
        seed: seeds the dropout masks in "train" mode, the probe vector of "auto" and the one
            pass over a shuffling DataLoader.

    ``op(v)`` (or ``op.matvec(v)``) returns ``H v`` in ``v``'s dtype; the products are computed
    in the model's dtype. ``op.hvps`` counts the products computed by ``matvec``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        mode: str = "eval",
        backend: str = "auto",
        seed: int = 0,
    ) -> None:
        check_choice("mode", mode, MODES)
        check_choice("backend", backend, BACKENDS)
        check_int("seed", seed, 0)
        self.model = model
        self.loss_fn = loss_fn
        self.mode = mode
        self.seed = seed
        self.names, self.params = trainable_parameters(model)
        refuse_fused_weight_norm(model)
        for name, p in zip(self.names, self.params, strict=True):
            if not bool(torch.isfinite(p).all()):
                raise ValueError(
                    f"parameter {name!r} of the model holds non-finite values "
                    "(NaN or inf); there is no curvature to measure"
                )
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.hvps = 0
        self.backend_timings: dict[str, float] = {}
        batches = as_batches(data, seed=seed)
        self._batches = batches
        self._single = len(batches) == 1
        self._single_batch: Batch | None = None
        self._cached_grads: tuple[Tensor | None, ...] | None = None
        warn_mode_dependence(model, mode, "the Hessian")
        self.backend = backend if backend != "auto" else self._choose_backend()

    # ------------------------------------------------------------------ vectors
    def unflatten(self, vector: Tensor) -> list[Tensor]:
        """Split a flat vector into tensors shaped (and typed) like the parameters."""
        if vector.ndim != 1 or vector.numel() != self.dim:
            raise ValueError(
                f"vector must be 1-D with {self.dim} entries (the number of trainable "
                f"parameters), got shape {tuple(vector.shape)}"
            )
        vector = vector.to(self.device).contiguous()
        pieces = torch.split(vector, self.numels)
        return [
            piece.view(shape).to(p.dtype)
            for piece, shape, p in zip(pieces, self.shapes, self.params, strict=True)
        ]

    def flatten(self, tensors: Sequence[Tensor | None], dtype: torch.dtype | None = None) -> Tensor:
        """Concatenate per-parameter tensors (``None`` = zeros) into one flat vector."""
        dtype = dtype or self.dtype
        return torch.cat(
            [
                (
                    torch.zeros(n, dtype=dtype, device=self.device)
                    if t is None
                    else t.reshape(-1).to(dtype)
                )
                for t, n in zip(tensors, self.numels, strict=True)
            ]
        )

    # ------------------------------------------------------------------ data
    def _iter_batches(self) -> Iterator[tuple[int, Tensor, Tensor]]:
        # The batches were checked by as_batches; one batch stays on the device between products.
        if self._single:
            if self._single_batch is None:
                x, y = self._batches[0]
                self._single_batch = (x.to(self.device), y.to(self.device))
            yield 0, *self._single_batch
            return
        for i, (x, y) in enumerate(self._batches):
            yield i, x.to(self.device), y.to(self.device)

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        return scalar_loss(self.loss_fn, self.model(x), y)

    # ------------------------------------------------------------------ one batch
    def _second_backward(
        self, grads: Sequence[Tensor | None], vs: Sequence[Tensor], retain: bool
    ) -> list[Tensor | None]:
        # A gradient that does not depend on the parameters (loss linear in them) has no graph
        # and contributes nothing to H v; autograd.grad would reject it.
        pairs = [
            (g, v) for g, v in zip(grads, vs, strict=True) if g is not None and g.requires_grad
        ]
        if not pairs:
            return [None] * len(self.params)
        return list(
            torch.autograd.grad(
                [g for g, _ in pairs],
                self.params,
                grad_outputs=[v for _, v in pairs],
                retain_graph=retain,
                allow_unused=True,
            )
        )

    def _batch_hvp(
        self, index: int, x: Tensor, y: Tensor, vs: Sequence[Tensor], backend: str
    ) -> list[Tensor | None]:
        with batch_rng(self.mode, self.seed, index, self.device):
            if backend == "double-backward":
                if self._single:
                    if self._cached_grads is None:
                        loss = self._loss(x, y)
                        self._cached_grads = torch.autograd.grad(
                            loss, self.params, create_graph=True, allow_unused=True
                        )
                    return self._second_backward(self._cached_grads, vs, retain=True)
                loss = self._loss(x, y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                return self._second_backward(grads, vs, retain=False)
            params = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
            tangents = dict(zip(self.names, vs, strict=True))

            def loss_of(p: dict[str, Tensor]) -> Tensor:
                return scalar_loss(self.loss_fn, functional_call(self.model, p, (x,)), y)

            with warnings.catch_warnings():
                # torch's first forward-mode call scripts its jvp decompositions with the
                # deprecated torch.jit.script; that warning is torch's, not the user's concern.
                warnings.filterwarnings("ignore", ".*torch.jit.script", DeprecationWarning)
                _, hv = jvp(grad(loss_of), (params,), (tangents,))
            return [hv[n] for n in self.names]

    # ------------------------------------------------------------------ public
    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v`` (returned in ``v``'s dtype, on the model's device)."""
        vs = self.unflatten(v)
        total: Tensor | None = None
        count = 0
        with model_mode(self.model, self.mode):
            for index, x, y in self._iter_batches():
                n = x.shape[0]
                flat = self.flatten(self._batch_hvp(index, x, y, vs, self.backend), torch.float64)
                total = flat.mul_(n) if total is None else total.add_(flat, alpha=n)
                count += n
        assert total is not None
        self.hvps += 1
        return total.div_(count).to(v.dtype)

    __call__ = matvec

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """The loss R(θ) and its flat gradient (float64), averaged over batches like ``matvec``."""
        total: Tensor | None = None
        loss_sum = 0.0
        count = 0
        with model_mode(self.model, self.mode):
            for index, x, y in self._iter_batches():
                n = x.shape[0]
                with batch_rng(self.mode, self.seed, index, self.device):
                    loss = self._loss(x, y)
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                flat = self.flatten(grads, torch.float64)
                total = flat.mul_(n) if total is None else total.add_(flat, alpha=n)
                loss_sum += float(loss.detach()) * n
                count += n
        assert total is not None
        return loss_sum / count, total.div_(count)

    # ------------------------------------------------------------------ backend choice
    def _cache_key(self) -> tuple:
        _, x, _ = next(iter(self._iter_batches()))
        return (self.mode, self._single, tuple(x.shape), self.dtype, str(self.device))

    def _choose_backend(self) -> str:
        key = self._cache_key()
        cached = _BACKEND_CACHE.get(self.model, {}).get(key)
        if cached is not None:
            return cached
        generator = torch.Generator().manual_seed(self.seed)
        probe = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        vs = self.unflatten(probe)
        errors: dict[str, str] = {}
        with model_mode(self.model, self.mode):
            index, x, y = next(iter(self._iter_batches()))
            for backend in BACKENDS[1:]:
                try:
                    # The first product warms up (and, for one batch, builds the cached graph);
                    # the second is the steady-state cost that Lanczos will pay.
                    self._batch_hvp(index, x, y, vs, backend)
                    self._synchronize()
                    start = time.perf_counter()
                    self._batch_hvp(index, x, y, vs, backend)
                    self._synchronize()
                    self.backend_timings[backend] = time.perf_counter() - start
                except (RuntimeError, NotImplementedError) as error:
                    errors[backend] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        if not self.backend_timings:
            raise RuntimeError(f"no Hessian-vector product backend works for this model: {errors}")
        chosen = min(self.backend_timings, key=self.backend_timings.__getitem__)
        if chosen != "double-backward":
            self._cached_grads = None
        _BACKEND_CACHE.setdefault(self.model, {})[key] = chosen
        return chosen

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def hvp(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    v: Tensor,
    *,
    mode: str = "eval",
    backend: str = "auto",
    seed: int = 0,
) -> Tensor:
    """One Hessian-vector product ``H v`` of the training loss (see :class:`HessianOperator`).

    ``v`` is flat, ordered like ``model.named_parameters()`` (trainable parameters only);
    ``data`` is any form of :func:`as_batches`.
    """
    return HessianOperator(model, loss_fn, data, mode=mode, backend=backend, seed=seed).matvec(v)
