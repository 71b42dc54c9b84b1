"""A YAML "billion laughs" file is refused in one short line, by every YAML reader."""

from __future__ import annotations

import subprocess
import sys

from ravine._io import YAML_NODE_BUDGET, safe_yaml

LEVELS = "\n".join(
    f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]"
    for prev, name in zip("abcdefg", "bcdefgh", strict=True)
)
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + LEVELS + "\n"


def test_the_bomb_is_small_and_its_expansion_is_refused(tmp_path):
    assert len(BOMB) < 600 and 9**8 > YAML_NODE_BUDGET  # 43 million strings once expanded
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB)
    for command in (["train", str(config)], ["compare", str(config)], ["tune", str(config)]):
        proc = subprocess.run([sys.executable, "-m", "ravine", *command], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, (command, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and len(lines[0]) < 300, proc.stderr
        assert "aliases expand to more than" in lines[0]


def test_shared_aliases_within_the_budget_still_read():
    assert safe_yaml("base: &b {lr: 0.1}\nother: *b\n", "x") == {"base": {"lr": 0.1},
                                                                "other": {"lr": 0.1}}
    assert safe_yaml("", "x") is None


def test_dump_yaml_writes_what_yaml_safe_dump_writes():
    """dump_yaml uses libyaml's emitter when PyYAML has it; the text must not change."""
    import math

    import yaml

    from ravine._io import dump_yaml

    data = {
        "name": "café ∇ run", "none": None, "yes": "yes", "number_text": "1e3", "empty": "",
        "floats": [0.1, 1e-12, 3.0, math.inf, -math.inf], "ints": [0, -7, 2**70],
        "flags": [True, False], "nested": {"b": {"c": [1, {"d": [[], {}]}]}, "a": 1},
        "long": "word " * 60, "multiline": "first\nsecond\n", "colon": "a: b", "hash": "# x",
        "quote": "it's \"quoted\"", "tabs": "a\tb",
    }
    assert dump_yaml(data) == yaml.safe_dump(data, sort_keys=False)
    again = yaml.safe_load(dump_yaml(data))
    assert list(again) == list(data) and again["floats"][3] == math.inf
