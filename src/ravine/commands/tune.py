"""``ravine tune CONFIG.yaml``: an Optuna study over the values a config marks searchable.

``ravine tune CONFIG.yaml [--trials N] [--storage URL] [--study NAME] [--out DIR] [--monitor M]``
    Optuna study over the values the config marks searchable (``{search: log, low: .., high:
    ..}``). ``CONFIG`` is a ``ravine train`` config, or a benchmark study with ``problem:`` and
    ``optimizer:`` keys (:class:`~ravine.bench.config.StudySpec`). Each invocation adds
    ``--trials`` trials (default 20) to the study ``NAME`` (default: the config's file name) in
    ``--storage`` (default: ``sqlite:///DIR/study.db``; ``journal:PATH`` for a journal file, or
    an RDB URL); several processes may share one storage. Prints the best configuration as YAML,
    ready for ``ravine train`` (a train config) or ``ravine compare`` (a benchmark study), and
    writes it to ``DIR/best.yaml``.

Exit status: 0 success; 2 a usage error (bad config, option or storage: one line on standard
error, no traceback unless ``--debug``); 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from ravine._checks import suggest
from ravine._io import write_yaml_atomic
from ravine.bench import tune
from ravine.bench.config import ConfigError, SearchSpace, load_study, read_yaml
from ravine.bench.problems import DatasetProblem, build
from ravine.commands._common import UsageParser, guarded, positive_int
from ravine.config import validate_config
from ravine.train import NonFiniteLossError, fit
from ravine.train.metrics import loss_for

__all__ = ["tune_main", "tune_parser"]


def tune_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ravine tune``."""
    parser = UsageParser(prog="ravine tune",
                         description="Tune the searchable values of a config with Optuna.")
    parser.add_argument("config", help="a ravine train config or a benchmark study (YAML)")
    parser.add_argument("--trials", type=positive_int,
                        help="trials this process runs (default: the config's trials, else 20)")
    parser.add_argument("--storage", help="journal:PATH or an RDB URL (default: an SQLite file "
                        "in the output folder)")
    parser.add_argument("--study", help="study name (default: the config's file name)")
    parser.add_argument("--out", help="output folder (default: runs/tune-<config name>)")
    parser.add_argument("--monitor", help="validation metric of a train config (default: "
                        "val_acc for classification, val_loss for regression)")
    parser.add_argument("--quiet", action="store_true", help="no per-trial lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _trial_printer(quiet: bool) -> list[Callable[..., None]]:
    if quiet:
        return []

    def show(study: Any, trial: Any) -> None:
        value = "" if trial.value is None else f" value {trial.value:.5g}"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in trial.params.items())
        print(f"trial {trial.number}: {trial.state.name.lower()}{value} ({params})",
              file=sys.stderr)

    return [show]


def _tune(args: argparse.Namespace) -> int:
    path = Path(args.config)
    raw = read_yaml(path)
    benchmark = "problem" in raw
    spec = load_study(raw) if benchmark else None
    out = Path(args.out or (spec.output if spec and spec.output else None)
               or Path("runs") / f"tune-{path.stem}")
    name = args.study or path.stem
    trials = args.trials or (spec.trials if spec else 20)
    shared = args.storage is not None
    storage = tune.open_storage(args.storage, out / "study.db")
    quiet = args.quiet or not sys.stderr.isatty()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if spec is not None:
        if args.monitor is not None:
            raise ConfigError("--monitor is for train configs; a benchmark problem has its own")
        problem = build(spec.problem)
        if isinstance(problem, DatasetProblem):
            problem.build_model()  # a model that does not suit the data fails before any trial
        monitor, mode, epochs = problem.monitor, problem.mode, problem.epochs
        objective = tune.problem_objective(problem, spec.optimizer, seed=spec.seed,
                                           pruning=spec.pruning)
        pruning, seed = spec.pruning, spec.seed
    else:
        study_spec = TrainStudy.from_raw(raw, args.monitor)
        monitor, mode, epochs = study_spec.monitor, study_spec.mode, study_spec.epochs
        objective = study_spec.objective(pruning=True)
        pruning, seed = True, int(raw.get("seed", 0) or 0)

    # Workers sharing a storage sample independently; a lone study stays reproducible: a rerun
    # after an interrupted trial draws what that trial drew (ReplayableTPE).
    study = tune.run_trials(
        objective, storage=storage, study_name=name, mode=mode, trials=trials,
        sampler_seed=None if shared else seed, pruning=pruning, epochs=epochs,
        callbacks=_trial_printer(quiet), alone=not shared,
    )

    if spec is not None:
        best = tune.best_suite(spec, study, name=f"{name}-best")
    else:
        run_dir = raw.get("run_dir") or str(Path("runs") / f"{path.stem}-best")
        best = study_spec.best_config(study, run_dir=run_dir)
    write_yaml_atomic(best, out / "best.yaml")
    finished = tune.finished_trials(study)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in finished)
    print(f"# study {name!r}: {len(finished)} finished trials ({pruned} pruned); best "
          f"{monitor} {study.best_value:.5g} (trial {study.best_trial.number}); "
          f"written to {out / 'best.yaml'}")
    print(yaml.safe_dump(best, sort_keys=False), end="")
    return 0


def tune_main(argv: Sequence[str]) -> int:
    """``ravine tune`` with the arguments ``argv``; returns the exit status."""
    return guarded("tune", argv, tune_parser(), _tune)


def _placeholder(space: SearchSpace) -> Any:
    if space.search == "categorical":
        return (space.choices or [None])[0]
    return int(space.low) if space.search == "int" else space.low  # type: ignore[arg-type]


@dataclass
class TrainStudy:
    """A ``ravine train`` config with search spaces, ready to be tuned.

    Attributes:
        raw: the config as read (search spaces included).
        spaces: the search spaces by dotted key.
        monitor: the validation metric the trials are judged by; ``mode`` its direction.
        epochs: the epoch budget of a trial.
    """

    raw: dict[str, Any]
    spaces: dict[str, SearchSpace]
    monitor: str
    mode: str
    epochs: int

    @classmethod
    def from_raw(cls, raw: dict[str, Any], monitor: str | None = None) -> TrainStudy:
        """Check ``raw`` (a train config) and pick the monitor.

        The default monitor is the early-stopping monitor when one is configured, else
        ``val_acc`` for ``cross_entropy`` and ``val_loss`` for ``mse``.

        Raises:
            ConfigError: for an invalid config, no search space or no validation split.
        """
        spaces = tune.find_search_spaces(raw)
        if not spaces:
            raise ConfigError(
                "the config searches nothing; mark a value as searchable, e.g. "
                "optimizer: {name: adam, lr: {search: log, low: 1.0e-4, high: 1.0}}"
            )
        placeholders = {k: _placeholder(v) for k, v in spaces.items()}
        config = validate_config(tune.substitute(raw, placeholders))
        if config.data.val_fraction == 0:
            raise ConfigError("tuning needs a validation split: set data.val_fraction > 0")
        if monitor is None and config.early_stopping is not None:
            monitor = config.early_stopping.monitor
        if monitor is None:
            loss = loss_for(config.loss, config.build().splits.train)
            monitor = "val_acc" if loss == "cross_entropy" else "val_loss"
        if monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}, got {monitor!r}"
                              f"{suggest(monitor, MONITORS)}")
        mode = "max" if monitor.endswith("acc") else "min"
        return cls(raw=raw, spaces=spaces, monitor=monitor, mode=mode, epochs=config.epochs)

    def objective(self, *, pruning: bool) -> Callable[[optuna.Trial], float]:
        """The Optuna objective: train the config with sampled values, as ``ravine train``
        would (same seed, split and initialization), without writing a run directory."""


        def objective(trial: optuna.Trial) -> float:
            values = {path: space.suggest(trial, path) for path, space in self.spaces.items()}
            config = validate_config(tune.substitute(self.raw, values))
            run = config.build()
            splits, model = run.splits, run.model
            options = config.fit_kwargs()
            callbacks = [tune.pruning_callback(trial, self)] if pruning else []  # type: ignore[arg-type]
            history: list[dict[str, Any]] = []
            try:
                result = fit(model, splits.train, splits.val, test=None, **options, quiet=True,
                             callbacks=[lambda epoch, record: history.append(record), *callbacks])
            except NonFiniteLossError:
                trial.set_user_attr("diverged", True)
                return tune.worst_value(self.mode)
            values_seen = [tune.clean_value(r.get(self.monitor), self.mode) for r in result.history]
            if config.early_stopping is not None and config.early_stopping.restore_best:
                # the deployed model is the best epoch's, so that is what the trial is worth
                return min(values_seen) if self.mode == "min" else max(values_seen)
            return values_seen[-1]

        return objective

    def best_config(self, study: optuna.Study, run_dir: str | None = None) -> dict[str, Any]:
        """The config with the best trial's values, ready for ``ravine train``.

        Raises:
            ValueError: when no trial has completed.
        """
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            raise ValueError(f"study {study.study_name!r} has no completed trial yet")
        params = study.best_trial.params
        best = tune.substitute(self.raw, {k: tune.plain_value(v) for k, v in params.items()})
        if run_dir is not None:
            best["run_dir"] = run_dir
        return best


MONITORS = ("val_acc", "val_loss", "train_acc", "train_loss")
