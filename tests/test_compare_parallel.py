"""``ravine compare --jobs N`` and ``--worker``: the same numbers as one process, every cell
done exactly once, interrupted runs resume to the uninterrupted results."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from ravine.bench import compare, problems
from ravine.bench.config import load_suite

TINY = {
    "name": "tiny",
    "seeds": 2,
    "problems": [{"kind": "quadratic", "epochs": 20}, {"kind": "rosenbrock", "epochs": 30}],
    "optimizers": [{"name": "momentum", "momentum": 0.9}, "adam"],
    "tuning": {"method": "tpe", "trials": 3, "pruning": True, "low": 1e-4, "high": 0.1},
}
CELLS = len(TINY["problems"]) * len(TINY["optimizers"])
RUNS = CELLS * TINY["seeds"]
TRIALS = CELLS * TINY["tuning"]["trials"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def results(out: Path) -> dict:
    """Everything a suite computed, without the wall-clock times (which vary run to run)."""
    found = {}
    for path in sorted(out.glob("runs/*/*/seed-*/*")):
        name = str(path.relative_to(out))
        if path.name == "result.json":
            found[name] = {
                k: v for k, v in json.loads(path.read_text()).items() if k != "wall_time"
            }
        elif path.name == "metrics.jsonl":
            found[name] = [
                {k: v for k, v in json.loads(line).items() if k != "time"}
                for line in path.read_text().splitlines()
            ]
        else:
            found[name] = path.read_text()
    for path in sorted(out.glob("tuning/*/*.json")):
        # trial numbers count the FAIL trials an interruption leaves (they are redrawn)
        tuning = json.loads(path.read_text())
        tuning["chosen"].pop("trial")
        for trial in tuning["trials"]:
            trial.pop("number")
        found[str(path.relative_to(out))] = tuning
    summary = json.loads((out / "summary.json").read_text())
    for by_opt in summary["problems"].values():
        for stats in by_opt.values():
            stats.pop("time_mean"), stats.pop("time_std")
    found["summary.json"] = summary
    found["report.md"] = report_without_times(out / "report.md")
    return found


def report_without_times(path: Path) -> list[list[str]]:
    """The report's lines, table cells that hold seconds blanked."""
    lines = []
    drop: set[int] = set()
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            drop = set()
            lines.append([line])
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "(s)" in line:
            drop = {i for i, c in enumerate(cells) if "(s)" in c}
        lines.append([c for i, c in enumerate(cells) if i not in drop])
    return lines


def studies(out: Path) -> dict[str, list[str]]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "tuning" / "journal.log"))
    )
    return {
        s.study_name: [
            t.state.name for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
        ]
        for s in optuna.get_all_study_summaries(storage)
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    outcome = compare.run_suite(load_suite(TINY), out, quiet=True)
    assert (outcome.executed, outcome.trials_run, outcome.cells_run) == (RUNS, TRIALS, CELLS)
    return results(out)


def cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "ravine", "compare", *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def suite_file(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


@pytest.mark.slow
def test_jobs_2_computes_what_jobs_1_computes(tmp_path, reference):
    out = tmp_path / "out"
    outcome = compare.run_suite(load_suite(TINY), out, jobs=2, quiet=True)
    assert (outcome.executed, outcome.skipped, outcome.trials_run) == (RUNS, 0, TRIALS)
    got = results(out)
    assert got.keys() == reference.keys()
    for name in reference:
        assert got[name] == reference[name], name
    # every study ran its trials once, none failed
    assert all(len(s) == 3 and set(s) <= {"COMPLETE", "PRUNED"} for s in studies(out).values())
    again = compare.run_suite(load_suite(TINY), out, jobs=2, quiet=True)
    assert (again.executed, again.skipped, again.trials_run) == (0, RUNS, 0)


@pytest.mark.slow
def test_interrupted_parallel_compare_resumes_to_the_same_results(tmp_path, reference):
    suite, out = suite_file(tmp_path), tmp_path / "out"
    process = cli(suite, "--out", out, "--jobs", "2", start_new_session=True)
    deadline = time.monotonic() + 25
    while not list(out.glob("tuning/*/*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole group
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert err == "ravine compare: interrupted; run the same command again to resume\n"
    assert len(list(out.glob("runs/*/*/seed-*/result.json"))) < RUNS
    process = cli(suite, "--out", out, "--jobs", "2", "--quiet")
    stdout, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert not list(out.glob("runs/*/*/.seed-*"))
    got = results(out)
    assert got.keys() == reference.keys()
    for name in reference:
        assert got[name] == reference[name], name


@pytest.mark.slow
def test_two_workers_do_every_cell_once(tmp_path, reference):
    suite, out = suite_file(tmp_path), tmp_path / "out"
    workers = [cli(suite, "--out", out, "--worker", "--quiet") for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    counts = [
        re.match(
            r"(\d+) cells, (\d+) runs and (\d+) tuning trials done by this worker", stdout
        ).groups()
        for stdout, _ in outputs
    ]
    assert [sum(int(c[i]) for c in counts) for i in range(3)] == [CELLS, RUNS, TRIALS]
    assert all(int(c[0]) > 0 for c in counts)  # both took part
    assert all(len(s) == 3 and "FAIL" not in s for s in studies(out).values())
    got = results(out)
    assert got.keys() == reference.keys()
    for name in reference:
        assert got[name] == reference[name], name


@pytest.mark.slow
def test_a_dead_workers_cell_is_taken_over(tmp_path, reference):
    suite, out = suite_file(tmp_path), tmp_path / "out"
    first = cli(suite, "--out", out, "--worker", "--quiet")
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and not (
        (out / "tuning" / "journal.log").exists()
        and any("RUNNING" in s for s in studies(out).values())
        and list(out.glob("claims/*.done"))
    ):
        time.sleep(0.02)
    first.kill()  # SIGKILL mid-trial: its claim stays, unrefreshed
    first.communicate()
    assert any("RUNNING" in s for s in studies(out).values())
    held = [p for p in out.glob("claims/*.claim.*")]
    assert len(held) == 1
    # a living worker's claim (refreshed) is respected; a stale one is taken over
    second = cli(suite, "--out", out, "--worker", "--quiet", "--claim-timeout", "3")
    stdout, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert held[0].name.endswith(".claim.0")
    states = studies(out)
    assert sum(s.count("FAIL") for s in states.values()) == 1  # the killed trial, redone
    assert all(len([x for x in s if x != "FAIL"]) == 3 for s in states.values())
    got = results(out)
    for name in reference:
        assert got[name] == reference[name], name


def test_claims_are_exclusive_and_stale_ones_reclaimed(tmp_path):
    claims = compare._Claims(tmp_path, timeout=30.0, owner="a")
    held = claims.acquire("cell", "k1")
    assert held is not None and held.path.name == "cell-k1.claim.0"
    assert claims.acquire("cell", "k1") is None  # fresh: another worker holds it
    assert claims.acquire("cell", "k2") is not None  # a changed cell is another claim
    old = time.time() - 31
    os.utime(held.path, (old, old))  # its owner stopped refreshing it
    taken = claims.acquire("cell", "k1")
    assert taken is not None and taken.path.name == "cell-k1.claim.1"
    assert claims.acquire("cell", "k1") is None
    claims.mark_done("cell", "k1")
    assert claims.done("cell", "k1") and not claims.done("cell", "k2")
    taken.release()
    assert not taken.path.exists()


def test_claim_heartbeat_keeps_the_claim_fresh(tmp_path):
    claims = compare._Claims(tmp_path, timeout=0.2, owner="a")
    held = claims.acquire("cell", "k")
    time.sleep(0.5)  # > timeout: only the refreshes keep it
    assert claims.acquire("cell", "k") is None
    held.release()


def test_a_failing_cell_is_one_line_and_the_others_finish(tmp_path, monkeypatch, capsys):
    suite = {
        **TINY,
        "seeds": 1,
        "tuning": {"method": "none"},
        "problems": [{"kind": "quadratic", "epochs": 5}],
        "optimizers": [{"name": "sgd", "lr": 0.01}, {"name": "adam", "lr": 0.01}],
    }
    real_run = problems.Quadratic.run

    def run(self, optimizer, *args, **kwargs):
        if optimizer == "sgd":
            raise RuntimeError("boom\nsecond line")
        return real_run(self, optimizer, *args, **kwargs)

    monkeypatch.setattr(problems.Quadratic, "run", run)
    with pytest.raises(compare.CellFailures) as failed:
        compare.run_suite(load_suite(suite), tmp_path, quiet=True)
    assert failed.value.lines == ["cell quadratic / sgd failed: RuntimeError: boom second line"]
    assert (tmp_path / "runs" / "quadratic" / "adam" / "seed-0" / "result.json").exists()

    from ravine.commands.compare import compare_main

    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(suite))
    assert compare_main([str(path), "--out", str(tmp_path), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        "ravine compare: cell quadratic / sgd failed: RuntimeError: boom second line\n"
    )


def test_bad_options_are_one_line(tmp_path, capsys):
    from ravine.commands.compare import compare_main

    path = suite_file(tmp_path)
    assert compare_main([str(path), "--worker", "--jobs", "2"]) == 2
    assert capsys.readouterr().err.startswith("ravine compare: error: --worker runs one cell")
    assert compare_main([str(path), "--jobs", "0"]) == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        compare.run_suite(load_suite(TINY), tmp_path, jobs=0)


WORKER_IMPORTS = """
import json, sys, tempfile
from pathlib import Path
from ravine.bench import compare
from ravine.bench.config import load_suite
suite = load_suite(json.loads(sys.argv[1]))
out = tempfile.mkdtemp()
compare._prepare(suite, Path(out), None)
compare._init_worker(suite, out, None)
before = set(sys.modules)
kind, _ = compare._task("tune", compare._Cell(0, 0))
print(json.dumps([kind, sorted(set(sys.modules) - before)]))
"""


def test_a_worker_does_its_heavy_imports_before_it_takes_ctrl_c():
    # A Ctrl-C that cut the first optimizer's lazy import of torch._dynamo in half made the
    # worker's next task import it again, and torch.onnx printed a page of warnings into the
    # interrupted compare's one-line message (seen once in CI). The worker now does that import
    # in its initializer, while SIGINT is still ignored; a task then imports almost nothing.
    done = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS, json.dumps(TINY)],
        env=ENV, capture_output=True, text=True, check=True,
    )
    kind, imported = json.loads(done.stdout.splitlines()[-1])
    assert kind == "tune"
    heavy = [m for m in imported if m.split(".")[0] in ("sympy", "mpmath")
             or m.startswith(("torch._dynamo", "torch._inductor", "torch.onnx"))]
    assert heavy == [] and len(imported) < 10, imported
