"""Tests for ravine.models: architecture, normalization, dropout, param groups, build."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from ravine import models
from ravine.schedules import LinearDecay

NORMS = models.NORMS


def numpy_of(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def capture(module: nn.Module, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Input and output of ``module`` during ``net(x)``."""
    seen = {}

    def hook(mod, inputs, output):
        seen["in"], seen["out"] = inputs[0].detach(), output.detach()

    handle = module.register_forward_hook(hook)
    try:
        net(x)
    finally:
        handle.remove()
    return seen["in"], seen["out"]


def randomize_affine(norm: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))


# ---------------------------------------------------------------------------------------
# Shapes and parameter counts


@pytest.mark.parametrize("norm", NORMS)
def test_output_shapes_and_accepted_input_layouts(norm):
    torch.manual_seed(0)
    assert models.mlp(40, [16, 8], 10, norm=norm)(torch.randn(5, 40)).shape == (5, 10)
    assert models.mlp((1, 8, 8), 12, 3, norm=norm)(torch.randn(5, 1, 8, 8)).shape == (5, 3)
    assert models.mlp(6, [], 2, norm=norm)(torch.randn(5, 6)).shape == (5, 2)
    net1 = models.cnn1d(norm=norm, channels=(4, 4)).eval()
    x = torch.randn(5, 40)
    torch.testing.assert_close(net1(x), net1(x.unsqueeze(1)), rtol=0, atol=0)
    assert net1(x).shape == (5, 10)
    net2 = models.cnn2d(norm=norm, channels=(4, 6), out_features=7).eval()
    img = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(net2(img), net2(img.flatten(1)), rtol=0, atol=0)
    assert net2(img).shape == (5, 7)
    assert models.cnn1d(23, 4, norm=norm, kernel_size=7)(torch.randn(3, 23)).shape == (3, 4)


def test_wrong_input_shape_is_reported():
    with pytest.raises(ValueError, match=r"cnn1d expects input of shape \(N, 1, 40\) or \(N, 40\)"):
        models.cnn1d()(torch.randn(4, 41))
    with pytest.raises(ValueError, match=r"cnn2d expects .*\(N, 64\), got \(4, 3, 8, 8\)"):
        models.cnn2d()(torch.randn(4, 3, 8, 8))


def linear_count(n_in: int, n_out: int, norm: str, hidden: bool) -> int:
    """Weights + bias + normalization parameters of one linear layer."""
    weight = n_in * n_out
    bias = 0 if (hidden and norm == "batch") else n_out
    extra = {"none": 0, "batch": 2 * n_out, "layer": 2 * n_out, "weight": n_out}[norm]
    if not hidden and norm in ("batch", "layer"):
        extra = 0
    return weight + bias + extra


def conv_count(c_in: int, c_out: int, kernel: int, positions: int, norm: str) -> int:
    weight = c_in * c_out * kernel
    bias = 0 if norm == "batch" else c_out
    extra = {"none": 0, "batch": 2 * c_out, "layer": 2 * c_out * positions, "weight": c_out}[norm]
    return weight + bias + extra


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("norm", NORMS)
def test_parameter_counts_follow_the_architecture(norm):
    widths = [40, 100, 50, 10]
    expected = sum(
        linear_count(a, b, norm, hidden=i < len(widths) - 2)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
    )
    assert count(models.mlp(40, [100, 50], 10, norm=norm, dropout=0.3)) == expected

    chans, length = [1, 32, 32, 32], 40
    pairs = zip(chans[:-1], chans[1:], strict=True)
    expected = sum(conv_count(a, b, 5, length, norm) for a, b in pairs)
    expected += linear_count(32 * length, 10, norm, hidden=False)
    assert count(models.cnn1d(norm=norm)) == expected

    chans, pixels = [1, 16, 32], 64
    pairs = zip(chans[:-1], chans[1:], strict=True)
    expected = sum(conv_count(a, b, 9, pixels, norm) for a, b in pairs)
    expected += linear_count(32 * pixels, 10, norm, hidden=False)
    assert count(models.cnn2d(norm=norm)) == expected


def test_activation_choice():
    for name, cls in [("relu", nn.ReLU), ("tanh", nn.Tanh), ("gelu", nn.GELU)]:
        net = models.mlp(4, [3, 3], 2, activation=name)
        assert sum(isinstance(m, cls) for m in net.modules()) == 2
        net = models.cnn1d(10, 2, channels=(3,), activation=name)
        assert sum(isinstance(m, cls) for m in net.modules()) == 1


def test_init_is_deterministic_given_the_seed():
    def state(seed):
        torch.manual_seed(seed)
        return models.cnn1d(norm="weight").state_dict()

    a, b, c = state(3), state(3), state(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------------------------------
# Normalization is present and does what the lecture says


def batch_norm_reference(h: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """Lecture formula with minibatch statistics per unit (per channel for convolutions)."""
    axes = (0,) + tuple(range(2, h.ndim))
    shape = (1, -1) + (1,) * (h.ndim - 2)
    mu = h.mean(axis=axes, keepdims=True)
    var = h.var(axis=axes, keepdims=True)
    return beta.reshape(shape) + gamma.reshape(shape) * (h - mu) / np.sqrt(eps + var)


def digits_images() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images[:200], dtype=torch.float32).unsqueeze(1) / 16


@pytest.mark.parametrize("kind", ["mlp", "cnn1d", "cnn2d"])
def test_batch_norm_normalizes_each_unit_over_the_minibatch(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        net, x, block = models.mlp(40, [32, 16], 10, norm="batch"), torch.randn(64, 40), "hidden1"
    elif kind == "cnn1d":
        net, x, block = models.cnn1d(norm="batch"), torch.randn(64, 40), "conv1"
    else:
        net, x, block = models.cnn2d(norm="batch"), digits_images(), "conv1"
    if kind != "cnn2d":
        x = 3 * x + 1
    norm = getattr(net, block).norm
    assert isinstance(norm, nn.modules.batchnorm._BatchNorm)

    net.train()
    _, out = capture(norm, net, x)
    axes = (0,) + tuple(range(2, out.dim()))
    y = numpy_of(out)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, atol=1e-3)  # var / (var + eps)

    randomize_affine(norm, seed=1)
    h, out = capture(norm, net, x)
    gamma, beta = numpy_of(norm.weight), numpy_of(norm.bias)
    expected = batch_norm_reference(numpy_of(h), gamma, beta, norm.eps)
    np.testing.assert_allclose(numpy_of(out), expected, atol=1e-4)

    net.eval()  # evaluation uses the running averages, not the batch
    h, out = capture(norm, net, x[:3])
    shape = (1, -1) + (1,) * (h.dim() - 2)
    mean = numpy_of(norm.running_mean).reshape(shape)
    var = numpy_of(norm.running_var).reshape(shape)
    normalized = (numpy_of(h) - mean) / np.sqrt(norm.eps + var)
    expected = beta.reshape(shape) + gamma.reshape(shape) * normalized
    np.testing.assert_allclose(numpy_of(out), expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "cnn1d", "cnn2d"])
def test_layer_norm_normalizes_each_example_over_the_layer(kind):
    torch.manual_seed(0)
    net = {
        "mlp": lambda: models.mlp(40, [32], 10, norm="layer"),
        "cnn1d": lambda: models.cnn1d(norm="layer", channels=(8, 8)),
        "cnn2d": lambda: models.cnn2d(norm="layer", channels=(4, 8)),
    }[kind]()
    x = torch.randn(6, 64) * 3 + 1 if kind == "cnn2d" else torch.randn(6, 40) * 3 + 1
    norm = (net.hidden0 if kind == "mlp" else net.conv1).norm
    assert isinstance(norm, nn.LayerNorm)
    _, out = capture(norm, net, x)
    y = numpy_of(out).reshape(6, -1)
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=1), 1.0, atol=1e-3)

    randomize_affine(norm, seed=2)
    for mode in (net.train, net.eval):  # no batch statistics: same in both modes
        mode()
        h, out = capture(norm, net, x)
        flat = numpy_of(h).reshape(6, -1)
        normalized = (flat - flat.mean(1, keepdims=True)) / np.sqrt(
            norm.eps + flat.var(1, keepdims=True)
        )
        expected = normalized * numpy_of(norm.weight).ravel() + numpy_of(norm.bias).ravel()
        np.testing.assert_allclose(numpy_of(out).reshape(6, -1), expected, atol=1e-4)


def weight_norm_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.mlp(40, [16, 8], 10, norm="weight"),
        lambda: models.cnn1d(norm="weight", channels=(4, 4)),
        lambda: models.cnn2d(norm="weight", channels=(4, 4)),
    ],
    ids=["mlp", "cnn1d", "cnn2d"],
)
def test_weight_norm_reparametrizes_every_layer(build):
    torch.manual_seed(0)
    net = build()
    layers = weight_norm_layers(net)
    assert layers
    gen = torch.Generator().manual_seed(5)
    for layer in layers:
        params = dict(layer.named_parameters())
        assert "weight" not in params  # the weight is computed, g and v are learned
        g = params["parametrizations.weight.original0"]
        v = params["parametrizations.weight.original1"]
        with torch.no_grad():  # move g off its initial value ||v||
            g.mul_(torch.rand(g.shape, generator=gen) + 0.5)
        v_np = numpy_of(v)
        norms = np.sqrt((v_np.reshape(v_np.shape[0], -1) ** 2).sum(axis=1))
        expected = (
            numpy_of(g).reshape(-1, *([1] * (v.dim() - 1)))
            * v_np
            / norms.reshape(-1, *([1] * (v.dim() - 1)))
        )
        np.testing.assert_allclose(numpy_of(layer.weight), expected, rtol=1e-6, atol=1e-7)
    # The forward pass uses that weight.
    out_layer = net.out
    x = torch.randn(3, out_layer.in_features)
    torch.testing.assert_close(
        out_layer(x), x @ out_layer.weight.detach().T + out_layer.bias.detach()
    )


@pytest.mark.parametrize("norm", ["none", "layer", "weight"])
def test_no_norm_layers_unless_asked(norm):
    net = models.cnn1d(norm=norm)
    has_batch = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    has_layer = any(isinstance(m, nn.LayerNorm) for m in net.modules())
    has_weight = any(isinstance(m, nn.utils.parametrizations._WeightNorm) for m in net.modules())
    assert (has_batch, has_layer, has_weight) == (False, norm == "layer", norm == "weight")


# ---------------------------------------------------------------------------------------
# Dropout


@pytest.mark.parametrize(
    ("build", "features"),
    [
        (lambda p: models.mlp(40, [64, 64], 10, norm="layer", dropout=p), 40),
        (lambda p: models.cnn1d(norm="none", channels=(8, 8), dropout=p), 40),
        (lambda p: models.cnn2d(norm="weight", channels=(4, 4), dropout=p), 64),
    ],
    ids=["mlp", "cnn1d", "cnn2d"],
)
def test_dropout_only_in_training_mode(build, features):
    p = 0.4
    torch.manual_seed(0)
    net = build(p)
    plain = build(0.0)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    plain.load_state_dict(net.state_dict())  # same parameter names with and without dropout
    x = torch.randn(32, features)

    net.train()
    assert not torch.equal(net(x), net(x))
    dropout = next(m for m in net.modules() if isinstance(m, nn.Dropout))
    h, out = capture(dropout, net, x)
    kept = out != 0
    torch.testing.assert_close(out[kept], h[kept] / (1 - p))
    dropped = float((~kept & (h != 0)).sum() / (h != 0).sum())
    assert abs(dropped - p) < 0.05

    net.eval()
    plain.eval()
    torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)
    torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Parameter groups for weight decay


def group_names(net: nn.Module, groups: list[dict]) -> list[set[str]]:
    names = {id(p): n for n, p in net.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in groups]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", ["mlp", "cnn1d", "cnn2d"])
def test_param_groups_partition_and_exempt_biases_and_gains(kind, norm):
    net = {
        "mlp": lambda: models.mlp(40, [16, 8], 10, norm=norm),
        "cnn1d": lambda: models.cnn1d(norm=norm),
        "cnn2d": lambda: models.cnn2d(norm=norm),
    }[kind]()
    groups = models.param_groups(net, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    decay, no_decay = group_names(net, groups)
    all_names = {n for n, _ in net.named_parameters()}
    assert decay | no_decay == all_names and not decay & no_decay
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))

    expected_no_decay = {
        n
        for n in all_names
        if n.endswith(".bias") or ".norm." in n or n.endswith("parametrizations.weight.original0")
    }
    assert no_decay == expected_no_decay
    assert all(n.endswith("weight") or n.endswith("original1") for n in decay)
    torch.optim.SGD(groups, lr=0.1)  # a valid optimizer argument


def test_param_groups_on_a_plain_torch_model_with_shared_parameters():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.GroupNorm(2, 4), nn.ReLU(), shared, nn.Linear(4, 2, bias=False))
    groups = models.param_groups(net, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())  # each shared tensor once
    decay, no_decay = group_names(net, groups)
    assert decay == {"0.weight", "4.weight"}
    assert no_decay == {"0.bias", "1.weight", "1.bias"}


def test_param_groups_leaves_out_an_empty_group():
    groups = models.param_groups(nn.Linear(3, 2, bias=False), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf"), "0.1", True])
def test_param_groups_rejects_bad_weight_decay(bad):
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        models.param_groups(nn.Linear(2, 2), bad)


# ---------------------------------------------------------------------------------------
# Building from config dicts, validation


def test_build_matches_the_builders():
    spec = {"kind": "mlp", "in_features": 40, "hidden": [32], "out_features": 10, "norm": "batch"}
    original = dict(spec)
    torch.manual_seed(1)
    built = models.build(spec)
    torch.manual_seed(1)
    direct = models.mlp(40, [32], 10, norm="batch")
    assert spec == original
    built_state, direct_state = built.state_dict(), direct.state_dict()
    assert built_state.keys() == direct_state.keys()
    assert all(torch.equal(built_state[k], direct_state[k]) for k in built_state)
    assert isinstance(models.build({"kind": "cnn1d", "channels": [8]}).conv0.layer, nn.Conv1d)
    assert isinstance(models.build({"kind": "cnn2d", "norm": "none"}).conv1.layer, nn.Conv2d)
    assert models.kinds() == ["mlp", "cnn1d", "cnn2d"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "mpl"}, "did you mean 'mlp'"),
        ({"hidden": 3}, "needs a 'kind' key"),
        ([("kind", "mlp")], "must be a dict"),
        ({"kind": "cnn1d", "chanels": [3]}, "unknown key 'chanels'.*did you mean 'channels'"),
        ({"kind": "mlp", "in_features": 4}, "needs 'hidden', 'out_features'"),
    ],
)
def test_build_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        models.build(spec)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: models.mlp(4, [3], 2, norm="btach"), "norm must be one of.*did you mean 'batch'"),
        (lambda: models.mlp(4, [3], 2, activation="tahn"), "did you mean 'tanh'"),
        (lambda: models.mlp(4, [3], 2, dropout=1.0), r"dropout must be a probability in \[0, 1\)"),
        (lambda: models.mlp(4, [3], 2, dropout=-0.1), "dropout"),
        (lambda: models.mlp(4, [3, 0], 2), r"hidden\[1\] must be an integer >= 1, got 0"),
        (lambda: models.mlp(0, [3], 2), "in_features"),
        (lambda: models.mlp(4, 2.5, 2), "hidden must be an integer or a sequence"),
        (lambda: models.mlp(4, "32", 2), "hidden must be an integer or a sequence"),
        (lambda: models.mlp(4, [3], 0), "out_features"),
        (lambda: models.cnn1d(0), "in_length"),
        (lambda: models.cnn1d(channels=(8, -1)), r"channels\[1\]"),
        (lambda: models.cnn1d(kernel_size=0), "kernel_size"),
        (lambda: models.cnn1d(kernel_size=-1), "kernel_size"),
        (lambda: models.cnn2d(kernel_size=4), "kernel_size must be an odd integer >= 1, got 4"),
        (lambda: models.cnn2d(0), "in_channels"),
        (lambda: models.cnn2d(image_size=0), "image_size"),
    ],
)
def test_bad_arguments_raise_with_their_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ---------------------------------------------------------------------------------------
# Real data: the default MNIST-1D network is as good as documented


@pytest.fixture(scope="module")
def mnist1d_arrays():
    from mnist1d.data import get_dataset_args, make_dataset

    # mnist1d reseeds the global RNGs; keep the test suite's streams intact.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: torch.as_tensor(data[k]) for k in ("x", "y", "x_test", "y_test")}


@pytest.mark.slow
def test_cnn1d_reaches_95_percent_on_mnist1d(mnist1d_arrays):
    """Batch-norm cnn1d, Adam with the lecture's linear decay, 25 epochs of batch 100."""
    d = mnist1d_arrays
    mean, std = d["x"].float().mean(), d["x"].float().std()
    x, x_test = (d["x"].float() - mean) / std, (d["x_test"].float() - mean) / std
    y, y_test = d["y"].long(), d["y_test"].long()
    torch.manual_seed(0)
    net = models.cnn1d(norm="batch")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    epochs, batch = 25, 100
    steps = epochs * len(x) // batch
    sched = LinearDecay(opt, decay_steps=steps)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(batch):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.95


def test_exact_weight_norm_has_torchs_value_and_a_true_hessian():
    from torch.nn.utils.parametrizations import weight_norm as torch_weight_norm

    from ravine import diagnostics
    from ravine.models import exact_weight_norm

    torch.manual_seed(0)
    base = nn.Linear(3, 2).double()
    ours = exact_weight_norm(copy.deepcopy(base))
    theirs = torch_weight_norm(copy.deepcopy(base), name="weight", dim=0)
    x = torch.randn(10, 3, dtype=torch.float64)
    assert torch.allclose(ours(x), theirs(x), rtol=1e-13, atol=0)
    assert list(ours.state_dict()) == list(theirs.state_dict())

    def loss(out, y):
        return ((out - y) ** 3).mean()

    y = torch.randn(10, 2, dtype=torch.float64)
    names = [n for n, _ in ours.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in ours.parameters()])

    def f(theta):
        parts = torch.split(theta, [p.numel() for p in ours.parameters()])
        params = {
            n: t.view(p.shape) for n, t, p in zip(names, parts, ours.parameters(), strict=True)
        }
        return loss(torch.func.functional_call(ours, params, (x,)), y)

    def grad(theta):
        t = theta.clone().requires_grad_(True)
        return torch.autograd.grad(f(t), t)[0]

    h = 1e-6  # central differences of the exact gradient: the Hessian, independently
    fd = torch.stack(
        [
            (grad(flat + h * e) - grad(flat - h * e)) / (2 * h)
            for e in torch.eye(len(flat), dtype=torch.float64)
        ],
        1,
    )
    op = diagnostics.HessianOperator(ours, loss, (x, y))
    dense = torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)], 1)
    assert torch.allclose(dense, fd, atol=1e-6)
    assert torch.allclose(dense, dense.T, atol=1e-10)
    # torch's own parametrization would give a wrong Hessian: refused in one line
    with pytest.raises(ValueError, match="exact_weight_norm") as info:
        diagnostics.HessianOperator(theirs, loss, (x, y))
    assert "\n" not in str(info.value)
