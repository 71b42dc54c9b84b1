"""Property tests (Hypothesis): arbitrary input gives a valid result or ravine's one-line error.

Each property runs a few dozen generated examples, so the file stays within seconds.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ravine import data, optim
from ravine._io import YAMLError, safe_yaml
from ravine.config import ConfigError, RunConfig, load_config, parse_overrides, validate_config
from ravine.data import EpochBatches
from ravine.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

FEW = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)


def one_line_error(exc: BaseException) -> None:
    assert isinstance(exc, (ValueError, TypeError)), repr(exc)
    assert "\n" not in str(exc) and str(exc)


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "name, key",
    [(name, key) for name in optim.names() for key in ("lr", *optim.hyperparameters(name))],
)
@FEW
@given(value=ANY_VALUE)
def test_any_hyperparameter_value_constructs_or_fails_in_one_line(name, key, value):
    param = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    hp = {"lr": 0.1, key: value}
    try:
        optim.create(name, [param], **hp)
    except Exception as exc:  # noqa: BLE001 - the property is about the exception's type
        one_line_error(exc)


# --------------------------------------------------------------------------- batching


@st.composite
def sampler_settings(draw):
    n = draw(st.integers(1, 60))
    return dict(
        n=n,
        batch_size=draw(st.integers(1, n)),
        seed=draw(st.integers(0, 2**31)),
        drop_last=draw(st.booleans()),
        epoch=draw(st.integers(0, 5)),
    )


@FEW
@given(s=sampler_settings())
def test_epoch_batches_cover_every_example_once_per_epoch(s):
    sampler = EpochBatches(s["n"], s["batch_size"], seed=s["seed"], drop_last=s["drop_last"])
    batches = list(sampler.epoch_batches(s["epoch"]))
    seen = torch.cat(batches).tolist()
    assert len(seen) == len(set(seen))  # no example twice
    full = s["n"] // s["batch_size"] * s["batch_size"] if s["drop_last"] else s["n"]
    assert len(seen) == full and set(seen) <= set(range(s["n"]))
    assert all(len(b) == s["batch_size"] for b in batches[:-1])
    assert len(batches) == len(sampler)


@FEW
@given(s=sampler_settings(), data=st.data())
def test_epoch_batches_resume_at_any_step_gives_the_remaining_batches(s, data):
    sampler = EpochBatches(s["n"], s["batch_size"], seed=s["seed"], drop_last=s["drop_last"])
    sampler.epoch = s["epoch"]
    whole = [b.tolist() for b in sampler.epoch_batches(s["epoch"])]
    taken = data.draw(st.integers(0, len(whole)))
    iterator = iter(sampler)
    head = [next(iterator).tolist() for _ in range(taken)]
    state = sampler.state_dict()
    resumed = EpochBatches(s["n"], s["batch_size"], seed=s["seed"], drop_last=s["drop_last"])
    resumed.load_state_dict(state)
    tail = [b.tolist() for b in iter(resumed)] if taken < len(whole) else []
    assert head + tail == whole


# --------------------------------------------------------------------------- checkpoints

LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.floats(-1e6, 1e6), max_size=5).map(lambda v: torch.tensor(v, dtype=torch.float64)),
    st.lists(st.integers(-100, 100), min_size=1, max_size=4).map(torch.tensor),
)
STATES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and (
        a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    )


@FEW
@given(
    state=st.dictionaries(
        st.text(max_size=6).filter(lambda k: k not in ("format", "version", "sha256")),
        STATES,
        max_size=4,
    )
)
def test_checkpoints_round_trip_arbitrary_state(tmp_path, state):
    path = tmp_path / "state.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert same({k: v for k, v in loaded.items() if k not in ("format", "version")}, state)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> tuple[bytes, dict]:
    state = {
        "model": {"w": torch.arange(24, dtype=torch.float64).reshape(4, 6)},
        "step": 7,
        "history": [{"loss": 0.5}],
    }
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(state, path)
    return path.read_bytes(), state


@FEW
@given(data=st.data())
def test_a_truncated_or_bit_flipped_checkpoint_is_refused_or_unchanged(
    tmp_path, checkpoint_bytes, data
):
    raw, state = checkpoint_bytes
    if data.draw(st.booleans(), label="truncate"):
        damaged = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        at = data.draw(st.integers(0, len(raw) - 1), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        damaged = raw[:at] + bytes([raw[at] ^ (1 << bit)]) + raw[at + 1 :]
    path = tmp_path / "damaged.pt"
    path.write_bytes(damaged)
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        # a flip in bytes that carry no data (zip timestamps, padding) loads the same state
        assert same({k: v for k, v in loaded.items() if k not in ("format", "version")}, state)


# --------------------------------------------------------------------------- YAML


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    text=st.one_of(
        st.text(max_size=60),
        st.lists(
            st.sampled_from(
                [
                    "a",
                    ":",
                    " ",
                    "-",
                    "\n",
                    "&x",
                    "*x",
                    "[",
                    "]",
                    "{",
                    "}",
                    "!!",
                    "'",
                    '"',
                    "#",
                    "2001-13-45",
                    "0x",
                    "1e9",
                    "~",
                    "? ",
                    "|",
                    ">",
                    "!!python/object",
                    "<<",
                    "%YAML",
                    "---",
                    "\t",
                    "\\",
                ]
            ),
            max_size=25,
        ).map("".join),
    )
)
def test_safe_yaml_on_random_text_returns_or_raises_yaml_error(text):
    try:
        safe_yaml(text, "input.yaml")
    except YAMLError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("input.yaml: ")


# --------------------------------------------------------------------------- run configs

# Keys a config may hold, a misspelling, and keys of no section: the generated mappings reach
# the sections' own validators as well as the unknown-key path.
CONFIG_KEYS = st.sampled_from(
    [
        "data",
        "model",
        "optimizer",
        "schedule",
        "epochs",
        "batch_size",
        "lr",
        "loss",
        "early_stopping",
        "device",
        "seed",
        "metrics",
        "loggers",
        "diagnostics",
        "run_dir",
        "name",
        "kind",
        "hidden",
        "norm",
        "dropout",
        "val_fraction",
        "patience",
        "momentum",
        "betas",
        "warmup_steps",
        "optimzer",
        "0",
        "",
    ]
)
SCALARS = st.one_of(
    ANY_VALUE,
    st.integers(0, 4),
    st.floats(0, 1),
    st.sampled_from(["digits", "mlp", "adam", "cnn1d", "cosine", "cpu", "mse", "batch", "max"]),
)
NESTED = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(CONFIG_KEYS, st.text(max_size=4)), inner, max_size=3),
    ),
    max_leaves=10,
)
# A valid config, so that a change at one key is judged by that key's validator alone.
VALID_RUN = {
    "data": {"name": "digits", "val_fraction": 0.2},
    "model": {"kind": "mlp", "hidden": [4]},
    "optimizer": {"name": "momentum", "lr": 0.1, "momentum": 0.9},
    "schedule": {"name": "linear-decay"},
    "early_stopping": {"patience": 2},
    "epochs": 2,
}
PATHS = st.sampled_from(
    [
        ("data",),
        ("data", "name"),
        ("data", "val_fraction"),
        ("data", "seed"),
        ("data", "size"),
        ("model",),
        ("model", "kind"),
        ("model", "hidden"),
        ("model", "norm"),
        ("model", "dropout"),
        ("model", "channels"),
        ("optimizer",),
        ("optimizer", "name"),
        ("optimizer", "lr"),
        ("optimizer", "betas"),
        ("optimizer", "rho"),
        ("schedule",),
        ("schedule", "name"),
        ("schedule", "gamma"),
        ("early_stopping",),
        ("early_stopping", "mode"),
        ("epochs",),
        ("batching",),
        ("loss",),
        ("precision",),
        ("device",),
        ("clip_norm",),
        ("metrics",),
        ("loggers",),
        ("diagnostics",),
        ("seed",),
        ("accumulate",),
        ("optimzer", "lr"),
    ]
)


def config_error(exc: BaseException, source: str) -> None:
    """ravine's one-line configuration error, naming its source, of bounded length."""
    assert isinstance(exc, ConfigError), repr(exc)
    text = str(exc)
    assert "\n" not in text and text.startswith(f"{source}: "), text
    assert len(text) < 5000, len(text)


def with_change(path: tuple[str, ...], value) -> dict:
    raw = copy.deepcopy(VALID_RUN)
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return raw


@FEW
@given(raw=st.one_of(NESTED, st.dictionaries(CONFIG_KEYS, NESTED, max_size=6)))
def test_validate_config_on_arbitrary_mappings_returns_a_config_or_one_line(raw):
    try:
        config = validate_config(raw, "cfg.yaml")
    except Exception as exc:  # noqa: BLE001 - the property is about the exception's type
        config_error(exc, "cfg.yaml")
    else:
        assert isinstance(config, RunConfig)


@settings(FEW, max_examples=80)
@given(path=PATHS, value=NESTED)
def test_validate_config_on_one_arbitrary_value_returns_a_config_or_one_line(path, value):
    raw = with_change(path, value)
    try:
        config = validate_config(raw, "cfg.yaml")
    except Exception as exc:  # noqa: BLE001
        config_error(exc, "cfg.yaml")
    else:
        assert isinstance(config, RunConfig)


@FEW
@given(
    text=st.one_of(
        NESTED.map(lambda v: yaml.safe_dump(v)),
        st.builds(with_change, PATHS, NESTED).map(yaml.safe_dump),
        st.text(max_size=40),
    )
)
def test_load_config_on_arbitrary_yaml_text_returns_a_config_or_one_line(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config(path)
    except Exception as exc:  # noqa: BLE001
        config_error(exc, str(path))
    else:
        assert isinstance(config, RunConfig)


# --------------------------------------------------------------------------- --set overrides

IDENTIFIER = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)
# Values whose JSON spelling is YAML with the same meaning (PyYAML reads "1e-05" as a string,
# so floats are left to the arbitrary-text property below).
PLAIN = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**12), 10**12),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8),
    ),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@FEW
@given(parts=st.lists(IDENTIFIER, min_size=1, max_size=3), value=PLAIN)
def test_set_parses_dotted_keys_and_yaml_values(parts, value):
    item = f"{'.'.join(parts)}={json.dumps(value, ensure_ascii=False)}"
    assert parse_overrides([item]) == [(parts, value)]


OVERRIDE_TEXT = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda key, value: f"{key}={value}",
        st.one_of(
            st.sampled_from(
                [
                    "optimizer.lr",
                    "epochs",
                    "model.hidden",
                    "data.name",
                    "optimizer",
                    "model",
                    "early_stopping.patience",
                    "schedule",
                    "optimzer.lr",
                    "a..b",
                    ".x",
                    "lr.x",
                    "data.val_fraction",
                    "device",
                    "loss",
                ]
            ),
            st.text(max_size=10),
        ),
        st.one_of(
            st.text(max_size=15),
            st.sampled_from(
                [
                    "1e-5",
                    "[1, 2",
                    "{a: 1}",
                    "null",
                    "&a [*a]",
                    "!!python/none",
                    "0x1F",
                    "-.inf",
                    ".nan",
                    "'x",
                    "2001-13-45",
                    "~",
                    "[8, 4]",
                ]
            ),
        ),
    ),
)


@FEW
@given(items=st.lists(OVERRIDE_TEXT, min_size=1, max_size=3))
def test_set_on_arbitrary_text_gives_a_config_or_one_line(tmp_path, items):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(VALID_RUN), encoding="utf-8")
    try:
        parse_overrides(items)
    except Exception as exc:  # noqa: BLE001
        assert isinstance(exc, ConfigError), repr(exc)
        assert "\n" not in str(exc) and str(exc).startswith("--set "), str(exc)
    try:
        config = load_config(path, items)
    except Exception as exc:  # noqa: BLE001
        assert isinstance(exc, ConfigError), repr(exc)
        assert "\n" not in str(exc) and len(str(exc)) < 5000, str(exc)
    else:
        assert isinstance(config, RunConfig)


@pytest.mark.parametrize("item", ["a\nb=[", "epochs.a\nb=1"])
def test_set_key_with_a_line_break_is_reported_on_one_line(tmp_path, item):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(VALID_RUN), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, [item])
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- CSV and NPZ files


def data_error(exc: BaseException, path) -> None:
    """ravine's one-line data error: a ValueError naming the file."""
    assert isinstance(exc, ValueError), repr(exc)
    text = str(exc)
    assert "\n" not in text and text.startswith(str(path)), text


def load_file(path):
    """The rows of x over all splits, sorted, or ``None`` after a one-line error."""
    try:
        splits = data.load(
            str(path), seed=0, val_fraction=0.25, test_fraction=0.25, dtype=torch.float64
        )
    except Exception as exc:  # noqa: BLE001
        data_error(exc, path)
        return None
    parts = [splits.train, splits.val, splits.test]
    return sorted(tuple(row) for part in parts for row in part.x.flatten(1).tolist())


NUMBERS = st.one_of(
    st.integers(-3, 3).map(str),
    st.floats(-10, 10).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
CELLS = st.one_of(
    NUMBERS,
    NUMBERS,
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "inf",
            "a",
            "b",
            '"q"',
            "1,2",
            "x\ny",
            "1e400",
            "0x10",
            "label",
            "\ufeff",
            "１",
        ]
    ),
    st.text(max_size=4),
)


@st.composite
def csv_texts(draw) -> str:
    """A CSV table: a well-formed one (finite features, a label column) with one cell or the
    header perhaps changed, or a table of arbitrary cells and row lengths."""
    columns = draw(st.integers(1, 4))
    if draw(st.booleans()):
        header = [f"f{j}" for j in range(columns - 1)] + ["label"]
        finite = st.floats(-10, 10).map(repr)
        # class numbers, class names or regression targets, one kind per table
        labels = draw(
            st.sampled_from(
                [st.sampled_from(["0", "1", "2"]), st.sampled_from(["cat", "dog"]), finite]
            )
        )
        rows = draw(
            st.lists(
                st.tuples(st.lists(finite, min_size=columns - 1, max_size=columns - 1), labels),
                min_size=6,
                max_size=12,
            )
        )
        rows = [[*r, label] for r, label in rows]
        change = draw(st.sampled_from(["none", "cell", "header"]))
        if change == "cell":
            rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, columns - 1))] = draw(
                CELLS
            )
        elif change == "header":
            header[draw(st.integers(0, columns - 1))] = draw(CELLS)
    else:
        header = draw(st.lists(CELLS, min_size=columns, max_size=columns))
        if draw(st.booleans()):
            header[draw(st.integers(0, columns - 1))] = "label"
        width = st.integers(columns - 1, columns + 1)
        rows = draw(
            st.lists(width.flatmap(lambda n: st.lists(CELLS, min_size=n, max_size=n)), max_size=10)
        )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@st.composite
def csv_bytes(draw) -> bytes:
    text = draw(csv_texts())
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16"]))
    return text.encode(encoding, errors="replace")


@settings(FEW, max_examples=60)
@given(content=st.one_of(st.binary(max_size=80), csv_bytes()))
def test_csv_files_of_arbitrary_bytes_load_or_fail_in_one_line(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    rows = load_file(path)
    if rows is not None:  # loaded: every data row's features, as float() reads them
        table = [r for r in csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")) if r]
        label = [c.strip() for c in table[0]].index("label")
        expected = [tuple(float(c) for j, c in enumerate(r) if j != label) for r in table[1:]]
        assert rows == sorted(expected)


ARRAYS = st.one_of(
    hnp.arrays(
        st.sampled_from(
            [
                np.float64,
                np.float32,
                np.int64,
                np.int8,
                np.bool_,
                np.complex64,
                "<U2",
                "S2",
                "datetime64[D]",
            ]
        ),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    ),
)


@st.composite
def npz_bytes(draw) -> bytes:
    """An .npz archive of arbitrary arrays under the names x, y and others (or not)."""
    names = draw(st.lists(st.sampled_from(["x", "y", "z", "X"]), max_size=3, unique=True))
    if draw(st.booleans()):
        names = ["x", "y", *[n for n in names if n not in ("x", "y")]]
    arrays = {n: draw(ARRAYS) for n in names}
    if draw(st.booleans()) and {"x", "y"} <= arrays.keys():
        # the same number of rows, so that the checks after the row count are reached too
        rows = draw(st.integers(1, 6))
        arrays["x"] = draw(hnp.arrays(np.float64, (rows, draw(st.integers(1, 3)))))
        arrays["y"] = draw(hnp.arrays(st.sampled_from([np.float64, np.int64, "<U2"]), (rows,)))
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@FEW
@given(content=st.one_of(st.binary(max_size=80), npz_bytes()))
def test_npz_files_of_arbitrary_arrays_or_bytes_load_or_fail_in_one_line(tmp_path, content):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    rows = load_file(path)
    if rows is not None:  # loaded: every row of x, as numpy stored it
        with np.load(path) as archive:
            x = archive["x"].astype(np.float64)
        assert rows == sorted(tuple(r) for r in x.reshape(len(x), -1).tolist())


@pytest.fixture(scope="module")
def npz_archives() -> list[bytes]:
    x, y = np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 1, 0, 1])
    out = []
    for save in (np.savez, np.savez_compressed):
        buffer = io.BytesIO()
        save(buffer, x=x, y=y)
        out.append(buffer.getvalue())
    return out


@FEW
@given(data=st.data())
def test_a_truncated_or_bit_flipped_npz_fails_in_one_line(tmp_path, npz_archives, data):
    raw = data.draw(st.sampled_from(npz_archives), label="archive")
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        at = data.draw(st.integers(0, len(raw) - 1), label="byte")
        raw = raw[:at] + bytes([raw[at] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[at + 1 :]
    path = tmp_path / "data.npz"
    path.write_bytes(raw)
    load_file(path)
