"""``ravine compare``: run a suite (problems × optimizers × seeds), resumably, then report.

Output directory layout::

    OUT/suite.yaml                            the validated suite
    OUT/tuning/journal.log                    Optuna studies of the lr tuning (journal file)
    OUT/tuning/<problem>/<optimizer>.json     every tuning trial and the chosen configuration
    OUT/runs/<problem>/<optimizer>/seed-<k>/  one final run: result.json, metrics.jsonl,
                                              trajectory.json (2-D problems)
    OUT/report.md, OUT/summary.json, OUT/plots/*.png

Learning rates are chosen first, with the same budget for every optimizer (see
:class:`~ravine.bench.config.TuningSpec`), then every optimizer runs on every evaluation seed.

Resuming: a final run is written into a temporary directory that is renamed into place when the
run has finished, so a run directory exists only for finished runs; its ``result.json`` carries a
digest of everything the run depends on (problem, optimizer, chosen hyperparameters, seed), and a
rerun of the suite skips the runs whose digest matches. Tuning trials live in an Optuna journal
file, so an interrupted study continues where it stopped (trials cut short by the interruption are
marked failed and redone). Changing part of a suite reruns exactly the affected parts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ravine._io import json_ready, write_json_atomic, write_yaml_atomic
from ravine.bench import report, tune
from ravine.bench.config import OptimizerSpec, SearchSpace, SuiteSpec
from ravine.bench.problems import DatasetProblem, Problem, RunResult, build
from ravine.bench.report import safe_name

__all__ = ["Chosen", "SuiteOutcome", "run_suite", "run_dir"]


@dataclass
class Chosen:
    """The hyperparameters an optimizer runs a problem with, and how they were chosen."""

    lr: float
    hp: dict[str, Any]
    how: str


@dataclass
class SuiteOutcome:
    """What :func:`run_suite` did: runs executed now, runs found finished, the report's path."""

    out_dir: Path
    executed: int = 0
    skipped: int = 0
    trials_run: int = 0
    report: Path | None = None
    chosen: dict[tuple[str, str], Chosen] = field(default_factory=dict)


def run_dir(out_dir: Path, problem: str, optimizer: str, seed: int) -> Path:
    """Directory of the final run of ``optimizer`` on ``problem`` with ``seed``."""
    return out_dir / "runs" / safe_name(problem) / safe_name(optimizer) / f"seed-{seed}"


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Progress:
    """One rich progress bar over all trials and runs; silent off a terminal or when quiet."""

    def __init__(self, total: int, quiet: bool | None) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = not quiet if quiet is not None else self.console.is_terminal
        self.bar: Any = None
        self.total = total

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.bar = Progress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("compare", total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def done(self, text: str | None = None) -> None:
        if self.bar is not None:
            if text:
                self.bar.console.print(text)
            self.bar.advance(self.task)


def _needs_tuning(opt: OptimizerSpec) -> bool:
    return not isinstance(opt.lr, float) or bool(opt.searched())


def _lr_space(suite: SuiteSpec, opt: OptimizerSpec) -> SearchSpace:
    if isinstance(opt.lr, SearchSpace):
        return opt.lr
    return SearchSpace(search="log", low=suite.tuning.low, high=suite.tuning.high)


def _budget(suite: SuiteSpec) -> int:
    return len(suite.tuning.grid or []) if suite.tuning.method == "grid" else suite.tuning.trials


@contextmanager
def _run_dir_transaction(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final``, renamed to ``final`` when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_run(directory: Path, info: dict[str, Any], result: RunResult) -> None:
    with open(directory / "metrics.jsonl", "w") as handle:
        for record in result.history:
            handle.write(json.dumps(json_ready({"kind": "epoch", **record})) + "\n")
    if result.trajectory is not None:
        write_json_atomic(result.trajectory, directory / "trajectory.json")
    write_json_atomic(
        {**info, "final": result.final, "diverged": result.diverged,
         "wall_time": result.wall_time, "epochs_run": len(result.history)},
        directory / "result.json",
    )


def _finished(directory: Path, key: str) -> bool:
    try:
        return json.loads((directory / "result.json").read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def _tune(
    suite: SuiteSpec,
    problem: Problem,
    problem_spec: Any,
    opt: OptimizerSpec,
    storage: optuna.storages.BaseStorage,
    out_dir: Path,
    progress: _Progress,
) -> tuple[Chosen, int]:
    """Tune ``opt`` on ``problem`` (resuming its study); returns the choice and trials run."""
    tuning = suite.tuning
    space = _lr_space(suite, opt)
    key = _digest({"problem": problem_spec.model_dump(), "optimizer": opt.model_dump(),
                   "tuning": tuning.model_dump(), "space": space.model_dump()})
    name = f"{problem.label}/{opt.label}/{key}"
    existing = [s.study_name for s in optuna.study.get_all_study_summaries(storage)]
    grid = tuning.method == "grid"
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="minimize" if problem.mode == "min" else "maximize",
        load_if_exists=True,
    )
    if name in existing:
        tune.fail_stale_trials(study)
    done = tune.finished_trials(study)
    study.sampler = tune.make_sampler(tuning.seed, tuning.trials)
    study.pruner = tune.make_pruner(tuning.pruning and not grid, problem.epochs)
    if grid:
        # Grid points are enqueued (a categorical lr makes the sampler return them verbatim);
        # points an interrupted invocation enqueued but never started are still waiting.
        space = SearchSpace(search="categorical", choices=list(tuning.grid or []))
        tried = {t.params.get("lr") for t in done}
        waiting = [t.system_attrs.get("fixed_params", {}).get("lr") for t in
                   study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
        for lr in space.choices or []:
            if lr not in tried and lr not in waiting:
                study.enqueue_trial({"lr": lr})
        todo = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    else:
        todo = list(range(max(0, tuning.trials - len(done))))
    objective = tune.problem_objective(
        problem, opt, seed=tuning.seed, pruning=tuning.pruning and not grid, default_lr=space
    )

    def step(trial: optuna.Trial) -> float:
        progress.start(f"tune {problem.label} / {opt.label} trial {trial.number}")
        try:
            return objective(trial)
        finally:
            progress.done()

    if todo:
        tune.optimize(study, step, len(todo))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"no tuning trial of {opt.label} on {problem.label} completed")
    best = study.best_trial
    hp = {**opt.fixed(), **{k: v for k, v in best.params.items() if k != "lr"}}
    lr = float(best.params["lr"]) if "lr" in best.params else float(opt.lr)  # type: ignore[arg-type]
    how = (f"grid of {len(tuning.grid or [])}" if grid
           else f"TPE, {tuning.trials} trials") + f", seed {tuning.seed}"
    chosen = Chosen(lr=lr, hp=hp, how=how)
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value,
            "last_intermediate": (t.intermediate_values[max(t.intermediate_values)]
                                  if t.intermediate_values else None),
            "diverged": t.user_attrs.get("diverged", False),
        }
        for t in study.get_trials(deepcopy=False, states=tune.FINISHED)
    ]
    write_json_atomic(
        {"problem": problem.label, "optimizer": opt.label, "method": tuning.method,
         "study": name, "monitor": problem.monitor, "mode": problem.mode,
         "chosen": {"lr": lr, "hp": hp, "how": how, "trial": best.number}, "trials": trials},
        out_dir / "tuning" / safe_name(problem.label) / f"{safe_name(opt.label)}.json",
    )
    return chosen, len(todo)


def run_suite(
    suite: SuiteSpec,
    out_dir: str | Path,
    *,
    quiet: bool | None = None,
    on_run: Callable[[str, str, int], None] | None = None,
) -> SuiteOutcome:
    """Run (or resume) ``suite`` into ``out_dir`` and write its report.

    Args:
        suite: the validated suite.
        out_dir: output directory (created; reused when it holds an earlier, interrupted run).
        quiet: ``True`` hides the progress bar; ``None`` shows it only on a terminal.
        on_run: called as ``on_run(problem, optimizer, seed)`` before each final run that is
            actually executed.

    Returns:
        A :class:`SuiteOutcome` with the counts of executed and skipped runs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_yaml_atomic(suite.model_dump(mode="json", exclude_none=True), out_dir / "suite.yaml")
    for kind, labels in (("problem", [p.label for p in suite.problems]),
                         ("optimizer", [o.label for o in suite.optimizers])):
        if len({safe_name(x) for x in labels}) != len(labels):
            raise ValueError(f"{kind} names {labels} collide once made safe for file names")
    outcome = SuiteOutcome(out_dir=out_dir)
    problems = {spec.label: (spec, build(spec)) for spec in suite.problems}
    for label, (_, problem) in problems.items():
        if isinstance(problem, DatasetProblem):
            try:
                problem.build_model()  # a bad data or model spec fails now, not hours later
            except (ValueError, OSError) as exc:
                raise ValueError(f"problem {label!r}: {exc}") from None
    seeds = suite.seed_list
    tuned = [o for o in suite.optimizers if _needs_tuning(o)]
    total = len(problems) * (len(tuned) * _budget(suite) + len(suite.optimizers) * len(seeds))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = tune.open_storage(f"journal:{out_dir / 'tuning' / 'journal.log'}", out_dir)

    with _Progress(total, quiet) as progress:
        for label, (spec, problem) in problems.items():
            for opt in suite.optimizers:
                if _needs_tuning(opt):
                    chosen, ran = _tune(suite, problem, spec, opt, storage, out_dir, progress)
                    outcome.trials_run += ran
                    for _ in range(_budget(suite) - ran):
                        progress.done()
                else:
                    chosen = Chosen(lr=float(opt.lr), hp=opt.fixed(), how="fixed")  # type: ignore[arg-type]
                outcome.chosen[(label, opt.label)] = chosen
                for seed in seeds:
                    info = {"problem": label, "optimizer": opt.label, "name": opt.name,
                            "lr": chosen.lr, "hp": chosen.hp, "how": chosen.how, "seed": seed}
                    key = _digest({"spec": spec.model_dump(), **info})
                    directory = run_dir(out_dir, label, opt.label, seed)
                    if _finished(directory, key):
                        outcome.skipped += 1
                        progress.done()
                        continue
                    progress.start(f"{label} / {opt.label} / seed {seed}")
                    if on_run is not None:
                        on_run(label, opt.label, seed)
                    result = problem.run(opt.name, chosen.lr, chosen.hp, seed=seed)
                    with _run_dir_transaction(directory) as tmp:
                        _write_run(tmp, {**info, "key": key, "monitor": problem.monitor,
                                         "mode": problem.mode, "target": problem.target,
                                         "final_metric": problem.final_metric}, result)
                    outcome.executed += 1
                    final = result.final.get(problem.final_metric, math.nan)
                    progress.done(f"{label} / {opt.label} / seed {seed}: "
                                  f"{problem.final_metric} {final:.4g} ({result.wall_time:.1f} s)")
        outcome.report = report.write_report(suite, out_dir, problems={
            label: problem for label, (_, problem) in problems.items()})
    return outcome
