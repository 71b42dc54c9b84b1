"""The one error toolkit: one validation-error formatter, one atomic writer.

Run configs (``ravine train``, ``fit``) and benchmark suites / studies (``ravine compare``,
``tune``) report a bad key through the same formatter, so the same mistake reads the same; every
file ravine writes goes through ``ravine._io.write_atomic`` (temporary file, fsync, rename,
fsync of the folder).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import stat
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import ravine
from ravine import _checks, _io
from ravine._checks import format_validation_error
from ravine.bench.config import SuiteSpec, TuningSpec, load_suite
from ravine.bench.problems import QuadraticSpec
from ravine.commands.launcher import ERRORS_ENV, report_failure
from ravine.config import ConfigError, RunConfig, validate_config
from ravine.data import builtin
from ravine.train.checkpoint import load_checkpoint, save_checkpoint
from ravine.train.loggers import CsvLogger
from ravine.train.options import FitOptions, OptimizerConfig

RUN = {"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [4]}}
SUITE = {"problems": ["quadratic"], "optimizers": ["sgd"]}


def run_error(**changes) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config({**RUN, **changes}, "exp.yaml")
    return str(info.value)


def suite_error(**changes) -> str:
    with pytest.raises(ConfigError) as info:
        load_suite({**SUITE, **changes})
    return str(info.value)


def closest(word: str, model) -> str:
    return difflib.get_close_matches(word, list(model.model_fields), n=1)[0]


def valid(model) -> str:
    return f"(valid: {', '.join(model.model_fields)})"


def literals(model, key: str) -> list[str]:
    """The values of the ``Literal`` that ``model.key`` is (``None`` aside)."""
    annotation = model.model_fields[key].annotation
    members = typing.get_args(annotation) if typing.get_origin(annotation) is not Literal else ()
    literal = next((m for m in members if typing.get_origin(m) is Literal), annotation)
    return list(typing.get_args(literal))


def pydantic_choices(values: list[str]) -> str:
    quoted = [repr(v) for v in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


# --------------------------------------------------------------------------- the formatter


def test_an_unknown_key_reads_the_same_in_a_run_config_and_in_a_suite():
    run = run_error(optimizer={"name": "sgd", "lrr": 0.1})
    suite = suite_error(tuning={"metod": "grid"})
    with pytest.raises(ConfigError) as info:
        FitOptions.from_kwargs(optimizer={"name": "sgd", "lrr": 1})
    fit = str(info.value)
    key = f"unknown key; did you mean {closest('lrr', OptimizerConfig)!r}? {valid(OptimizerConfig)}"
    assert run == f"exp.yaml: optimizer.lrr: {key}"
    assert fit == f"fit: optimizer.lrr: {key}"
    assert suite == (
        f"tuning.metod: unknown key; did you mean {closest('metod', TuningSpec)!r}? "
        f"{valid(TuningSpec)}"
    )


def test_a_value_outside_a_set_names_the_allowed_values_and_the_closest_in_both():
    run = run_error(batching="epochs")
    suite = suite_error(tuning={"method": "gird"})
    for message, key, model, given in (
        (run, "batching", FitOptions, "epochs"),
        (suite, "tuning.method", TuningSpec, "gird"),
    ):
        allowed = literals(model, key.split(".")[-1])
        hint = difflib.get_close_matches(given, allowed, n=1)[0]
        assert message.endswith(
            f"{key}: Input should be {pydantic_choices(allowed)}, got {given!r}; "
            f"did you mean {hint!r}?"
        )


def test_every_problem_is_listed_once_with_its_path_unknown_keys_first():
    message = suite_error(
        problems=[{"kind": "quadratic", "kapa": 3}, {"kind": "rosenbrok"}],
        tuning={"metod": 1},
        seeds=0,
    )
    order = [
        "problems[0].kapa: unknown key",
        "tuning.metod: unknown key",
        "problems[1]: unknown kind 'rosenbrok'",
        "seeds: seeds must be >= 1, got 0",
    ]
    assert [message.index(p) for p in order] == sorted(message.index(p) for p in order)
    assert valid(QuadraticSpec) in message and valid(TuningSpec) in message
    # run configs list every problem too (the suite formatter used to report the first only)
    run = run_error(optimizer={"name": "sgd", "lrr": 1}, epochs=0, batching="x")
    order = ["exp.yaml: optimizer.lrr: unknown key", "; epochs: ", "; batching: "]
    assert [run.index(p) for p in order] == sorted(run.index(p) for p in order)


def test_a_misspelt_required_key_is_reported_once_as_the_misspelling():
    message = suite_error(problem=["quadratic"], problems=None)
    assert "problem: unknown key; did you mean 'problems'?" in message
    with pytest.raises(ConfigError) as info:
        load_suite({"problem": ["quadratic"], "optimizers": ["sgd"]})
    assert "required key is missing" not in str(info.value)
    # a missing key that no unknown key explains is still reported
    with pytest.raises(ConfigError) as info:
        load_suite({"optimizers": ["sgd"]})
    assert str(info.value) == "problems: required key is missing"


def test_a_wrong_type_beside_another_problem_is_not_dropped_as_union_noise():
    # the run-config formatter dropped 'early_stopping: ... got 5' whenever another problem
    # existed, since a model-type error can also be the noise of a union
    message = run_error(early_stopping=5, epochs=0)
    assert "early_stopping: Input should be a valid dictionary" in message
    assert "epochs: Input should be greater than or equal to 1, got 0" in message
    # the noise of a union whose other member says what is wrong is still dropped
    assert run_error(loss="mes") == (
        "exp.yaml: loss: Input should be 'cross_entropy', 'mse' or 'bce', got 'mes'; "
        "did you mean 'mse'?"
    )


def test_a_missing_kind_lists_the_kinds():
    message = suite_error(problems=[{"kappa": 3}])
    assert message.startswith("problems[0]: required key 'kind' is missing (valid: quadratic, ")


def test_the_message_stays_one_short_line_whatever_the_input():
    many = run_error(**{f"extra{i}": 1 for i in range(40)})
    more = 40 - _checks.MAX_PROBLEMS
    assert many.endswith(f"; and {more} more") and "\n" not in many
    assert many.count("(valid: ") == 1  # the valid keys of one section, listed once
    huge = run_error(**{"k" * 10_000 + "\n": "v" * 10_000}, epochs="x" * 10_000)
    assert len(huge) < 1500 and "\n" not in huge


def test_the_formatter_is_the_one_every_schema_uses():
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate({**RUN, "optimzer": {}})
    expected = format_validation_error(info.value, RunConfig, "exp.yaml")
    assert run_error(optimzer={}) == expected
    with pytest.raises(ValidationError) as info:
        SuiteSpec.model_validate({**SUITE, "seeds": 0})
    assert suite_error(seeds=0) == format_validation_error(info.value, SuiteSpec)
    assert not hasattr(_checks, "validation_message")


# --------------------------------------------------------------------------- the atomic writer


@pytest.fixture
def trace(monkeypatch):
    """The fsyncs (of a file or a folder) and renames the process makes, in order."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names the synced files through /proc (Linux)")
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(
            (
                "replace",
                str(src),
                str(dst),
                Path(dst).read_bytes() if Path(dst).exists() else None,
                Path(src).read_bytes(),
            )
        )
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_atomic(events: list[tuple], target: Path) -> bytes:
    """One complete temporary file beside ``target``, fsync-ed, renamed onto it, then the folder
    fsync-ed; returns what the temporary file held at the rename."""
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target)]
    assert renames, events
    i = renames[-1]
    _, src, _, _, content = events[i]
    assert Path(src).parent == target.parent and Path(src).name.startswith(f".{target.name}.")
    assert ("fsync", "file", src) in events[:i]
    assert ("fsync", "dir", str(target.parent)) in events[i + 1 :]
    assert target.read_bytes() == content
    return content


def test_text_and_binary_writes_round_trip_and_sync_file_then_folder(tmp_path, trace):
    text = tmp_path / "a" / "table.csv"
    _io.write_atomic(text, lambda f: f.write("é,1\r\n2,3\n"), newline="")
    assert text.read_bytes() == "é,1\r\n2,3\n".encode()
    assert_atomic(trace, text)
    blob = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 3
    _io.write_atomic(blob, lambda f: f.write(payload), binary=True)
    assert assert_atomic(trace, blob) == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "blob.bin"]  # no temporary left


def test_the_old_file_stays_until_the_complete_new_one_replaces_it(tmp_path, trace):
    path = tmp_path / "f.txt"
    for i in range(3):
        _io.write_atomic(path, lambda f, i=i: f.write(f"version {i}\n" * 1000))
    olds = [e[3] for e in trace if e[0] == "replace"]
    news = [e[4] for e in trace if e[0] == "replace"]
    assert olds == [None, *news[:-1]]
    assert news == [f"version {i}\n".encode() * 1000 for i in range(3)]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    _io.write_atomic(path, lambda f: f.write("old"))

    def fails(f):
        f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _io.write_atomic(path, fails)
    with pytest.raises(TypeError):
        _io.write_atomic(path, lambda f: f.write(b"bytes into a text file"))
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    path = tmp_path / "shared.npz"

    def outer(f):
        f.write(b"outer")
        # another writer of the same file starts and finishes in the middle of this write
        _io.write_atomic(path, lambda g: g.write(b"inner"), binary=True)

    _io.write_atomic(path, outer, binary=True)
    assert path.read_bytes() == b"outer"  # the last rename wins, complete
    assert [p.name for p in tmp_path.iterdir()] == ["shared.npz"]


def test_a_single_writer_reuses_one_temporary_name_so_leftovers_do_not_pile_up(tmp_path):
    path = tmp_path / "last.pt"
    leftover = tmp_path / ".last.pt.tmp"
    leftover.write_bytes(b"torn by a kill")
    _io.write_atomic(path, lambda f: f.write(b"new"), binary=True, single_writer=True)
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_written_files_get_the_default_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "config.yaml"
    _io.write_yaml_atomic({"a": 1}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_every_writer_in_the_package_goes_through_write_atomic(tmp_path, trace, monkeypatch):
    checkpoint = tmp_path / "run" / "last.pt"
    save_checkpoint({"w": torch.arange(4.0)}, checkpoint)
    assert_atomic(trace, checkpoint)
    assert torch.equal(load_checkpoint(checkpoint)["w"], torch.arange(4.0))

    table = tmp_path / "run" / "metrics.csv"
    logger = CsvLogger(table)
    logger.log({"kind": "epoch", "epoch": 1, "loss": 0.5})
    logger.close()
    assert assert_atomic(trace, table) == b"epoch,loss\n1,0.5\n"

    arrays = {k: np.arange(6).reshape(2, 3) + i for i, k in enumerate(builtin._MNIST1D_ARRAYS)}
    monkeypatch.setenv("RAVINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(builtin, "_generate_mnist1d", lambda: arrays)
    _, cached = builtin._mnist1d_arrays()
    version = importlib.metadata.version("mnist1d")
    assert cached == tmp_path / "cache" / f"mnist1d-{version}.npz"
    assert_atomic(trace, cached)
    with np.load(cached) as saved:
        assert all(np.array_equal(saved[k], arrays[k]) for k in arrays)

    folder = tmp_path / "ranks"
    folder.mkdir()
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(ERRORS_ENV, str(folder))
    report_failure("train", "boom", 2)
    assert b'"message": "ravine train: rank 1: boom"' in assert_atomic(
        trace, folder / "rank-1.json"
    )


def test_no_module_renames_files_by_itself():
    # bench/compare.py renames a finished run *folder* into place, which a file writer cannot
    root = Path(ravine.__file__).parent
    renaming = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "os.replace(" in p.read_text(encoding="utf-8")
    )
    assert renaming == ["_io.py", "bench/compare.py"]
