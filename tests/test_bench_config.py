"""Suite and study validation: one-line errors naming the key and the closest valid one."""

from pathlib import Path

import pytest

from ravine.bench.config import ConfigError, SearchSpace, load_study, load_suite, read_yaml
from ravine.commands.compare import compare_main
from ravine.commands.tune import TrainStudy

BASE = {"problems": ["quadratic"], "optimizers": ["sgd"]}


def suite(**changes):
    return {**BASE, **changes}


def test_bare_names_and_defaults():
    s = load_suite(suite(problems=["quadratic", {"kind": "rosenbrock", "name": "rb"}],
                         optimizers=["sgd", {"name": "momentum", "momentum": 0.5, "lr": 0.1}]))
    assert [p.label for p in s.problems] == ["quadratic", "rb"]
    assert [o.label for o in s.optimizers] == ["sgd", "momentum"]
    assert s.seed_list == [0, 1, 2, 3, 4]
    assert s.optimizers[1].fixed() == {"momentum": 0.5} and s.optimizers[1].lr == 0.1
    assert s.tuning.method == "tpe" and s.tuning.trials == 20


def test_search_spaces_in_optimizer_entries():
    entry = {"name": "momentum", "lr": {"search": "log", "low": 1e-3, "high": 1},
             "momentum": {"search": "uniform", "low": 0.5, "high": 0.99}}
    s = load_suite(suite(optimizers=[entry]))
    searched = s.optimizers[0].searched()
    assert list(searched) == ["lr", "momentum"]
    assert searched["momentum"] == SearchSpace(search="uniform", low=0.5, high=0.99)
    assert s.optimizers[0].fixed() == {}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"problem": ["quadratic"], "optimizers": ["sgd"]},
         "problem: unknown key; did you mean 'problems'?"),
        (suite(problems=[{"kind": "quadratic", "kapa": 3}]),
         "problems[0].kapa: unknown key; did you mean 'kappa'?"),
        (suite(problems=[{"kind": "rosenbrok"}]),
         "problems[0]: unknown kind 'rosenbrok'; did you mean 'rosenbrock'?"),
        (suite(optimizers=["nesterof"]),
         "optimizers[0].name: unknown optimizer 'nesterof'; did you mean 'nesterov'?"),
        (suite(optimizers=[{"name": "momentum", "momentun": 0.9}]),
         "momentum has no hyperparameter 'momentun'; did you mean 'momentum'?"),
        (suite(optimizers=[{"name": "adam", "lr": {"search": "log", "lo": 1e-3, "high": 1}}]),
         "optimizers[0].lr.lo: unknown key; did you mean 'low'?"),
        (suite(optimizers=[{"name": "adam", "lr": {"search": "log", "low": 0, "high": 1}}]),
         "optimizers[0].lr: a log search needs low > 0, got 0.0"),
        (suite(optimizers=[{"name": "adam", "lr": -0.1}]),
         "optimizers[0].lr: lr must be a finite number > 0, got -0.1"),
        (suite(tuning={"metod": "grid"}), "tuning.metod: unknown key; did you mean 'method'?"),
        (suite(tuning={"method": "gird"}),
         "tuning.method: Input should be 'tpe', 'grid' or 'none', got 'gird'; did you mean"),
        (suite(tuning={"method": "grid"}), "needs a non-empty 'grid'"),
        (suite(tuning={"method": "none"}), "optimizer 'sgd' needs a fixed lr"),
        (suite(tuning={"low": 1.0, "high": 0.1}), "tuning needs low < high"),
        (suite(seeds=0), "seeds: seeds must be >= 1, got 0"),
        (suite(seeds=[1, 1]), "distinct"),
        (suite(problems=["quadratic", "quadratic"]), "two problems are labelled 'quadratic'"),
        (suite(optimizers=[{"name": "momentum", "momentum": {"search": "uniform", "low": 0.1,
                                                             "high": 0.9}}],
               tuning={"method": "grid", "grid": [0.1]}), "grid tuning"),
        (suite(profile_cost="wall"),
         "profile_cost: Input should be 'epochs' or 'time', got 'wall'"),
    ],
)
def test_errors_are_one_line_with_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        load_suite(data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_suite_named_after_its_file(tmp_path):
    path = tmp_path / "my-suite.yaml"
    path.write_text("problems: [quadratic]\noptimizers: [sgd]\n")
    assert load_suite(path).name == "my-suite"


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_suite(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("problems: [quadratic\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_suite(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- quadratic\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_suite(listy)


def test_study_spec():
    spec = load_study({"problem": "rosenbrock", "optimizer": {"name": "adam"}, "trials": 3})
    assert spec.problem.kind == "rosenbrock" and spec.optimizer.lr is None
    with pytest.raises(ConfigError, match="optimizer: betas.serch: unknown key; did you mean 'se"):
        load_study({"problem": "rosenbrock", "optimizer": {"name": "adam", "betas": {"serch": 1}}})
    with pytest.raises(ConfigError, match="trails: unknown key; did you mean 'trials'"):
        load_study({"problem": "rosenbrock", "optimizer": "adam", "trails": 3})


def test_compare_cli_bad_suite_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("problems: [{kind: quadratic, kapa: 3}]\noptimizers: [sgd]\n")
    assert compare_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err == ("ravine compare: error: problems[0].kapa: unknown key; did you mean 'kappa'? "
                   "(valid: name, epochs, target, kind, kappa, dim, rescale, start, init_std)\n")
    assert compare_main([str(path), "--seeds", "0"]) == 2
    assert "--seeds: expected an integer >= 1, got 0" in capsys.readouterr().err


EXAMPLES = sorted((Path(__file__).parents[1] / "examples" / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_validate(path):
    raw = read_yaml(path)
    if "problems" in raw:
        load_suite(path)
    elif "problem" in raw:
        load_study(raw)
    else:
        assert TrainStudy.from_raw(raw).spaces
