"""Model builders for the lecture's normalization and dropout experiments.

Every builder returns an ordinary :class:`torch.nn.Module` assembled from torch's
own layers, with one ``norm`` switch covering the lecture's three normalizers:

``"batch"``
    :class:`~torch.nn.BatchNorm1d` / :class:`~torch.nn.BatchNorm2d` after every
    hidden linear or convolutional layer. For hidden unit :math:`k` and a
    minibatch of :math:`m` examples,

    .. math::
        h'_{kn} = \\beta_k + \\gamma_k \\frac{h_{kn} - \\mu_k}{\\sqrt{\\epsilon + \\sigma_k^2}},

    with :math:`\\mu_k, \\sigma_k^2` the minibatch mean and (biased) variance in
    training mode and running averages in evaluation mode. The layer before a
    batch norm has no bias, because the subtraction of :math:`\\mu_k` cancels it.
``"layer"``
    :class:`~torch.nn.LayerNorm` after every hidden layer: the same transformation,
    but :math:`\\mu, \\sigma^2` are taken over all units of the layer for one
    example (for convolutions: all channels and positions), so it behaves the same
    in training and evaluation and does not depend on the batch size.
``"weight"``
    :func:`torch.nn.utils.parametrizations.weight_norm` on every linear and
    convolutional layer, output layer included: :math:`w = g\\, v / \\lVert v
    \\rVert` per output unit, with the magnitude :math:`g` and the direction
    :math:`v` learned separately.
``"none"``
    plain layers.

``dropout=p`` puts :class:`~torch.nn.Dropout` after the activation of every hidden
layer: in training mode each hidden unit is zeroed with probability :math:`p` and
the survivors are scaled by :math:`1/(1-p)`; in evaluation mode it is the identity.
With ``dropout=0`` no dropout layer is created, and the parameter names of a network
do not depend on ``dropout``, so weights move freely between the two.

Weights are initialized by torch's layer defaults, so ``torch.manual_seed`` makes a
build reproducible.

Example:
    >>> import torch
    >>> from ravine import models
    >>> net = models.mlp(40, [100, 100], 10, norm="batch", dropout=0.1)
    >>> net(torch.zeros(8, 40)).shape
    torch.Size([8, 10])
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

from ravine._checks import check_choice, suggest

__all__ = [
    "NORMS",
    "ACTIVATIONS",
    "mlp",
    "cnn1d",
    "cnn2d",
    "param_groups",
    "build",
    "kinds",
    "ExactWeightNorm",
    "exact_weight_norm",
]

NORMS = ("none", "batch", "layer", "weight")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}

# Module types whose every parameter is a normalization gain or offset.
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _int_tuple(name: str, value: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral):
        return (_positive_int(name, value),)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be an integer or a sequence of integers, got {value!r}")
    return tuple(_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def _dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {value!r}")
    return float(value)


class _Reshape(nn.Module):
    """Accept ``(N, *shape)`` or ``(N, prod(shape))`` and return ``(N, *shape)``."""

    def __init__(self, owner: str, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.owner = owner
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) == self.shape:
            return x
        if x.dim() == 2 and x.shape[1] == math.prod(self.shape):
            return x.reshape(x.shape[0], *self.shape)
        raise ValueError(
            f"{self.owner} expects input of shape (N, {', '.join(map(str, self.shape))}) "
            f"or (N, {math.prod(self.shape)}), got {tuple(x.shape)}"
        )

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _hidden_block(
    layer: nn.Module, norm: nn.Module | None, activation: str, dropout: float
) -> nn.Sequential:
    parts: OrderedDict[str, nn.Module] = OrderedDict(layer=layer)
    if norm is not None:
        parts["norm"] = norm
    parts["act"] = ACTIVATIONS[activation]()
    if dropout > 0:
        parts["dropout"] = nn.Dropout(dropout)
    return nn.Sequential(parts)


def _norm_layer(
    norm: str, batch_norm_type: type[nn.Module], shape: tuple[int, ...]
) -> nn.Module | None:
    """The batch or layer norm for a hidden layer whose output per example has ``shape``."""
    if norm == "batch":
        return batch_norm_type(shape[0])
    if norm == "layer":
        return nn.LayerNorm(list(shape))
    return None


class ExactWeightNorm(_WeightNorm):
    """torch's weight-norm parametrization ``w = g · v / ||v||`` (norm over every dimension but
    ``dim``) with its forward written in plain tensor operations.

    torch's own forward calls the fused ``torch._weight_norm``, whose second derivative is wrong
    on CPU in torch 2.13 (its autograd Hessian is not even symmetric), and every Hessian-vector
    product of ravine.diagnostics needs that second derivative. The plain form has the same
    value and first derivative (to rounding), the same parameters (``original0`` = g,
    ``original1`` = v) and state dict, and exact second derivatives.
    """

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(weight_v.dim()) if d != self.dim % max(weight_v.dim(), 1)]
        return weight_g * (weight_v / torch.linalg.vector_norm(weight_v, dim=dims, keepdim=True))


def exact_weight_norm(layer: nn.Module, name: str = "weight", dim: int = 0) -> nn.Module:
    """:func:`torch.nn.utils.parametrizations.weight_norm` with :class:`ExactWeightNorm`: the
    same reparametrization, with second derivatives the Hessian diagnostics can trust."""
    parametrize.register_parametrization(layer, name, ExactWeightNorm(dim), unsafe=True)
    return layer


def _maybe_weight_norm(layer: nn.Module, norm: str) -> nn.Module:
    return exact_weight_norm(layer, name="weight", dim=0) if norm == "weight" else layer


def mlp(
    in_features: int | Sequence[int],
    hidden: int | Sequence[int],
    out_features: int,
    *,
    norm: str = "none",
    dropout: float = 0.0,
    activation: str = "relu",
) -> nn.Sequential:
    """Multilayer perceptron: ``flatten -> [linear, norm, act, dropout] * len(hidden) -> linear``.

    Args:
        in_features: number of input features, or the shape of one example (it is
            flattened, so ``(N, 1, 8, 8)`` images feed ``in_features=64`` or ``(1, 8, 8)``).
        hidden: width of each hidden layer; an empty sequence gives a linear model.
        out_features: number of outputs (logits for classification).
        norm: ``"none"``, ``"batch"``, ``"layer"`` or ``"weight"`` (see the module docstring).
        dropout: probability of zeroing each hidden unit in training mode, in ``[0, 1)``.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.

    Returns:
        ``nn.Sequential`` with children ``flatten``, ``hidden0`` ... and ``out``; each hidden
        block has children ``layer``, ``norm`` (batch/layer norm), ``act`` and ``dropout`` (p > 0).
    """
    features = math.prod(_int_tuple("in_features", in_features))
    widths = _int_tuple("hidden", hidden)
    _positive_int("out_features", out_features)
    norm = check_choice("norm", norm, NORMS)
    dropout = _dropout(dropout)
    activation = check_choice("activation", activation, tuple(ACTIVATIONS))

    blocks: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, width in enumerate(widths):
        linear = nn.Linear(features, width, bias=norm != "batch")
        blocks[f"hidden{i}"] = _hidden_block(
            _maybe_weight_norm(linear, norm),
            _norm_layer(norm, nn.BatchNorm1d, (width,)),
            activation,
            dropout,
        )
        features = width
    blocks["out"] = _maybe_weight_norm(nn.Linear(features, out_features), norm)
    return nn.Sequential(blocks)


def _cnn(
    owner: str,
    spatial: tuple[int, ...],
    in_channels: int,
    out_features: int,
    channels: Sequence[int],
    norm: str,
    dropout: float,
    kernel_size: int,
    activation: str,
) -> nn.Sequential:
    widths = _int_tuple("channels", channels)
    _positive_int("out_features", out_features)
    odd = isinstance(kernel_size, int) and not isinstance(kernel_size, bool) and kernel_size % 2
    if not odd or kernel_size < 1:
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    norm = check_choice("norm", norm, NORMS)
    dropout = _dropout(dropout)
    activation = check_choice("activation", activation, tuple(ACTIVATIONS))
    conv_type, batch_norm_type = (
        (nn.Conv1d, nn.BatchNorm1d) if len(spatial) == 1 else (nn.Conv2d, nn.BatchNorm2d)
    )

    blocks: OrderedDict[str, nn.Module] = OrderedDict(
        reshape=_Reshape(owner, (in_channels, *spatial))
    )
    c_in = in_channels
    for i, width in enumerate(widths):
        # Symmetric padding keeps the spatial size, so the flattened size is known up front.
        conv = conv_type(c_in, width, kernel_size, padding=kernel_size // 2, bias=norm != "batch")
        blocks[f"conv{i}"] = _hidden_block(
            _maybe_weight_norm(conv, norm),
            _norm_layer(norm, batch_norm_type, (width, *spatial)),
            activation,
            dropout,
        )
        c_in = width
    blocks["flatten"] = nn.Flatten()
    blocks["out"] = _maybe_weight_norm(nn.Linear(c_in * math.prod(spatial), out_features), norm)
    return nn.Sequential(blocks)


def cnn1d(
    in_length: int = 40,
    out_features: int = 10,
    *,
    channels: Sequence[int] = (32, 32, 32),
    norm: str = "batch",
    dropout: float = 0.0,
    kernel_size: int = 5,
    activation: str = "relu",
) -> nn.Sequential:
    """1-D convolutional classifier for MNIST-1D (40-sample signals).

    ``[conv1d(kernel_size, same padding) -> norm -> activation -> dropout] * len(channels)
    -> flatten -> linear``. Convolutions keep the length, so the output layer sees
    ``channels[-1] * in_length`` features and can use where in the signal a pattern sits.

    Args:
        in_length: signal length L; inputs may be ``(N, L)`` or ``(N, 1, L)``.
        out_features: number of outputs.
        channels: output channels of each convolution.
        norm: ``"none"``, ``"batch"``, ``"layer"`` (over channels and positions) or ``"weight"``.
        dropout: probability of zeroing each hidden unit in training mode, in ``[0, 1)``.
        kernel_size: convolution width, odd (so the padding is symmetric).
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
    """
    _positive_int("in_length", in_length)
    return _cnn(
        "cnn1d", (in_length,), 1, out_features, channels, norm, dropout, kernel_size, activation
    )


def cnn2d(
    in_channels: int = 1,
    out_features: int = 10,
    *,
    channels: Sequence[int] = (16, 32),
    norm: str = "batch",
    dropout: float = 0.0,
    image_size: int = 8,
    kernel_size: int = 3,
    activation: str = "relu",
) -> nn.Sequential:
    """2-D convolutional classifier for scikit-learn's 8x8 digits.

    ``[conv2d(kernel_size, same padding) -> norm -> activation -> dropout] * len(channels)
    -> flatten -> linear``; the convolutions keep the image size.

    Args:
        in_channels: image channels C; inputs may be ``(N, C, S, S)`` or ``(N, C * S * S)``.
        out_features: number of outputs.
        channels: output channels of each convolution.
        norm: ``"none"``, ``"batch"``, ``"layer"`` (over channels and pixels) or ``"weight"``.
        dropout: probability of zeroing each hidden unit in training mode, in ``[0, 1)``.
        image_size: side S of the square input images.
        kernel_size: convolution width, odd (so the padding is symmetric).
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
    """
    _positive_int("in_channels", in_channels)
    _positive_int("image_size", image_size)
    return _cnn(
        "cnn2d",
        (image_size, image_size),
        in_channels,
        out_features,
        channels,
        norm,
        dropout,
        kernel_size,
        activation,
    )


def _is_weight_norm_magnitude(module: nn.Module, name: str) -> bool:
    # weight_norm registers g as original0 and v as original1 of a ParametrizationList.
    return (
        isinstance(module, parametrize.ParametrizationList)
        and name == "original0"
        and any(isinstance(p, _WeightNorm) for p in module)
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split a model's parameters into a weight-decay group and a no-decay group.

    Weight decay (the penalty :math:`\\tfrac{\\lambda}{2}\\lVert w \\rVert^2`) is meant to
    shrink the weights that multiply inputs. Following the usual practice, it is not
    applied to parameters that only shift or scale:

    * every parameter named ``bias``;
    * every parameter of a normalization layer (batch / layer / group norm gains
      :math:`\\gamma` and offsets :math:`\\beta`);
    * the magnitude :math:`g` of a weight-normalized layer: it is the layer's gain,
      playing the role of batch norm's :math:`\\gamma`. The direction :math:`v` is decayed
      like an ordinary weight.

    Works on any module, not only ravine's builders; a parameter shared by several
    modules appears once.

    Args:
        model: the network.
        weight_decay: :math:`\\lambda \\ge 0` for the decayed group.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others,
        "weight_decay": 0.0}]``, leaving out a group that would be empty. The groups
        partition ``model.parameters()``. Pass the list to any torch optimizer.
    """
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not weight_decay >= 0
        or not math.isfinite(weight_decay)
    ):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            exempt = (
                name == "bias"
                or isinstance(module, _NORM_LAYERS)
                or _is_weight_norm_magnitude(module, name)
            )
            (no_decay if exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn1d": cnn1d, "cnn2d": cnn2d}


def kinds() -> list[str]:
    """Model kinds accepted by :func:`build`."""
    return list(_BUILDERS)


def build(spec: dict[str, Any]) -> nn.Module:
    """Build a model from a config dict ``{"kind": "mlp" | "cnn1d" | "cnn2d", **kwargs}``.

    The other keys are the builder's arguments, e.g.
    ``{"kind": "mlp", "in_features": 40, "hidden": [100, 100], "out_features": 10,
    "norm": "batch"}``. The dict is not modified.

    Raises:
        ValueError: for a missing or unknown kind, an unknown key (with the closest
            valid one suggested) or a missing required argument.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"model spec must be a dict with a 'kind' key, got {type(spec).__name__}")
    if "kind" not in spec:
        raise ValueError(f"model spec needs a 'kind' key, one of {', '.join(_BUILDERS)}")
    kind = check_choice("model kind", spec["kind"], tuple(_BUILDERS))
    builder = _BUILDERS[kind]
    kwargs = {key: value for key, value in spec.items() if key != "kind"}
    parameters = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in parameters:
            raise ValueError(
                f"unknown key {key!r} for model kind {kind!r}{suggest(key, parameters)} "
                f"(allowed: {', '.join(parameters)})"
            )
    missing = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in kwargs
    ]
    if missing:
        raise ValueError(f"model kind {kind!r} needs {', '.join(map(repr, missing))}")
    return builder(**kwargs)


# Sizes a model takes from its data rather than from its spec (see for_data).
FROM_DATA = ("in_features", "out_features", "in_length", "in_channels")


def for_data(
    spec: dict[str, Any], num_features: int | tuple[int, ...], num_outputs: int
) -> nn.Module:
    """:func:`build` ``spec`` with the input and output sizes filled in from the data.

    ``num_features`` is the features per example (``int``) or one example's shape; sizes given
    in ``spec`` win. An MLP takes flat vectors, a ``cnn1d`` signals ``(L,)`` and a ``cnn2d``
    images ``(C, S, S)``.

    Raises:
        ValueError: the kind does not suit the data's shape (e.g. a 1-D CNN on images).
    """
    shape = num_features if isinstance(num_features, tuple) else (num_features,)
    kind = spec.get("kind")
    sized: dict[str, Any] = {"out_features": num_outputs}
    if kind == "mlp":
        sized["in_features"] = num_features
    elif kind == "cnn1d":
        if len(shape) != 1:
            raise ValueError(f"kind 'cnn1d' needs 1-D signals, the data has shape {shape}")
        sized["in_length"] = shape[0]
    elif kind == "cnn2d":
        if len(shape) != 3:
            raise ValueError(
                f"kind 'cnn2d' needs images (C, S, S) per example, the data has shape {shape}"
                + ("; for flat features use kind mlp" if len(shape) == 1 else "")
            )
        sized.update(in_channels=shape[0], image_size=shape[1])
    return build({**sized, **spec})
