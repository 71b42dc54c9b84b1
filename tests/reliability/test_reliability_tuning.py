"""An interrupted `ravine compare` tuning study, resumed, equals an uninterrupted one exactly."""

from __future__ import annotations

import json

import pytest

from ravine.bench import compare, problems
from ravine.bench.config import load_suite

SUITE = {"problems": [{"kind": "quadratic", "epochs": 15}], "seeds": 1,
         "optimizers": ["adam"], "tuning": {"method": "tpe", "trials": 6, "pruning": True}}


def finished_trials(out):
    trials = json.loads((out / "tuning" / "quadratic" / "adam.json").read_text())["trials"]
    return [(t["state"], t["params"], t["value"]) for t in trials]


def final_result(out):
    result = json.loads((out / "runs" / "quadratic" / "adam" / "seed-0" / "result.json")
                        .read_text())
    return result["lr"], result["final"]


@pytest.mark.parametrize("interrupt_at", [2, 5])
def test_interrupted_and_resumed_tuning_equals_uninterrupted(tmp_path, monkeypatch, interrupt_at):
    suite = load_suite(SUITE)
    compare.run_suite(suite, tmp_path / "whole", quiet=True)

    real_run = problems.Quadratic.run
    calls = []

    def run(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == interrupt_at:  # Ctrl-C in the middle of a trial
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(problems.Quadratic, "run", run)
    with pytest.raises(KeyboardInterrupt):
        compare.run_suite(suite, tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(problems.Quadratic, "run", real_run)
    compare.run_suite(suite, tmp_path / "resumed", quiet=True)

    assert finished_trials(tmp_path / "resumed") == finished_trials(tmp_path / "whole")
    assert final_result(tmp_path / "resumed") == final_result(tmp_path / "whole")
