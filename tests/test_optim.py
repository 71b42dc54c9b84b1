"""ravine.optim against the NumPy transcriptions of the algorithm boxes and against torch.optim."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import reference
import torch

from ravine import optim

SHAPES = [(3, 4), (7,), (2, 3, 3)]
DIM = sum(math.prod(s) for s in SHAPES)

# Non-default hyperparameters, so a method that ignored one would be caught.
HP = {
    "sgd": dict(lr=0.02),
    "momentum": dict(lr=0.01, momentum=0.8),
    "nesterov": dict(lr=0.01, momentum=0.85),
    "adagrad": dict(lr=0.1, eps=1e-3),
    "rmsprop": dict(lr=0.01, rho=0.8, eps=1e-4),
    "rmsprop-nesterov": dict(lr=0.003, rho=0.85, momentum=0.7, eps=1e-4),
    "adam": dict(lr=0.02, betas=(0.8, 0.95), eps=1e-5),
    "adamw": dict(lr=0.02, betas=(0.8, 0.95), eps=1e-5),
}


class Problem:
    """f(θ) = ½θᵀAθ - bᵀθ + Σ log cosh θ, split over tensors of several shapes."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        self.A = q @ np.diag(np.geomspace(0.5, 20.0, DIM)) @ q.T
        self.b = rng.standard_normal(DIM)
        self.theta0 = rng.standard_normal(DIM)

    def grad(self, theta: np.ndarray) -> np.ndarray:
        return self.A @ theta - self.b + np.tanh(theta)

    def params(self, dtype=torch.float64) -> list[torch.Tensor]:
        return split(self.theta0, dtype)

    def loss(self, params: list[torch.Tensor]) -> torch.Tensor:
        theta = torch.cat([p.reshape(-1) for p in params])
        A = torch.as_tensor(self.A, dtype=theta.dtype)
        b = torch.as_tensor(self.b, dtype=theta.dtype)
        return 0.5 * theta @ A @ theta - b @ theta + torch.log(torch.cosh(theta)).sum()

    def backward(self, params: list[torch.Tensor]) -> torch.Tensor:
        for p in params:
            p.grad = None
        loss = self.loss(params)
        loss.backward()
        return loss


def split(vector: np.ndarray, dtype=torch.float64) -> list[torch.Tensor]:
    """A flat vector as leaf tensors of SHAPES (requiring grad)."""
    out, i = [], 0
    for s in SHAPES:
        n = math.prod(s)
        out.append(torch.tensor(vector[i : i + n].reshape(s), dtype=dtype).requires_grad_())
        i += n
    return out


def flat(params) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in params]).double().numpy()


def true_flat(opt, params) -> np.ndarray:
    with optim.true_params(opt):
        return flat(params)


def book_velocity(opt) -> np.ndarray:
    """The book's ``v`` of a one-group optimizer, as its ``state_dict()`` exposes it."""
    state = opt.state_dict()["state"]
    return np.concatenate([state[i]["velocity"].reshape(-1).numpy() for i in sorted(state)])


def lr_schedule(base: float, steps: int) -> list[float]:
    return [base * (1.0 + 0.5 * math.sin(k)) for k in range(steps)]


def run_ravine(name, problem, lrs, *, compile=False, dtype=torch.float64, **hp):
    params = problem.params(dtype)
    opt = optim.create(name, params, compile=compile, **hp)
    traj, clipped = [], []
    for lr in lrs:
        for g in opt.param_groups:
            g["lr"] = lr
        problem.backward(params)
        opt.step()
        clipped.append(opt.last_clipped)
        traj.append(true_flat(opt, params))
    return traj, clipped, opt, params


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# Optimizers whose default path is one of torch's fused kernels; fused=False is their foreach path.
FUSED = [name for name in optim.names() if "fused" in optim.hyperparameters(name)]
# Every eager path as (name, options): the default, the foreach path where the default is a
# fused kernel, and flat storage over each of them.
PATHS = (
    [(name, {}) for name in optim.names()]
    + [(name, {"fused": False}) for name in FUSED]
    + [(name, {"flat": True}) for name in optim.names()]
    + [(name, {"flat": True, "fused": False}) for name in FUSED]
)


@pytest.mark.parametrize(("name", "options"), PATHS, ids=lambda x: x if isinstance(x, str) else
                         "-".join(f"{k}={v}" for k, v in x.items()) or "default")
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("clip", [False, True])
def test_matches_algorithm_box(name, options, weight_decay, clip):
    problem = Problem(seed=1)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 60)
    if clip:
        # Below the initial gradient norm, so clipping fires on the first steps.
        hp["clip_norm"] = 0.5 * float(np.linalg.norm(problem.grad(problem.theta0)))
    expected = reference.run(
        name, problem.theta0, problem.grad, lrs, weight_decay=weight_decay, **hp
    )
    traj, clipped, opt, _ = run_ravine(
        name, problem, lrs, weight_decay=weight_decay, **options, **hp
    )
    assert opt._fused is (name in FUSED and options.get("fused") is None)
    for k, (got, want) in enumerate(zip(traj, expected, strict=True)):
        assert rel_err(got, want) <= 1e-10, f"step {k}"
    if clip:
        assert clipped[0] is True
    else:
        assert all(c is None for c in clipped)


def _torch_twin(name, params, hp, weight_decay):
    lr = hp["lr"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=hp["momentum"],
            nesterov=name == "nesterov",
            weight_decay=weight_decay,
        )
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=hp["eps"], weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr, alpha=hp["rho"], eps=0.0, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=hp["betas"], eps=hp["eps"], weight_decay=weight_decay
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=hp["betas"], eps=hp["eps"], weight_decay=weight_decay
        )
    raise KeyError(name)


@pytest.mark.parametrize(
    "name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
)
@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_parity_with_torch_optim_at_constant_lr(name, weight_decay):
    problem = Problem(seed=2)
    hp = dict(HP[name])
    if name == "rmsprop":
        # torch adds eps outside the root; with δ negligible the two placements agree.
        hp["eps"] = 1e-300
    ours_p, theirs_p = problem.params(), problem.params()
    ours = optim.create(name, ours_p, weight_decay=weight_decay, **hp)
    theirs = _torch_twin(name, theirs_p, hp, weight_decay)
    for k in range(50):
        for params, opt in ((ours_p, ours), (theirs_p, theirs)):
            problem.backward(params)
            opt.step()
        # Nesterov: both formulations keep the interim point in the parameters.
        assert rel_err(flat(ours_p), flat(theirs_p)) <= 1e-12, f"step {k}"


@pytest.mark.slow
@pytest.mark.parametrize("name", optim.names())
@pytest.mark.parametrize("flat_storage", [False, True])
def test_compile_path_equals_foreach_path(name, flat_storage):
    problem = Problem(seed=3)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 12)
    eager, _, _, _ = run_ravine(name, problem, lrs, weight_decay=0.01, clip_norm=5.0, **hp)
    fused, _, _, _ = run_ravine(
        name, problem, lrs, compile=True, flat=flat_storage, weight_decay=0.01, clip_norm=5.0, **hp
    )
    for got, want in zip(fused, eager, strict=True):
        assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("name", optim.names())
def test_float32_tracks_float64_reference(name):
    problem = Problem(seed=4)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 30)
    traj, _, _, params = run_ravine(
        name, problem, lrs, dtype=torch.float32, weight_decay=0.01, **hp
    )
    assert all(p.dtype == torch.float32 for p in params)
    expected = reference.run(name, problem.theta0, problem.grad, lrs, weight_decay=0.01, **hp)
    assert rel_err(traj[-1], expected[-1]) <= 1e-4


@pytest.mark.parametrize("name", optim.names())
@pytest.mark.parametrize("flat_storage", [False, True])
def test_resume_from_state_dict_is_bit_identical(name, flat_storage):
    problem = Problem(seed=5)
    hp = dict(HP[name], flat=flat_storage)
    lrs = lr_schedule(hp.pop("lr"), 40)

    params = problem.params()
    opt = optim.create(name, params, clip_norm=3.0, **hp)

    def steps(opt, params, lrs):
        for lr in lrs:
            for g in opt.param_groups:
                g["lr"] = lr
            problem.backward(params)
            opt.step()

    steps(opt, params, lrs[:20])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buffer)
    steps(opt, params, lrs[20:])

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [t.clone().requires_grad_() for t in saved["params"]]
    opt2 = optim.create(name, resumed, clip_norm=3.0, **hp)
    opt2.load_state_dict(saved["opt"])
    steps(opt2, resumed, lrs[20:])
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["nesterov", "rmsprop-nesterov"])
def test_interim_point_plain_loop_equals_closure_loop(name):
    problem = Problem(seed=6)
    hp = HP[name]
    a, b = problem.params(), problem.params()
    opt_a, opt_b = optim.create(name, a, **hp), optim.create(name, b, **hp)
    for _ in range(15):
        problem.backward(a)
        opt_a.step()
        opt_b.zero_grad()
        opt_b.step(lambda: problem.backward(b))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["nesterov", "rmsprop-nesterov"])
def test_true_params_context_restores_interim_point_exactly(name):
    problem = Problem(seed=7)
    hp = dict(HP[name])
    lrs = [hp.pop("lr")] * 10
    params = problem.params()
    opt = optim.create(name, params, **hp)
    for _ in lrs:
        problem.backward(params)
        opt.step()
    interim = [p.detach().clone() for p in params]
    velocity = book_velocity(opt)
    with opt.true_params():
        theta = flat(params)
    assert np.allclose(theta, flat(interim) - hp["momentum"] * velocity, rtol=0, atol=1e-14)
    assert not np.array_equal(theta, flat(interim))
    for p, q in zip(params, interim, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["nesterov", "rmsprop-nesterov"])
def test_to_true_params_then_training_continues_exactly(name):
    problem = Problem(seed=8)
    hp = dict(HP[name])
    lr = hp.pop("lr")
    params = problem.params()
    opt = optim.create(name, params, lr=lr, **hp)
    for _ in range(5):
        problem.backward(params)
        opt.step()
    with opt.true_params():
        theta = flat(params)
    opt.to_true_params()
    assert np.array_equal(flat(params), theta)
    with opt.true_params():
        assert np.array_equal(flat(params), theta)
    # The next step takes its gradient at θ; after it the interim point is θ + αv again.
    problem.backward(params)
    opt.step()
    velocity = book_velocity(opt)
    with opt.true_params():
        new_theta = flat(params)
    assert np.allclose(flat(params), new_theta + hp["momentum"] * velocity, rtol=0, atol=1e-13)


def test_nonravine_true_params_is_noop():
    p = torch.zeros(3, requires_grad=True)
    with optim.true_params(torch.optim.SGD([p], lr=0.1)):
        assert torch.equal(p, torch.zeros(3))


def test_per_group_hyperparameters_equal_separate_optimizers():
    problem = Problem(seed=9)
    params = problem.params()
    opt = optim.Adam(
        [{"params": params[:1], "lr": 0.05, "betas": (0.5, 0.9)}, {"params": params[1:]}],
        lr=0.01,
    )
    a, b = problem.params(), problem.params()
    opt_a = optim.Adam(a[:1], lr=0.05, betas=(0.5, 0.9))
    opt_b = optim.Adam(a[1:], lr=0.01)
    del b
    for _ in range(10):
        problem.backward(params)
        opt.step()
        problem.backward(a)
        opt_a.step()
        opt_b.step()
    for x, y in zip(params, a, strict=True):
        assert torch.equal(x, y)


def test_mixed_dtypes_in_one_group():
    torch.manual_seed(0)
    p32 = torch.randn(4, dtype=torch.float32, requires_grad=True)
    p64 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref32, ref64 = p32.detach().clone(), p64.detach().clone()
    opt = optim.Momentum([p32, p64], lr=0.1, momentum=0.5)
    for _ in range(3):
        p32.grad, p64.grad = 2 * p32.detach(), 2 * p64.detach()
        opt.step()
    v32, v64 = torch.zeros_like(ref32), torch.zeros_like(ref64)
    for _ in range(3):
        v32 = 0.5 * v32 - 0.1 * 2 * ref32
        v64 = 0.5 * v64 - 0.1 * 2 * ref64
        ref32, ref64 = ref32 + v32, ref64 + v64
    assert p32.dtype == torch.float32 and p64.dtype == torch.float64
    assert torch.allclose(p32, ref32) and torch.allclose(p64, ref64, rtol=1e-14)


def test_grad_norm_recorded_and_clip_matches_torch():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    grads = [torch.randn_like(p) * 4 for p in params]
    expected_norm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    twin = [g.clone() for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    norm = optim.clip_grad_norm_(params, 1.5)
    torch_params = [torch.nn.Parameter(torch.zeros_like(g)) for g in twin]
    for p, g in zip(torch_params, twin, strict=True):
        p.grad = g
    torch_norm = torch.nn.utils.clip_grad_norm_(torch_params, 1.5)
    assert math.isclose(norm, expected_norm, rel_tol=1e-12)
    assert math.isclose(float(torch_norm), expected_norm, rel_tol=1e-12)
    clipped = torch.sqrt(sum((p.grad * p.grad).sum() for p in params))
    assert math.isclose(float(clipped), 1.5, rel_tol=1e-12)
    for p, q in zip(params, torch_params, strict=True):
        # torch divides by (norm + 1e-6); ravine re-normalizes to exactly τ as the lecture says.
        assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=0)

    opt = optim.SGD(params, lr=0.1, track_grad_norm=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    assert math.isclose(opt.last_grad_norm, expected_norm, rel_tol=1e-12)
    assert opt.last_clipped is None

    opt = optim.SGD(params, lr=0.1, clip_norm=2 * expected_norm)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    assert opt.last_clipped is False
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))


def test_untracked_grad_norm_is_none():
    p = torch.zeros(2, requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    assert opt.last_grad_norm is None


def test_parameters_without_grad_are_skipped():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3)) and b not in opt.state
    assert not torch.equal(a, torch.ones(3))


BAD = [
    ("sgd", dict(lr=-0.1), "lr must be a finite number > 0, got -0.1"),
    ("sgd", dict(lr=0.0), "lr must be"),
    ("sgd", dict(lr=float("nan")), "lr must be"),
    ("sgd", dict(lr=0.1, weight_decay=-1.0), "weight_decay must be a finite number >= 0, got -1.0"),
    ("momentum", dict(momentum=1.0), "momentum must be in [0, 1), got 1.0"),
    ("nesterov", dict(momentum=-0.1), "momentum must be in [0, 1), got -0.1"),
    ("rmsprop", dict(rho=1.5), "rho must be in [0, 1), got 1.5"),
    ("rmsprop", dict(eps=0.0), "eps must be a finite number > 0, got 0.0"),
    ("rmsprop-nesterov", dict(momentum=1.0), "momentum must be in [0, 1), got 1.0"),
    ("adagrad", dict(eps=-1e-8), "eps must be a finite number > 0"),
    ("adam", dict(betas=(0.9, 1.0)), "betas must be a pair of numbers in [0, 1), got (0.9, 1.0)"),
    ("adamw", dict(betas=(0.9,)), "betas must be a pair"),
    ("adam", dict(clip_norm=0.0), "clip_norm must be a finite number > 0, got 0.0"),
    ("sgd", dict(lr=True), "lr must be"),
]


@pytest.mark.parametrize(("name", "hp", "message"), BAD)
def test_invalid_hyperparameters_raise_with_name_and_value(name, hp, message):
    with pytest.raises(ValueError) as err:
        optim.create(name, [torch.zeros(2, requires_grad=True)], **hp)
    assert message in str(err.value)


def test_invalid_hyperparameter_in_a_group_raises():
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        optim.SGD([{"params": [torch.zeros(2, requires_grad=True)], "lr": -1}], lr=0.1)


def test_create_suggests_closest_name_and_hyperparameter():
    with pytest.raises(ValueError, match="did you mean 'nesterov'"):
        optim.create("nesterv", [torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="did you mean 'momentum'"):
        optim.create("nesterov", [torch.zeros(1, requires_grad=True)], momentun=0.9)
    assert optim.names() == [
        "sgd",
        "momentum",
        "nesterov",
        "adagrad",
        "rmsprop",
        "rmsprop-nesterov",
        "adam",
        "adamw",
    ]
    assert isinstance(
        optim.create("RMSProp_Nesterov", [torch.zeros(1, requires_grad=True)]),
        optim.RMSPropNesterov,
    )


def test_keyword_only_options():
    with pytest.raises(TypeError):
        optim.Momentum([torch.zeros(1, requires_grad=True)], 0.1, 0.9)


@pytest.mark.parametrize("name", optim.names())
def test_sparse_gradients_rejected(name):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = optim.create(name, emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="does not support sparse gradients"):
        opt.step()


def test_complex_parameters_rejected():
    with pytest.raises(ValueError, match="complex"):
        optim.SGD([torch.zeros(2, dtype=torch.complex64, requires_grad=True)], lr=0.1)


# Reaching the minimum: lr and step budgets chosen per method; tolerances stated here.
QUADRATIC_RUNS = {
    "sgd": (dict(lr=0.019), 2000),
    "momentum": (dict(lr=0.01, momentum=0.8), 600),
    "nesterov": (dict(lr=0.01, momentum=0.8), 600),
    "adagrad": (dict(lr=0.5), 3000),
    "rmsprop": (dict(lr=0.01), 3000),
    "rmsprop-nesterov": (dict(lr=0.002, momentum=0.8), 3000),
    "adam": (dict(lr=0.05), 3000),
    "adamw": (dict(lr=0.05, weight_decay=0.0), 3000),
}


@pytest.mark.parametrize("name", optim.names())
def test_reaches_minimum_of_ill_conditioned_quadratic(name):
    # κ = 100: f(x) = ½ xᵀ diag(1..100) x - bᵀx, minimum at x* = b / diag.
    diag = torch.tensor(np.geomspace(1.0, 100.0, 10))
    b = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)
    x_star = b / diag
    x = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    hp, steps = QUADRATIC_RUNS[name]
    opt = optim.create(name, [x], **hp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - 0.99 * min(k / steps, 1.0))
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (diag * x * x).sum() - b @ x).backward()
        opt.step()
        sched.step()
    with optim.true_params(opt):
        err = float(
            torch.linalg.vector_norm(x.detach() - x_star) / torch.linalg.vector_norm(x_star)
        )
    assert err < 1e-3, err


ROSENBROCK_RUNS = {
    "sgd": (dict(lr=2e-3), 20000),
    "momentum": (dict(lr=1e-3, momentum=0.9), 10000),
    "nesterov": (dict(lr=1e-3, momentum=0.9), 10000),
    "adagrad": (dict(lr=1.0), 20000),
    "rmsprop": (dict(lr=1e-3), 10000),
    "rmsprop-nesterov": (dict(lr=2e-4, momentum=0.9), 10000),
    "adam": (dict(lr=0.02), 10000),
    "adamw": (dict(lr=0.02, weight_decay=0.0), 10000),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", optim.names())
def test_reaches_rosenbrock_minimum(name):
    # f(x, y) = (1 - x)² + 100 (y - x²)², minimum at (1, 1), from (-1.2, 1).
    xy = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    hp, steps = ROSENBROCK_RUNS[name]
    opt = optim.create(name, [xy], **hp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - 0.99 * min(k / steps, 1.0))
    for _ in range(steps):
        opt.zero_grad()
        x, y = xy
        ((1 - x) ** 2 + 100 * (y - x * x) ** 2).backward()
        opt.step()
        sched.step()
    with optim.true_params(opt):
        err = float(torch.linalg.vector_norm(xy.detach() - 1.0))
    assert err < 1e-2, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", optim.names())
def test_cuda_matches_cpu(name):
    problem = Problem(seed=10)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 10)
    cpu, _, _, _ = run_ravine(name, problem, lrs, **hp)
    params = [p.detach().cuda().requires_grad_() for p in problem.params()]
    opt = optim.create(name, params, **hp)
    for lr in lrs:
        for g in opt.param_groups:
            g["lr"] = lr
        problem.backward(params)
        opt.step()
    assert rel_err(true_flat(opt, params), cpu[-1]) <= 1e-10


def test_compile_chunks_partition_any_length():
    from ravine.optim.base import COMPILE_CHUNK, _chunk_bounds

    for n in range(0, 80):
        bounds = list(_chunk_bounds(n))
        covered = [i for lo, hi in bounds for i in range(lo, hi)]
        assert covered == list(range(n))
        assert {hi - lo for lo, hi in bounds} <= {COMPILE_CHUNK, 8, 4, 2, 1}


@pytest.mark.slow
def test_compile_path_on_many_tensors_equals_foreach():
    gen = torch.Generator().manual_seed(0)
    shapes = [(int(torch.randint(1, 50, (1,), generator=gen)),) for _ in range(37)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(4)]
    results = []
    # Flat storage: one compiled graph over one buffer instead of chunks of 16 tensors.
    for compile, flat_storage in ((False, False), (True, False), (True, True)):
        params = [t.clone().requires_grad_() for t in init]
        opt = optim.RMSPropNesterov(params, lr=0.01, compile=compile, flat=flat_storage)
        for k, gs in enumerate(grads):
            opt.param_groups[0]["lr"] = 0.01 / (k + 1)
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append(flat(params))
    for result in results[1:]:
        assert rel_err(result, results[0]) <= 1e-12


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_kernel_path_equals_foreach_path(name, dtype):
    problem = Problem(seed=11)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 40)
    runs = []
    for fused in (True, False):
        params = problem.params(dtype)
        opt = optim.create(name, params, fused=fused, weight_decay=0.02, clip_norm=4.0, **hp)
        assert opt._fused is fused
        for lr in lrs:
            for g in opt.param_groups:
                g["lr"] = lr
            problem.backward(params)
            opt.step()
        runs.append(flat(params))
    assert rel_err(runs[0], runs[1]) <= (1e-12 if dtype == torch.float64 else 1e-5)


def float32_ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float32 ulps of the largest magnitude in ``b``."""
    peak = float(b.abs().max())
    diff = float((a.double() - b.double()).abs().max())
    if peak == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / 2.0 ** (math.floor(math.log2(peak)) - 23)


# Measured on CPU (torch 2.13): at most 1 ulp per step, for parameters and state, for every fused
# kernel, with the learning rate changing by up to ±50% between steps.
FLOAT32_STEP_ULPS = 2.0


@pytest.mark.parametrize("name", FUSED)
def test_fused_float32_step_within_ulps_of_foreach_step(name):
    # Before every step the fused path is reset to the foreach path's state, so the bound is per
    # step and does not compound over the run.
    problem = Problem(seed=11)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 30)
    fused_p, foreach_p = problem.params(torch.float32), problem.params(torch.float32)
    kw = dict(weight_decay=0.02, clip_norm=4.0, **hp)
    fused = optim.create(name, fused_p, fused=True, **kw)
    foreach = optim.create(name, foreach_p, fused=False, **kw)
    worst = 0.0
    for lr in lrs:
        for opt in (fused, foreach):
            opt.param_groups[0]["lr"] = lr
        problem.backward(foreach_p)
        for a, b in zip(fused_p, foreach_p, strict=True):
            a.grad = b.grad.clone()
        fused.step()
        foreach.step()
        for a, b in zip(fused_p, foreach_p, strict=True):
            worst = max(worst, float32_ulps(a.detach(), b.detach()))
            with torch.no_grad():
                a.copy_(b)
            for key, value in foreach.state[b].items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    worst = max(worst, float32_ulps(fused.state[a][key], value))
                    fused.state[a][key].copy_(value)
    assert worst <= FLOAT32_STEP_ULPS, worst


@pytest.mark.parametrize("name", ["momentum", "nesterov", "rmsprop-nesterov"])
def test_state_dict_holds_the_books_velocity(name):
    problem = Problem(seed=14)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 20)
    expected = reference.run(name, problem.theta0, problem.grad, lrs, weight_decay=0.01, **hp)
    _, _, opt, _ = run_ravine(name, problem, lrs, weight_decay=0.01, **hp)
    # θ ← θ + v: the last velocity is the last move of the true parameters.
    assert rel_err(book_velocity(opt), expected[-1] - expected[-2]) <= 1e-10


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
@pytest.mark.parametrize("fused", [None, False])
def test_loads_checkpoint_holding_only_the_books_velocity(name, fused):
    # Earlier ravine versions saved v (and Nesterov's shift) alone. Build such a checkpoint from
    # the algorithm box at step k and continue: the run must keep following the box.
    problem = Problem(seed=13)
    hp = dict(HP[name])
    lrs = lr_schedule(hp.pop("lr"), 30)
    expected = reference.run(name, problem.theta0, problem.grad, lrs, weight_decay=0.01, **hp)
    k = 15
    theta, velocity = expected[k - 1], expected[k - 1] - expected[k - 2]
    alpha = hp["momentum"]
    params = split(theta + alpha * velocity if name == "nesterov" else theta)
    opt = optim.create(name, params, fused=fused, weight_decay=0.01, **hp)
    checkpoint = opt.state_dict()
    extra = {"shift": alpha} if name == "nesterov" else {}
    checkpoint["state"] = {
        i: {"velocity": v.detach(), **extra} for i, v in enumerate(split(velocity))
    }
    opt.load_state_dict(checkpoint)
    assert "velocity" not in opt.state[params[0]]
    for lr, want in zip(lrs[k:], expected[k:], strict=True):
        opt.param_groups[0]["lr"] = lr
        problem.backward(params)
        opt.step()
        assert rel_err(true_flat(opt, params), want) <= 1e-10


def test_nesterov_fused_equals_foreach_when_momentum_changes_and_after_true_params():
    # A shift other than α (α changed, or to_true_params) takes the foreach rule for one step.
    problem = Problem(seed=15)
    lrs = lr_schedule(0.01, 24)
    runs = []
    for fused in (True, False):
        params = problem.params()
        opt = optim.Nesterov(params, lr=0.01, momentum=0.9, weight_decay=0.01, fused=fused)
        for k, lr in enumerate(lrs):
            opt.param_groups[0].update(lr=lr, momentum=0.9 if k < 8 else 0.6)
            if k == 16:
                opt.to_true_params()
            problem.backward(params)
            opt.step()
        runs.append(true_flat(opt, params))
    assert rel_err(runs[0], runs[1]) <= 1e-12


def test_fused_option_validation():
    p = [torch.zeros(2, requires_grad=True)]
    assert optim.Adam(p)._fused is True
    assert optim.Adam(p, compile=True)._fused is False
    with pytest.raises(ValueError, match="alternatives"):
        optim.Adam(p, fused=True, compile=True)
    assert optim.Nesterov(p)._fused is True
    with pytest.raises(ValueError, match="no hyperparameter 'fused'"):
        optim.create("rmsprop-nesterov", p, fused=True)


@pytest.mark.parametrize("name", ["adam", "nesterov", "adagrad"])
def test_parameters_with_intermittent_gradients_keep_their_own_state(name):
    # b gets a gradient only on even steps: its step count (Adam) and velocity must advance
    # only then, exactly as an optimizer holding b alone that is stepped on those steps.
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(4, generator=gen, dtype=torch.float64) for _ in range(2)]
    grads = [
        [torch.randn(4, generator=gen, dtype=torch.float64) for _ in range(2)] for _ in range(8)
    ]
    a, b = (t.clone().requires_grad_() for t in init)
    opt = optim.create(name, [a, b], lr=0.05)
    a2, b2 = (t.clone().requires_grad_() for t in init)
    opt_a, opt_b = optim.create(name, [a2], lr=0.05), optim.create(name, [b2], lr=0.05)
    for k, (ga, gb) in enumerate(grads):
        a.grad, a2.grad = ga.clone(), ga.clone()
        b.grad = gb.clone() if k % 2 == 0 else None
        b2.grad = gb.clone()
        opt.step()
        opt_a.step()
        if k % 2 == 0:
            opt_b.step()
    assert torch.equal(a, a2) and torch.equal(b, b2)


@pytest.mark.parametrize("name", optim.names())
@pytest.mark.parametrize("flat_storage", [False, True])
def test_deepcopy_and_pickle_keep_options_and_continue_identically(name, flat_storage):
    import copy
    import pickle

    problem = Problem(seed=12)
    hp = dict(HP[name])
    params = problem.params()
    opt = optim.create(
        name, params, clip_norm=2.0, track_grad_norm=True, flat=flat_storage, **hp
    )
    for _ in range(3):
        problem.backward(params)
        opt.step()
    clone_params, clone = copy.deepcopy((params, opt))
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.clip_norm == 2.0 and restored.track_grad_norm
    assert clone.clip_norm == 2.0 and clone._fused == opt._fused
    assert restored.flat is clone.flat is flat_storage
    for _ in range(3):
        problem.backward(params)
        opt.step()
        problem.backward(clone_params)
        clone.step()
    for x, y in zip(params, clone_params, strict=True):
        assert torch.equal(x, y)


def test_cache_chunks_partition_by_bytes():
    from ravine.optim.base import CPU_CHUNK_BYTES, _cache_chunks

    sizes = [10, CPU_CHUNK_BYTES // 4, 3, CPU_CHUNK_BYTES // 8, CPU_CHUNK_BYTES // 8, 7]
    params = [torch.zeros(n) for n in sizes]
    bounds = _cache_chunks(params)
    assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(len(sizes)))
    assert bounds == [(0, 2), (2, 5), (5, 6)]


@pytest.mark.parametrize("name", ["nesterov", "rmsprop-nesterov", "rmsprop"])
def test_cache_chunked_eager_path_equals_one_pass(name, monkeypatch):
    # Many tensors spanning several chunks: the chunked rule must give bit-identical iterates.
    import ravine.optim.base as base

    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(3000, generator=gen, dtype=torch.float64) for _ in range(60)]
    grads = [
        [torch.randn(3000, generator=gen, dtype=torch.float64) for _ in init] for _ in range(3)
    ]
    results = []
    # whole runs of tensors; and 1000-element pieces of every 3000-element tensor, with one
    # gradient arriving non-contiguous (read through a copy)
    for chunk_bytes in (1 << 62, 64 << 10, 8000):
        monkeypatch.setattr(base, "CPU_CHUNK_BYTES", chunk_bytes)
        params = [t.clone().requires_grad_() for t in init]
        opt = optim.create(name, params, lr=0.01)
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            params[5].grad = grads[0][5].repeat(2)[::2].clone().repeat(2)[::2]
            assert not params[5].grad.is_contiguous()
            opt.step()
        results.append(torch.cat([p.detach() for p in params]))
        if chunk_bytes == 8000:
            batch = next(iter(opt._plans.values()))[1][0]
            assert batch.pieces == {i: 1000 for i in range(len(init))}
            assert len(batch.chunks) == 3 * len(init)
    assert len(base._cache_chunks(params)) > 1
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], results[2])


def _many_tensors(count: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(int(torch.randint(1, 3000, (1,), generator=gen)),) for _ in range(count)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(5)]
    return init, grads


@pytest.mark.parametrize(("name", "options"), [p for p in PATHS if "flat" not in p[1]])
def test_flat_storage_equals_separate_tensors(name, options, monkeypatch):
    # Many tensors, several cache-sized pieces; gradients arrive both ways: accumulated into the
    # flat buffer after opt.zero_grad(), and as fresh tensors (gathered into it).
    import ravine.optim.base as base

    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", 64 << 10)
    init, grads = _many_tensors()
    hp = dict(HP[name], **options)
    results = []
    for flat_storage in (False, True):
        params = [t.clone().requires_grad_() for t in init]
        opt = optim.create(name, params, flat=flat_storage, weight_decay=0.01, **hp)
        for k, gs in enumerate(grads):
            opt.param_groups[0]["lr"] = hp["lr"] / (k + 1)
            opt.zero_grad()
            for p, g in zip(params, gs, strict=True):
                if k % 2:
                    p.grad = g.clone()
                else:
                    (p * g).sum().backward()
            opt.step()
        with optim.true_params(opt):
            results.append(flat(params))
    assert rel_err(results[1], results[0]) <= 1e-12


def test_flat_storage_layout_and_zero_grad():
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    net.double()
    net[0].bias.data = net[0].bias.data.float()  # a second dtype: a second buffer
    params = list(net.parameters())
    opt = optim.Adam(params, lr=0.01, flat=True)

    def backward():
        x = torch.randn(4, 5, dtype=torch.float64)
        hidden = torch.tanh(x @ net[0].weight.T + net[0].bias.double())
        torch.nn.functional.mse_loss(net[2](hidden), x[:, :2]).backward()

    backward()
    opt.step()
    doubles = [p for p in params if p.dtype == torch.float64]
    storage = doubles[0].untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in doubles)
    grads = [p.grad for p in params]
    state = [opt.state[p]["exp_avg"] for p in doubles]
    assert all(t.untyped_storage().data_ptr() == state[0].untyped_storage().data_ptr()
               for t in state)
    opt.zero_grad()
    assert all(p.grad is g and not g.any() for p, g in zip(params, grads, strict=True))
    backward()
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))
    net.zero_grad()  # set_to_none on the model: the next step gathers the new gradients
    backward()
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_flat_option_validation():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="flat must be True, False or None, got 1"):
        optim.SGD(p, flat=1)
    q = torch.zeros(3, 2).t().requires_grad_()
    q.grad = torch.ones(2, 3)
    with pytest.raises(ValueError, match="contiguous"):
        optim.SGD([q], flat=True).step()


def test_compile_turns_flat_storage_on_and_falls_back_quietly(monkeypatch):
    """compile=True (flat=None) compiles one graph over a buffer; non-contiguous parameters keep
    their own storage instead of raising. The compiled rule is replaced by the eager one here:
    what is tested is the storage decision, not Inductor."""
    import ravine.optim.base as base

    monkeypatch.setattr(base.torch, "compile", lambda fn, **kw: fn)
    params = [torch.randn(3, requires_grad=True), torch.randn(4, requires_grad=True)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = optim.SGD(params, lr=0.1, compile=True)
    assert opt.flat is True
    opt.step()
    assert params[0].untyped_storage().data_ptr() == params[1].untyped_storage().data_ptr()
    assert optim.SGD(params, lr=0.1, compile=True, flat=False).flat is False
    assert optim.SGD(params, lr=0.1).flat is False  # eager: opt-in only
    q = torch.zeros(3, 2).t().requires_grad_()
    q.grad = torch.ones(2, 3)
    opt = optim.SGD([q], lr=0.5, compile=True)
    opt.step()  # no error: q keeps its own (non-contiguous) storage
    assert torch.equal(q.detach(), torch.full((2, 3), -0.5))


@pytest.mark.parametrize("name", ["momentum", "rmsprop-nesterov", "adam"])
def test_flat_storage_notices_replaced_parameter_data(name):
    """``p.data = ...`` behind the optimizer's back (as ``model.to``/``model.half`` do): the next
    step rebuilds the buffers from the parameters as they are, so training goes on exactly as
    with separate tensors instead of silently updating a stale buffer."""
    init, grads = _many_tensors(count=6)
    hp = dict(HP[name])
    results = []
    for flat_storage in (False, True):
        params = [t.clone().requires_grad_() for t in init]
        opt = optim.create(name, params, flat=flat_storage, **hp)
        for k, gs in enumerate(grads):
            if k == 2:
                with optim.true_params(opt):
                    pass
                for p in params:
                    p.data = p.data.clone()  # new storage, same values
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        with optim.true_params(opt):
            results.append(flat(params))
    assert rel_err(results[1], results[0]) <= 1e-12
