"""``ravine compare`` end to end: the report's numbers against the runs' own files, resume."""

import json
import math
import re

import numpy as np
import pytest

from ravine.bench import compare, problems
from ravine.bench.config import load_suite
from ravine.bench.profile import performance_profile
from ravine.commands.compare import compare_main

SMALL = {
    "name": "small",
    "seeds": 2,
    "problems": [
        {"kind": "quadratic", "epochs": 60, "target": 1e-4},
        {"kind": "logreg-digits", "epochs": 3, "target": 0.8},
    ],
    "optimizers": ["sgd", {"name": "momentum", "momentum": 0.8}, "adam"],
    "tuning": {"method": "grid", "grid": [0.01, 0.05]},
}


def read_metrics(directory):
    with open(directory / "metrics.jsonl") as handle:
        return [r for r in map(json.loads, handle) if r["kind"] == "epoch"]


def first_hit(records, key, target, mode):
    for r in records:
        if (r[key] <= target) if mode == "min" else (r[key] >= target):
            return r["epoch"], r["time"]
    return None


def parse_pm(cell):
    mean, std = cell.split("(")[0].split("±")
    return float(mean), float(std)


def table_rows(report, heading):
    section = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


@pytest.mark.slow
def test_small_suite_report_matches_run_files(tmp_path):
    suite = load_suite(SMALL)
    out = tmp_path / "out"
    outcome = compare.run_suite(suite, out, quiet=True)
    assert (outcome.executed, outcome.skipped, outcome.trials_run) == (12, 0, 12)
    report = (out / "report.md").read_text()
    costs = np.full((2, 3), math.inf)

    for i, spec in enumerate(suite.problems):
        problem = problems.build(spec)
        rows = table_rows(report, spec.label)
        for j, opt in enumerate(["sgd", "momentum", "adam"]):
            # the lr is the grid value with the best tuning value
            tuning = json.loads((out / "tuning" / spec.label / f"{opt}.json").read_text())
            values = {t["params"]["lr"]: float(t["value"]) for t in tuning["trials"]}
            assert sorted(values) == [0.01, 0.05]
            pick = min if problem.mode == "min" else max
            best_lr = pick(values, key=lambda lr: values[lr])
            assert float(rows[opt][0].split()[0]) == pytest.approx(best_lr, rel=1e-3)

            finals, hits = [], []
            for seed in (0, 1):
                run = out / "runs" / spec.label / opt / f"seed-{seed}"
                records = read_metrics(run)
                result = json.loads((run / "result.json").read_text())
                assert result["lr"] == best_lr and result["seed"] == seed
                assert [r["epoch"] for r in records] == list(range(1, problem.epochs + 1))
                if spec.kind == "quadratic":
                    finals.append(records[-1]["loss"])
                else:
                    finals.append(result["final"]["test_acc"])
                hits.append(first_hit(records, problem.monitor, spec.target, problem.mode))
            mean, std = parse_pm(rows[opt][1])
            assert mean == pytest.approx(np.mean(finals), rel=1e-3, abs=1e-12)
            assert std == pytest.approx(np.std(finals, ddof=1), rel=2e-2, abs=1e-12)
            reached = [h for h in hits if h is not None]
            assert rows[opt][3] == f"{len(reached)}/2"
            if reached:
                mean, std = parse_pm(rows[opt][4])
                assert mean == pytest.approx(np.mean([h[0] for h in reached]), rel=1e-3)
                mean, _ = parse_pm(rows[opt][5])
                assert mean == pytest.approx(np.mean([h[1] for h in reached]), rel=1e-3)
            else:
                assert rows[opt][4] == rows[opt][5] == "never"
            costs[i, j] = np.median([h[0] if h else math.inf for h in hits])

    _, rho = performance_profile(costs, [1, 2, 4, 8, math.inf])
    profile = table_rows(report, "Performance profile")
    for j, opt in enumerate(["sgd", "momentum", "adam"]):
        assert [float(c) for c in profile[opt]] == pytest.approx(list(rho[:, j]), abs=5e-3)

    # a rerun of a stored run reproduces its numbers
    run = out / "runs" / "logreg-digits" / "adam" / "seed-1"
    stored = json.loads((run / "result.json").read_text())
    again = problems.build(suite.problems[1]).run("adam", stored["lr"], seed=1)
    assert again.final["test_acc"] == stored["final"]["test_acc"]

    for name in ("profile", "quadratic-curves", "quadratic-lr", "quadratic-trajectories",
                 "logreg-digits-curves", "logreg-digits-lr"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 0
        assert f"plots/{name}.png" in report
    assert not (out / "plots" / "logreg-digits-trajectories.png").exists()


FIXED = {
    "name": "fixed",
    "seeds": 2,
    "problems": [{"kind": "quadratic", "epochs": 30}, {"kind": "rosenbrock", "epochs": 30}],
    "optimizers": [{"name": "sgd", "lr": 0.001}, {"name": "momentum", "lr": 0.001},
                   {"name": "adam", "lr": 0.01}],
    "tuning": {"method": "none"},
}


def test_interrupted_compare_resumes_without_redoing_runs(tmp_path):
    suite = load_suite(FIXED)
    out = tmp_path / "out"
    started = []

    def interrupt_fourth(problem, optimizer, seed):
        started.append((problem, optimizer, seed))
        if len(started) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare.run_suite(suite, out, quiet=True, on_run=interrupt_fourth)
    finished = sorted(out.glob("runs/*/*/seed-*/result.json"))
    assert len(finished) == 3
    assert not list(out.glob("runs/*/*/.seed-*"))  # no half-written run directory left
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    executed = []
    outcome = compare.run_suite(suite, out, quiet=True, on_run=lambda *a: executed.append(a))
    assert (outcome.executed, outcome.skipped) == (9, 3)
    assert executed == started[3:] + executed[1:]  # the interrupted run is the first redone
    assert set(executed).isdisjoint(started[:3])
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps
    assert len(list(out.glob("runs/*/*/seed-*/result.json"))) == 12

    again = compare.run_suite(suite, out, quiet=True, on_run=lambda *a: executed.append(a))
    assert (again.executed, again.skipped) == (0, 12)

    # changing one optimizer's lr reruns exactly that optimizer's runs
    changed = load_suite({**FIXED, "optimizers": [{"name": "sgd", "lr": 0.002},
                                                  *FIXED["optimizers"][1:]]})
    redo = []
    outcome = compare.run_suite(changed, out, quiet=True, on_run=lambda *a: redo.append(a))
    expected = [(p, "sgd", s) for p in ("quadratic", "rosenbrock") for s in (0, 1)]
    assert sorted(redo) == sorted(expected)
    assert outcome.skipped == 8


@pytest.mark.parametrize(
    "tuning",
    [{"method": "tpe", "trials": 4, "pruning": False},
     {"method": "grid", "grid": [0.001, 0.003, 0.01, 0.03]}],
    ids=["tpe", "grid"],
)
def test_interrupted_tuning_resumes_with_the_same_budget(tmp_path, monkeypatch, tuning):
    import optuna

    suite = load_suite({"problems": [{"kind": "quadratic", "epochs": 20}], "seeds": 1,
                        "optimizers": ["sgd", "adam"], "tuning": tuning})
    real_run = problems.Quadratic.run
    calls = []

    def run(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 7:  # sgd: 4 trials + 1 final run; then adam: the second trial
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(problems.Quadratic, "run", run)
    with pytest.raises(KeyboardInterrupt):
        compare.run_suite(suite, tmp_path, quiet=True)
    calls.clear()
    outcome = compare.run_suite(suite, tmp_path, quiet=True)
    # sgd's study and its final run were complete; adam needs 3 trials and its final run
    assert outcome.trials_run == 3 and (outcome.executed, outcome.skipped) == (1, 1)
    assert len(calls) == 4
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "tuning" / "journal.log")))
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = [t.state.name for t in study.trials]
        assert states.count("COMPLETE") == 4
        assert states.count("FAIL") == (1 if "/adam/" in summary.study_name else 0)
        if tuning["method"] == "grid":
            done = sorted(t.params["lr"] for t in study.trials if t.state.name == "COMPLETE")
            assert done == tuning["grid"]


def test_compare_cli(tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(
        "problems: [{kind: quadratic, epochs: 10}]\n"
        "optimizers: [{name: sgd, lr: 0.01}, {name: nesterov, lr: 0.01}]\n"
        "tuning: {method: none}\nseeds: 3\n"
    )
    out = tmp_path / "out"
    assert compare_main([str(path), "--out", str(out), "--seeds", "2", "--quiet"]) == 0
    assert capsys.readouterr().out == f"4 runs done, 0 already finished; report: {out}/report.md\n"
    assert compare_main([str(path), "--out", str(out), "--seeds", "2"]) == 0
    assert capsys.readouterr().out.startswith("0 runs done, 4 already finished")
    assert re.search(r"\| nesterov \| 0\.01 \| ", (out / "report.md").read_text())
