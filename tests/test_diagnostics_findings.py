"""Ranked, coded findings: every rule fires when planted and not otherwise, the ranking, the
no-contradiction grid, errors, JSON/markdown, and the saddle rule on real measurements."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from ravine.diagnostics import classify, measure
from ravine.diagnostics.findings import (
    CODES,
    KNOWN_KEYS,
    Diagnosis,
    Finding,
    FindingThresholds,
    find,
    gradient_progress,
    lr_bound,
)

CORE_CODES = {
    "lr-too-high",
    "lr-too-low",
    "batch-too-small",
    "batch-too-large",
    "ill-conditioned",
    "saddle",
    "flat",
    "exploding-gradients",
    "dead-units",
    "clipping-always",
    "healthy",
}


def codes(numbers: dict) -> list[str]:
    return [f.code for f in find(numbers)]


def one(numbers: dict, code: str) -> Finding:
    found = [f for f in find(numbers) if f.code == code]
    assert len(found) == 1, codes(numbers)
    return found[0]


# --------------------------------------------------------------------------- step size


def stable_edge(step_matrix, lam: float) -> float:
    """The largest ε whose iteration matrix on the 1-d quadratic ½λx² has spectral radius < 1,
    by bisection on numpy's eigenvalues (independent of the closed forms in findings)."""

    def stable(eps: float) -> bool:
        return max(abs(np.linalg.eigvals(step_matrix(eps * lam)))) < 1 - 1e-12

    lo, hi = 1e-9, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


def heavy_ball(alpha: float):
    # (θ, v) -> v' = αv − ελθ, θ' = θ + v'   (Algorithm 8.2 on f = ½λθ²)
    return lambda h: np.array([[1 - h, alpha], [-h, alpha]])


def nesterov(alpha: float):
    # v' = αv − ελ(θ + αv), θ' = θ + v'      (Algorithm 8.3)
    return lambda h: np.array([[1 - h, alpha * (1 - h)], [-h, alpha * (1 - h)]])


def adam_frozen(beta1: float):
    # Adam with a frozen preconditioner on the preconditioned quadratic, state (θ, m):
    # m' = β1 m + (1−β1)λθ, θ' = θ − ε m'   (Cohen et al. 2022)
    return lambda h: np.array([[1 - h * (1 - beta1), -h * beta1], [(1 - beta1), beta1]])


@pytest.mark.parametrize(
    ("optimizer", "alpha", "matrix"),
    [
        ("sgd", 0.0, heavy_ball(0.0)),
        ("momentum", 0.9, heavy_ball(0.9)),
        ("momentum", 0.5, heavy_ball(0.5)),
        ("nesterov", 0.9, nesterov(0.9)),
        ("adam", 0.9, adam_frozen(0.9)),
        ("adam", 0.99, adam_frozen(0.99)),
    ],
)
def test_lr_bound_is_the_edge_of_the_iteration(optimizer, alpha, matrix):
    lam = 4.0
    edge = stable_edge(matrix, lam)
    assert lr_bound(lam, optimizer, alpha) == pytest.approx(edge, rel=1e-6)


@pytest.mark.parametrize(
    ("optimizer", "alpha"), [("sgd", 0.0), ("momentum", 0.9), ("nesterov", 0.9)]
)
def test_lr_too_high_fires_above_the_bound_only(optimizer, alpha):
    lam = 7.0
    bound = lr_bound(lam, optimizer, alpha)
    base = {"optimizer": optimizer, "momentum": alpha, "lambda_max": lam}
    high = one({**base, "lr": 1.5 * bound}, "lr-too-high")
    assert high.severity == "critical" and high.fix == {"lr": pytest.approx(0.5 * bound)}
    assert high.evidence["lr_ratio"] == pytest.approx(1.5)
    assert f"{bound:.3g}" in high.message
    assert codes({**base, "lr": 0.9 * bound}) == ["healthy"]
    # Named layer when the limiting block is known.
    named = one({**base, "lr": 2 * bound, "limiting_layer": "fc2"}, "lr-too-high")
    assert named.layer == "fc2" and "fc2" in named.message


def test_adaptive_optimizers_never_get_the_sgd_bound():
    # The reported bug: an Adam lr measured against the plain Hessian was told to go larger.
    for numbers in (
        {"optimizer": "adam", "lr": 1e-4, "lambda_max": 1.0},
        {"adaptive": True, "lr": 1e-4, "lambda_max": 1.0},
        {"optimizer": "rmsprop", "lr": 1e-4, "sharpness": 1.0, "sharpness_kind": "hessian"},
        {"optimizer": "adamw", "lr": 1e-4, "lr_ratio": 1e-5, "sharpness_kind": "hessian"},
    ):
        assert codes(numbers) == [], numbers
        diagnosis = Diagnosis.from_numbers(numbers)
        assert any("preconditioned sharpness" in s for s in diagnosis.skipped)
    # With the preconditioned sharpness, Adam's edge (2+2β1)/((1−β1)s) = 38/s at β1 = 0.9.
    s = 100.0
    pre = {"optimizer": "adam", "momentum": 0.9, "sharpness": s, "sharpness_kind": "preconditioned"}
    high = one({**pre, "lr": 0.5}, "lr-too-high")
    assert high.fix["lr"] == pytest.approx(0.5 * 38 / s)
    assert "Cohen" in high.message and "P⁻¹ᐟ²HP⁻¹ᐟ²" in high.message
    assert codes({**pre, "lr": 0.3}) == ["healthy"]
    # Precomputed lr_bound/lr_ratio from the measurement are used as given.
    given = {
        "optimizer": "rmsprop",
        "lr": 0.02,
        "lr_bound": 0.01,
        "sharpness_kind": "preconditioned",
    }
    assert one(given, "lr-too-high").evidence["lr_ratio"] == pytest.approx(2.0)


def test_lr_too_low_needs_room_along_the_gradient():
    lam = 2.0  # bound 1
    low = one({"lr": 1e-4, "lambda_max": lam}, "lr-too-low")
    assert low.severity == "warning" and low.fix == {"lr": pytest.approx(0.5)}
    # ε* = gᵀg/gᵀHg from a dense H and g: the fix is capped by it.
    h = np.diag([2.0, 0.5])
    g = np.array([0.1, 1.0])
    g_tg, g_hg = float(g @ g), float(g @ h @ g)
    star = g_tg / g_hg
    capped = one({"lr": 1e-3, "lambda_max": lam, "gTg": g_tg, "gHg": g_hg}, "lr-too-low")
    assert capped.fix["lr"] == pytest.approx(min(0.5, star)) and capped.evidence["lr_star"] == star
    # ε* close to the current lr: the loss along −g stops falling soon, no finding.
    assert "lr-too-low" not in codes({"lr": 1e-4, "lambda_max": lam, "lr_star": 3e-4})
    assert "lr-too-low" not in codes({"lr": 0.05, "lambda_max": lam})  # ratio 0.05


# --------------------------------------------------------------------------- batch size


def test_batch_rules_use_the_whole_interval():
    small = one(
        {"batch_size": 8, "b_simple": 2000.0, "b_simple_low": 1000.0, "b_simple_high": 4000.0},
        "batch-too-small",
    )
    assert small.fix == {"batch_size": 2000} and small.score == pytest.approx(1000 / 80)
    assert small.evidence["b_simple_low"] == 1000.0 and "1e+03–4e+03" in small.message
    # The interval reaches down to 50 < 10·8: not far enough, nothing fires.
    assert "batch-too-small" not in codes(
        {"batch_size": 8, "b_simple": 2000.0, "b_simple_low": 50.0, "b_simple_high": 4000.0}
    )
    large = one({"batch_size": 4096, "b_simple": 20.0, "b_simple_high": 30.0}, "batch-too-large")
    assert large.fix == {"batch_size": 20}
    assert "batch-too-large" not in codes(
        {"batch_size": 4096, "b_simple": 20.0, "b_simple_high": 500.0}
    )
    assert codes({"batch_size": 100, "b_simple": 200.0}) == ["healthy"]
    # Capped by the data set size; infinite B_simple (zero gradient) is skipped.
    capped = one({"batch_size": 8, "b_simple": 1e5, "n_examples": 600}, "batch-too-small")
    assert capped.fix["batch_size"] == 600
    assert codes({"batch_size": 8, "b_simple": math.inf}) == []


def test_batch_fix_scales_the_learning_rate():
    # Linear scaling for SGD, capped at half the stability bound.
    fix = one({"batch_size": 10, "b_simple": 1000.0, "lr": 1e-3}, "batch-too-small").fix
    assert fix == {"batch_size": 1000, "lr": pytest.approx(0.1)}
    capped = one(
        {"batch_size": 10, "b_simple": 1000.0, "lr": 1e-3, "lambda_max": 40.0}, "batch-too-small"
    )
    assert capped.fix["lr"] == pytest.approx(0.5 * 2 / 40)
    # Square-root scaling for adaptive methods.
    adam = {"batch_size": 10, "b_simple": 1000.0, "lr": 1e-3, "optimizer": "adam"}
    assert one(adam, "batch-too-small").fix["lr"] == pytest.approx(1e-3 * 10)
    down = one({"batch_size": 4000, "b_simple": 10.0, "lr": 0.4}, "batch-too-large").fix
    assert down["lr"] == pytest.approx(0.4 * 10 / 4000)


# --------------------------------------------------------------------------- curvature


def test_ill_conditioned_from_kappa_and_from_the_chapter_test():
    lams = np.array([1e-3, 0.5, 10.0])
    found = one(
        {"lambda_max": lams.max(), "lambda_min": lams.min(), "condition_number": 1e4},
        "ill-conditioned",
    )
    assert found.fix == {"optimizer": "momentum", "momentum": 0.9} and "O(√κ)" in found.message
    # with the run's lr the momentum fix keeps the effective step ε/(1 − α)
    with_lr = one(
        {
            "lr": 0.02,
            "condition_number": 1e4,
            "lambda_max": 10.0,
            "lambda_min": 1e-3,
            "optimizer": "sgd",
            "lr_ratio": 0.1,
        },
        "ill-conditioned",
    )
    assert with_lr.fix["lr"] == pytest.approx(0.02 * (1 - 0.9))
    # inputs on very different scales: standardize them
    scaled = one({"input_scale_ratio": 2e5}, "ill-conditioned")
    assert scaled.fix == {"standardize": True} and "2e+05" in scaled.message
    assert "ill-conditioned" not in codes({"input_scale_ratio": 50.0})  # e.g. MNIST-1D: 2.5
    # κ is computed when not given; negative λmin (a saddle) is not ill-conditioning.
    assert "ill-conditioned" in codes({"lambda_max": 10.0, "lambda_min": 1e-3})
    assert "ill-conditioned" not in codes({"lambda_max": 10.0, "lambda_min": -1e-3})
    assert "ill-conditioned" not in codes({"lambda_max": 10.0, "lambda_min": 1.0})
    # Chapter 8 test: ½ε²gᵀHg vs εgᵀg with g along the sharp direction, ε within the bound.
    h = np.diag(lams)
    g = np.array([0.01, 0.01, 1.0])
    g_tg, g_hg = float(g @ g), float(g @ h @ g)
    lr = 1.5 / lams.max()  # below 2/λmax
    numbers = {"lr": lr, "lambda_max": lams.max(), "gTg": g_tg, "gHg": g_hg}
    second = one(numbers, "ill-conditioned")
    assert second.evidence["second_over_first"] == pytest.approx(lr * g_hg / (2 * g_tg))
    assert "ill-conditioned" not in codes({**numbers, "lr": 0.1 / lams.max()})
    # The same with the two terms given directly, and the fix for momentum users.
    terms = {"first_order": -lr * g_tg, "second_order": 0.5 * lr**2 * g_hg, "optimizer": "momentum"}
    assert one(terms, "ill-conditioned").fix == {"optimizer": "adam"}


def test_saddle_and_flat_from_numbers():
    saddle = {"loss": 4.5, "grad_sq_norm": 1e-6, "lambda_max": 2.8, "lambda_min": -2.7}
    found = one(saddle, "saddle")
    assert found.evidence["gradient_progress"] == pytest.approx(1e-6 / (2 * 2.8 * 4.5))
    assert "do not stop early" in found.message
    # Near interpolation: tiny loss, so the same gradient removes much of it.
    assert "saddle" not in codes({**saddle, "loss": 1e-4, "grad_sq_norm": 1e-5})
    # Negative curvature too small relative to λmax, or within its Lanczos residual.
    assert "saddle" not in codes({**saddle, "lambda_min": -0.05})
    assert "saddle" not in codes({**saddle, "lambda_min_residual": 3.0})
    flat = {"loss": 1.0, "grad_sq_norm": 1e-14, "lambda_max": 1e-5, "lambda_min": -1e-5}
    assert codes({**flat, "param_norm": 10.0, "trace_sigma": 1e-12}) == ["flat"]
    assert "flat" not in codes({**flat, "param_norm": 10.0, "trace_sigma": 1.0})
    # A label from classify stands in when the numbers are missing.
    assert codes({"label": "saddle"}) == ["saddle"]


def test_gradient_progress_is_the_descent_lemma_fraction():
    # One step 1/λ on f = ½λx² + c from x0 removes |g|²/(2λ): the whole gap above c.
    lam, x0, c = 3.0, 2.0, 0.0
    g = lam * x0
    assert gradient_progress(g * g, 0.5 * lam * x0**2 + c, lam, lam) == pytest.approx(1.0)
    assert gradient_progress(1.0, 0.0, 1.0, 1.0) == math.inf


# --------------------------------------------------------------------------- other rules


def test_exploding_gradients():
    nan_loss = one({"loss": float("nan")}, "exploding-gradients")
    assert nan_loss.severity == "critical"
    depth = one({"layer_grad_norms": {"in": 5e3, "mid": 40.0, "out": 2.0}}, "exploding-gradients")
    assert depth.layer == "in" and depth.evidence["depth_growth"] == pytest.approx(2.5e3)
    # Vanishing toward the input is not exploding.
    assert codes({"layer_grad_norms": {"in": 1e-4, "mid": 1.0, "out": 2.0}}) == ["healthy"]
    history = [1.0 * 4**k for k in range(6)]  # grew 1024x
    grew = one({"grad_norm_history": history}, "exploding-gradients")
    assert grew.fix == {"clip_norm": pytest.approx(float(np.median(history)))}
    spikes = [1.0, 1.2, 0.9, 30.0, 1.1, 1.0]
    spiked = one({"grad_norm_history": spikes}, "exploding-gradients")
    assert spiked.severity == "warning" and spiked.evidence["spike_over_median"] == pytest.approx(
        30 / np.median(spikes)
    )
    assert codes({"grad_norm_history": [1.0, 1.3, 0.8, 1.1, 1.2]}) == ["healthy"]
    assert one({"loss_history": [1.0, math.inf]}, "exploding-gradients").severity == "critical"


def test_dead_units_and_clipping():
    dead = one({"dead_fraction": 0.3, "dead_by_layer": {"a": 0.05, "b": 0.6}}, "dead-units")
    assert dead.layer == "b" and "b 60%" in dead.message and dead.fix == {"activation": "gelu"}
    assert codes({"dead_fraction": 0.05}) == ["healthy"]
    with pytest.raises(ValueError, match="dead_fraction must be in \\[0, 1\\], got 1.5"):
        find({"dead_fraction": 1.5})
    clip = one(
        {"clip_fraction": 0.7, "clip_norm": 1.0, "grad_norm_history": [3, 4, 5]}, "clipping-always"
    )
    assert clip.fix == {"clip_norm": 4.0} and "70%" in clip.message
    assert one({"clip_fraction": 0.7, "clip_norm": 1.0}, "clipping-always").fix == {
        "clip_norm": 2.0
    }
    assert codes({"clip_fraction": 0.2}) == ["healthy"]
    with pytest.raises(ValueError, match="clip_fraction must be in \\[0, 1\\], got 1.5"):
        find({"clip_fraction": 1.5})


def test_healthy_only_when_nothing_else_and_something_ran():
    assert find({}) == [] and find({"seconds": 1.0, "mode": "eval"}) == []
    fine = find({"lr": 0.5, "lambda_max": 2.0, "batch_size": 64, "b_simple": 100.0})
    assert [f.code for f in fine] == ["healthy"] and fine[0].severity == "info"


# --------------------------------------------------------------------------- ranking, grid


def test_ranking_by_severity_then_score():
    numbers = {
        "lr": 3.0,
        "lambda_max": 1.0,  # lr-too-high, score 1.5 (critical)
        "layer_grad_norms": {"a": 1e7, "b": 1.0},  # exploding, score 1e4 (critical)
        "batch_size": 4,
        "b_simple": 4000.0,  # batch-too-small, score 100 (warning)
        "clip_fraction": 0.6,  # clipping-always, score 1.2 (warning)
        "dead_fraction": 0.5,  # dead-units, score 5 (warning)
    }
    found = find(numbers)
    assert [f.code for f in found] == [
        "exploding-gradients",
        "lr-too-high",
        "batch-too-small",
        "dead-units",
        "clipping-always",
    ]
    assert found[0].score == pytest.approx(1e4) and found[1].score == pytest.approx(1.5)


def direction(finding: Finding, lr: float | None) -> int:
    if lr is None or "lr" not in finding.fix:
        return 0
    return 1 if finding.fix["lr"] > lr else -1 if finding.fix["lr"] < lr else 0


def test_no_contradictions_over_a_grid():
    grid = itertools.product(
        [None, "sgd", "momentum", "adam"],
        [1e-5, 0.3, 3.0],  # lr × λmax / 2 = lr_ratio for SGD
        [None, 1e-4, 10.0],  # ε*
        [(None, None), (8, 5000.0), (4096, 10.0), (64, 100.0)],
        [None, 0.9],  # clip fraction
        [None, [1.0, 2.0, 40.0, 1.5, 1.0]],  # a spike
        [None, 0.4],  # dead fraction
        # loss, |G|², λmin, λmax: saddle, near interpolation, flat, ill-conditioned
        [
            (4.0, 1e-8, -3.0, 2.0),
            (1e-4, 1e-6, -0.5, 2.0),
            (1.0, 1e-14, -1e-6, 1e-5),
            (4.0, 1.0, 1e-4, 2.0),
        ],
    )
    seen: set[str] = set()
    for opt, lr, star, (m, b), clip, hist, dead, (loss, g2, lmin, lmax) in grid:
        numbers = {
            "lr": lr,
            "lambda_max": lmax,
            "lambda_min": lmin,
            "loss": loss,
            "grad_sq_norm": g2,
            "param_norm": 1.0,
            "lr_star": star,
            "optimizer": opt,
            "momentum": 0.9 if opt in ("momentum", "adam") else None,
            "batch_size": m,
            "b_simple": b,
            "clip_fraction": clip,
            "clip_norm": 1.0,
            "grad_norm_history": hist,
            "dead_fraction": dead,
        }
        if opt == "adam":
            numbers.update(sharpness=lmax, sharpness_kind="preconditioned")
        numbers = {k: v for k, v in numbers.items() if v is not None}
        found = find(numbers)
        got = [f.code for f in found]
        seen.update(got)
        assert len(got) == len(set(got)), got
        assert not ({"lr-too-high", "lr-too-low"} <= set(got))
        assert not ({"saddle", "flat"} <= set(got))
        assert "healthy" not in got or got == ["healthy"]
        directions = {direction(f, lr) for f in found} - {0}
        assert len(directions) <= 1, [(f.code, f.fix) for f in found]
        text = " ".join(f.message for f in found)
        raises = "Raise it" in text or "larger learning rate" in text
        lowers = "Lower it" in text or "lower learning rate" in text or "lower the learning" in text
        assert not (raises and lowers), got
        ranks = [(("critical", "warning", "info").index(f.severity), -f.score) for f in found]
        assert ranks == sorted(ranks)
        # No "α = 0.9 = 3.8": an equals sign never chains two numbers.
        assert not re.search(r"= -?[\d.e+]+ =", text), text
        clip_fixes = {f.fix["clip_norm"] for f in found if "clip_norm" in f.fix}
        assert len(clip_fixes) <= 1
    assert seen == CORE_CODES


# --------------------------------------------------------------------------- API


def test_unknown_keys_and_names_raise_with_the_closest():
    with pytest.raises(
        ValueError, match="unknown diagnostics key 'lamda_max'; did you mean 'lambda_max'"
    ):
        find({"lamda_max": 1.0})
    with pytest.raises(
        ValueError, match="optimizer must be one of .*got 'adma'; did you mean 'adam'"
    ):
        find({"optimizer": "adma"})
    with pytest.raises(ValueError, match="sharpness_kind must be one of"):
        find({"sharpness_kind": "dense", "lr": 1.0})
    with pytest.raises(ValueError, match="lr_low must be <= 1, got 2"):
        FindingThresholds(lr_low=2)
    with pytest.raises(ValueError, match="saddle_negative must be a finite number > 0, got -1"):
        FindingThresholds(saddle_negative=-1)
    with pytest.raises(ValueError, match="unknown finding code 'lr-to-high'; did you mean"):
        Finding("lr-to-high", "critical", "x")
    # std_m{m} from gradient_noise is known; thresholds change the rules.
    assert find({"std_m8": 0.1}) == []
    assert codes({"clip_fraction": 0.3}) == ["healthy"]
    assert find({"clip_fraction": 0.3}, thresholds=FindingThresholds(clip_always=0.2))[0].code == (
        "clipping-always"
    )


def test_codes_are_documented():
    import ravine.diagnostics.findings as module

    assert CORE_CODES <= set(CODES)
    for code, (rule, source) in CODES.items():
        assert rule and source and f"``{code}``" in module.__doc__


def test_diagnosis_json_markdown_and_repr():
    numbers = {
        "lr": 3.0,
        "lambda_max": 1.0,
        "lambda_min": -0.5,
        "condition_number": math.inf,
        "b_simple": math.inf,
        "batch_size": 32,
        "dead_by_layer": {"fc1": 0.5},
        "grad_norm_history": [1.0, float("nan")],
    }
    diagnosis = Diagnosis.from_numbers(numbers, skipped=["spectral density: budget of 50 HVPs"])
    assert diagnosis.top is diagnosis.findings[0] and diagnosis.codes[0] == "exploding-gradients"
    payload = json.dumps(diagnosis.to_dict(), allow_nan=False)
    back = json.loads(payload)
    assert back["numbers"]["b_simple"] == "inf" and back["numbers"]["condition_number"] == "inf"
    assert back["numbers"]["grad_norm_history"] == [1.0, "nan"]
    assert [f["code"] for f in back["findings"]] == diagnosis.codes
    assert back["findings"][1]["fix"] == diagnosis.findings[1].fix
    assert back["skipped"][0] == "spectral density: budget of 50 HVPs"
    markdown = diagnosis.to_markdown(title="At step 100")
    assert markdown.startswith("## At step 100\n\n| severity | code | message | fix |")
    for code in diagnosis.codes:
        assert f"`{code}`" in markdown
    assert "lr=1 |" in markdown and "- spectral density: budget of 50 HVPs" in markdown
    text = repr(diagnosis)
    assert len(text) < 200 and "lr-too-high (critical)" in text


def test_known_keys_cover_measure():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    batch = (
        torch.randn(20, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 2, (20,), generator=g),
    )
    out = measure(
        model,
        nn.CrossEntropyLoss(),
        batch,
        ["loss", "grad_norm", "lambda_max", "lambda_min", "trace", "noise"],
        lr=0.1,
        batch_size=8,
        max_hvps=20,
        trace_hvps=3,
        backend="double-backward",
    )
    assert set(out) <= KNOWN_KEYS
    assert isinstance(find(out), list)


# --------------------------------------------------------------------------- real measurements


def blobs(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], dtype=torch.float64)
    y = torch.arange(n) % 3
    return centers[y] + 0.7 * torch.randn(n, 2, generator=g, dtype=torch.float64), y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_trained_network_is_not_a_saddle(seed, activation):
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    net = nn.Sequential(nn.Linear(2, 16), activation(), nn.Linear(16, 3)).double()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    assert float((net(x).argmax(1) == y).double().mean()) == 1.0
    result = classify(net, loss_fn, (x, y), batch_size=16, tol=1e-6)
    n = result.numbers
    assert result.label != "saddle", result.reason
    # The old rule (|G|² below the noise and λmin < -0.01·|λmax|) needed only these:
    assert n["grad_sq_norm"] <= n["trace_sigma"] / 16
    # and λmin is negative, yet small next to λmax; the gradient is large next to the tiny loss.
    assert n["lambda_min"] < 0 and n["negative_ratio"] > -0.1
    assert n["gradient_progress"] > 1e-3
    keys = ("loss", "grad_sq_norm", "lambda_max", "lambda_min", "param_norm", "trace_sigma")
    assert "saddle" not in codes({k: n[k] for k in keys})


def test_seed_two_is_the_reported_bug():
    # With the old thresholds this trained network (100% accuracy) was a "saddle".
    torch.manual_seed(2)
    x, y = blobs(seed=2)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    n = classify(net, nn.CrossEntropyLoss(), (x, y), batch_size=16, tol=1e-6).numbers
    old_rule = (
        n["grad_sq_norm"] <= n["trace_sigma"] / 16 and n["lambda_min"] < -0.01 * n["lambda_max"]
    )
    assert old_rule and n["label"] == "minimum-like"


@pytest.mark.parametrize("init", [0.0, 1e-3])
def test_two_layer_linear_net_near_zero_is_a_saddle(init):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = x @ torch.randn(4, 2, generator=g, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(init * torch.randn(p.shape, generator=g, dtype=torch.float64))
    result = classify(net, nn.MSELoss(), (x, y), batch_size=16, tol=1e-8)
    assert result.label == "saddle", result.reason
    # At θ = 0 the Hessian is [[0, C], [Cᵀ, 0]] with C the input-output cross-covariance
    # blocks: its eigenvalues are ± the singular values of the dense Hessian, computed here.
    if init == 0.0:
        params = [p.detach().clone().requires_grad_() for p in net.parameters()]
        shapes = [p.shape for p in params]

        def loss(flat: torch.Tensor) -> torch.Tensor:
            w1 = flat[:16].reshape(shapes[0])
            w2 = flat[16:].reshape(shapes[1])
            return ((x @ w1.T @ w2.T - y) ** 2).mean()

        dense = torch.autograd.functional.hessian(loss, torch.zeros(24, dtype=torch.float64))
        eig = np.linalg.eigvalsh(dense.numpy())
        assert result.numbers["lambda_min"] == pytest.approx(eig[0], rel=1e-6)
        assert result.numbers["lambda_max"] == pytest.approx(eig[-1], rel=1e-6)
        assert eig[0] == pytest.approx(-eig[-1], rel=1e-10)
    keys = ("loss", "grad_sq_norm", "lambda_max", "lambda_min", "param_norm", "trace_sigma")
    assert "saddle" in codes({k: result.numbers[k] for k in keys})


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_known_keys_cover_step_size(name):
    # diagnostics.sharpness (merged separately) produces the step-size keys.
    sharpness = pytest.importorskip("ravine.diagnostics.sharpness")
    from ravine import optim

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    batch = (
        torch.randn(20, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 2, (20,), generator=g),
    )
    opt = optim.create(name, model.parameters(), lr=0.01)
    out = sharpness.step_size(model, nn.CrossEntropyLoss(), batch, opt, max_hvps=20)
    assert set(out) <= KNOWN_KEYS
    diagnosis = Diagnosis.from_numbers(out)
    assert not any("step size" in s for s in diagnosis.skipped)


def test_lr_too_low_discounts_the_best_step_for_minibatch_noise():
    # ε* = 0.5 far above lr; with little noise (m = 64, B_simple = 100) the fix is ε*/(1 + B/m)
    base = {"optimizer": "sgd", "lr": 1e-4, "lr_bound": 1.0, "lr_ratio": 1e-4, "lr_star": 0.5}
    calm = one({**base, "batch_size": 64, "b_simple": 100.0}, "lr-too-low")
    assert calm.fix["lr"] == pytest.approx(0.5 / (1 + 100 / 64))
    # noise-dominated near a minimum: the discounted best step is not 10x the lr, so no finding
    noisy = {**base, "lr_star": 0.05, "batch_size": 8, "b_simple": 1000.0}
    assert 0.05 / (1 + 1000 / 8) < 10 * 1e-4
    assert "lr-too-low" not in codes(noisy)
