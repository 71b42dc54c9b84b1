"""What the plots and tables say, checked on matplotlib's objects rather than on pixels: the SLQ
plot's legend and negative-mass sentence, one colour per optimizer across a compare report,
labelled trajectory panels, integer epoch/step ticks, and no "± 0" for a single seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import nn

from ravine import fit
from ravine.bench import compare
from ravine.bench.config import SuiteSpec
from ravine.bench.report import OPTIMIZER_COLORS, _pm, optimizer_colors
from ravine.diagnostics import operator_density
from ravine.diagnostics.plots import (
    history_figure,
    negative_mass_sentence,
    plot_spectral_density,
    spectral_density_figure,
)
from ravine.train import lineplot
from ravine.train.report import write_report


def axes_facts(figure: Figure) -> list[dict]:
    """What a reader sees on each drawn panel, recorded when the figure is saved."""
    facts = []
    for ax in figure.axes:
        if not ax.axison:
            continue
        locator = ax.xaxis.get_major_locator()
        legend = ax.get_legend()
        facts.append(
            {
                "title": ax.get_title(),
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "integer_x": isinstance(locator, MaxNLocator) and locator._integer,
                "xticks": list(ax.get_xticks()),
                "lines": [(line.get_label(), to_hex(line.get_color())) for line in ax.get_lines()],
                "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            }
        )
    return facts


@pytest.fixture
def saved(monkeypatch):
    """Every figure saved while the test runs, as ``axes_facts`` at the moment of saving."""
    record: list[tuple[str, list[dict]]] = []
    original = Figure.savefig

    def savefig(self, path, *args, **kwargs):
        record.append((str(path), axes_facts(self)))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    # the run report's line plots are drawn by ravine.train.lineplot, not matplotlib
    draw = lineplot.render

    def render(plot, path):
        record.append((str(path), [plot_facts(plot)]))
        return draw(plot, path)

    monkeypatch.setattr(lineplot, "render", render)
    return record


def plot_facts(plot: lineplot.Plot) -> dict:
    """``axes_facts`` of a run-report line plot, read from its plan."""
    return {
        "title": plot.title,
        "xlabel": plot.xlabel,
        "ylabel": plot.ylabel,
        "integer_x": plot.x.integer,
        "xticks": list(plot.x.ticks),
        "lines": [(line.label, line.color) for line in plot.lines],
        "legend": [line.label for line in plot.lines] if plot.legend else [],
    }


# ---------------------------------------------------------------------------- SLQ plot


def diagonal_density(eigenvalues: np.ndarray):
    """SLQ of diag(eigenvalues) with one probe and full Lanczos: for a normalized Rademacher
    probe every eigenvector (a unit vector) carries weight exactly 1/d, so the estimated mass
    below zero is the exact fraction of negative eigenvalues."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    return operator_density(lambda v: lam * v, len(lam), n_probes=1, steps=len(lam), seed=3)


def test_slq_plot_explains_its_ticks_and_states_the_negative_mass_against_lambda_max(
    saved, tmp_path
):
    eigenvalues = np.concatenate([np.linspace(-0.037, -0.001, 43), np.linspace(0.01, 4.2, 57)])
    density = diagonal_density(eigenvalues)
    fraction = float(np.mean(eigenvalues < 0))
    assert density.negative_mass == pytest.approx(fraction, abs=1e-10)
    assert density.lambda_min == pytest.approx(eigenvalues.min(), rel=1e-8)
    assert density.lambda_max == pytest.approx(eigenvalues.max(), rel=1e-8)
    ratio = abs(eigenvalues.min()) / eigenvalues.max()
    expected = (
        f"{100 * fraction:.3g}% of spectral mass below 0, but λmin = {eigenvalues.min():.3g} is "
        f"tiny relative to λmax = {eigenvalues.max():.3g} (|λmin|/λmax = {ratio:.2g})"
    )
    assert expected.startswith("43% of spectral mass below 0, but λmin = -0.037 is tiny")
    plot_spectral_density(density, tmp_path / "density.png")
    ((path, (facts,)),) = saved
    assert (tmp_path / "density.png").stat().st_size > 0
    assert expected in facts["title"].replace("\n", " ")
    assert any(text.startswith("Lanczos nodes θ (one tick each") for text in facts["legend"])
    assert "λ = 0" in facts["legend"] and facts["xlabel"] and facts["ylabel"]
    assert expected in repr(density)


@pytest.mark.parametrize(
    ("eigenvalues", "words"),
    [
        (np.linspace(-1.5, 4.2, 40), "is large relative to λmax = 4.2"),
        (np.linspace(0.1, 4.2, 40), "no spectral mass below 0 (λmin = 0.1, λmax = 4.2)"),
        (np.linspace(-3.0, -0.5, 40), "100% of spectral mass below 0: every node is <= 0"),
    ],
)
def test_the_negative_mass_sentence_follows_the_spectrum(eigenvalues, words):
    density = diagonal_density(eigenvalues)
    sentence = negative_mass_sentence(density.negative_mass, density.lambda_min, density.lambda_max)
    assert words in sentence
    assert words in spectral_density_figure(density).axes[0].get_title().replace("\n", " ")


def test_diagnostics_history_has_integer_step_ticks():
    rows = [
        {"step": s, "lambda_max": 1.0 + s, "lr": 0.1, "grad_norm": 2.0 / (s + 1)} for s in (0, 1, 2)
    ]
    facts = axes_facts(history_figure(rows))
    assert len(facts) == 2
    for panel in facts:
        assert panel["integer_x"] and panel["ylabel"]
        assert all(float(t).is_integer() for t in panel["xticks"])
    assert facts[-1]["xlabel"] == "step"


# ---------------------------------------------------------------------------- compare report


def test_optimizer_colors_are_fixed_by_name_and_distinct():
    both = optimizer_colors(["adam", "sgd"])
    assert both == {"adam": OPTIMIZER_COLORS["adam"], "sgd": OPTIMIZER_COLORS["sgd"]}
    assert optimizer_colors(["sgd", "adam"]) == both  # the order of the suite does not matter
    assert len(set(OPTIMIZER_COLORS.values())) == len(OPTIMIZER_COLORS)
    # a custom label takes its optimizer's colour unless a label of that name has it
    named = optimizer_colors(["heavy-ball", "fast", "adam"], ["momentum", "adam", "adam"])
    assert named["heavy-ball"] == OPTIMIZER_COLORS["momentum"]
    assert named["adam"] == OPTIMIZER_COLORS["adam"]
    assert named["fast"] not in OPTIMIZER_COLORS.values()
    many = [f"custom-{i}" for i in range(25)]
    assert len(set(optimizer_colors(many).values())) == len(many)
    with pytest.raises(ValueError, match="names must match labels, got 1 names for 2 labels"):
        optimizer_colors(["a", "b"], ["sgd"])


def test_plus_minus_only_with_a_spread():
    assert _pm(0.125, 0.0, 1) == "0.125"
    assert _pm(0.125, math.nan, 3) == "0.125"
    assert _pm(0.125, 0.0312, 3) == "0.125 ± 0.031"


@pytest.mark.slow
def test_compare_report_one_colour_per_optimizer_labels_and_ticks(saved, tmp_path):
    suite = SuiteSpec.model_validate(
        {
            "name": "tiny",
            "seeds": [3],
            "problems": [{"kind": "quadratic", "epochs": 25, "target": 0.3}],
            "optimizers": ["sgd", {"name": "momentum", "label": "heavy-ball", "momentum": 0.9}],
            "tuning": {"method": "grid", "grid": [0.01, 0.05]},
        }
    )
    compare.run_suite(suite, tmp_path, quiet=True)
    colors = {"sgd": OPTIMIZER_COLORS["sgd"], "heavy-ball": OPTIMIZER_COLORS["momentum"]}
    plots = {path.rsplit("/", 1)[1]: facts for path, facts in saved}
    assert set(plots) == {
        "profile.png",
        "quadratic-curves.png",
        "quadratic-lr.png",
        "quadratic-trajectories.png",
    }
    for name, facts in plots.items():
        drawn = {label: color for panel in facts for label, color in panel["lines"]}
        for optimizer, color in colors.items():
            assert drawn[optimizer] == to_hex(color), (name, optimizer)
    (curves,) = plots["quadratic-curves.png"]
    assert curves["integer_x"] and curves["xlabel"] == "step" and curves["ylabel"] == "loss"
    assert all(float(t).is_integer() for t in curves["xticks"])
    panels = plots["quadratic-trajectories.png"]
    assert len(panels) == 2
    for panel in panels:
        assert panel["xlabel"].startswith("θ₁") and panel["ylabel"].startswith("θ₂")
    report = (tmp_path / "report.md").read_text()
    assert "±" not in report  # one seed: plain numbers, no "± 0"
    assert "One seed: every number is that run's own" in report


# ---------------------------------------------------------------------------- run report


def test_run_report_epoch_plots_have_integer_ticks_and_labels(saved, tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=g), torch.randint(0, 2, (40,), generator=g)
    torch.manual_seed(0)
    fit(
        nn.Linear(3, 2),
        (x, y),
        (x, y),
        epochs=3,
        batch_size=20,
        run_dir=tmp_path / "run",
        quiet=True,
    )
    saved.clear()
    write_report(tmp_path / "run")
    plots = {path.rsplit("/", 1)[1]: facts for path, facts in saved}
    assert {"loss.png", "accuracy.png", "lr.png"} <= set(plots)
    for name, (panel,) in plots.items():
        assert panel["integer_x"], name
        assert panel["xlabel"] in ("epoch", "step") and panel["ylabel"], name
        assert all(float(t).is_integer() for t in panel["xticks"]), name
    assert plots["loss.png"][0]["xlabel"] == "epoch"
    assert "±" not in (tmp_path / "run" / "report.md").read_text()
    # the PNG is 512 x 320 pixels, in 64 colours at most, and holds the train line
    # (matplotlib's first colour, #1f77b4) and the validation line (#ff7f0e)
    with Image.open(tmp_path / "run" / "plots" / "loss.png") as image:
        assert image.size == (512, 320) and image.mode == "P"
        colours = {rgb for _, rgb in image.convert("RGB").getcolors(64)}
    for line in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert min(sum(abs(a - b) for a, b in zip(c, line, strict=True))
                   for c in colours) <= 12, line
