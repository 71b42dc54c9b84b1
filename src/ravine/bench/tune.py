"""Hyperparameter search with Optuna: the study plumbing behind ``ravine tune`` and the
learning-rate tuning of ``ravine compare``.

Every trial samples the searched hyperparameters (TPE sampler), trains once, and reports the
problem's validation metric after every epoch; a median pruner stops trials whose intermediate
value is worse than the median of earlier trials at the same epoch (``optuna.TrialPruned``
raised from the training callback). The trial's value is the metric after the last epoch; a
diverged run gets the worst possible value (``inf`` when minimizing, ``-inf`` when maximizing),
so the sampler learns to avoid that region rather than ignoring it.

Storage (:func:`open_storage`): by default an SQLite file in the run directory; ``--storage``
takes an RDB URL (``sqlite:///study.db``, ``postgresql://user@host/db``) or ``journal:PATH`` for
an Optuna journal file (``JournalStorage(JournalFileBackend(PATH))``, safe for several processes
on one file system). Several processes running the same command against one storage and study
name share the study: each runs its ``--trials`` trials, and every trial is recorded once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from ravine._checks import format_validation_error
from ravine._interrupts import redeliver_swallowed
from ravine.bench.config import (
    ConfigError,
    OptimizerSpec,
    SearchSpace,
    StudySpec,
)
from ravine.bench.problems import Callback, Problem, RunResult

__all__ = [
    "DEFAULT_LR_SPACE",
    "RDB_SCHEMES",
    "open_storage",
    "worst_value",
    "objective_value",
    "pruning_callback",
    "sample_hyperparameters",
    "problem_objective",
    "make_sampler",
    "ReplayableTPE",
    "make_pruner",
    "finished_trials",
    "fail_stale_trials",
    "optimize",
    "run_trials",
    "best_suite",
    "find_search_spaces",
    "substitute",
    "clean_value",
    "plain_value",
]

DEFAULT_LR_SPACE = SearchSpace(search="log", low=1e-4, high=1.0)
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def open_storage(url: str | None, default: str | Path) -> optuna.storages.BaseStorage:
    """The Optuna storage named by ``url`` (see the module docstring); ``None`` gives an SQLite
    file at ``default``.

    Raises:
        ValueError: for a URL that is neither ``journal:PATH`` nor an RDB URL, or a storage that
            cannot be opened and read (a damaged or foreign file: one line naming it).
    """
    if url is None:
        Path(default).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(default)}"
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        if not path:
            raise ValueError("storage 'journal:PATH' needs a file path after 'journal:'")
        Path(path).parent.mkdir(parents=True, exist_ok=True)

        return _checked(url, path, lambda: _journal_storage(path))
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if "://" not in url or scheme not in RDB_SCHEMES:
        raise ValueError(
            f"storage must be 'journal:PATH' or an RDB URL such as sqlite:///study.db or "
            f"postgresql://user@host/db, got {url!r}"
        )
    path = url.split(":///", 1)[1] if scheme == "sqlite" and ":///" in url else None
    return _checked(url, path, lambda: _rdb_storage(url))


def _journal_storage(path: str) -> optuna.storages.BaseStorage:
    """``JournalStorage(JournalFileBackend(path))``, refusing a file with a line that is not a
    whole JSON record: Optuna skips a torn last line when reading, but appends after it, which
    makes every later read of the file fail."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if Path(path).exists():
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    record = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    raise ValueError(f"line {number} is not a whole journal record")
    return JournalStorage(JournalFileBackend(path))


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, refusing a database that another program wrote: Optuna would add its
    tables to it, and only creates the tables that are missing, so a foreign ``trials`` table
    would fail at the first trial, mid-run."""
    import sqlalchemy
    from optuna.storages._rdb import models  # Optuna's table definitions (no public alias)

    engine = sqlalchemy.create_engine(url)
    try:
        tables = sqlalchemy.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables and "version_info" not in tables:
        raise ValueError(f"it holds another program's tables: {', '.join(tables[:3])}"
                         f"{', ...' if len(tables) > 3 else ''}")
    storage = optuna.storages.RDBStorage(url)
    inspector = sqlalchemy.inspect(storage.engine)
    for table in models.BaseModel.metadata.sorted_tables:
        have = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in have]
        if missing:
            raise ValueError(f"table {table.name!r} lacks the column {missing[0]!r}: not a "
                             "database Optuna wrote")
    return storage


def _checked(url: str, path: str | None,
             open_: Callable[[], optuna.storages.BaseStorage]) -> optuna.storages.BaseStorage:
    """``open_()``, with every study read once, so that a damaged storage fails here, in one
    line naming its file, instead of as a sqlalchemy or JSON traceback in the middle of a run."""
    try:
        storage = open_()
        storage.get_all_studies()
    # Any failure of a third-party storage while it is opened and read means it is unusable:
    # sqlalchemy errors (not a database, a foreign schema), JSON and UTF-8 errors of a journal,
    # Optuna's own StorageInternalError, a refused connection.
    except Exception as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        cause = cause if len(cause) <= 100 else cause[:96] + " ..."
        if path is not None:
            raise ValueError(
                f"storage {url!r}: {path} is not a readable Optuna study ({cause}); move it "
                "aside (or name another file) and rerun; the trials recorded in it run again"
            ) from None
        raise ValueError(f"storage {url!r} cannot be opened ({cause})") from None
    return storage


def worst_value(mode: str) -> float:
    """The worst possible objective value for a metric to minimize or maximize."""
    return math.inf if mode == "min" else -math.inf


def clean_value(value: Any, mode: str) -> float:
    value = float(value) if isinstance(value, (int, float)) else math.nan
    return value if math.isfinite(value) else worst_value(mode)


def objective_value(problem: Problem, result: RunResult) -> float:
    """The trial value of a run: the monitor after its last epoch (worst when diverged)."""
    if result.diverged or not result.history:
        return worst_value(problem.mode)
    return clean_value(result.history[-1].get(problem.monitor), problem.mode)


def pruning_callback(trial: optuna.Trial, problem: Any) -> Callback:
    """A training callback reporting the monitor to ``trial`` and pruning when Optuna says so.

    ``problem`` is anything with ``monitor`` and ``mode`` attributes."""

    def report(epoch: int, record: dict[str, Any]) -> None:
        trial.report(clean_value(record.get(problem.monitor), problem.mode), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    return report


def sample_hyperparameters(
    trial: optuna.Trial, optimizer: OptimizerSpec, default_lr: SearchSpace = DEFAULT_LR_SPACE
) -> tuple[float, dict[str, Any]]:
    """``(lr, other hyperparameters)`` for one trial: searched values sampled, fixed ones kept.

    An optimizer without an ``lr`` is searched over ``default_lr``.
    """
    lr = optimizer.lr if optimizer.lr is not None else default_lr
    lr_value = lr.suggest(trial, "lr") if isinstance(lr, SearchSpace) else float(lr)
    hp = optimizer.fixed()
    for name, space in optimizer.searched().items():
        if name != "lr":
            hp[name] = space.suggest(trial, name)
    return lr_value, hp


def problem_objective(
    problem: Problem,
    optimizer: OptimizerSpec,
    *,
    seed: int,
    pruning: bool,
    default_lr: SearchSpace = DEFAULT_LR_SPACE,
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective training ``problem`` once per trial with ``optimizer``."""

    def objective(trial: optuna.Trial) -> float:
        lr, hp = sample_hyperparameters(trial, optimizer, default_lr)
        callbacks = [pruning_callback(trial, problem)] if pruning else []
        result = problem.run(optimizer.name, lr, hp, seed=seed, callbacks=callbacks)
        trial.set_user_attr("final", {k: float(v) for k, v in result.final.items()})
        trial.set_user_attr("diverged", result.diverged)
        trial.set_user_attr("epochs", len(result.history))
        return objective_value(problem, result)

    return objective


def make_sampler(seed: int | None, trials: int) -> optuna.samplers.BaseSampler:
    """TPE with about half the budget (at most 10 trials) spent on random start-up trials;
    with a ``seed``, a :class:`ReplayableTPE` (an interrupted study resumes exactly)."""
    startup = min(10, max(1, trials // 2))
    if seed is None:
        return optuna.samplers.TPESampler(n_startup_trials=startup)
    return ReplayableTPE(seed, startup)


class ReplayableTPE(optuna.samplers.BaseSampler):
    """TPE whose random stream restarts at each trial from ``seed`` + the number of finished
    (complete or pruned) trials.

    What a trial samples then depends only on the seed and the finished trials before it, not
    on how many processes the study took: a trial interrupted by Ctrl-C or a kill ends FAIL
    (which TPE ignores), and the rerun's next trial draws exactly what the interrupted one
    drew, so an interrupted and resumed study equals an uninterrupted one.
    """

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self._tpe = self._fresh(0)

    def _fresh(self, finished: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=self.seed + finished,
                                          n_startup_trials=self.n_startup_trials)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._tpe = self._fresh(len(finished_trials(study)))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                           param_name: str, param_distribution: Any) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                    state: optuna.trial.TrialState, values: Sequence[float] | None) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


def make_pruner(pruning: bool, epochs: int) -> optuna.pruners.BasePruner:
    """Median pruning once 5 trials have finished, never in the first quarter of the epochs."""
    if not pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(0, epochs // 4))


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's complete and pruned trials."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed process as FAIL; returns how many.

    Only for a study no other process is working on (``ravine compare``'s own studies).
    """
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def run_trials(
    objective: Callable[[optuna.Trial], float],
    *,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    mode: str,
    trials: int,
    sampler_seed: int | None,
    pruning: bool,
    epochs: int,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    alone: bool = False,
) -> optuna.Study:
    """Create or join the study ``study_name`` in ``storage`` and run ``trials`` trials.

    Other processes may add trials to the same study at the same time; each trial is recorded
    once. ``mode`` says whether the objective is minimized (``"min"``) or maximized. ``alone``
    says that no other process works on the study, so that trials left RUNNING by a killed or
    interrupted run are marked FAIL (:func:`fail_stale_trials`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize" if mode == "min" else "maximize",
        sampler=make_sampler(sampler_seed, trials),
        pruner=make_pruner(pruning, epochs),
        load_if_exists=True,
    )
    if alone:
        fail_stale_trials(study)
    optimize(study, objective, trials, callbacks)
    return study


@contextlib.contextmanager
def _interrupts() -> Iterator[list[int]]:
    """Ctrl-C as usual (``KeyboardInterrupt``), also recorded in the yielded list, and one that
    lands in a garbage-collection callback (sqlalchemy's, torch's), which Python would swallow
    ("Exception ignored in ..."), raised again a moment later (:mod:`ravine._interrupts`):
    otherwise the trial would run on as if nothing had happened."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with redeliver_swallowed():
            yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    trials: int,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
) -> None:
    """Run ``trials`` trials of ``objective`` in ``study``, as ``study.optimize`` would, but
    without Optuna's logged traceback when a trial raises.

    A trial that raises ``optuna.TrialPruned`` ends PRUNED; any other exception (Ctrl-C
    included) ends the trial FAIL and propagates, for the command to report in one line. A
    FAIL trial is ignored by the sampler, so a rerun samples what the failed trial sampled
    (:class:`ReplayableTPE`).
    """
    for _ in range(trials):
        trial = None
        try:
            trial = study.ask()
            with _interrupts() as interrupted:
                value = objective(trial)
            if interrupted:
                raise KeyboardInterrupt
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except BaseException as exc:
            if trial is not None:
                try:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                except Exception:
                    # A Ctrl-C inside the storage's own commit can leave its session unusable
                    # (sqlite: "An exception is raised during the commit"): the Ctrl-C is
                    # still what the user must see. The trial stays RUNNING, like a killed
                    # run's: the sampler counts finished trials only, and a rerun that works
                    # alone on the study marks it FAIL (fail_stale_trials).
                    if not isinstance(exc, KeyboardInterrupt):
                        raise
            raise
        else:
            frozen = study.tell(trial, value)
        for callback in callbacks:
            callback(study, frozen)


def best_suite(spec: StudySpec, study: optuna.Study, *, name: str, seeds: int = 5) -> dict:
    """A ``ravine compare`` suite running the best trial's configuration on ``seeds`` seeds.

    Raises:
        ValueError: when no trial of the study has completed.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no completed trial yet")
    best = study.best_trial
    opt = spec.optimizer
    entry: dict[str, Any] = {"name": opt.name}
    if opt.label != opt.name:
        entry["label"] = opt.label
    entry["lr"] = float(best.params["lr"]) if "lr" in best.params else opt.lr
    entry.update({k: plain_value(v) for k, v in opt.fixed().items()})
    entry.update({k: plain_value(v) for k, v in best.params.items() if k != "lr"})
    problem = spec.problem.model_dump(exclude_none=True, exclude_defaults=True)
    problem = {"kind": spec.problem.kind, **problem}
    return {
        "name": name,
        "seeds": seeds,
        "problems": [problem],
        "optimizers": [entry],
        "tuning": {"method": "none"},
    }


# --------------------------------------------------------------------------- train configs


def find_search_spaces(raw: dict[str, Any], prefix: str = "") -> dict[str, SearchSpace]:
    """The search spaces in a ``ravine train`` config, by dotted key (``optimizer.lr``).

    A search space is a mapping with a ``search`` key anywhere a value goes.

    Raises:
        ConfigError: for a malformed search space (one line naming its key).
    """
    spaces: dict[str, SearchSpace] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "search" in value:
            try:
                spaces[path] = SearchSpace.model_validate(value)
            except ValidationError as exc:
                raise ConfigError(f"{path}: {format_validation_error(exc, SearchSpace)}") from None
        elif isinstance(value, dict):
            spaces.update(find_search_spaces(value, f"{path}."))
    return spaces


def substitute(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with the value at every dotted key of ``values`` replaced."""
    out = copy.deepcopy(raw)
    for path, value in values.items():
        node = out
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return out


def plain_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
