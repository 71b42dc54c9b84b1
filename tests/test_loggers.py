"""The run's loggers: metrics.jsonl, metrics.csv, TensorBoard events, and make_loggers."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest

from ravine.train.checkpoint import CheckpointError
from ravine.train.loggers import (
    CsvLogger,
    JsonlLogger,
    Logger,
    ResumePoint,
    TensorBoardLogger,
    make_loggers,
)
from ravine.train.metrics import read_metrics


def run_records(epochs: int = 4, steps_per_epoch: int = 3) -> list[dict]:
    """Records shaped like the trainer's; a val metric appears only from epoch 2 on."""
    records = []
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            records.append({"kind": "step", "epoch": epoch, "step": step, "loss": 1 / step,
                            "lr": 0.1 / (1 + step), "grad_norm": None if step == 2 else step / 7,
                            "clipped": step % 2 == 0, "skipped": False})
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": 1 / (3 * epoch)}
        if epoch >= 2:
            record["val_loss"] = 2 / (3 * epoch)
        if epoch == 3:
            record["val_acc"] = float("nan")
        record["time"] = epoch * 0.1
        records.append(record)
    records.append({"kind": "summary", "best_epoch": 2, "best_metric": 1 / 3, "epochs_run": epochs,
                    "stopped_early": False, "monitor": "val_loss"})
    return records


def read_csv(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_every_writer_is_a_logger(tmp_path):
    pytest.importorskip("tensorboard")
    for logger in (JsonlLogger(tmp_path / "m.jsonl"), CsvLogger(tmp_path / "m.csv"),
                   TensorBoardLogger(tmp_path / "tb")):
        assert isinstance(logger, Logger)
        logger.close()


# ---------------------------------------------------------------------------------------
# metrics.jsonl


def test_jsonl_logger_writes_one_strict_json_line_per_record(tmp_path):
    records = run_records()
    new = JsonlLogger(tmp_path / "new.jsonl")
    expected = ""
    for i, record in enumerate(records):
        (new.write if i % 2 else new.log)(record)
        plain = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                 for k, v in record.items()}
        expected += json.dumps(plain, allow_nan=False) + "\n"
        assert new.offset() == len(expected.encode())
    new.sync()
    new.close()
    assert (tmp_path / "new.jsonl").read_text() == expected
    epochs, steps, summary = read_metrics(tmp_path / "new.jsonl")
    assert len(steps) == 12 and len(epochs) == 4 and summary["epochs_run"] == 4
    assert epochs[2]["val_acc"] is None  # nan as null: strict JSON
    for line in (tmp_path / "new.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_jsonl_logger_resumes_at_the_checkpointed_offset(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = run_records()
    log = JsonlLogger(path)
    for record in records[:5]:
        log.log(record)
    offset = log.offset()
    for record in records[5:9]:  # written after the checkpoint, lost by the "crash"
        log.log(record)
    log.close()
    log = JsonlLogger(path, truncate_to=offset)
    for record in records[5:]:
        log.log(record)
    log.close()
    straight = JsonlLogger(tmp_path / "straight.jsonl")
    for record in records:
        straight.log(record)
    straight.close()
    assert path.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="does not belong to this checkpoint"):
        JsonlLogger(path, truncate_to=path.stat().st_size + 1)


def test_jsonl_logger_without_a_path_writes_nothing(tmp_path):
    log = JsonlLogger(None)
    log.log({"kind": "step", "step": 1})
    log.flush()
    log.sync()
    assert log.offset() == 0
    log.close()


# ---------------------------------------------------------------------------------------
# metrics.csv


def test_csv_holds_the_epoch_records_exactly(tmp_path):
    records = run_records()
    log = CsvLogger(tmp_path / "metrics.csv")
    for record in records:
        log.log(record)
    log.close()
    header, rows = read_csv(tmp_path / "metrics.csv")
    epochs = [r for r in records if r["kind"] == "epoch"]
    keys = list(dict.fromkeys(k for r in epochs for k in r if k != "kind"))
    assert header == keys  # union of keys, in order of first appearance
    assert len(rows) == len(epochs) == log.rows
    for row, record in zip(rows, epochs, strict=True):
        for key in header:
            if key not in record:
                assert row[key] == ""
            elif isinstance(record[key], float) and math.isnan(record[key]):
                assert math.isnan(float(row[key]))
            else:
                assert float(row[key]) == record[key]  # bit-exact round trip
    assert list(tmp_path.iterdir()) == [tmp_path / "metrics.csv"]  # no temporary file left


def test_csv_header_widens_when_a_record_brings_a_new_key(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CsvLogger(path)
    log.log({"kind": "epoch", "epoch": 1, "train_loss": 0.5})
    assert read_csv(path) == (["epoch", "train_loss"], [{"epoch": "1", "train_loss": "0.5"}])
    log.log({"kind": "epoch", "epoch": 2, "val_loss": 0.25, "train_loss": 0.4})
    log.log({"kind": "epoch", "epoch": 3, "train_loss": 0.3})
    header, rows = read_csv(path)  # read while the logger is still open: rows are flushed
    assert header == ["epoch", "train_loss", "val_loss"]
    assert [r["val_loss"] for r in rows] == ["", str(0.25), ""]
    assert [float(r["train_loss"]) for r in rows] == [0.5, 0.4, 0.3]
    log.close()


def test_csv_ignores_step_and_summary_records(tmp_path):
    log = CsvLogger(tmp_path / "metrics.csv")
    log.log({"kind": "step", "step": 1, "loss": 2.0})
    log.log({"kind": "summary", "best_epoch": 1})
    log.close()
    assert (tmp_path / "metrics.csv").read_text() == ""
    assert log.rows == 0


def test_csv_resume_keeps_the_checkpointed_rows_and_matches_a_straight_run(tmp_path):
    epochs = [r for r in run_records(epochs=6) if r["kind"] == "epoch"]
    straight = CsvLogger(tmp_path / "straight.csv")
    for record in epochs:
        straight.log(record)
    straight.close()

    path = tmp_path / "metrics.csv"
    log = CsvLogger(path)
    for record in epochs[:2]:
        log.log(record)
    kept = log.rows
    for record in epochs[2:5]:  # after the checkpoint: replayed by the resumed run
        log.log(record)
    log.close()
    log = CsvLogger(path, keep_rows=kept)
    assert log.rows == kept and len(read_csv(path)[1]) == kept
    for record in epochs[2:]:
        log.log(record)
    log.close()
    assert path.read_bytes() == (tmp_path / "straight.csv").read_bytes()

    log = CsvLogger(path)  # a new run starts an empty table
    log.log(epochs[0])
    log.truncate_to_epochs(0)
    assert read_csv(path)[1] == []
    log.close()
    with pytest.raises(CheckpointError, match="holds 0 epoch rows but the checkpoint recorded 3"):
        CsvLogger(path, keep_rows=3)
    CsvLogger(tmp_path / "missing.csv", keep_rows=0).close()


# ---------------------------------------------------------------------------------------
# TensorBoard


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def as_float32(x: float) -> float:
    return float(np.float32(x))


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    records = run_records()
    log = TensorBoardLogger(tmp_path / "tb")
    for record in records:
        log.log(record)
    log.close()
    got = scalars(tmp_path / "tb")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    for key in ("loss", "lr", "grad_norm"):
        want = [(r["step"], as_float32(r[key])) for r in steps if r[key] is not None]
        assert got[f"train/{key}"] == want
    for key in ("train_loss", "val_loss", "time"):
        want = [(r["step"], as_float32(r[key])) for r in epochs if key in r]
        assert got[f"epoch/{key}"] == want
    assert [s for s, _ in got["epoch/val_acc"]] == [9] and math.isnan(got["epoch/val_acc"][0][1])
    assert got["summary/best_metric"] == [(12, as_float32(1 / 3))]
    assert "epoch/epoch" not in got and "train/clipped" not in got and "summary/monitor" not in got


def test_tensorboard_resume_purges_the_replayed_steps(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    records = [r for r in run_records() if r["kind"] == "step"]
    log = TensorBoardLogger(tmp_path / "tb")
    for record in records[:8]:  # checkpoint at step 5; steps 6-8 are replayed after the crash
        log.log(record)
    log.close()
    log = TensorBoardLogger(tmp_path / "tb", purge_step=6)
    for record in records[5:]:
        log.log(record)
    log.close()
    assert [s for s, _ in scalars(tmp_path / "tb")["train/loss"]] == list(range(1, 13))


def test_tensorboard_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError) as info:
        TensorBoardLogger(tmp_path / "tb")
    assert str(info.value) == (
        "TensorBoard logging needs the tensorboard package: pip install 'ravine[tensorboard]'"
    )
    with pytest.raises(ImportError, match=r"ravine\[tensorboard\]"):
        make_loggers(["tensorboard"], tmp_path)


# ---------------------------------------------------------------------------------------
# make_loggers


class ListLogger:
    def __init__(self):
        self.records, self.closed = [], False

    def log(self, record):
        self.records.append(record)

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_make_loggers_always_puts_jsonl_first_with_a_run_dir(tmp_path):
    mine = ListLogger()
    loggers = make_loggers(["csv", mine, "csv", "jsonl"], tmp_path)
    assert [type(x) for x in loggers] == [JsonlLogger, CsvLogger, ListLogger]
    assert loggers[0].path == tmp_path / "metrics.jsonl"
    assert loggers[1].path == tmp_path / "metrics.csv"
    assert loggers[2] is mine
    for logger in loggers:
        logger.log({"kind": "epoch", "epoch": 1, "train_loss": 0.5})
        logger.close()
    assert read_metrics(tmp_path / "metrics.jsonl")[0] == [{"epoch": 1, "train_loss": 0.5}]
    assert read_csv(tmp_path / "metrics.csv")[1] == [{"epoch": "1", "train_loss": "0.5"}]
    assert mine.records and mine.closed
    assert [type(x) for x in make_loggers(None, tmp_path)] == [JsonlLogger]
    assert make_loggers(None, None) == []
    assert make_loggers(mine, None) == [mine]


def test_make_loggers_with_tensorboard(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    loggers = make_loggers("tensorboard", tmp_path)
    assert [type(x) for x in loggers] == [JsonlLogger, TensorBoardLogger]
    assert loggers[1].log_dir == tmp_path / "tensorboard"
    for logger in loggers:
        logger.close()


def test_make_loggers_resumes_every_file(tmp_path):
    records = run_records(epochs=5)
    loggers = make_loggers(["csv"], tmp_path)
    for record in records[:8]:  # through the end of epoch 2
        for logger in loggers:
            logger.log(record)
    point = ResumePoint(jsonl_bytes=loggers[0].offset(), csv_rows=loggers[1].rows, step=6)
    for record in records[8:14]:
        for logger in loggers:
            logger.log(record)
    for logger in loggers:
        logger.close()
    loggers = make_loggers(["csv"], tmp_path, resume=point)
    for record in records[8:]:
        for logger in loggers:
            logger.log(record)
    for logger in loggers:
        logger.close()
    straight = make_loggers(["csv"], tmp_path / "straight")  # a new folder: created
    for record in records:
        for logger in straight:
            logger.log(record)
    for logger in straight:
        logger.close()
    for name in ("metrics.jsonl", "metrics.csv"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()


def test_make_loggers_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown logger 'tensorbord'; did you mean 'tensorboard'"):
        make_loggers(["tensorbord"], tmp_path)
    with pytest.raises(ValueError, match=r"unknown logger 'wandb' \(choose from jsonl, csv"):
        make_loggers("wandb", tmp_path)
    with pytest.raises(ValueError, match="'csv' writes into the run directory; give run_dir"):
        make_loggers(["csv"], None)
    with pytest.raises(TypeError, match="got int"):
        make_loggers([3], tmp_path)
