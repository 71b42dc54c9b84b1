"""Honest optimizer benchmarks: ``ravine compare`` suites and ``ravine tune`` studies.

* :mod:`ravine.bench.problems` — the problems (quadratic, Rosenbrock, the neural-network
  problems, user problems) and what one run computes;
* :mod:`ravine.bench.config` — validated suite and study configurations;
* :mod:`ravine.bench.compare` — running a suite resumably (equal tuning budgets, many seeds);
* :mod:`ravine.bench.tune` — the Optuna plumbing (storages, pruning, best configurations);
* :mod:`ravine.bench.report` and :mod:`ravine.bench.profile` — the report and performance
  profiles.

The commands ``ravine compare`` and ``ravine tune`` are :mod:`ravine.commands.compare` and
:mod:`ravine.commands.tune`.

Example::

    from ravine.bench import load_suite, run_suite

    outcome = run_suite(load_suite("examples/suites/quadratic-claims.yaml"), "runs/claims")
    print(outcome.report)
"""

from ravine.bench.compare import CellFailures, SuiteOutcome, run_suite, run_worker
from ravine.bench.config import ConfigError, SuiteSpec, load_suite
from ravine.bench.problems import Problem, RunResult, build
from ravine.bench.profile import performance_profile, performance_ratios

__all__ = [
    "CellFailures",
    "ConfigError",
    "Problem",
    "RunResult",
    "SuiteOutcome",
    "SuiteSpec",
    "build",
    "load_suite",
    "performance_profile",
    "performance_ratios",
    "run_suite",
    "run_worker",
]
