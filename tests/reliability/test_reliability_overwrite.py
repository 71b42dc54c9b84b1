"""`--overwrite` removes what ravine wrote (the diagnose section too), and nothing else."""

from __future__ import annotations

from reliability_helpers import write_run_config

from ravine.commands import main
from ravine.train.rundir import PLOTS


def test_overwrite_removes_the_previous_diagnosis_and_keeps_the_users_files(tmp_path, capsys):
    config = write_run_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config), "--quiet"]) == 0
    assert main(["diagnose", str(run), "--examples", "64"]) == 0
    assert "Diagnostics at the last checkpoint" in (run / "report.md").read_text()
    # Every plot ravine draws is one that --overwrite knows to delete.
    assert {p.name for p in (run / "plots").glob("*.png")} <= set(PLOTS)
    (run / "plots" / "mine.png").write_bytes(b"user's own")
    (run / "notes.txt").write_text("kept")

    assert main(["train", str(config), "--quiet", "--overwrite", "--set", "epochs=1"]) == 0
    capsys.readouterr()
    assert not (run / "diagnostics.json").exists() and not (run / "diagnostics.md").exists()
    report = (run / "report.md").read_text()
    assert "Diagnostics at" not in report
    for link in [line.split("](")[1].rstrip(")") for line in report.splitlines()
                 if line.startswith("![")]:
        assert (run / link).exists(), link
    assert not (run / "plots" / "hessian_spectrum.png").exists()
    assert (run / "plots" / "mine.png").read_bytes() == b"user's own"
    assert (run / "notes.txt").read_text() == "kept"
