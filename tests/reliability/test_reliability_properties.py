"""Property tests (Hypothesis): arbitrary input gives a valid result or ravine's one-line error.

Each property runs a few dozen generated examples, so the file stays within seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ravine import optim
from ravine._io import YAMLError, safe_yaml
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
