"""Every documented command runs (issue 12): the README's ```bash and ```python blocks and the
commands in the headers of examples/**/*.yaml, so that none can rot.

Shell commands run with bash in a temporary copy of the repository's ``examples/`` (the
current directory, so their ``runs/`` stay there) with this checkout's ``src`` first on
``PYTHONPATH`` and the test interpreter's folder (the repo's venv: ``ravine``, ``torchrun``)
first on ``PATH``. Python blocks run the same way, each in a fresh interpreter.

Commands that are inherently long are not run here but are *checked statically* (the command
line parses, the config or suite it names loads with its ``--set`` overrides, so a renamed key
or a bad override still fails); ``RAVINE_DOCS_LONG=1`` runs them too, with a longer limit. They
are listed in ``LONG`` below, each with its reason. Blocks that do not run as written are listed
in ``BROKEN`` with what goes wrong: those tests are strict xfails, so fixing the documentation
makes them fail until the entry is removed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ravine.bench.config import load_study, load_suite, read_yaml
from ravine.commands import build_parser
from ravine.commands.compare import compare_parser
from ravine.commands.tune import tune_parser
from ravine.config import load_config

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LIMIT_S = 300
LONG_LIMIT_S = 1800
RUN_LONG = os.environ.get("RAVINE_DOCS_LONG") == "1"

# Inherently long: checked statically, run only with RAVINE_DOCS_LONG=1. Matched as a substring
# of the command or block; the measurements are from a 2-core machine.
LONG = {
    "make demo": "installs the venv, then trains 14 models (about a minute after set-up)",
    "make test": "installs the venv, then runs the whole test suite (about five minutes)",
    "ravine compare examples/suites/lecture.yaml": "the full benchmark (a few hours)",
    "--rdzv-endpoint HOST": "needs several machines (HOST is a placeholder)",
    "ravine train examples/ddp-mnist1d.yaml --nproc 2": "30 CNN epochs in two processes",
    "ravine train examples/mnist1d-cnn.yaml": "10 to 30 epochs of the MNIST-1D CNN",
    "ravine tune examples/suites/tune-digits.yaml": "10 to 20 digits-MLP trainings",
    "ravine train runs/tune-tune-digits/best.yaml": "needs the tune-digits study's output",
    "ravine compare examples/suites/quick.yaml": "a minute or two (its header says so)",
    "ravine tune examples/suites/tune-rosenbrock.yaml": "a full Optuna study",
    "result = fit(net, splits.train, splits.val, test=splits.test,": (
        "the quick tour trains the CNN for 20 epochs with diagnostics"
    ),
}

# Blocks that do not run as written (to be fixed in the documentation, not here).
BROKEN: dict[str, str] = {}


@dataclass(frozen=True)
class Snippet:
    """One documented command (``bash``) or block (``python``) and where it is written."""

    kind: str  # "bash" | "python"
    text: str
    where: str

    @property
    def long(self) -> str | None:
        return next((why for key, why in LONG.items() if key in self.text), None)

    @property
    def broken(self) -> str | None:
        return next((why for key, why in BROKEN.items() if key in self.text), None)


def readme_snippets(path: Path = REPO / "README.md") -> list[Snippet]:
    """The fenced ```bash (one snippet per command) and ```python (one per block) blocks."""
    found = []
    text = path.read_text(encoding="utf-8")
    for match in re.finditer(r"^```(bash|python)[^\n]*\n(.*?)^```", text, re.M | re.S):
        kind, body = match.group(1), match.group(2)
        line = text[: match.start()].count("\n") + 2
        where = f"README.md:{line}"
        if kind == "python":
            found.append(Snippet(kind, body, where))
        else:
            found += [Snippet(kind, command, where) for command in shell_commands(body)]
    return found


def shell_commands(body: str) -> list[str]:
    """Commands of a shell block: ``\\`` continuations joined, comments and blank lines out."""
    joined = re.sub(r"\s*\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        command = line.split(" #", 1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def header_snippets(root: Path = REPO / "examples") -> list[Snippet]:
    """Commands in the leading comment block of each example config: lines ``#   ravine ...``
    or ``#   torchrun ...`` (with ``\\`` continuations), and ``# Run:   ravine ...``."""
    found = []
    for path in sorted(root.rglob("*.yaml")):
        header = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line[1:])
        body = "\n".join(header)
        body = re.sub(r"\s*\\\n\s*", " ", body)
        for line in body.splitlines():
            match = re.match(r"\s*(?:Run:)?\s+((?:ravine|torchrun) .*)$", line)
            if match:
                # the header's prose after the command: "# note" or "(well under a minute)"
                command = re.split(r"\s+(?:#|\()", match.group(1), maxsplit=1)[0].strip()
                found.append(Snippet("bash", command, str(path.relative_to(REPO))))
    return found


def docs_snippets(root: Path = REPO / "docs") -> list[Snippet]:
    """The documentation site's pages: each ```python block on its own; a page's shell commands
    in order in one shell (later commands use what earlier ones wrote, e.g. a run directory),
    with the long ones apart (checked statically, like the README's)."""
    found = []
    for path in sorted(root.rglob("*.md")):
        where_page = str(path.relative_to(REPO))
        text = path.read_text(encoding="utf-8")
        page: list[str] = []
        for match in re.finditer(r"^```(bash|python)[^\n]*\n(.*?)^```", text, re.M | re.S):
            kind, body = match.group(1), match.group(2)
            where = f"{where_page}:{text[: match.start()].count(chr(10)) + 2}"
            if kind == "python":
                found.append(Snippet(kind, body, where))
                continue
            for command in shell_commands(body):
                snippet = Snippet("bash", command, where)
                if snippet.long:
                    found.append(snippet)
                else:
                    page.append(command)
        if page:
            found.append(Snippet("bash", "set -e\n" + "\n".join(page), f"{where_page} (shell)"))
    return found


SNIPPETS = readme_snippets() + header_snippets() + docs_snippets()


def _id(snippet: Snippet) -> str:
    first = snippet.text.strip().splitlines()[0]
    return f"{snippet.where}: {first[:100]}"


def _environment(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # tiny models; two test workers already fill the cores
    env["MPLBACKEND"] = "Agg"
    return env


def _workspace(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return tmp_path


def _run(snippet: Snippet, cwd: Path, limit: float) -> subprocess.CompletedProcess:
    if snippet.kind == "python":
        argv = [sys.executable, "-c", snippet.text]
    else:
        argv = ["bash", "-c", snippet.text]
    return subprocess.run(
        argv, cwd=cwd, env=_environment(cwd), capture_output=True, text=True, timeout=limit
    )


def _static_check(snippet: Snippet, cwd: Path) -> None:
    """What can be checked without running: the ravine command line parses and the config or
    suite it names loads (with its ``--set`` overrides)."""
    if snippet.kind == "python":
        compile(snippet.text, snippet.where, "exec")
        return
    words = shlex.split(snippet.text)
    if "ravine" not in words:
        return  # make targets: the Makefile's own test is `make` itself
    argv = words[words.index("ravine") + 1 :]
    command, rest = argv[0], argv[1:]
    if command == "train":
        args = build_parser().parse_args(argv)
        # runs/... is written by an earlier command, CONFIG.yaml is a placeholder
        if args.config.startswith("examples/"):
            load_config(cwd / args.config, args.set, notice=lambda message: None)
    elif command == "compare":
        load_suite(cwd / compare_parser().parse_args(rest).suite)
    elif command == "tune":
        raw = read_yaml(cwd / tune_parser().parse_args(rest).config)
        if "problem" in raw:
            load_study(raw)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", SNIPPETS, ids=_id)
def test_documented_command_runs(snippet, tmp_path):
    cwd = _workspace(tmp_path)
    if snippet.long and not RUN_LONG:
        _static_check(snippet, cwd)
        pytest.skip(f"long ({snippet.long}); checked statically; RAVINE_DOCS_LONG=1 runs it")
    if snippet.broken:
        pytest.xfail(snippet.broken)
    done = _run(snippet, cwd, LONG_LIMIT_S if snippet.long else LIMIT_S)
    assert done.returncode == 0, (
        f"{snippet.where}: `{snippet.text.strip()}` exited {done.returncode}\n{done.stderr[-3000:]}"
    )


def test_the_harness_finds_the_documented_commands():
    texts = [s.text for s in SNIPPETS]
    # the header command that exited 2 before --set optimizer.name dropped the file's momentum
    assert (
        "ravine train examples/quadratic-regression.yaml --set optimizer.name=sgd --overwrite"
        in texts
    )
    assert "ravine train examples/my_project/train.yaml" in texts
    assert any(s.kind == "python" and "optim.create(" in s.text for s in SNIPPETS)
    assert "ravine compare examples/suites/quadratic-claims.yaml" in texts
    # every allow-list entry still names something documented
    for key in [*LONG, *BROKEN]:
        assert any(key in t for t in texts), f"allow-list entry {key!r} matches nothing"


def test_shell_commands_are_split_and_joined():
    body = "make demo   # note\n\n# alone\ntorchrun --a 1 \\\n    -m ravine train X\n"
    assert shell_commands(body) == ["make demo", "torchrun --a 1 -m ravine train X"]
