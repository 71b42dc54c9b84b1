"""data.load on real data (mnist1d, digits), the quadratic problem, user CSV/NPZ, and iterate."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from ravine import data
from ravine.data import ArrayDataset, EpochBatches, RandomBatches, iterate, load

# --------------------------------------------------------------------------- fixtures


def generate_mnist1d_directly() -> dict[str, np.ndarray]:
    """The package's own standard dataset, global RNGs restored (independent of ravine)."""
    from mnist1d.data import get_dataset_args, make_dataset

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@pytest.fixture(scope="session")
def mnist1d_reference() -> dict[str, np.ndarray]:
    return generate_mnist1d_directly()


@pytest.fixture(scope="session")
def mnist1d_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the generated mnist1d, shared by the tests that only read it."""
    directory = tmp_path_factory.mktemp("ravine-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAVINE_CACHE_DIR", str(directory))
        load("mnist1d")
    return directory


@pytest.fixture
def cached_mnist1d(mnist1d_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAVINE_CACHE_DIR", str(mnist1d_cache))
    return mnist1d_cache


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def raises_exactly(message: str):
    return pytest.raises(ValueError, match=re.escape(message))


# --------------------------------------------------------------------------- mnist1d


def test_mnist1d_is_the_packages_standard_split(cached_mnist1d: Path, mnist1d_reference) -> None:
    ref = mnist1d_reference
    splits = load("mnist1d", seed=0, val_fraction=0.1)
    assert (splits.name, splits.task, splits.num_features) == ("mnist1d", "classification", 40)
    assert splits.num_classes == len(np.unique(ref["y"])) == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3600, 400, 1000)
    assert torch.equal(splits.test.x, torch.from_numpy(ref["x_test"]).float())
    assert torch.equal(splits.test.y, torch.from_numpy(ref["y_test"]))
    idx = splits.info["split_indices"]
    assert np.array_equal(np.sort(np.concatenate([idx["train"], idx["val"]])), np.arange(4000))
    for part in ("train", "val"):
        dataset = getattr(splits, part)
        assert torch.equal(dataset.x, torch.from_numpy(ref["x"][idx[part]]).float())
        assert torch.equal(dataset.y, torch.from_numpy(ref["y"][idx[part]]))
        assert dataset.x.dtype == torch.float32 and dataset.y.dtype == torch.int64


def test_mnist1d_validation_split_follows_the_seed(cached_mnist1d: Path) -> None:
    a, b, c = load("mnist1d", seed=0), load("mnist1d", seed=0), load("mnist1d", seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.x, b.train.x)
    assert not np.array_equal(a.info["split_indices"]["val"], c.info["split_indices"]["val"])
    assert torch.equal(a.test.x, c.test.x)
    whole = load("mnist1d", val_fraction=0.0)
    assert whole.val is None and len(whole.train) == 4000


def test_mnist1d_cache_miss_then_hit_without_leaking_global_rng(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnist1d.data

    monkeypatch.setenv("RAVINE_CACHE_DIR", str(tmp_path))
    random.seed(7)
    np.random.seed(7)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    first = load("mnist1d")  # cache miss: generates, which reseeds the globals internally
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert np.random.rand() == np.random.RandomState(7).rand()
    assert random.random() == random.Random(7).random()

    files = list(tmp_path.iterdir())
    assert [p.name for p in files] == [Path(first.info["cache_path"]).name]  # no temporaries left

    def must_not_generate(*args, **kwargs):
        raise AssertionError("cache hit expected, but mnist1d was regenerated")

    monkeypatch.setattr(mnist1d.data, "make_dataset", must_not_generate)
    second = load("mnist1d")
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(first, part).x, getattr(second, part).x)
        assert torch.equal(getattr(first, part).y, getattr(second, part).y)


def test_mnist1d_damaged_cache_is_regenerated(
    cached_mnist1d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist1d_reference
) -> None:
    path = tmp_path / Path(load("mnist1d").info["cache_path"]).name
    path.write_bytes(b"not an npz archive")
    monkeypatch.setenv("RAVINE_CACHE_DIR", str(tmp_path))
    splits = load("mnist1d")
    assert torch.equal(splits.test.x, torch.from_numpy(mnist1d_reference["x_test"]).float())
    with np.load(path) as cached:
        assert np.array_equal(cached["x_test"], mnist1d_reference["x_test"])


def test_mnist1d_unwritable_cache_warns_and_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist1d_reference
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RAVINE_CACHE_DIR", str(blocker / "cache"))  # cannot be a directory
    with pytest.warns(RuntimeWarning, match="could not cache mnist1d"):
        splits = load("mnist1d")
    assert torch.equal(splits.test.y, torch.from_numpy(mnist1d_reference["y_test"]))


def test_interrupted_cache_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("RAVINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.warns(RuntimeWarning, match="No space left on device"):
        load("mnist1d")
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAVINE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("RAVINE_CACHE_DIR")
    assert data.cache_dir() == tmp_path / "xdg" / "ravine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "ravine"


def test_mnist1d_epoch_visits_every_training_example_once(cached_mnist1d: Path) -> None:
    splits = load("mnist1d", seed=0)
    sampler = EpochBatches(len(splits.train), 128, seed=0)
    xs, ys = zip(*iterate(splits.train, sampler), strict=True)
    assert len(xs) == len(sampler) == 29
    order = sampler.order(0)
    assert torch.equal(torch.cat(xs), splits.train.x[order])
    assert torch.equal(torch.cat(ys), splits.train.y[order])


# --------------------------------------------------------------------------- digits


def test_digits_flat_vectors_scaled_to_unit_interval() -> None:
    reference = load_digits()
    splits = load("digits", seed=0)
    assert (splits.num_features, splits.num_classes, splits.task) == (64, 10, "classification")
    total = len(reference.target)
    n_test = round(0.2 * total)
    n_val = round(0.1 * (total - n_test))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        total - n_test - n_val,
        n_val,
        n_test,
    )
    idx = splits.info["split_indices"]
    everything = np.sort(np.concatenate([idx["train"], idx["val"], idx["test"]]))
    assert np.array_equal(everything, np.arange(total))
    for part in ("train", "val", "test"):
        dataset = getattr(splits, part)
        expected = torch.from_numpy(reference.data[idx[part]] / 16.0).float()
        assert torch.equal(dataset.x, expected)
        assert torch.equal(dataset.y, torch.from_numpy(reference.target[idx[part]]))
    assert float(splits.train.x.min()) == 0.0 and float(splits.train.x.max()) == 1.0


def test_digits_as_images_is_the_same_data_reshaped() -> None:
    flat, images = load("digits", seed=3), load("digits", seed=3, as_images=True)
    assert images.num_features == (1, 8, 8)
    assert images.train.x.shape == (len(flat.train), 1, 8, 8)
    assert torch.equal(images.train.x.reshape(-1, 64), flat.train.x)
    assert torch.equal(images.test.y, flat.test.y)
    # Row-major reshape: pixel (r, c) of an image is feature 8r + c.
    assert torch.equal(images.val.x[:, 0, 2, 5], flat.val.x[:, 8 * 2 + 5])


def test_standardize_uses_training_statistics_only() -> None:
    raw = load("digits", seed=1)
    std = load("digits", seed=1, standardize=True)
    train = raw.train.x.double().numpy()
    mean, scale = train.mean(axis=0), train.std(axis=0)
    scale[scale == 0] = 1.0
    for part in ("train", "val", "test"):
        expected = (getattr(raw, part).x.double().numpy() - mean) / scale
        np.testing.assert_allclose(getattr(std, part).x.numpy(), expected, rtol=1e-5, atol=1e-5)
    varying = train.std(axis=0) > 0
    np.testing.assert_allclose(std.train.x.double().numpy().mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(std.train.x.double().numpy().std(axis=0)[varying], 1, rtol=1e-5)
    # Validation statistics differ from the training ones, so validation is not re-centred.
    assert np.abs(std.val.x.double().numpy().mean(axis=0)[varying]).max() > 1e-3


# --------------------------------------------------------------------------- quadratic


def test_quadratic_hessian_has_the_requested_condition_number() -> None:
    splits = load("quadratic", seed=2, kappa=1e4, dim=6, n=60, dtype=torch.float64)
    x = splits.train.x.numpy()
    eigenvalues = np.linalg.eigvalsh(x.T @ x / len(x))
    np.testing.assert_allclose(eigenvalues.max() / eigenvalues.min(), 1e4, rtol=1e-9)
    np.testing.assert_allclose(np.sort(splits.info["hessian_eigenvalues"]), eigenvalues, rtol=1e-9)
    assert splits.info["kappa"] == pytest.approx(1e4, rel=1e-12)
    assert (splits.task, splits.num_classes, splits.num_features) == ("regression", 0, 6)
    # Noise-free targets are exactly linear in x, in every split.
    w_star = splits.info["w_star"]
    for part in ("train", "val", "test"):
        dataset = getattr(splits, part)
        assert dataset.y.shape == (len(dataset), 1)
        np.testing.assert_allclose(dataset.y.numpy()[:, 0], dataset.x.numpy() @ w_star, atol=1e-12)
    assert (len(splits.val), len(splits.test)) == (round(0.1 * 60), round(0.2 * 60))


def test_quadratic_float32_default_and_noise() -> None:
    splits = load("quadratic", seed=0, noise=0.5)
    x = splits.train.x.double().numpy()
    y = splits.train.y.double().numpy()[:, 0]
    eigenvalues = np.linalg.eigvalsh(x.T @ x / len(x))
    np.testing.assert_allclose(eigenvalues.max() / eigenvalues.min(), 100.0, rtol=1e-3)
    assert x.shape == (1000, 20)
    w_opt = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(splits.info["w_opt"], w_opt, rtol=1e-4, atol=1e-5)
    residual = y - x @ splits.info["w_star"]
    assert abs(residual.std() - 0.5) < 0.05  # the added noise has the requested scale


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kappa": 0.5}, "kappa must be a finite number >= 1, got 0.5"),
        ({"dim": 1, "kappa": 10.0}, "kappa must be 1 when dim == 1"),
        ({"dim": 5, "n": 4}, "n must be an integer >= dim = 5"),
        ({"noise": -1.0}, "noise must be a finite number >= 0, got -1.0"),
        ({"n": 50, "batch_size": 64}, "fewer than one batch (batch_size=64)"),
        ({"standardize": True}, "quadratic: unknown option 'standardize'"),
    ],
)
def test_quadratic_validates_options(kw: dict, message: str) -> None:
    with raises_exactly(message):
        load("quadratic", **kw)


# --------------------------------------------------------------------------- CSV


def test_csv_integer_labels_make_a_classification_problem(tmp_path: Path) -> None:
    rows = [(0.5 * i, -1.0 * i, [3, 7, 9][i % 3]) for i in range(30)]
    text = "a, label ,b\n" + "".join(f"{a},{y},{b}\n" for a, b, y in rows)
    splits = load(write(tmp_path, "data.csv", text), seed=0, val_fraction=0.2)
    assert (splits.task, splits.num_classes, splits.num_features) == ("classification", 3, 2)
    assert splits.info["classes"] == [3, 7, 9] and splits.info["features"] == ["a", "b"]
    assert splits.name == "data.csv"
    x = np.array([[a, b] for a, b, _ in rows])
    y = np.array([[3, 7, 9].index(label) for *_, label in rows])
    for part in ("train", "val", "test"):
        rows_of_part = splits.info["split_indices"][part]
        assert np.all(np.diff(rows_of_part) > 0)  # file order kept
        assert torch.equal(getattr(splits, part).x, torch.tensor(x[rows_of_part]).float())
        assert torch.equal(getattr(splits, part).y, torch.tensor(y[rows_of_part]))
    assert (len(splits.test), len(splits.val)) == (round(0.2 * 30), round(0.2 * 24))


def test_csv_float_labels_make_regression_and_task_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "x,target\n" + "".join(f"{i},{i / 4}\n" for i in range(20)))
    splits = load(path, label="target", val_fraction=0.0, dtype="float64")
    assert (splits.task, splits.num_classes, splits.val) == ("regression", 0, None)
    rows = np.concatenate([splits.info["split_indices"][p] for p in ("train", "test")])
    ys = torch.cat([splits.train.y, splits.test.y])
    assert ys.shape == (20, 1) and ys.dtype == torch.float64
    assert torch.equal(ys[:, 0], torch.tensor(rows / 4.0))
    ints = write(tmp_path, "i.csv", "x,label\n" + "".join(f"{i},{i % 4}\n" for i in range(20)))
    assert load(ints, task="regression").task == "regression"


def test_csv_class_names(tmp_path: Path) -> None:
    names = ["dog", "cat", "emu"]
    text = "x,label\n" + "".join(f"{i},{names[i % 3]}\n" for i in range(30))
    splits = load(write(tmp_path, "names.csv", text))
    assert splits.info["classes"] == ["cat", "dog", "emu"]
    rows = splits.info["split_indices"]["train"]
    expected = [sorted(names).index(names[r % 3]) for r in rows]
    assert splits.train.y.tolist() == expected


def test_csv_standardize_fits_on_the_training_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 3.0, size=(40, 2))
    text = "u,v,label\n" + "".join(
        f"{float(u)!r},{float(v)!r},{i % 2}\n" for i, (u, v) in enumerate(values)
    )
    splits = load(write(tmp_path, "s.csv", text), standardize=True, dtype="float64")
    idx = splits.info["split_indices"]
    mean, std = values[idx["train"]].mean(axis=0), values[idx["train"]].std(axis=0)
    np.testing.assert_allclose(splits.info["mean"], mean, rtol=1e-12)
    for part in ("train", "val", "test"):
        expected = (values[idx[part]] - mean) / std
        np.testing.assert_allclose(getattr(splits, part).x.numpy(), expected, rtol=1e-12)


CSV_ERRORS = [
    (
        "x1,x2,x3,label\n1,2,3,0\n4,5,6,1\n7,8,abc,0\n",
        {},
        "row 4, column 'x3': non-numeric value 'abc'",
    ),
    ("a,b,label\n1,2,0\n3,,1\n", {}, "row 3, column 'b': missing value (empty cell)"),
    ("a,b,label\n1,2,0\nnan,4,1\n", {}, "row 3, column 'a': non-finite value 'nan'"),
    ("a,b,label\n1,2,0\n1,-inf,1\n", {}, "row 3, column 'b': non-finite value '-inf'"),
    ("a,b,label\n1,2,0\n3,4,1\n\n5,6,1\n7,8\n", {}, "row 6: has 2 cells, expected 3"),
    ("a,b,label\n1,2,0\n\n3,x,1\n", {}, "row 4, column 'b': non-numeric value 'x'"),
    ("a,b,y\n1,2,0\n", {}, "no label column 'label'"),
    ("a,b,labels\n1,2,0\n", {}, "no label column 'label'; did you mean 'labels'?"),
    ("a,b,label\n1,2,0\n3,4,one\n", {}, "row 3, column 'label': non-numeric value 'one'"),
    ("a,label\n1,cat\n2,\n", {}, "row 3, column 'label': missing value (empty cell)"),
    (
        "a,label\n1,0.5\n2,1\n",
        {"task": "classification"},
        "row 2, column 'label': non-integer label",
    ),
    (
        "a,label\n1,cat\n2,dog\n",
        {"task": "regression"},
        "row 2, column 'label': non-numeric value 'cat'",
    ),
    ("", {}, "row 1: expected a header row, found an empty line"),
    ("a,b,label\n", {}, "no data rows after the header"),
    ("a,a,label\n1,2,0\n", {}, "row 1: duplicate column name 'a'"),
    ("a,,label\n1,2,0\n", {}, "row 1, column 2: empty column name"),
    ("label\n0\n1\n", {}, "no feature columns besides the label column 'label'"),
    (
        "a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)),
        {"batch_size": 32},
        "the training split has 14 examples (20 minus 2 validation and 4 test), "
        "fewer than one batch (batch_size=32)",
    ),
    (
        "a,label\n1,0\n2,1\n",
        {},
        "2 examples are too few to split with test_fraction=0.2 and val_fraction=0.1",
    ),
]


@pytest.mark.parametrize(("text", "kw", "problem"), CSV_ERRORS)
def test_malformed_csv_names_file_row_column_and_problem(
    tmp_path: Path, text: str, kw: dict, problem: str
) -> None:
    path = write(tmp_path, "data.csv", text)
    with raises_exactly(f"{path}: {problem}"):
        load(path, **kw)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with raises_exactly(f"{tmp_path / 'absent.csv'}: file not found"):
        load(tmp_path / "absent.csv")
    with raises_exactly(f"{tmp_path / 'absent.npz'}: file not found"):
        load(str(tmp_path / "absent.npz"))
    other = write(tmp_path, "data.txt", "a,label\n1,0\n")
    with raises_exactly(f"{other}: unsupported file type '.txt' (expected .csv or .npz)"):
        load(other)


def test_unknown_names_and_options_suggest_the_closest() -> None:
    with raises_exactly("unknown dataset 'mnist-1d'; did you mean 'mnist1d'?"):
        load("mnist-1d")
    with raises_exactly("digits: unknown option 'as_image'; did you mean 'as_images'?"):
        load("digits", as_image=True)
    with raises_exactly("dtype must be a floating torch.dtype"):
        load("digits", dtype="float")
    with raises_exactly("task must be None, 'classification' or 'regression', got 'clasification'"):
        load("x.csv", task="clasification")
    with raises_exactly("val_fraction must be a number in [0, 1), got 1.0"):
        load("digits", val_fraction=1.0)
    with raises_exactly("test_fraction must be a number in (0, 1), got 0"):
        load("digits", test_fraction=0)
    with raises_exactly("seed must be an integer >= 0, got -1"):
        load("digits", seed=-1)
    with raises_exactly("as_images must be True or False, got 1"):
        load("digits", as_images=1)
    assert data.names() == ["mnist1d", "digits", "quadratic", "image-folder"]


# --------------------------------------------------------------------------- NPZ


def test_npz_classification_and_multi_output_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 3, 2))
    path = tmp_path / "c.npz"
    np.savez(path, x=x, y=np.array(["b", "a"] * 12 + ["c"]))
    splits = load(path, seed=4)
    assert (splits.task, splits.num_classes, splits.num_features) == ("classification", 3, (3, 2))
    idx = splits.info["split_indices"]["test"]
    assert torch.equal(splits.test.x, torch.tensor(x[idx]).float())
    np.savez(path, x=x, y=(np.arange(25) % 4)[:, None] * 10)  # integer labels as a column
    column = load(path, seed=4)
    assert (column.task, column.num_classes, column.info["classes"]) == (
        "classification",
        4,
        [0, 10, 20, 30],
    )
    assert torch.equal(column.test.y, torch.tensor(np.arange(25)[idx] % 4))
    targets = rng.normal(size=(25, 2))
    np.savez(path, x=x[:, :, 0], y=targets)
    splits = load(path, seed=4, dtype=torch.float64)
    assert (splits.task, splits.num_features) == ("regression", 3)
    assert torch.equal(splits.test.y, torch.tensor(targets[idx]))


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"x": np.zeros((10, 2))}, "missing array 'y' (arrays present: 'x')"),
        ({"x": np.zeros((10, 2)), "y": np.zeros(9)}, "x has 10 rows but y has 9"),
        (
            {"x": np.where(np.eye(10, 3) > 0, np.nan, 1.0)[:, ::-1], "y": np.zeros(10)},
            "x[0, 2]: non-finite value",
        ),
        ({"x": np.zeros((10, 2)), "y": np.r_[np.zeros(9), np.inf]}, "y[9]: non-finite value"),
        ({"x": np.array([["a", "b"]] * 10), "y": np.zeros(10)}, "array 'x' must be numeric"),
        (
            {"x": np.array([[1.0, 2.0], [3.0]], dtype=object), "y": np.zeros(2)},
            "array 'x' is an object array (ragged rows or mixed types?)",
        ),
        ({"x": np.zeros((10, 2)), "y": np.full(10, 0.5)}, "y[0]: non-integer label"),
    ],
)
def test_malformed_npz(tmp_path: Path, arrays: dict, problem: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    kw = {"task": "classification"} if "non-integer" in problem else {}
    with raises_exactly(f"{path}: {problem}"):
        load(path, **kw)


def test_npz_that_is_not_an_archive_or_too_small(tmp_path: Path) -> None:
    junk = write(tmp_path, "junk.npz", "plain text")
    with raises_exactly(f"{junk}: not a readable .npz archive"):
        load(junk)
    small = tmp_path / "small.npz"
    np.savez(small, x=np.zeros((20, 2)), y=np.arange(20) % 2)
    with raises_exactly(f"{small}: the training split has 14 examples"):
        load(small, batch_size=15)


# --------------------------------------------------------------------------- num_outputs


def test_num_outputs_is_the_class_count_or_the_target_width(tmp_path: Path) -> None:
    digits = load("digits", seed=0)
    assert digits.num_outputs == len(np.unique(load_digits().target))
    quadratic = load("quadratic", seed=0, dim=3, n=10)
    assert quadratic.num_outputs == quadratic.train.y.shape[1] == 1
    targets = np.random.default_rng(0).normal(size=(20, 3))
    np.savez(tmp_path / "r.npz", x=np.arange(40.0).reshape(20, 2), y=targets)
    assert load(tmp_path / "r.npz").num_outputs == targets.shape[1]
    x = torch.zeros(5, 2)
    one_d = data.Splits(
        ArrayDataset(x, torch.zeros(5)),
        None,
        ArrayDataset(x, torch.zeros(5)),
        num_features=2,
        num_classes=0,
        task="regression",
        name="1-D",
    )
    assert one_d.num_outputs == 1
    # A dataset that is not held in memory is asked for one example's target.
    lazy = PerExampleDataset(x, torch.zeros(5, 2, 3))
    assert dataclasses.replace(one_d, train=lazy).num_outputs == 2 * 3


# --------------------------------------------------------------------------- iterate


class CountingArrayDataset(ArrayDataset):
    calls = 0

    def __getitem__(self, index):
        CountingArrayDataset.calls += 1
        return super().__getitem__(index)


class PerExampleDataset(Dataset):
    """A map-style dataset that only knows single examples, as most user datasets do."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def test_iterate_indexes_array_datasets_once_per_batch() -> None:
    splits = load("digits", seed=0)
    dataset = CountingArrayDataset(splits.train.x, splits.train.y)
    sampler = EpochBatches(len(dataset), 100, seed=0)
    expected = list(EpochBatches(len(dataset), 100, seed=0))
    got = list(iterate(dataset, sampler))
    assert CountingArrayDataset.calls == len(expected)
    for (x, y), idx in zip(got, expected, strict=True):
        assert torch.equal(x, splits.train.x[idx]) and torch.equal(y, splits.train.y[idx])


@pytest.mark.parametrize("make", [EpochBatches, RandomBatches])
def test_other_datasets_go_through_a_dataloader_with_the_same_batches(make) -> None:
    splits = load("digits", seed=0, as_images=True)
    generic = PerExampleDataset(splits.train.x, splits.train.y)
    via_loader = make(len(generic), 64, seed=5)
    via_index = make(len(generic), 64, seed=5)
    stream = iterate(generic, via_loader)
    for _ in range(3):
        (x, y), (x_ref, y_ref) = next(stream), next(iterate(splits.train, via_index))
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert via_loader.position == 3  # drawn lazily, so a mid-epoch state_dict stays exact
    rest = list(stream)
    assert len(rest) == len(via_loader) - 3 and via_loader.epoch == 1


def test_array_dataset_checks_and_moves() -> None:
    with raises_exactly("x and y must hold the same number of examples, got 3 and 2"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(2))
    dataset = ArrayDataset(np.arange(6.0).reshape(3, 2), np.arange(3))
    x, y = dataset[torch.tensor([2, 0])]
    assert x.tolist() == [[4.0, 5.0], [0.0, 1.0]] and y.tolist() == [2, 0]
    moved = dataset.to("cpu")
    assert moved is not dataset and torch.equal(moved.x, dataset.x) and len(moved) == 3
