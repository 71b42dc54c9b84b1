"""Every diagnostics entry point takes the data forms of ravine.fit and gives the same numbers.

The same 24 examples are passed as a batch, an ArrayDataset, a TensorDataset, a map-style
Dataset, a DataLoader (batches of 10, 10, 4), a list of batches and a generator of batches. The
numbers must equal those of the batch form: exactly where the forms reach the computation as the
same tensors, and to 1e-12 (float64) where batches change the summation order. The batch form
itself is checked against the dense Hessian of torch.autograd.functional.hessian.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from close import close, mismatches
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ravine import diagnostics
from ravine.data import ArrayDataset
from ravine.diagnostics.hvp import as_batches

N, D, C = 24, 3, 3
LOSS = nn.CrossEntropyLoss()
# Forms that reach the computation as the batch's own tensors (one batch of all examples).
ONE_BATCH = ("batch", "array-dataset", "tensor-dataset", "map-dataset")
FORMS = (*ONE_BATCH, "dataloader", "list", "generator")


def examples() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randint(
        0, C, (N,), generator=g
    )


def model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, C)).double()


class Pairs(Dataset):
    """A plain map-style Dataset of (x_i, y_i) items."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class DictItems(Pairs):
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class Stream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


def form(name: str):
    x, y = examples()
    return {
        "batch": lambda: (x, y),
        "array-dataset": lambda: ArrayDataset(x, y),
        "tensor-dataset": lambda: TensorDataset(x, y),
        "map-dataset": lambda: Pairs(x, y),
        "dataloader": lambda: DataLoader(TensorDataset(x, y), batch_size=10),
        "list": lambda: [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])],
        "generator": lambda: ((x[i : i + 10], y[i : i + 10]) for i in range(0, N, 10)),
    }[name]()


def assert_same(value, reference, name: str) -> None:
    """Exactly equal for one-batch forms, 1e-12 relative otherwise."""
    if isinstance(reference, dict):
        assert value.keys() == reference.keys()
        for key in reference:
            assert_same(value[key], reference[key], name)
        return
    if isinstance(reference, torch.Tensor):
        if name in ONE_BATCH:
            assert torch.equal(value, reference)
        else:
            torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-14)
        return
    if isinstance(reference, (bool, str)) or name in ONE_BATCH:
        assert value == reference
    else:
        assert value == pytest.approx(reference, rel=1e-12, abs=1e-14)


def dense_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    named = list(net.named_parameters())
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, sizes)
        params = {n: t.view(p.shape) for (n, p), t in zip(named, pieces, strict=True)}
        return LOSS(functional_call(net, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def test_the_reference_form_is_right():
    """The batch form, which the other forms are compared with, against the dense Hessian."""
    x, y = examples()
    net = model()
    h = dense_hessian(net, x, y)
    eigenvalues = np.linalg.eigvalsh(h.numpy())
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(diagnostics.hvp(net, LOSS, (x, y), v), h @ v, rtol=1e-10, atol=0)
    ext = diagnostics.hessian_extremes(net, LOSS, (x, y), tol=1e-10, backend="double-backward")
    assert ext.lambda_max == pytest.approx(eigenvalues[-1], rel=1e-8)
    assert ext.lambda_min == pytest.approx(eigenvalues[0], rel=1e-6, abs=1e-10)
    grads = diagnostics.per_example_gradients(net, LOSS, x, y)
    stats = diagnostics.gradient_statistics(net, LOSS, (x, y))
    mean = grads.mean(0)
    assert stats.grad_sq_norm == pytest.approx(float(mean @ mean), rel=1e-12)
    assert stats.trace_sigma == pytest.approx(float(((grads - mean) ** 2).sum(1).mean()), rel=1e-12)


# Each entry point as a function of the data, returning the numbers to compare.
def run_hvp(data):
    v = torch.linspace(-1, 1, 31, dtype=torch.float64)
    return diagnostics.hvp(model(), LOSS, data, v, backend="double-backward")


def run_operator(data):
    op = diagnostics.HessianOperator(model(), LOSS, data, backend="forward-over-reverse")
    loss, gradient = op.loss_and_gradient()
    return {"hv": op(torch.ones(op.dim, dtype=torch.float64)), "loss": loss, "g": gradient}


def run_extremes(data):
    ext = diagnostics.hessian_extremes(model(), LOSS, data, backend="double-backward", seed=1)
    return ext.to_dict()


def run_trace(data):
    tr = diagnostics.hessian_trace(model(), LOSS, data, n_hvps=6, backend="double-backward")
    return {"estimate": tr.estimate, "stderr": tr.stderr}


def run_density(data):
    sd = diagnostics.spectral_density(
        model(), LOSS, data, n_probes=2, steps=6, backend="double-backward"
    )
    return {"density": torch.from_numpy(sd.density), **sd.to_dict()}


def run_noise(data):
    result = diagnostics.gradient_noise(model(), LOSS, data, [2, 6], n_batches=5, seed=2)
    return {**result.to_dict(), "method": result.method}


def run_statistics(data):
    stats = diagnostics.gradient_statistics(model(), LOSS, data, chunk_size=7)
    return {**stats.to_dict(), "mean": stats.mean_gradient}


def run_per_example(data):
    return diagnostics.per_example_gradients(model(), LOSS, data)


def run_measure(data):
    what = ("loss", "grad_norm", "lambda_max", "lambda_min", "trace", "noise")
    out = diagnostics.measure(
        model(), LOSS, data, what, lr=0.1, batch_size=8, backend="double-backward", trace_hvps=4
    )
    out.pop("seconds")
    return out


def run_classify(data):
    result = diagnostics.classify(model(), LOSS, data, batch_size=8, backend="double-backward")
    numbers = {k: v for k, v in result.numbers.items() if k != "seconds"}  # wall time
    return {"label": result.label, "reason": result.reason, **numbers}


def run_report(data, tmp_path):
    out = diagnostics.report(
        model(),
        LOSS,
        data,
        tmp_path,
        lr=0.1,
        batch_size=8,
        noise_batch_sizes=[2, 4],
        n_batches=3,
        trace_hvps=4,
        density_probes=1,
        density_steps=5,
        backend="double-backward",
    )
    # wall time differs between runs; NaN (no ReLU module to count dead units) is not == NaN
    return {
        k: "nan" if isinstance(v, float) and v != v else v
        for k, v in out.numbers.items()
        if k != "seconds"
    }


ENTRY_POINTS = {
    "hvp": run_hvp,
    "HessianOperator": run_operator,
    "hessian_extremes": run_extremes,
    "hessian_trace": run_trace,
    "spectral_density": run_density,
    "gradient_noise": run_noise,
    "gradient_statistics": run_statistics,
    "per_example_gradients": run_per_example,
    "measure": run_measure,
    "classify": run_classify,
}


@pytest.mark.parametrize("name", FORMS[1:])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_gives_the_batch_numbers_for_every_form(entry, name):
    run = ENTRY_POINTS[entry]
    assert_same(run(form(name)), run(form("batch")), name)


@pytest.fixture(scope="module")
def report_reference(tmp_path_factory):
    return run_report(form("batch"), tmp_path_factory.mktemp("batch"))


@pytest.mark.parametrize("name", ["tensor-dataset", "map-dataset", "dataloader", "generator"])
def test_report_gives_the_batch_numbers_for_every_form(name, tmp_path, report_reference):
    # report re-chunks all examples itself, so every form reaches it as the same tensors
    assert mismatches(run_report(form(name), tmp_path), report_reference) == []


def test_a_shuffling_loader_reads_the_same_pass_for_the_same_seed_and_changes_nothing():
    x, y = examples()
    generator = torch.Generator().manual_seed(11)
    loaders = [
        DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True),
        DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, generator=generator),
    ]
    for loader in loaders:
        nets = model(), model()  # built first: model() seeds torch's global generator
        rng, own = torch.get_rng_state(), generator.get_state()
        first = diagnostics.gradient_noise(nets[0], LOSS, loader, [2, 6], n_batches=4, seed=4)
        again = diagnostics.gradient_noise(nets[1], LOSS, loader, [2, 6], n_batches=4, seed=4)
        assert close(first.to_dict(), again.to_dict())
        assert torch.equal(torch.get_rng_state(), rng)
        assert torch.equal(generator.get_state(), own)
        # the pass is a permutation of the examples, so the operator is the batch's operator
        shuffled = as_batches(loader, seed=4)
        order = torch.cat([b[0] for b in shuffled])
        assert sorted(order[:, 0].tolist()) == sorted(x[:, 0].tolist())
        assert not torch.equal(order, x)
        assert_same(run_extremes(loader), run_extremes((x, y)), "dataloader")


def test_a_loader_with_random_augmentation_is_one_fixed_operator():
    """Each product sees the same draw of the data: the operator stays one symmetric matrix."""
    x, y = examples()

    class Noisy(Pairs):
        def __getitem__(self, i):
            return self.x[i] + 0.1 * torch.randn(D, dtype=torch.float64), self.y[i]

    loader = DataLoader(Noisy(x, y), batch_size=8, shuffle=True)
    op = diagnostics.HessianOperator(model(), LOSS, loader, backend="double-backward", seed=9)
    u, v = torch.ones(op.dim, dtype=torch.float64), torch.linspace(0, 1, op.dim).double()
    assert torch.equal(op(v), op(v))
    assert float(u @ op(v)) == pytest.approx(float(v @ op(u)), rel=1e-12)
    drawn = as_batches(loader, seed=9)
    exact = dense_hessian(
        model(), torch.cat([b[0] for b in drawn]), torch.cat([b[1] for b in drawn])
    )
    torch.testing.assert_close(op(v), exact @ v, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda x, y: DictItems(x, y),
            r"data is a Dataset \(DictItems\) whose items are a dict "
            r"\(keys 'x', 'y'\); diagnostics compute loss_fn",
        ),
        (
            lambda x, y: DataLoader(DictItems(x, y), batch_size=4),
            r"batch 0 of data must be a pair \(x, y\) of tensors, got a dict \(keys 'x', 'y'\); "
            r"diagnostics compute .* \(data is a DataLoader\)",
        ),
        (lambda x, y: Stream(x, y), "data is an IterableDataset"),
        (lambda x, y: TensorDataset(x, y, y), "data is a TensorDataset of 3 tensors"),
        (
            lambda x, y: list(zip(x, y, strict=True)),
            r"batch 0 of data "
            r"looks like one example, not a batch \(its y is a scalar\) \(data is a list of 24 "
            r"batches\)",
        ),
        (lambda x, y: x, "data must be a batch .* got a Tensor"),
        (lambda x, y: Pairs(x[:0], y[:0]), r"data \(a Dataset \(Pairs\)\) holds no examples"),
        (lambda x, y: [], r"data \(a list of 0 batches\) has no batches"),
    ],
)
def test_a_form_that_cannot_work_is_named_in_one_line(make, message):
    x, y = examples()
    data = make(x, y)
    for entry in (run_extremes, run_noise, run_statistics):
        with pytest.raises((TypeError, ValueError), match=message) as info:
            entry(data)
        assert "\n" not in str(info.value)


def test_batches_of_different_lengths_cannot_be_joined_for_per_example_use():
    x, y = examples()
    ragged = [(x[:4], y[:4]), (torch.zeros(3, D + 1, dtype=torch.float64), y[:3])]
    with pytest.raises(ValueError, match="cannot be joined into one tensor of examples") as info:
        diagnostics.gradient_noise(model(), LOSS, ragged, [2, 3], n_batches=2)
    assert "\n" not in str(info.value)
    assert math.isfinite(diagnostics.gradient_statistics(model(), LOSS, ragged[:1]).b_simple)
