"""ravine.config: YAML run configs, --set overrides and one-line errors with suggestions."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ravine import data, optim
from ravine.commands.train import _notice
from ravine.config import ConfigError, load_config, parse_overrides, validate_config
from ravine.train import FitOptions

BASE = """\
data: {name: digits, val_fraction: 0.2}
model: {kind: mlp, hidden: [16], norm: batch}
optimizer: {name: nesterov, lr: 0.05, momentum: 0.8}
schedule: {name: linear-decay, warmup_steps: 2}
epochs: 3
early_stopping: {patience: 2}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE)
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_valid_config_is_fit_options_plus_data_model_and_run_dir(config_file):
    config = load_config(config_file)
    options = config.fit.describe()
    assert options["optimizer"] == {"name": "nesterov", "lr": 0.05, "momentum": 0.8}
    assert options["schedule"] == {"name": "linear-decay", "warmup_steps": 2}
    assert options["early_stopping"] == {
        "mode": "auto",
        "patience": 2,
        "min_delta": 0.0,
        "restore_best": True,
        "start_from_epoch": 0,
    }
    assert (options["epochs"], options["batch_size"], options["batching"]) == (3, 100, "epoch")
    assert config.run_dir == "runs/exp"  # default: runs/<config file name>
    # The same options reach fit as keyword arguments, validated by the same schema.
    assert FitOptions.from_kwargs(**config.fit_kwargs()).describe() == options


def test_overrides_are_yaml_values_at_dotted_paths(config_file):
    config = load_config(
        config_file,
        [
            "optimizer.lr=1e-2",
            "epochs=7",
            "early_stopping=null",
            "model.hidden=[8, 4]",
            "data.standardize=true",
            "schedule=constant",
            "run_dir=out/x",
        ],
    )
    assert config.optimizer.lr == 0.01 and config.epochs == 7
    assert config.early_stopping is None and config.model.hidden == [8, 4]
    assert config.data.standardize is True
    assert config.schedule.name == "constant" and config.run_dir == "out/x"
    assert parse_overrides(["a.b=x y", "c=", "d=[1, 2]"]) == [
        (["a", "b"], "x y"),
        (["c"], None),
        (["d"], [1, 2]),
    ]


def test_shorthand_sections_accept_nested_overrides(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("data: digits\nmodel: {kind: mlp, hidden: 8}\noptimizer: adam\n")
    config = load_config(path, ["optimizer.lr=0.003", "data.val_fraction=0.3"])
    assert (config.optimizer.name, config.optimizer.lr) == ("adam", 0.003)
    assert (config.data.name, config.data.val_fraction) == ("digits", 0.3)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lrr=0.1", "optimizer.lrr: unknown key; did you mean 'lr'? (valid: name, lr,"),
        ("optimzer.lr=0.1", "optimzer: unknown key; did you mean 'optimizer'?"),
        (
            "early_stopping.patiense=3",
            "early_stopping.patiense: unknown key; did you mean 'patience'?",
        ),
        (
            "optimizer.name=nesterof",
            "optimizer.name: unknown optimizer 'nesterof'; did you mean 'nesterov'?",
        ),
        ("schedule.name=cosin", "schedule.name: unknown schedule 'cosin'; did you mean 'cosine'?"),
        (
            "batching=epochs",
            "batching: Input should be 'epoch' or 'random', got 'epochs'; did you mean 'epoch'?",
        ),
        ("optimizer.lr=-0.1", "optimizer.lr: Input should be greater than 0, got -0.1"),
        ("epochs=0", "epochs: Input should be greater than or equal to 1, got 0"),
        ("optimizer.rho=0.9", "optimizer.rho: not an option of 'nesterov'"),
        ("model.channels=[4]", "model.channels: not an option of model kind 'mlp'"),
        ("schedule.gamma=0.5", "schedule.gamma: not an option of schedule 'linear-decay'"),
        ("optimizer.betas=[0.9, 1.5]", "optimizer.betas: betas must be two numbers in [0, 1)"),
        ("device=gpu", "device: not a torch device: 'gpu'"),
    ],
)
def test_bad_keys_and_values_give_one_line_naming_the_key(config_file, override, expected):
    message = error_of(config_file, [override])
    assert message.startswith(f"{config_file}: ")
    assert expected in message


def test_the_suggestions_are_valid_keys_and_names():
    # The names suggested above come from the registries, so they must exist there.
    assert "nesterov" in optim.names() and "lr" in optim.hyperparameters("nesterov")
    assert "digits" in data.names()


def test_every_problem_is_reported_on_the_same_line(config_file):
    message = error_of(config_file, ["optimizer.lrr=1", "epochs=-1"])
    assert "optimizer.lrr" in message and "epochs" in message


def test_file_and_yaml_errors(tmp_path, config_file):
    missing = tmp_path / "missing.yaml"
    assert error_of(missing) == f"config file {missing} not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: digits\nmodel: {kind: mlp\n")
    assert error_of(bad).startswith(f"{bad}: invalid YAML at line 3")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert "expected a mapping" in error_of(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    message = error_of(empty)
    assert "data: required key is missing" in message and "model: required key" in message
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        load_config(config_file, ["epochs"])
    with pytest.raises(ConfigError, match="--set optimizer.lr.x: optimizer.lr is 0.05"):
        load_config(config_file, ["optimizer.lr.x=1"])


def test_models_take_their_sizes_from_the_data():
    splits = data.load("digits", seed=0, val_fraction=0.1)
    mlp = validate_config({"data": "digits", "model": {"kind": "mlp", "hidden": [7]}})
    net = mlp.model.build(splits)
    assert net(splits.train.x[:3]).shape == (3, splits.num_classes)
    assert net.hidden0.layer.in_features == splits.num_features
    images = data.load("digits", seed=0, val_fraction=0.1, as_images=True)
    cnn = validate_config(
        {"data": {"name": "digits", "as_images": True}, "model": {"kind": "cnn2d", "channels": [4]}}
    )
    assert cnn.model.build(images)(images.train.x[:2]).shape == (2, 10)
    with pytest.raises(ConfigError, match="model: kind 'cnn2d' needs images"):
        cnn.model.build(splits)
    with pytest.raises(ConfigError, match="model: model kind 'mlp' needs 'hidden'"):
        validate_config({"data": "digits", "model": "mlp"})


def test_regression_models_get_one_output_per_target_column():
    splits = data.load("quadratic", seed=0, val_fraction=0.1, kappa=10.0, dim=4, n=64)
    config = validate_config(
        {
            "data": {"name": "quadratic", "kappa": 10, "dim": 4, "n": 64},
            "model": {"kind": "mlp", "hidden": []},
            "loss": "mse",
        }
    )
    targets = splits.train.y.reshape(len(splits.train), -1).shape[1]
    assert config.model.build(splits)(splits.train.x[:5]).shape == (5, targets)


def test_the_example_configs_are_valid():
    examples = sorted(Path(__file__).parent.parent.glob("examples/*.yaml"))
    assert examples
    for path in examples:
        config = load_config(path)
        assert config.run_dir == f"runs/{path.stem}"


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    "example, new_name, dropped",
    [
        ("quadratic-regression.yaml", "sgd", ["momentum"]),  # the command in its header
        ("mnist1d-cnn.yaml", "adam", ["momentum"]),
    ],
)
def test_renaming_the_optimizer_drops_the_files_options_it_does_not_take(
    example, new_name, dropped
):
    path = EXAMPLES / example
    file_options = load_config(path).optimizer.given(exclude=("name",))
    notices = []
    config = load_config(path, [f"optimizer.name={new_name}"], notice=notices.append)
    kept = {k: v for k, v in file_options.items() if k not in dropped}
    assert config.optimizer.name == new_name
    assert config.optimizer.given(exclude=("name",)) == kept  # lr and the rest survive
    assert set(dropped) <= set(file_options)
    assert set(dropped).isdisjoint(optim.hyperparameters(new_name))
    assert notices == [
        f"--set optimizer.name={new_name}: dropped "
        f"{', '.join('optimizer.' + k for k in dropped)} from {path} "
        f"(not an option of {new_name!r})"
    ]


def test_the_drop_notice_goes_to_stderr_by_default_and_is_one_line(config_file, capsys):
    config = load_config(config_file, ["optimizer.name=adam"])
    assert config.optimizer.given(exclude=("name",)) == {"lr": 0.05}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dropped optimizer.momentum" in err
    # nothing is said when nothing is dropped
    load_config(config_file, ["optimizer.name=momentum"])
    load_config(config_file, ["optimizer.lr=0.1"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # an option typed on the command line is the user's own mistake: still an error
        (
            ["optimizer.name=sgd", "optimizer.momentum=0.5"],
            "optimizer.momentum: not an option of 'sgd'",
        ),
        (
            ["optimizer.momentum=0.5", "optimizer.name=adam"],
            "optimizer.momentum: not an option of 'adam'",
        ),
        (["optimizer={name: sgd, momentum: 0.5}"], "optimizer.momentum: not an option of 'sgd'"),
        # without a rename the file's options are checked as written
        (["optimizer.lr=0.1", "optimizer.rho=0.9"], "optimizer.rho: not an option of 'nesterov'"),
        # an unknown new name is reported, not silently emptied
        (["optimizer.name=adamm"], "unknown optimizer 'adamm'; did you mean 'adam'?"),
    ],
)
def test_command_line_options_the_new_optimizer_lacks_still_error(config_file, overrides, expected):
    notices = []
    with pytest.raises(ConfigError) as info:
        load_config(config_file, overrides, notice=notices.append)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert notices == []


def test_a_misspelt_key_in_the_file_is_not_dropped_by_a_rename(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(BASE.replace("momentum: 0.8", "momentun: 0.8"))
    message = error_of(path, ["optimizer.name=sgd"])
    assert "optimizer.momentun: unknown key; did you mean 'momentum'?" in message


@pytest.mark.parametrize(
    "rank, nproc, says",
    [(None, None, True), (None, 2, False), ("0", None, True), ("1", None, False)],
)
def test_ravine_train_says_the_notice_once(monkeypatch, capsys, rank, nproc, says):
    # one process says it; with --nproc the launcher stays quiet and rank 0 of the workers
    # (which get the same --set) says it
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", rank)
    _notice(argparse.Namespace(nproc=nproc))("dropped optimizer.momentum")
    expected = "ravine train: dropped optimizer.momentum\n" if says else ""
    assert capsys.readouterr().err == expected
