"""``ravine tune``: shared storages, pruning, and best configurations that run as promised."""

import json
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import yaml

from ravine.bench import compare, problems, tune
from ravine.bench.config import OptimizerSpec, load_suite
from ravine.commands.tune import tune_main
from ravine.config import validate_config

WORKER = "import sys; from ravine.commands.tune import tune_main; sys.exit(tune_main(sys.argv[1:]))"


@pytest.mark.slow
def test_two_worker_processes_share_a_journal_study(tmp_path):
    config = tmp_path / "study.yaml"
    # 5000 steps make a trial last long enough for the two workers' trials to overlap
    config.write_text(textwrap.dedent("""\
        problem: {kind: quadratic, kappa: 100, epochs: 5000}
        optimizer: {name: momentum, lr: {search: log, low: 1.0e-4, high: 3.0e-2}}
    """))
    journal = tmp_path / "shared" / "journal.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(config), "--trials", "4", "--storage",
             f"journal:{journal}", "--study", "shared", "--out", str(tmp_path / f"w{i}"),
             "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err

    storage = tune.open_storage(f"journal:{journal}", tmp_path)
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(optuna.get_all_study_summaries(storage)) == 1
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(8))
    assert all(t.state in tune.FINISHED for t in trials)
    # every record belongs to its own trial: rerunning its lr reproduces its numbers
    problem = problems.build({"kind": "quadratic", "kappa": 100, "epochs": 5000})
    for t in trials:
        history = problem.run("momentum", t.params["lr"]).history
        for step, value in t.intermediate_values.items():
            assert value == history[step - 1]["loss"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == history[-1]["loss"]


def test_benchmark_study_best_suite_reproduces_the_best_trial(tmp_path, capsys):
    config = tmp_path / "rb.yaml"
    config.write_text(textwrap.dedent("""\
        problem: {kind: rosenbrock, epochs: 200}
        optimizer:
          name: momentum
          lr: {search: log, low: 1.0e-4, high: 2.0e-3}
          momentum: {search: uniform, low: 0.5, high: 0.95}
        trials: 6
        seed: 3
    """))
    out = tmp_path / "out"
    assert tune_main([str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# study 'rb': 6 finished trials")
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert yaml.safe_load(printed) == best

    storage = tune.open_storage(None, out / "study.db")
    study = optuna.load_study(study_name="rb", storage=storage)
    assert best["optimizers"] == [{"name": "momentum", **study.best_trial.params}]
    suite = load_suite({**best, "seeds": [3]})
    compare.run_suite(suite, tmp_path / "check", quiet=True)
    result = json.loads((tmp_path / "check/runs/rosenbrock/momentum/seed-3/result.json")
                        .read_text())
    assert float(result["final"]["loss"]) == study.best_value

    # a second invocation continues the study with fresh samples
    assert tune_main([str(config), "--out", str(out), "--quiet", "--trials", "2"]) == 0
    study = optuna.load_study(study_name="rb", storage=storage)
    lrs = [t.params["lr"] for t in study.trials]
    assert len(lrs) == 8 and len(set(lrs)) == 8


@pytest.mark.slow
def test_train_config_best_yaml_trains_to_the_best_value(tmp_path, capsys):
    from ravine.commands import main as ravine_main

    run_dir = tmp_path / "best-run"
    config = tmp_path / "digits.yaml"
    config.write_text(textwrap.dedent(f"""\
        data: {{name: digits}}
        model: {{kind: mlp, hidden: [16]}}
        optimizer: {{name: momentum, lr: {{search: log, low: 1.0e-3, high: 0.3}}}}
        weight_decay: {{search: categorical, choices: [0.0, 1.0e-4]}}
        epochs: 2
        batch_size: 64
        run_dir: {run_dir}
    """))
    out = tmp_path / "out"
    assert tune_main([str(config), "--out", str(out), "--trials", "3", "--quiet"]) == 0
    capsys.readouterr()
    best_file = out / "best.yaml"
    best = yaml.safe_load(best_file.read_text())
    study = optuna.load_study(study_name="digits",
                              storage=tune.open_storage(None, out / "study.db"))
    assert best["optimizer"] == {"name": "momentum", "lr": study.best_params["optimizer.lr"]}
    assert best["weight_decay"] == study.best_params["weight_decay"]
    validate_config(best)

    assert ravine_main(["train", str(best_file), "--quiet"]) == 0
    with open(run_dir / "metrics.jsonl") as handle:
        epochs = [r for r in map(json.loads, handle) if r["kind"] == "epoch"]
    assert epochs[-1]["val_acc"] == study.best_value


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruning_through_fit_callbacks():
    problem = problems.build({"kind": "logreg-digits", "epochs": 3})
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    objective = tune.problem_objective(problem, OptimizerSpec(name="sgd", lr=0.1), seed=0,
                                       pruning=True)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    first_epoch = problem.run("sgd", 0.1, seed=0).history[0]
    assert trial.intermediate_values == {1: first_epoch["val_acc"]}


def test_median_pruning_on_the_quadratic():
    problem = problems.build({"kind": "quadratic", "epochs": 40})
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.enqueue_trial({"lr": 0.01})
    study.enqueue_trial({"lr": 1e-4})
    objective = tune.problem_objective(problem, OptimizerSpec(name="sgd"), seed=0, pruning=True)
    study.optimize(objective, n_trials=2)
    good, slow = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert slow.state == optuna.trial.TrialState.PRUNED
    # pruned at the first report: every `report_every` steps the loss is compared
    history = problem.run("sgd", 1e-4).history
    assert slow.intermediate_values == {2: history[1]["loss"]}
    assert good.intermediate_values == {s: problem.run("sgd", 0.01).history[s - 1]["loss"]
                                        for s in range(2, 41, 2)}


def test_diverged_trial_gets_the_worst_value():
    problem = problems.build({"kind": "quadratic", "epochs": 50})
    study = optuna.create_study()
    study.enqueue_trial({"lr": 0.05})
    study.optimize(tune.problem_objective(problem, OptimizerSpec(name="sgd"), seed=0,
                                          pruning=False), n_trials=1)
    assert study.trials[0].value == float("inf")
    assert study.trials[0].user_attrs["diverged"] is True


@pytest.mark.parametrize(
    "text, args, message",
    [
        ("data: digits\nmodel: {kind: mlp, hidden: [4]}\n", [], "searches nothing"),
        ("data: digits\nmodel: {kind: mlp, hidden: [4]}\n"
         "optimizer: {name: adam, lr: {search: log, low: 1, high: 0.1}}\n", [],
         "optimizer.lr: search needs finite low < high"),
        ("data: digits\nmodel: {kind: mlp, hidden: [4]}\n"
         "optimizer: {name: adam, lr: {search: log, low: 0.1, hihg: 1}}\n", [],
         "optimizer.lr: hihg: unknown key; did you mean 'high'?"),
        ("data: {name: digits, val_fraction: 0}\nmodel: {kind: mlp, hidden: [4]}\n"
         "optimizer: {name: adam, lr: {search: log, low: 0.1, high: 1}}\n", [],
         "validation split"),
        ("data: digits\nmodel: {kind: mlp, hidden: [4]}\nepochz: 3\n"
         "optimizer: {name: adam, lr: {search: log, low: 0.1, high: 1}}\n", [], "epochz"),
        ("data: digits\nmodel: {kind: mlp, hidden: [4]}\n"
         "optimizer: {name: adam, lr: {search: log, low: 0.1, high: 1}}\n",
         ["--monitor", "val_accc"], "did you mean 'val_acc'"),
        ("problem: quadratic\noptimizer: sgd\n", ["--storage", "redis://host"],
         "storage must be 'journal:PATH' or an RDB URL"),
        ("problem: quadratic\noptimizer: sgd\n", ["--monitor", "val_acc"], "--monitor"),
        ("problem: {kind: quadratic, kapa: 1}\noptimizer: sgd\n", [],
         "problem.kapa: unknown key; did you mean 'kappa'?"),
    ],
)
def test_tune_usage_errors(tmp_path, capsys, text, args, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert tune_main([str(config), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ravine tune: error: ") and message in err
    assert err.count("\n") == 1


def test_storage_urls(tmp_path):
    journal = tune.open_storage(f"journal:{tmp_path / 'j' / 'log'}", tmp_path)
    assert isinstance(journal, optuna.storages.JournalStorage)
    rdb = tune.open_storage(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    assert isinstance(rdb, optuna.storages.RDBStorage)
    default = tune.open_storage(None, tmp_path / "d" / "study.db")
    assert isinstance(default, optuna.storages.RDBStorage)
    assert (tmp_path / "d" / "study.db").exists()
    with pytest.raises(ValueError, match="needs a file path"):
        tune.open_storage("journal:", tmp_path)


class _StorageBrokenByTheInterrupt(optuna.storages.InMemoryStorage):
    """A storage whose session a Ctrl-C left unusable: marking the trial FAIL fails."""

    def set_trial_state_values(self, trial_id, state, values=None):
        if state == optuna.trial.TrialState.FAIL:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit.")
        return super().set_trial_state_values(trial_id, state, values)


def test_a_ctrl_c_stays_a_ctrl_c_when_the_storage_cannot_record_the_failed_trial():
    # Seen with `ravine tune` on its sqlite storage: the Ctrl-C landed in sqlalchemy's commit,
    # telling the trial FAIL then raised StorageInternalError, and the command ended with that
    # traceback and status 1 instead of its one "interrupted" line and 130.
    def interrupted(trial):
        raise KeyboardInterrupt

    study = optuna.create_study(storage=_StorageBrokenByTheInterrupt())
    with pytest.raises(KeyboardInterrupt):
        tune.optimize(study, interrupted, trials=3)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]

    def broken(trial):  # any other error, and the storage's own, are not hidden
        raise ValueError("the objective failed")

    with pytest.raises(optuna.exceptions.StorageInternalError):
        tune.optimize(study, broken, trials=1)
