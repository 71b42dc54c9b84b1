"""``ravine compare``: run a suite (problems × optimizers × seeds), resumably, then report.

Output directory layout::

    OUT/suite.yaml                            the validated suite
    OUT/tuning/journal.log                    Optuna studies of the lr tuning (journal file)
    OUT/tuning/<problem>/<optimizer>.json     every tuning trial and the chosen configuration
    OUT/runs/<problem>/<optimizer>/seed-<k>/  one final run: result.json, metrics.jsonl,
                                              trajectory.json (2-D problems)
    OUT/claims/                               worker mode only: claim and done files of cells
    OUT/report.md, OUT/summary.json, OUT/plots/*.png

Learning rates are chosen first, with the same budget for every optimizer (see
:class:`~ravine.bench.config.TuningSpec`), then every optimizer runs on every evaluation seed.
The unit of work is a *cell*, one optimizer on one problem: its tuning study, then its final
runs, one per seed.

Resuming: a final run is written into a temporary directory that is renamed into place when the
run has finished, so a run directory exists only for finished runs; its ``result.json`` carries a
digest of everything the run depends on (problem, optimizer, chosen hyperparameters, seed), and a
rerun of the suite skips the runs whose digest matches. Tuning trials live in an Optuna journal
file, so an interrupted study continues where it stopped (trials cut short by the interruption are
marked failed and redone). Changing part of a suite reruns exactly the affected parts.

Parallel runs (``jobs > 1``): cells are tuned concurrently, each in one worker process, and the
final runs of a tuned cell are spread over the workers one seed each. The trials of one study are
never run concurrently: TPE would then suggest from whichever trials happened to have finished,
so the suggestions (and the chosen lr) would depend on timing. Run sequentially, a study is
reproduced exactly by its sampler (:class:`~ravine.bench.tune.ReplayableTPE`: trial k draws from
the tuning seed + the number of finished trials, and an interrupted trial ends FAIL and is
redrawn), so every cell, and every final run, computes the same numbers whether the suite runs in
one process or in many, in one invocation or in several. Workers are started with ``spawn`` (a
forked torch thread pool can hang) and run one torch thread each (:mod:`ravine._workers`, which
also keeps a Ctrl-C quiet in them); ``jobs=1`` runs in the calling
process, also with one torch thread, so that no result depends on ``jobs``.

Worker mode (:func:`run_worker`, ``ravine compare --worker``): several processes, on one machine
or on several machines sharing the output folder (and, optionally, an RDB storage for the
studies), share one suite. A worker *claims* a cell by creating the file
``OUT/claims/<cell>-<digest>.claim.<g>`` with ``O_CREAT | O_EXCL`` (exactly one creator wins),
runs it, and writes ``OUT/claims/<cell>.done`` holding the cell's digest. While it holds a claim,
a thread refreshes the claim file's modification time every ``timeout / 4`` seconds; a claim not
refreshed for ``timeout`` seconds belongs to a dead worker, and the cell is reclaimed by creating
generation ``g + 1`` (again with ``O_EXCL``, so one reclaimer wins). The reclaimer marks the dead
worker's unfinished trial FAIL and redoes it, so the study's numbers are unchanged. The timeout
must exceed any pause of a living worker (the default is 10 minutes), and the machines' clocks
must agree to well within it. When every cell is done, one worker claims the report the same way
and writes it; the others wait for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from ravine._io import json_ready, write_atomic, write_json_atomic, write_yaml_atomic
from ravine._workers import busy, sigint_ignored, spawn_pool, start_worker, stop_workers
from ravine.bench import report, tune
from ravine.bench.config import OptimizerSpec, SearchSpace, SuiteSpec
from ravine.bench.problems import DatasetProblem, Problem, RunResult, build
from ravine.bench.report import safe_name

__all__ = ["CellFailures", "Chosen", "SuiteOutcome", "run_suite", "run_worker", "run_dir"]

DEFAULT_CLAIM_TIMEOUT = 600.0


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
    cells_run: int = 0
    report: Path | None = None
    chosen: dict[tuple[str, str], Chosen] = field(default_factory=dict)


class CellFailures(RuntimeError):
    """Cells that failed (the others finished); ``lines`` holds one line per failed cell."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def run_dir(out_dir: Path, problem: str, optimizer: str, seed: int) -> Path:
    """Directory of the final run of ``optimizer`` on ``problem`` with ``seed``."""
    return out_dir / "runs" / safe_name(problem) / safe_name(optimizer) / f"seed-{seed}"


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Progress:
    """One rich progress bar over the suite's cells; silent off a terminal or when quiet."""

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
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("cells", total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)


def _needs_tuning(opt: OptimizerSpec) -> bool:
    return not isinstance(opt.lr, float) or bool(opt.searched())


def _lr_space(suite: SuiteSpec, opt: OptimizerSpec) -> SearchSpace:
    if isinstance(opt.lr, SearchSpace):
        return opt.lr
    return SearchSpace(search="log", low=suite.tuning.low, high=suite.tuning.high)


@contextmanager
def _run_dir_transaction(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final``, renamed to ``final`` when the block succeeds.

    Temporary directories of ``final`` left by a killed process are removed first: one run is
    only ever executed by one process at a time (a cell has one owner).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
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
        {
            **info,
            "final": result.final,
            "diverged": result.diverged,
            "wall_time": result.wall_time,
            "epochs_run": len(result.history),
        },
        directory / "result.json",
    )


def _finished(directory: Path, key: str) -> bool:
    try:
        return json.loads((directory / "result.json").read_text()).get("key") == key
    except (OSError, ValueError):
        return False


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """One torch thread inside the block (see the module docstring: results must not depend
    on how many processes share the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class _Cell:
    """One optimizer on one problem, by their positions in the suite."""

    p: int
    o: int


class _Context:
    """What running cells needs, built once per process: the suite, its problems, the storage."""

    def __init__(self, suite: SuiteSpec, out_dir: Path, storage: str | None) -> None:
        self.suite, self.out_dir = suite, out_dir
        self.storage_url = storage or f"journal:{out_dir / 'tuning' / 'journal.log'}"
        self._problems: dict[int, Problem] = {}
        self._storage: optuna.storages.BaseStorage | None = None

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            self._storage = tune.open_storage(self.storage_url, self.out_dir / "tuning")
        return self._storage

    def problem(self, cell: _Cell) -> Problem:
        if cell.p not in self._problems:
            self._problems[cell.p] = build(self.suite.problems[cell.p])
        return self._problems[cell.p]

    def name(self, cell: _Cell) -> str:
        return f"{self.suite.problems[cell.p].label} / {self.suite.optimizers[cell.o].label}"

    def cells(self) -> list[_Cell]:
        return [
            _Cell(p, o)
            for p in range(len(self.suite.problems))
            for o in range(len(self.suite.optimizers))
        ]

    def key(self, cell: _Cell) -> str:
        """Digest of everything a cell's results depend on."""
        return _digest(
            {
                "problem": self.suite.problems[cell.p].model_dump(),
                "optimizer": self.suite.optimizers[cell.o].model_dump(),
                "tuning": self.suite.tuning.model_dump(),
                "seeds": self.suite.seed_list,
            }
        )


def _tune(ctx: _Context, cell: _Cell, note: Callable[[str], None]) -> tuple[Chosen, int]:
    """Tune the cell's optimizer on its problem (resuming its study); returns the choice and
    the number of trials run now. ``note`` hears what is running."""
    suite, tuning = ctx.suite, ctx.suite.tuning
    problem, problem_spec = ctx.problem(cell), suite.problems[cell.p]
    opt = suite.optimizers[cell.o]
    space = _lr_space(suite, opt)
    key = _digest(
        {
            "problem": problem_spec.model_dump(),
            "optimizer": opt.model_dump(),
            "tuning": tuning.model_dump(),
            "space": space.model_dump(),
        }
    )
    name = f"{problem.label}/{opt.label}/{key}"
    storage = ctx.storage
    existing = [s.study_name for s in optuna.study.get_all_study_summaries(storage)]
    grid = tuning.method == "grid"
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="minimize" if problem.mode == "min" else "maximize",
        load_if_exists=True,
    )
    if name in existing:
        # the study has one owner (this process), so a RUNNING trial is a killed run's
        tune.fail_stale_trials(study)
    done = tune.finished_trials(study)
    study.sampler = tune.make_sampler(tuning.seed, tuning.trials)
    study.pruner = tune.make_pruner(tuning.pruning and not grid, problem.epochs)
    if grid:
        # Grid points are enqueued (a categorical lr makes the sampler return them verbatim);
        # points an interrupted invocation enqueued but never started are still waiting.
        space = SearchSpace(search="categorical", choices=list(tuning.grid or []))
        tried = {t.params.get("lr") for t in done}
        waiting = [
            t.system_attrs.get("fixed_params", {}).get("lr")
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        ]
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
        note(f"tune {problem.label} / {opt.label} trial {trial.number}")
        return objective(trial)

    if todo:
        tune.optimize(study, step, len(todo))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"no tuning trial of {opt.label} on {problem.label} completed")
    best = study.best_trial
    hp = {**opt.fixed(), **{k: v for k, v in best.params.items() if k != "lr"}}
    lr = float(best.params["lr"]) if "lr" in best.params else float(opt.lr)  # type: ignore[arg-type]
    how = (
        f"grid of {len(tuning.grid or [])}" if grid else f"TPE, {tuning.trials} trials"
    ) + f", seed {tuning.seed}"
    chosen = Chosen(lr=lr, hp=hp, how=how)
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value,
            "last_intermediate": (
                t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
            ),
            "diverged": t.user_attrs.get("diverged", False),
        }
        for t in study.get_trials(deepcopy=False, states=tune.FINISHED)
    ]
    write_json_atomic(
        {
            "problem": problem.label,
            "optimizer": opt.label,
            "method": tuning.method,
            "study": name,
            "monitor": problem.monitor,
            "mode": problem.mode,
            "chosen": {"lr": lr, "hp": hp, "how": how, "trial": best.number},
            "trials": trials,
        },
        ctx.out_dir / "tuning" / safe_name(problem.label) / f"{safe_name(opt.label)}.json",
    )
    return chosen, len(todo)


def _choose(ctx: _Context, cell: _Cell, note: Callable[[str], None]) -> tuple[Chosen, int]:
    """The cell's hyperparameters: tuned, or fixed by the suite (no trials)."""
    opt = ctx.suite.optimizers[cell.o]
    if _needs_tuning(opt):
        return _tune(ctx, cell, note)
    return Chosen(lr=float(opt.lr), hp=opt.fixed(), how="fixed"), 0  # type: ignore[arg-type]


def _final_run(
    ctx: _Context,
    cell: _Cell,
    chosen: Chosen,
    seed: int,
    on_run: Callable[[str, str, int], None] | None = None,
) -> str | None:
    """The final run of a cell on ``seed`` unless it finished earlier; returns a line saying
    what it measured, or ``None`` when it was skipped."""
    spec, opt = ctx.suite.problems[cell.p], ctx.suite.optimizers[cell.o]
    problem = ctx.problem(cell)
    info = {
        "problem": spec.label,
        "optimizer": opt.label,
        "name": opt.name,
        "lr": chosen.lr,
        "hp": chosen.hp,
        "how": chosen.how,
        "seed": seed,
    }
    key = _digest({"spec": spec.model_dump(), **info})
    directory = run_dir(ctx.out_dir, spec.label, opt.label, seed)
    if _finished(directory, key):
        return None
    if on_run is not None:
        on_run(spec.label, opt.label, seed)
    result = problem.run(opt.name, chosen.lr, chosen.hp, seed=seed)
    with _run_dir_transaction(directory) as tmp:
        _write_run(
            tmp,
            {
                **info,
                "key": key,
                "monitor": problem.monitor,
                "mode": problem.mode,
                "target": problem.target,
                "final_metric": problem.final_metric,
            },
            result,
        )
    final = result.final.get(problem.final_metric, math.nan)
    return (
        f"{spec.label} / {opt.label} / seed {seed}: "
        f"{problem.final_metric} {final:.4g} ({result.wall_time:.1f} s)"
    )


def _run_cell(
    ctx: _Context,
    cell: _Cell,
    outcome: SuiteOutcome,
    progress: _Progress,
    on_run: Callable[[str, str, int], None] | None,
) -> None:
    """Tune a cell and run its seeds in this process, counting into ``outcome``."""
    chosen, ran = _choose(ctx, cell, progress.start)
    outcome.trials_run += ran
    outcome.chosen[(ctx.suite.problems[cell.p].label, ctx.suite.optimizers[cell.o].label)] = chosen
    for seed in ctx.suite.seed_list:
        progress.start(f"{ctx.name(cell)} / seed {seed}")
        line = _final_run(ctx, cell, chosen, seed, on_run)
        if line is None:
            outcome.skipped += 1
        else:
            outcome.executed += 1
            progress.say(line)
    outcome.cells_run += 1


# ------------------------------------------------------------------------ worker processes

_WORKER: dict[str, Any] = {"ctx": None}


def _init_worker(suite: SuiteSpec, out_dir: str, storage: str | None) -> None:
    start_worker()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _WORKER["ctx"] = _Context(suite, Path(out_dir), storage)


def _task(kind: str, cell: _Cell, *args: Any) -> tuple[str, Any]:
    """One unit of work in a worker: ``("tune", cell)`` or ``("run", cell, chosen, seed)``.

    A Ctrl-C stops it once (a trial ends FAIL, a run directory is not written). Returns
    ``(kind, result)``, or ``("error", line)`` for a failure (so that no exception has to
    survive pickling)."""
    ctx: _Context = _WORKER["ctx"]
    with busy():
        try:
            if kind == "tune":
                return kind, _choose(ctx, cell, lambda text: None)
            return kind, _final_run(ctx, cell, *args)
        except Exception as exc:
            return "error", f"{type(exc).__name__}: {_one_line(exc)}"


def _run_pool(ctx: _Context, jobs: int, outcome: SuiteOutcome, progress: _Progress) -> list[str]:
    """Run every cell with ``jobs`` worker processes; returns one line per failed cell."""
    seeds = ctx.suite.seed_list
    left = {cell: len(seeds) for cell in ctx.cells()}
    chosen: dict[_Cell, Chosen] = {}
    failures: dict[_Cell, str] = {}
    first: list[tuple[Any, ...]] = []
    for cell in left:
        opt = ctx.suite.optimizers[cell.o]
        if _needs_tuning(opt):
            first.append(("tune", cell))
        else:
            chosen[cell] = _choose(ctx, cell, progress.start)[0]
            first += [("run", cell, chosen[cell], seed) for seed in seeds]
    pool = spawn_pool(max(1, min(jobs, len(first))), _init_worker,
                      (ctx.suite, str(ctx.out_dir), ctx.storage_url))
    pending: dict[Future, _Cell] = {}
    finished: set[_Cell] = set()

    def settle(cell: _Cell) -> None:
        if cell in finished or any(c == cell for c in pending.values()):
            return
        if cell in failures or left[cell] == 0:
            finished.add(cell)
            outcome.cells_run += cell not in failures
            progress.advance()

    try:
        # every worker is spawned by one of these submissions (at most one per task, up to jobs)
        with sigint_ignored():
            for kind, cell, *args in first:
                pending[pool.submit(_task, kind, cell, *args)] = cell
        while pending:
            progress.start(f"{len(set(pending.values()))} cells running")
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                cell = pending.pop(future)
                kind, result = future.result()
                if kind == "error":
                    if cell not in failures:
                        failures[cell] = f"cell {ctx.name(cell)} failed: {result}"
                        progress.say(failures[cell])
                elif kind == "tune":
                    chosen[cell], ran = result
                    outcome.trials_run += ran
                    for seed in seeds:
                        pending[pool.submit(_task, "run", cell, chosen[cell], seed)] = cell
                else:
                    left[cell] -= 1
                    if result is None:
                        outcome.skipped += 1
                    else:
                        outcome.executed += 1
                        progress.say(result)
                settle(cell)
    except BaseException:
        # what a killed worker leaves, a trial left RUNNING or a temporary run directory, the
        # next invocation fails or removes
        stop_workers(pool, pending)
        raise
    pool.shutdown(wait=True)
    for cell in ctx.cells():
        if cell in chosen:
            outcome.chosen[
                (ctx.suite.problems[cell.p].label, ctx.suite.optimizers[cell.o].label)
            ] = chosen[cell]
    return [failures[c] for c in ctx.cells() if c in failures]


def _prepare(suite: SuiteSpec, out_dir: Path, storage: str | None) -> _Context:
    """Check the suite (names, data, models) and write ``suite.yaml``; a bad data or model spec
    fails now, not hours later."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, labels in (
        ("problem", [p.label for p in suite.problems]),
        ("optimizer", [o.label for o in suite.optimizers]),
    ):
        if len({safe_name(x) for x in labels}) != len(labels):
            raise ValueError(f"{kind} names {labels} collide once made safe for file names")
    ctx = _Context(suite, out_dir, storage)
    for p, spec in enumerate(suite.problems):
        problem = ctx.problem(_Cell(p, 0))
        if isinstance(problem, DatasetProblem):
            try:
                problem.build_model()
            except (ValueError, OSError) as exc:
                raise ValueError(f"problem {spec.label!r}: {exc}") from None
    write_yaml_atomic(suite.model_dump(mode="json", exclude_none=True), out_dir / "suite.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx.storage  # noqa: B018 -- a bad storage URL or a damaged storage fails now
    return ctx


def _write_report(ctx: _Context) -> Path:
    problems = {spec.label: ctx.problem(_Cell(p, 0)) for p, spec in enumerate(ctx.suite.problems)}
    return report.write_report(ctx.suite, ctx.out_dir, problems=problems)


def run_suite(
    suite: SuiteSpec,
    out_dir: str | Path,
    *,
    jobs: int = 1,
    storage: str | None = None,
    quiet: bool | None = None,
    on_run: Callable[[str, str, int], None] | None = None,
) -> SuiteOutcome:
    """Run (or resume) ``suite`` into ``out_dir`` and write its report.

    Args:
        suite: the validated suite.
        out_dir: output directory (created; reused when it holds an earlier, interrupted run).
        jobs: worker processes (see the module docstring); the results do not depend on it.
        storage: Optuna storage of the tuning studies (``journal:PATH`` or an RDB URL, see
            :func:`ravine.bench.tune.open_storage`); default ``journal:OUT/tuning/journal.log``.
        quiet: ``True`` hides the progress bar; ``None`` shows it only on a terminal.
        on_run: called as ``on_run(problem, optimizer, seed)`` before each final run that is
            actually executed (``jobs=1`` only).

    Returns:
        A :class:`SuiteOutcome` with the counts of executed and skipped runs.

    Raises:
        CellFailures: when cells failed (after the others have finished; no report).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs > 1 and on_run is not None:
        raise ValueError("on_run needs jobs=1 (runs in worker processes call nothing here)")
    ctx = _prepare(suite, Path(out_dir), storage)
    outcome = SuiteOutcome(out_dir=ctx.out_dir)
    failures: list[str] = []
    with _Progress(len(ctx.cells()), quiet) as progress, _one_torch_thread():
        if jobs == 1:
            for cell in ctx.cells():
                try:
                    _run_cell(ctx, cell, outcome, progress, on_run)
                except Exception as exc:
                    failures.append(
                        f"cell {ctx.name(cell)} failed: {type(exc).__name__}: {_one_line(exc)}"
                    )
                    progress.say(failures[-1])
                progress.advance()
        else:
            failures = _run_pool(ctx, jobs, outcome, progress)
        if failures:
            raise CellFailures(failures)
        outcome.report = _write_report(ctx)
    return outcome


# ------------------------------------------------------------------------ worker mode


class _Claim:
    """A claim file held by this process, its modification time refreshed by a thread."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(timeout / 4,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


class _Claims:
    """Claim and done files of the cells under ``OUT/claims`` (see the module docstring)."""

    def __init__(self, folder: Path, timeout: float, owner: str) -> None:
        self.folder, self.timeout, self.owner = folder, timeout, owner
        folder.mkdir(parents=True, exist_ok=True)

    def done(self, name: str, key: str) -> bool:
        try:
            return (self.folder / f"{name}.done").read_text() == key
        except OSError:
            return False

    def mark_done(self, name: str, key: str) -> None:
        write_atomic(self.folder / f"{name}.done", lambda handle: handle.write(key))

    def acquire(self, name: str, key: str) -> _Claim | None:
        """Claim ``name`` (at its digest ``key``), or ``None`` when a living worker holds it."""
        stem = f"{name}-{key}.claim."
        generations = sorted(
            int(p.name.removeprefix(stem))
            for p in self.folder.glob(f"{stem}*")
            if p.name.removeprefix(stem).isdigit()
        )
        generation = 0
        if generations:
            last = self.folder / f"{stem}{generations[-1]}"
            try:
                age = time.time() - last.stat().st_mtime
            except FileNotFoundError:  # released just now: the owner finished or failed
                age = math.inf
            if age < self.timeout:
                return None
            generation = generations[-1] + 1
        path = self.folder / f"{stem}{generation}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{self.owner}\n")
        return _Claim(path, self.timeout)


def run_worker(
    suite: SuiteSpec,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
    poll: float = 2.0,
    quiet: bool | None = None,
) -> SuiteOutcome:
    """Work on ``suite`` in ``out_dir`` together with other workers until it is complete.

    Each cell is claimed, run and marked done by exactly one worker (see the module docstring
    for the claim files and the reclaiming of a dead worker's cells after ``claim_timeout``
    seconds); when every cell is done, one worker writes the report and every worker returns.

    Args:
        suite: the validated suite (the same for every worker).
        out_dir: the output folder every worker shares.
        storage: Optuna storage of the tuning studies (default: the journal file in
            ``out_dir``, which suits one machine or a shared file system).
        claim_timeout: seconds after which an unrefreshed claim is taken over.
        poll: seconds between two looks for work while other workers hold every open cell.
        quiet: ``True`` hides the progress bar; ``None`` shows it only on a terminal.

    Returns:
        A :class:`SuiteOutcome` counting what this worker did.

    Raises:
        CellFailures: when cells this worker ran failed (it stops after trying every cell).
    """
    if not claim_timeout > 0:
        raise ValueError(f"claim_timeout must be > 0, got {claim_timeout}")
    ctx = _prepare(suite, Path(out_dir), storage)
    claims = _Claims(
        ctx.out_dir / "claims", claim_timeout, f"{socket.gethostname()} pid {os.getpid()}"
    )
    outcome = SuiteOutcome(out_dir=ctx.out_dir)
    cells = {
        cell: (
            f"{safe_name(suite.problems[cell.p].label)}--"
            f"{safe_name(suite.optimizers[cell.o].label)}",
            ctx.key(cell),
        )
        for cell in ctx.cells()
    }
    failures: dict[_Cell, str] = {}
    with _Progress(len(cells), quiet) as progress, _one_torch_thread():
        counted: set[_Cell] = set()
        while True:
            open_cells = []
            for cell, (name, key) in cells.items():
                if claims.done(name, key) or cell in failures:
                    if cell not in counted:
                        counted.add(cell)
                        progress.advance()
                else:
                    open_cells.append(cell)
            if not open_cells:
                break
            worked = False
            for cell in open_cells:
                name, key = cells[cell]
                claim = claims.acquire(name, key)
                if claim is None:
                    continue
                worked = True
                try:
                    if not claims.done(name, key):  # finished between the look and the claim
                        _run_cell(ctx, cell, outcome, progress, None)
                        claims.mark_done(name, key)
                except Exception as exc:
                    failures[cell] = (
                        f"cell {ctx.name(cell)} failed: {type(exc).__name__}: {_one_line(exc)}"
                    )
                    progress.say(failures[cell])
                finally:
                    claim.release()
            if not worked:
                progress.start("waiting for cells claimed by other workers")
                time.sleep(poll)
        if failures:
            raise CellFailures([failures[c] for c in cells if c in failures])
        key = _digest(
            {"suite": suite.model_dump(mode="json"), "cells": sorted(v[1] for v in cells.values())}
        )
        while not claims.done("report", key):
            claim = claims.acquire("report", key)
            if claim is None:
                progress.start("waiting for the report")
                time.sleep(poll)
                continue
            try:
                if not claims.done("report", key):
                    _write_report(ctx)
                    claims.mark_done("report", key)
            finally:
                claim.release()
    outcome.report = ctx.out_dir / "report.md"
    return outcome
