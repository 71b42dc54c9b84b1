"""Load a run directory at one of its checkpoints, for the commands that inspect a run.

``ravine diagnose`` and ``ravine probe`` rebuild a run from its resolved ``config.yaml`` with
:meth:`~ravine.config.RunConfig.build` (the same data split and initial weights as training,
both from the run's seed) and load

* ``init``: the initial weights (no checkpoint needed), with a fresh optimizer;
* ``best``: ``checkpoints/best.pt`` (saved at the true parameters); it holds no optimizer state,
  so the optimizer is fresh;
* ``last``: ``checkpoints/last.pt`` with the optimizer's state. For the interim-point optimizers
  the parameters there are ``θ + αv``; they are moved to the true ``θ`` (``to_true_params``)
  unless ``true_params=False`` asks for the checkpoint's exact pair (model at the interim point,
  optimizer with its shift) to continue training exactly as the run would have.

The optimizer is always the one the *run* recorded in its ``config.yaml``. Given a training
config file instead of a run directory, its ``run_dir`` is used when it holds a run, and the
run's recorded config wins; :attr:`LoadedRun.mismatch` names the first key where the given file
differs. Damaged files (a checkpoint without optimizer state, a torn ``metrics.jsonl``, a
``config.yaml`` that is not UTF-8 or not YAML) raise a one-line ``ValueError`` or
:class:`~ravine.train.checkpoint.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ravine._io import safe_yaml
from ravine.config import Run, RunConfig, load_config, validate_config
from ravine.train.checkpoint import CheckpointError, load_checkpoint
from ravine.train.loop import build_optimizer
from ravine.train.metrics import read_metrics

__all__ = ["LoadedRun", "load_run", "read_run_config", "CHECKPOINTS"]

CHECKPOINTS = ("init", "best", "last")
# Keys that name places, not what the run computes: a moved run or config still matches.
_PLACES = ("run_dir", "code_dir")


@dataclass
class LoadedRun:
    """A run rebuilt at a checkpoint.

    Attributes:
        config: the run's recorded configuration.
        root: the run directory.
        run: the data splits and the model, with the checkpoint's weights.
        checkpoint: ``init``, ``best`` or ``last``.
        optimizer: built from the run's config over ``run.model``; at ``last`` with the
            checkpointed state (velocity, accumulators, the learning rate in force).
        lr: the learning rate of the checkpoint's last step (``last``: the last step record of
            ``metrics.jsonl``; ``best``: its epoch record), else the configured one (or None).
        epochs, steps, summary: the records of ``metrics.jsonl`` (empty without one).
        mismatch: for a config file given in place of the run directory, the first key where
            it differs from the run's recorded config (``None`` when they agree).
        path: the checkpoint file (``None`` at ``init``).
    """

    config: RunConfig
    root: Path
    run: Run
    checkpoint: str
    optimizer: Optimizer
    lr: float | None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    mismatch: str | None = None
    path: Path | None = None

    @property
    def model(self) -> nn.Module:
        return self.run.model


def _run_dir_config(path: Path) -> RunConfig:
    config_path = path / "config.yaml"
    if not config_path.exists():
        raise ValueError(f"{path}: not a run directory (no config.yaml)")
    try:
        raw = safe_yaml(config_path.read_text(encoding="utf-8"), str(config_path))
    except UnicodeDecodeError:
        raise ValueError(f"{config_path}: not UTF-8 text") from None
    if not isinstance(raw, dict) or "data" not in raw or "model" not in raw:
        raise ValueError(
            f"{config_path}: has no data/model sections (the run was started from Python); "
            "call ravine.diagnostics on your model and data instead"
        )
    return validate_config(raw, str(config_path))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _first_difference(run: RunConfig, given: RunConfig, name: str) -> str | None:
    """``"optimizer.name: the run has 'sgd', c.yaml has 'momentum'"`` or ``None``."""
    ran, now = (
        {
            k: v
            for k, v in _flat(c.model_dump(mode="json", exclude_none=True)).items()
            if k.split(".")[0] not in _PLACES
        }
        for c in (run, given)
    )
    keys = [*now, *(k for k in ran if k not in now)]
    differ = [k for k in keys if ran.get(k) != now.get(k)]
    if not differ:
        return None
    key = differ[0]
    more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
    return f"{key}: the run has {ran.get(key)!r}, {name} has {now.get(key)!r}{more}"


def read_run_config(path: str | Path) -> tuple[RunConfig, Path, str | None]:
    """``(config, run directory, mismatch)`` for a run directory or a training config file.

    A config file whose ``run_dir`` holds a run (a ``config.yaml``) yields the run's recorded
    config and the first key where the file differs from it; otherwise the file's own config
    (then only ``init`` can be loaded).

    Raises:
        ValueError: not a run directory or config file; unreadable or invalid config.
    """
    path = Path(path)
    if path.is_dir():
        return _run_dir_config(path), path, None
    if path.is_file():
        given = load_config(path)
        root = Path(given.run_dir)
        if (root / "config.yaml").is_file():
            recorded = _run_dir_config(root)
            return recorded, root, _first_difference(recorded, given, path.name)
        return given, root, None
    raise ValueError(f"{path}: no such run directory or config file")


def _read_records(path: Path) -> tuple[list[dict], list[dict], dict]:
    """:func:`~ravine.train.metrics.read_metrics`, with a damaged file as one ``ValueError``."""
    try:
        return read_metrics(path)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except (json.JSONDecodeError, AttributeError, TypeError):
        pass
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError as exc:
                torn = (
                    " (a torn last line: the run was killed while writing)"
                    if not line.endswith("\n")
                    else ""
                )
                raise ValueError(
                    f"{path}: line {number} is not valid JSON ({exc.msg}){torn}"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
    raise ValueError(f"{path}: cannot be read as metrics records")


def _load_weights(model: nn.Module, ckpt: dict[str, Any], path: Path) -> None:
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: has no model weights (key 'model')")
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: does not match the model in the run's config ({exc})"
        ) from None


def _load_optimizer(opt: Optimizer, ckpt: dict[str, Any], path: Path) -> None:
    if not isinstance(ckpt.get("optimizer"), dict):
        raise CheckpointError(
            f"{path}: has no optimizer state (key 'optimizer'); it was not written by ravine train"
        )
    try:
        opt.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(
            f"{path}: its optimizer state does not fit the run's {type(opt).__name__} ({reason})"
        ) from None


def load_run(path: str | Path, checkpoint: str = "last", *, true_params: bool = True) -> LoadedRun:
    """Rebuild the run at ``path`` (a run directory or a training config) at ``checkpoint``.

    Args:
        path: a run directory written by ``ravine train``, or a training config file.
        checkpoint: ``init``, ``best`` or ``last``.
        true_params: at ``last``, move interim-point parameters to the true ``θ`` (module
            docstring); ``False`` keeps the exact pair the run would resume from.

    Raises:
        ValueError: bad ``checkpoint``, config or ``metrics.jsonl``.
        CheckpointError: a missing, damaged or mismatched checkpoint.
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    config, root, mismatch = read_run_config(path)
    run = config.build()
    model = run.model
    epochs: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    if (root / "metrics.jsonl").exists():
        epochs, steps, summary = _read_records(root / "metrics.jsonl")
    opt = build_optimizer(
        config.optimizer.spec(), model, config.lr, config.weight_decay, config.clip_norm
    )
    lr = config.optimizer.given().get("lr")
    ckpt_path = None
    if checkpoint != "init":
        ckpt_path = root / "checkpoints" / f"{checkpoint}.pt"
        if not ckpt_path.exists():
            raise CheckpointError(f"{ckpt_path}: no such checkpoint (has the run started?)")
        ckpt = load_checkpoint(ckpt_path)
        _load_weights(model, ckpt, ckpt_path)
        if checkpoint == "last":
            _load_optimizer(opt, ckpt, ckpt_path)
            to_true = getattr(opt, "to_true_params", None)
            if true_params and to_true is not None:
                to_true()
            if steps:
                lr = steps[-1]["lr"]
        else:
            at = [r for r in epochs if r.get("epoch") == ckpt.get("epoch")]
            if at and at[0].get("lr") is not None:
                lr = at[0]["lr"]
    return LoadedRun(
        config, root, run, checkpoint, opt, lr, epochs, steps, summary, mismatch, ckpt_path
    )
