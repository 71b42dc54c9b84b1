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
