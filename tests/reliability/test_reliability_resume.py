"""`--resume` refuses a run configuration that differs anywhere from the original's."""

from __future__ import annotations

import pytest
from reliability_helpers import write_run_config

from ravine.commands import EXIT_USAGE, main


@pytest.mark.parametrize("change, key", [
    ("model.dropout=0.3", "model.dropout"),
    ("model.activation=tanh", "model.activation"),
    ("data.noise=0.5", "data.noise"),
    ("data.val_fraction=0.2", "data.val_fraction"),
])
def test_resume_with_changed_data_or_model_exits_2_naming_the_key(tmp_path, capsys, change, key):
    config = write_run_config(tmp_path, model={"kind": "mlp", "hidden": [8], "dropout": 0.1},
                              max_steps=3)
    assert main(["train", str(config), "--quiet"]) == 0
    capsys.readouterr()
    before = (tmp_path / "run" / "config.yaml").read_text()
    assert main(["train", str(config), "--quiet", "--resume", "--set", change]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and f"the run was started with {key}=" \
        in err[0], err
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_resume_with_the_same_config_and_a_moved_run_dir_continues(tmp_path, capsys):
    config = write_run_config(tmp_path, model={"kind": "mlp", "hidden": [8], "dropout": 0.1},
                              max_steps=3)
    assert main(["train", str(config), "--quiet"]) == 0
    (tmp_path / "run").rename(tmp_path / "moved")
    assert main(["train", str(config), "--quiet", "--resume",
                 "--set", f"run_dir={tmp_path / 'moved'}"]) == 0, capsys.readouterr().err
