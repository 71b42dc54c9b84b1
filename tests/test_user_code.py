"""`ravine train` on a user's own code: factories for data and model, compute_loss, image folders,
resume after SIGKILL and data-parallel training on a lazily loaded Dataset."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ravine.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "my_project"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

USER_MODULE = '''
import numpy as np
import torch
from torch.utils.data import Dataset


class NpzPairs(Dataset):
    """Reads one example at a time from an .npz file (opened lazily, never held as a batch)."""

    def __init__(self, path, rows):
        self.path, self.rows = path, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        with np.load(self.path) as f:
            row = self.rows[i]
            return torch.as_tensor(f["x"][row]), int(f["y"][row])


def build(path, seed=0):
    n = len(np.load(path)["y"])
    order = np.random.default_rng(seed).permutation(n)
    return NpzPairs(path, order[:240].tolist()), NpzPairs(path, order[240:].tolist())


def model(hidden=16):
    return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, 3)).double()
'''


def ravine(*args: str, cwd: Path | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "ravine", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=cwd)


def user_project(folder: Path, module: str, **changes) -> Path:
    """A folder with the user's module, their data file and a config naming both."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 6))
    y = (x @ rng.standard_normal((6, 3)) + rng.standard_normal((301, 3))).argmax(axis=1)
    np.savez(folder / "pairs.npz", x=x, y=y)
    (folder / f"{module}.py").write_text(USER_MODULE)
    config = {
        "data": {"factory": f"{module}:build", "options": {"path": str(folder / "pairs.npz")}},
        "model": {"factory": f"{module}:model"},
        "optimizer": {"name": "momentum", "lr": 0.05},
        "epochs": 2, "batch_size": 40, "seed": 3, "run_dir": str(folder / "run"),
    }
    config.update(changes)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def state(run: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(run / "checkpoints" / name)["model"]


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "wall_time")}
            for line in lines]


@pytest.mark.slow
def test_the_my_project_example_trains_from_another_directory(tmp_path):
    proc = ravine("train", str(EXAMPLE / "train.yaml"), "--quiet",
                  "--set", f"run_dir={tmp_path / 'run'}", "--set", "epochs=2",
                  "--set", "data.options.train=160", "--set", "data.options.val=64",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "trained 2 epochs" in proc.stdout and "test_acc" in proc.stdout
    run = tmp_path / "run"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,train_acc") and len(rows) == 3
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["compute_loss"] == "my_project.losses:compute_loss"
    assert config["code_dir"] == str(EXAMPLE)
    assert (run / "report.md").exists()
    # diagnose finds the run's code, and says in one line why it cannot measure this run
    proc = ravine("diagnose", str(run), cwd=tmp_path)
    assert proc.returncode == 2 and "trains through compute_loss" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_factory_errors_are_one_line_naming_the_key(tmp_path):
    config = user_project(tmp_path, "userdata_errors")
    cases = [
        (["--set", "data.factory=nowhere_at_all:build"],
         "data.factory: cannot import module 'nowhere_at_all'"),
        (["--set", "model.factory=userdata_errors:missing"],
         "model.factory: module 'userdata_errors' has no attribute 'missing'"),
        (["--set", "compute_loss=userdata_errors"], "compute_loss: expected 'module:attribute'"),
        (["--set", "data.name=digits"], "give exactly one of 'name'"),
        (["--set", "model={kind: mlp, hidden: [4]}"], "model: kind 'mlp' takes its sizes from"),
    ]
    for args, expected in cases:
        proc = ravine("train", str(config), "--quiet", "--overwrite", *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigkill_mid_epoch_on_a_dataset_then_resume_is_bit_identical(tmp_path):
    settings = dict(epochs=4, batch_size=8, checkpoint_every_steps=5, num_workers=1,
                    async_checkpoints=True)
    reference = user_project(tmp_path / "ref", "userdata_ref", **settings)
    killed = user_project(tmp_path / "cut", "userdata_cut", **settings)
    steps_per_epoch = math.ceil(240 / 8)
    proc = subprocess.Popen([sys.executable, "-m", "ravine", "train", str(killed), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            cwd=tmp_path / "cut")
    metrics = tmp_path / "cut" / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        text = metrics.read_text() if metrics.exists() else ""
        if text.count('"kind": "step"') >= steps_per_epoch + 12:  # well into epoch 2
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = load_checkpoint(tmp_path / "cut" / "run" / "checkpoints" / "last.pt")
    assert steps_per_epoch < last["step"] < 4 * steps_per_epoch
    assert last["batches"]["position"] > 0  # mid-epoch

    resumed = ravine("train", str(killed), "--quiet", "--resume", cwd=tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    full = ravine("train", str(reference), "--quiet", cwd=tmp_path / "ref")
    assert full.returncode == 0, full.stderr
    a, b = state(tmp_path / "cut" / "run"), state(tmp_path / "ref" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert records(tmp_path / "cut" / "run") == records(tmp_path / "ref" / "run")


@pytest.mark.slow
def test_two_processes_on_a_lazy_dataset_train_like_one(tmp_path):
    one = user_project(tmp_path / "one", "userdata_one", batch_size=50)
    two = user_project(tmp_path / "two", "userdata_two", batch_size=50)
    single = ravine("train", str(one), "--quiet", cwd=tmp_path / "one")
    assert single.returncode == 0, single.stderr
    double = ravine("train", str(two), "--quiet", "--nproc", "2", cwd=tmp_path / "two")
    assert double.returncode == 0, double.stderr
    a, b = state(tmp_path / "one" / "run"), state(tmp_path / "two" / "run")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
    ra, rb = records(tmp_path / "one" / "run"), records(tmp_path / "two" / "run")
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        for key, value in x.items():
            if isinstance(value, float):
                assert y[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def image_folder(root: Path, classes: int = 3, per_class: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (10, 12, 3), dtype=np.uint8)
            pixels[..., c] += 150  # the class is the dominant colour
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def test_an_image_folder_trains_through_ravine_train(tmp_path):
    image_folder(tmp_path / "images")
    config = {
        "data": {"name": "image-folder", "root": str(tmp_path / "images"), "size": [8, 8],
                 "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"kind": "cnn2d", "channels": [4], "norm": "none"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 3, "batch_size": 6, "run_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ravine("train", str(path), "--quiet")
    assert proc.returncode == 0, proc.stderr
    history = [r for r in records(tmp_path / "run") if r["kind"] == "epoch"]
    assert len(history) == 3 and "val_acc" in history[-1]
    shutil.rmtree(tmp_path / "images" / "class1")
    (tmp_path / "images" / "class1").mkdir()
    proc = ravine("train", str(path), "--quiet", "--overwrite")
    assert proc.returncode == 2 and "class1" in proc.stderr and "Traceback" not in proc.stderr
