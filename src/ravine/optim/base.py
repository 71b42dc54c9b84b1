"""Shared machinery of ravine's optimizers.

Every ravine optimizer is a :class:`torch.optim.Optimizer`. Its update rule is one function over
lists of tensors written with ``torch._foreach_*`` operations (the multi-tensor path), so that
the same function is

* run eagerly (default): one kernel launch per operation for a whole list of tensors, or
* fused by ``torch.compile`` (``compile=True``): Inductor turns the list of operations into a few
  fused loops that read and write each tensor once.

Where torch ships a fused kernel computing exactly the same update (SGD, AdaGrad, Adam and AdamW:
``torch._fused_sgd_``, ``_fused_adagrad_``, ``_fused_adam_``, ``_fused_adamw_``; Momentum and
Nesterov through ``_fused_sgd_`` on a rescaled velocity, see :mod:`ravine.optim.sgd`) the default
path calls it instead (``fused=None`` picks it on CPU and CUDA; ``fused=False`` forces the
multi-tensor path). Tests prove every path computes the same iterates as the algorithm box.

Flat storage (``flat=True``; the default with ``compile``)
-----------------------------------------------------------
At the first step the parameters, their gradients and each state tensor of a batch (parameters
sharing device, dtype and scalar state) are copied into one contiguous buffer each, and the
parameters' ``.data``, ``.grad`` and state become views into them. Every operation of the rule
is then one kernel over one tensor whatever the number of parameters (the approach of apex's
multi-tensor kernels and DeepSpeed's flat buffers), and ``compile=True`` compiles one graph over
the buffers instead of chunks of 16 tensors. Backward accumulates into the flat gradient buffer
as long as the gradients are not replaced: with ``flat=True``, :meth:`RavineOptimizer.zero_grad`
zeroes the buffer in place. Gradients that arrive as new tensors (``model.zero_grad()`` sets them
to ``None``) are copied in before the update, which costs a pass over them. It is opt-in because
it changes what the caller's tensors are: parameters become views (moving the model to another
device afterwards breaks the sharing), and a parameter whose gradient stays zero is still
updated, as in torch with ``zero_grad(set_to_none=False)``. ``compile=True`` turns it on unless
``flat=False`` is given (one compiled graph over a buffer instead of a graph per chunk of 16
tensors: 0.4-1.0x torch's fastest step where the chunks took up to 3.3x); parameters that cannot
share a buffer (non-contiguous ones) then simply keep their own storage. A parameter whose
storage is replaced behind the optimizer's back (``p.data = ...``, ``model.to(other_device)``) is
noticed at the next step, which rebuilds the buffers from the parameters as they are.

The base class adds what every algorithm box of the book leaves to the caller: hyperparameter
validation, L2 weight decay, global gradient-norm clipping, lazy per-parameter state, and the
interim-point mechanism of the Nesterov methods (Algorithms 8.3 and 8.6).

Interim-point mechanism
-----------------------
Algorithms 8.3 and 8.6 evaluate the gradient at the interim point ``θ̃ = θ + αv``. ravine keeps the
*interim point* in the parameters between steps, so an ordinary ``loss.backward(); opt.step()``
loop (or a closure) differentiates exactly at ``θ̃``. ``step`` then recovers the true
``θ = θ̃ - s·v`` (``s`` is the momentum coefficient with which the current shift was applied,
stored per parameter as ``state["shift"]``), applies the box's update, and moves the parameters to
the next interim point ``θ + α v``. The shift does not involve the learning rate, so a learning
rate that changes between steps keeps the method exact; a momentum that changes is handled by the
stored ``shift``.

The true ``θ`` is available through :meth:`RavineOptimizer.true_params` (a context manager that
moves the parameters to ``θ`` and restores them bit-exactly afterwards: use it for evaluation and
for saving deployable weights) and :meth:`RavineOptimizer.to_true_params` (a permanent move, for
the end of training). Checkpoints of ``model.state_dict()`` together with ``opt.state_dict()``
resume exactly, since the velocity and shift are optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["RavineOptimizer", "clip_grad_norm_", "true_params", "add_scaled_", "addcdiv_scaled_"]

# Hyperparameters that may change from step to step. On the compile path they are passed as
# 0-d tensors so that a new learning rate does not trigger a recompilation.
STEP_VARYING = frozenset(
    {"lr", "shift", "scale", "new_scale", "bias_correction1", "bias_correction2_sqrt"}
)

# A check is (predicate, text of the allowed range) for one hyperparameter.
Check = tuple[Callable[[Any], bool], str]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


POSITIVE: Check = (lambda x: _is_number(x) and x > 0, "a finite number > 0")
NON_NEGATIVE: Check = (lambda x: _is_number(x) and x >= 0, "a finite number >= 0")
UNIT_INTERVAL: Check = (lambda x: _is_number(x) and 0 <= x < 1, "in [0, 1)")
BETAS: Check = (
    lambda b: isinstance(b, (tuple, list))
    and len(b) == 2
    and all(_is_number(x) and 0 <= x < 1 for x in b),
    "a pair of numbers in [0, 1)",
)


def check_value(name: str, value: Any, check: Check) -> None:
    """Raise ``ValueError("<name> must be <rule>, got <value>")`` unless ``check`` accepts it."""
    predicate, rule = check
    if not predicate(value):
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def _global_norm(grads: list[Tensor]) -> Tensor:
    """Euclidean norm of all gradients taken together (one reduction per device/dtype list)."""
    groups = _by_device_dtype(grads)
    if len(groups) == 1:  # the common case: one stack, one conversion (same numbers)
        (group,) = groups.values()
        # dtype= casts before reducing: the numbers of .double() then the norm, one op fewer
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(group)),
                                        dtype=torch.float64)
    norms = []
    for group in groups.values():
        norms.extend(torch._foreach_norm(group))
    if not norms:
        return torch.zeros(())
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device, torch.float64) for n in norms]))


def _clip_(grads: list[Tensor], max_norm: float) -> tuple[Tensor, Tensor]:
    """Re-normalize ``grads`` in place to norm ``max_norm`` when their global norm exceeds it.

    Returns the pre-clip norm and whether clipping fired, both as tensors (no host sync).
    The scale ``min(1, max_norm / norm)`` is applied unconditionally; a factor of exactly 1
    leaves the gradients bit-identical.
    """
    norm = _global_norm(grads)
    scale = torch.clamp(max_norm / norm, max=1.0)
    for group in _by_device_dtype(grads).values():
        torch._foreach_mul_(group, scale.to(group[0].device, group[0].dtype))
    return norm, norm > max_norm


def add_scaled_(ys: list[Tensor], xs: list[Tensor], a: float | Tensor) -> None:
    """``y ← y + a·x`` for lists; ``a`` is a float (eager) or a 0-d tensor (compile path)."""
    if isinstance(a, Tensor):
        torch._foreach_add_(ys, torch._foreach_mul(xs, a))
    else:
        torch._foreach_add_(ys, xs, alpha=a)


def addcdiv_scaled_(
    ys: list[Tensor], ns: list[Tensor], ds: list[Tensor], a: float | Tensor
) -> None:
    """``y ← y + a·n/d`` for lists; ``a`` is a float (eager) or a 0-d tensor (compile path)."""
    if isinstance(a, Tensor):
        torch._foreach_add_(ys, torch._foreach_mul(torch._foreach_div(ns, ds), a))
    else:
        torch._foreach_addcdiv_(ys, ns, ds, value=a)


COMPILE_CHUNK = 16
# Devices on which torch's fused optimizer kernels run.
FUSED_DEVICES = ("cpu", "cuda")
# On the CPU the multi-tensor path applies the rule to runs of consecutive tensors holding about
# this many bytes of parameters, and to pieces of this size of larger tensors, so that the rule's
# several passes over a run hit the cache (measured: RMSProp on 10M parameters 35% faster than
# one pass over all tensors per operation; RMSProp-Nesterov's eight passes another 10-15% faster
# with 256 KiB pieces than with whole tensors of 1 MiB and more).
CPU_CHUNK_BYTES = 1 << 18


def _cache_chunks(params: list[Tensor]) -> list[tuple[int, int]]:
    """Consecutive index ranges whose parameters reach ``CPU_CHUNK_BYTES`` (the last may not)."""
    bounds, start, size = [], 0, 0
    for i, p in enumerate(params):
        size += p.numel() * p.element_size()
        if size >= CPU_CHUNK_BYTES:
            bounds.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(params):
        bounds.append((start, len(params)))
    return bounds


def _piece_lengths(tensors: list[Tensor], states: list[list[Tensor]]) -> dict[int, int]:
    """``{i: n}`` for each tensor to cut into pieces of ``n`` elements: those larger than
    ``CPU_CHUNK_BYTES`` whose parameter and state tensors are contiguous (views, updated in
    place)."""
    lengths = {}
    for i, t in enumerate(tensors):
        n = max(1, CPU_CHUNK_BYTES // t.element_size())
        if t.numel() > n and t.is_contiguous() and all(s[i].is_contiguous() for s in states):
            lengths[i] = n
    return lengths


def _cut(tensors: list[Tensor], lengths: dict[int, int]) -> list[Tensor]:
    """``tensors`` with each one named in ``lengths`` replaced by its pieces (flat views; a
    non-contiguous gradient is read through a contiguous copy)."""
    if not lengths:
        return tensors
    out: list[Tensor] = []
    for i, t in enumerate(tensors):
        n = lengths.get(i)
        if n is None:
            out.append(t)
        else:
            out.extend(t.reshape(-1).split(n))
    return out


def _chunk_bounds(n: int) -> Iterator[tuple[int, int]]:
    """Split ``range(n)`` into chunks of 16, 8, 4, 2 and 1 elements (largest first)."""
    start, size = 0, COMPILE_CHUNK
    while start < n:
        while size > n - start:
            size //= 2
        yield start, start + size
        start += size


def _chunked(fn: Callable[..., None]) -> Callable[..., None]:
    """Call a compiled list rule on chunks of at most 16 tensors.

    Inductor generates code proportional to the list length, so one graph over 500 tensors takes
    minutes to compile. With dynamic shapes, chunks of 16, 8, 4, 2 and 1 tensors need at most
    five graphs whatever the model, and each call still fuses the update of 16 tensors.
    """

    def run(*lists: list[Tensor], **hyper: Any) -> None:
        for lo, hi in _chunk_bounds(len(lists[0])):
            fn(*(x[lo:hi] for x in lists), **hyper)

    return run


def _by_device_dtype(tensors: list[Tensor]) -> dict[tuple, list[Tensor]]:
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def clip_grad_norm_(params: Iterable[Tensor] | Tensor, max_norm: float) -> float:
    """Clip gradients by re-normalization, as in the lecture: if ``‖g‖ > τ`` then ``g ← g τ/‖g‖``.

    ``‖g‖`` is the Euclidean norm over all gradients together. Gradients are modified in place.
    The optimizers' ``clip_norm=`` option uses the same code.

    Args:
        params: tensors (or one tensor) whose ``.grad`` is clipped; those without a gradient
            are skipped.
        max_norm: the threshold ``τ > 0``.

    Returns:
        The global norm before clipping.
    """
    check_value("max_norm", max_norm, POSITIVE)
    if isinstance(params, Tensor):
        params = [params]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm, _ = _clip_(grads, float(max_norm))
    return float(norm)


def true_params(opt: Optimizer) -> contextlib.AbstractContextManager:
    """Context manager placing the parameters at the true ``θ`` for any torch optimizer.

    For ravine's interim-point optimizers this is :meth:`RavineOptimizer.true_params`; for any
    other optimizer the parameters already are ``θ`` and nothing happens.
    """
    if isinstance(opt, RavineOptimizer):
        return opt.true_params()
    return contextlib.nullcontext()


@dataclasses.dataclass
class _Flat:
    """A batch stored contiguously: one buffer each for its parameters, gradients and each state.

    The parameters' ``.data``, their ``.grad`` and their state tensors are views into these.
    ``pieces`` holds the same buffers cut into cache-sized runs for the CPU multi-tensor path.
    """

    params: Tensor
    grads: Tensor
    buffers: list[Tensor]
    grad_views: list[Tensor]
    pieces: tuple[list[Tensor], list[Tensor], list[list[Tensor]]]
    param_ptrs: list[int] = dataclasses.field(default_factory=list)

    def intact(self, params: list[Tensor]) -> bool:
        """Whether every parameter still is its view into :attr:`params` (nobody replaced
        ``.data``, e.g. ``model.to(...)`` or ``p.data = ...``)."""
        return [p.data_ptr() for p in params] == self.param_ptrs


@dataclasses.dataclass
class _Batch:
    """Parameters updated by one call of the rule, with their state."""

    index: list[int]
    params: list[Tensor]
    buffers: list[list[Tensor]]
    states: list[dict[str, Any]]
    chunks: list[tuple[int, int]]
    flat: _Flat | None = None
    # CPU multi-tensor path: tensors cut into cache-sized pieces (see _piece_lengths); the
    # chunks then index the list of pieces.
    pieces: dict[int, int] = dataclasses.field(default_factory=dict)


def _flatten(tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A contiguous copy of ``tensors`` end to end, and a view of it shaped like each tensor."""
    buffer = torch.cat([t.detach().reshape(-1) for t in tensors])
    pieces = buffer.split([t.numel() for t in tensors])
    return buffer, [piece.view_as(t) for piece, t in zip(pieces, tensors, strict=True)]


def _cache_pieces(buffer: Tensor, blocking: bool = True) -> list[Tensor]:
    """``buffer`` cut into runs of ``CPU_CHUNK_BYTES`` (whole off the CPU or without
    ``blocking``)."""
    if buffer.device.type != "cpu" or not blocking:
        return [buffer]
    return list(buffer.split(max(1, CPU_CHUNK_BYTES // buffer.element_size())))


class RavineOptimizer(Optimizer):
    """Base class: validation, weight decay, clipping, lazy state and foreach/compile dispatch.

    Subclasses declare

    * ``_rule``: the update function ``rule(params, grads, *buffers, **hyper)`` over lists of
      tensors of one device and dtype;
    * ``_buffers``: names of per-parameter state tensors, created as zeros like the parameter;
    * ``_scalars``: per-parameter scalar state with its initial value (e.g. the step count);
    * ``_checks``: hyperparameter name -> :data:`Check`;
    * ``_hyper(group, **scalars)``: the keyword arguments of ``_rule`` for one step;
    * ``_advance(group, **scalars)``: the scalar state after the step;
    * optionally ``_fused_rule`` (torch's fused kernel for the same update) with
      ``_fused_hyper(group, **scalars)``.
    """

    _rule: Callable[..., None]
    _fused_rule: Callable[..., None] | None = None
    _buffers: tuple[str, ...] = ()
    # Whether the CPU multi-tensor path cuts the lists into cache-sized runs and pieces: it pays
    # for rules that make several passes; a one-pass rule only pays a call per piece.
    _cache_blocking: bool = True
    _scalars: dict[str, Any] = {}
    _checks: dict[str, Check] = {}
    interim_point: bool = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
        fused: bool | None = None,
        flat: bool | None = None,
    ) -> None:
        if flat is not None and not isinstance(flat, bool):
            raise ValueError(f"flat must be True, False or None, got {flat!r}")
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused must be True, False or None, got {fused!r}")
        if fused and compile:
            raise ValueError("fused=True and compile=True are alternatives; choose one")
        if fused and self._fused_rule is None:
            raise ValueError(f"{type(self).__name__} has no fused kernel in torch")
        self._fused = (self._fused_rule is not None and not compile) if fused is None else fused
        if clip_norm is not None:
            check_value("clip_norm", clip_norm, POSITIVE)
        if not isinstance(compile, (bool, str)):
            raise ValueError(
                f"compile must be a bool or a torch.compile backend name, got {compile!r}"
            )
        if isinstance(compile, str) and compile not in torch.compiler.list_backends(None):
            raise ValueError(f"compile: unknown torch.compile backend {compile!r} (backends: "
                             f"{', '.join(torch.compiler.list_backends())})")
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.track_grad_norm = bool(track_grad_norm)
        self.compile = compile
        # None: flat storage exactly when compiling (one graph over the buffers); where the
        # parameters cannot share a buffer it then quietly keeps their own storage.
        self._flat_auto = flat is None
        self.flat = bool(compile) if flat is None else flat
        self._last_norm: Tensor | None = None
        self._last_clipped: Tensor | None = None
        super().__init__(params, defaults)
        self._setup()

    _OPTIONS = ("clip_norm", "track_grad_norm", "compile", "_fused", "flat", "_flat_auto")

    def _setup(self) -> None:
        """Derived, unpicklable attributes: the rule to call and the cached step plans."""
        # Per param group: the ids of the parameters that had gradients, and how they were
        # batched (device, dtype, scalar state) with their state buffers. Reused while the same
        # parameters have gradients; cleared when the state is replaced.
        self._plans: dict[int, tuple[tuple[int, ...], list[_Batch]]] = {}
        rule = type(self)._rule
        if self.compile:
            backend = "inductor" if self.compile is True else self.compile
            self._rule_fn = _chunked(
                torch.compile(rule, backend=backend, fullgraph=True, dynamic=True)
            )
        else:
            self._rule_fn = rule

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._OPTIONS})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # pickled before flat=None existed: the choice was explicit then
        self.__dict__.setdefault("_flat_auto", False)
        self._last_norm = self._last_clipped = None
        self._setup()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._plans.clear()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for name, check in self._checks.items():
            check_value(name, group[name], check)
        for p in group["params"]:
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters")

    @property
    def last_grad_norm(self) -> float | None:
        """Global gradient norm before clipping at the last step.

        Recorded when ``clip_norm`` is set or ``track_grad_norm=True`` (one extra read of the
        gradients per step); ``None`` otherwise or before the first step.
        """
        return None if self._last_norm is None else float(self._last_norm)

    @property
    def last_clipped(self) -> bool | None:
        """Whether clipping fired at the last step (``None`` without ``clip_norm``)."""
        return None if self._last_clipped is None else bool(self._last_clipped)

    def _hyper(self, group: dict[str, Any], **scalars: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _advance(self, group: dict[str, Any], **scalars: Any) -> dict[str, Any]:
        return scalars

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Perform one update; ``closure`` (optional) re-evaluates the loss and its gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        per_group = []
        all_grads: list[Tensor] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            for g in grads:
                if g.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients")
            per_group.append((group, params, grads))
            all_grads.extend(grads)
        if self.clip_norm is not None and all_grads:
            self._last_norm, self._last_clipped = _clip_(all_grads, self.clip_norm)
        elif self.track_grad_norm and all_grads:
            self._last_norm = _global_norm(all_grads)
        for group, params, grads in per_group:
            if params:
                self._step_group(group, params, grads)
        return loss

    def _plan(self, params: list[Tensor]) -> list[_Batch]:
        """Batch the parameters by device, dtype and scalar state; create missing state."""
        batches: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            state = self.state[p]
            if not state:
                for name in self._buffers:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state.update(self._scalars)
            key = (p.device, p.dtype, *(state[k] for k in self._scalars))
            batches.setdefault(key, []).append(i)
        plan = []
        for idx in batches.values():
            ps = [params[i] for i in idx]
            states = [self.state[p] for p in ps]
            flat = self._flat_storage(ps, states) if self.flat else None
            buffers = [[st[name] for st in states] for name in self._buffers]
            pieces: dict[int, int] = {}
            if ps[0].device.type == "cpu" and self._cache_blocking:
                pieces = _piece_lengths(ps, buffers) if flat is None else {}
                chunks = _cache_chunks(_cut(ps, pieces))
            else:
                chunks = [(0, len(ps))]
            plan.append(_Batch(idx, ps, buffers, states, chunks, flat, pieces))
        return plan

    def _flat_storage(self, params: list[Tensor], states: list[dict[str, Any]]) -> _Flat | None:
        """Move parameters, gradients and state of one batch into contiguous buffers (views);
        ``None`` (own storage) when they cannot share one and flat storage was not asked for."""
        for p in params:
            if not p.is_contiguous():
                if self._flat_auto:
                    return None
                raise ValueError("flat=True needs contiguous parameters")
        flat_params, views = _flatten(params)
        for p, view in zip(params, views, strict=True):
            p.data = view
        flat_grads, grad_views = _flatten([p.grad for p in params])
        for p, view in zip(params, grad_views, strict=True):
            p.grad = view
        flat_buffers = []
        for name in self._buffers:
            buffer, views = _flatten([st[name] for st in states])
            for st, view in zip(states, views, strict=True):
                st[name] = view
            flat_buffers.append(buffer)
        blocking = self._cache_blocking
        pieces = (
            _cache_pieces(flat_params, blocking),
            _cache_pieces(flat_grads, blocking),
            [_cache_pieces(b, blocking) for b in flat_buffers],
        )
        return _Flat(flat_params, flat_grads, flat_buffers, grad_views, pieces,
                     [p.data_ptr() for p in params])

    @staticmethod
    def _gather_grads(params: list[Tensor], flat: _Flat) -> None:
        """Copy gradients that autograd did not accumulate into the flat buffer (e.g. after
        ``zero_grad(set_to_none=True)`` on the model) into it, and point ``.grad`` at it again."""
        stray = [(p, view) for p, view in zip(params, flat.grad_views, strict=True)
                 if p.grad is not view]
        if stray:
            torch._foreach_copy_([view for _, view in stray], [p.grad for p, _ in stray])
            for p, view in stray:
                p.grad = view

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As :meth:`torch.optim.Optimizer.zero_grad`; with ``flat=True`` the flat gradient
        buffers are zeroed in place instead (whatever ``set_to_none``), so that the next
        backward accumulates into them."""
        if not self.flat:
            super().zero_grad(set_to_none)
            return
        kept = set()
        for _, batches in self._plans.values():
            for batch in batches:
                if batch.flat is not None:
                    batch.flat.grads.zero_()
                    kept.update(id(view) for view in batch.flat.grad_views)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p.grad) not in kept:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().requires_grad_(False).zero_()

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        # Lists handed to the rule share device, dtype and scalar state (e.g. the step count).
        # A batch's parameters are always stepped together, so their scalar state stays equal
        # while the same parameters have gradients and the cached plan stays valid.
        ids = tuple(map(id, params))
        cached = self._plans.get(id(group))
        if cached is None or cached[0] != ids or not all(
                b.flat.intact(b.params) for b in cached[1] if b.flat is not None):
            cached = (ids, self._plan(params))
            self._plans[id(group)] = cached
        for batch in cached[1]:
            ps, buffers, chunks = batch.params, batch.buffers, batch.chunks
            gs = [grads[i] for i in batch.index]
            if batch.flat is not None:
                self._gather_grads(ps, batch.flat)
                flat = batch.flat
                ps, gs, buffers = [flat.params], [flat.grads], [[b] for b in flat.buffers]
            scalars = {k: batch.states[0][k] for k in self._scalars}
            if self._fused and ps[0].device.type in FUSED_DEVICES:
                self._fused_rule(ps, gs, *buffers, **self._fused_hyper(group, **scalars))
            elif self.compile:
                hyper = self._hyper(group, **scalars)
                for k in STEP_VARYING.intersection(hyper):
                    hyper[k] = torch.tensor(hyper[k], dtype=torch.float64, device=ps[0].device)
                self._rule_fn(ps, gs, *buffers, **hyper)
            else:
                hyper = self._hyper(group, **scalars)
                if batch.flat is not None:
                    ps, gs, buffers = batch.flat.pieces
                    chunks = [(i, i + 1) for i in range(len(ps))]
                elif batch.pieces:
                    ps, gs = _cut(ps, batch.pieces), _cut(gs, batch.pieces)
                    buffers = [_cut(b, batch.pieces) for b in buffers]
                for lo, hi in chunks:
                    self._rule_fn(ps[lo:hi], gs[lo:hi], *(b[lo:hi] for b in buffers), **hyper)
            if scalars:
                after = self._advance(group, **scalars)
                for state in batch.states:
                    state.update(after)

    def _fused_hyper(self, group: dict[str, Any], **scalars: Any) -> dict[str, Any]:
        return self._hyper(group, **scalars)

    def _interim_offset(self, state: dict[str, Any]) -> tuple[Tensor, float]:
        """``(t, c)`` with ``θ = θ̃ + c·t``: here ``θ̃ = θ + s·v``, so ``(v, -s)``."""
        return state["velocity"], -state["shift"]

    def _shifted(self) -> Iterator[tuple[Tensor, Tensor, float]]:
        """``(parameter, t, c)`` for every parameter held at an interim point ``θ + c·t``."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and state.get("shift", 0.0) != 0.0:
                    yield (p, *self._interim_offset(state))

    @contextlib.contextmanager
    def true_params(self) -> Iterator[None]:
        """Temporarily place the parameters at the true ``θ`` (see the module docstring).

        For interim-point methods the parameters hold ``θ̃ = θ + s·v`` between steps; inside
        this context they hold ``θ``, and on exit the interim point is restored bit-exactly from
        a copy. For the other optimizers it does nothing.
        """
        saved = []
        with torch.no_grad():
            for p, t, c in self._shifted():
                saved.append((p, p.detach().clone()))
                p.add_(t, alpha=c)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, copy in saved:
                    p.copy_(copy)

    @torch.no_grad()
    def to_true_params(self) -> None:
        """Move the parameters to the true ``θ`` permanently (e.g. at the end of training).

        Training may continue afterwards: the next step starts from ``θ`` (its gradient is then
        taken at ``θ`` rather than at ``θ + αv``) and every later step is exact again.
        """
        for p, t, c in list(self._shifted()):
            p.add_(t, alpha=c)
            self.state[p]["shift"] = 0.0

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        extra = f", clip_norm={self.clip_norm}" if self.clip_norm is not None else ""
        return f"{type(self).__name__}({hp}{extra})"
