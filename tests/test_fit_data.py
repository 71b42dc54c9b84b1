"""fit on a PyTorch user's own data: Datasets, DataLoaders, streams, dict batches, accumulation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ravine import data, fit, models
from ravine.data.sources import LoaderSource, as_tensors, batch_examples, to_device
from ravine.train.checkpoint import load_checkpoint

N, FEATURES, CLASSES, BATCH = 60, 5, 3, 16  # 60 = 3 * 16 + 12: every epoch ends short


def make_data(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, FEATURES, generator=g, dtype=dtype)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def make_model(seed: int = 0, dtype=torch.float32, norm: str = "batch", dropout: float = 0.1):
    torch.manual_seed(seed)
    return models.mlp(FEATURES, [8], CLASSES, norm=norm, dropout=dropout).to(dtype)


class LazyPairs(Dataset):
    """A map-style dataset that builds each example on demand (nothing stored as a batch)."""

    def __init__(self, x, y):
        self.rows = [row.clone() for row in x]
        self.labels = [int(v) for v in y]
        self.reads = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.reads += 1
        return self.rows[i].clone(), self.labels[i]


class DictPairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i], "weight": torch.tensor(1.0)}


class Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        for i in range(len(self.x)):
            yield self.x[i], self.y[i]


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


SETTINGS = dict(optimizer="nesterov", lr=0.1, epochs=3, batch_size=BATCH, seed=3, quiet=True)


def test_tensor_dataset_is_the_in_memory_fast_path():
    x, y = make_data()
    a = fit(make_model(), (x, y), (x, y), **SETTINGS)
    b = fit(make_model(), TensorDataset(x, y), TensorDataset(x, y), **SETTINGS)
    assert_same(params(a.model), params(b.model))
    untimed = [[{k: v for k, v in r.items() if k != "time"} for r in h.history] for h in (a, b)]
    assert untimed[0] == untimed[1]


@pytest.mark.parametrize("batching", ["epoch", "random"])
def test_a_lazy_dataset_and_the_same_tensors_give_bit_identical_parameters(batching):
    x, y = make_data()
    lazy = LazyPairs(x, y)
    a = fit(make_model(), (x, y), (x, y), batching=batching, **SETTINGS)
    b = fit(make_model(), lazy, LazyPairs(x, y), batching=batching, **SETTINGS)
    assert_same(params(a.model), params(b.model))
    assert lazy.reads >= 3 * (N if batching == "epoch" else 4 * BATCH)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra["train_loss"] == rb["train_loss"] and ra["val_acc"] == rb["val_acc"]


@pytest.mark.slow
def test_dataset_with_two_workers_equals_no_workers():
    x, y = make_data()
    a = fit(make_model(), LazyPairs(x, y), (x, y), **SETTINGS)
    b = fit(make_model(), LazyPairs(x, y), (x, y), num_workers=2, prefetch=2, **SETTINGS)
    assert_same(params(a.model), params(b.model))


def test_a_users_dataloader_is_used_as_given():
    x, y = make_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    result = fit(make_model(norm="none", dropout=0.0), loader, loader,
                 **{**SETTINGS, "optimizer": "momentum"})
    # Same order as a hand loop over the loader with the same optimizer (Algorithm 8.2 is
    # torch's SGD with momentum at a constant learning rate).
    model = make_model(norm="none", dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    for key, value in params(model).items():
        torch.testing.assert_close(result.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert len(result.history) == 3 and "val_acc" in result.history[-1]


def test_dict_batches_train_and_evaluate_with_compute_loss():
    x, y = make_data()
    seen = []

    def compute_loss(model, batch):
        seen.append(sorted(batch))
        out = model(batch["features"])
        loss = (F.cross_entropy(out, batch["label"], reduction="none") * batch["weight"]).mean()
        return loss, {"acc": (out.argmax(1) == batch["label"]).float().mean()}

    result = fit(make_model(), DictPairs(x, y), DictPairs(x, y), compute_loss=compute_loss,
                 **SETTINGS)
    assert seen[0] == ["features", "label", "weight"]
    last = result.history[-1]
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= last.keys()
    # The evaluation through compute_loss equals the tensors' own evaluation of that model.
    model = result.model.eval()
    with torch.no_grad():
        out = model(x)
    assert last["val_loss"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert last["val_acc"] == pytest.approx((out.argmax(1) == y).float().mean().item(), rel=1e-6)


def test_items_that_are_not_pairs_need_compute_loss():
    x, y = make_data()
    with pytest.raises(ValueError, match="train's items are dicts, not \\(x, y\\) pairs; pass "
                                         "compute_loss"):
        fit(make_model(), DictPairs(x, y), **SETTINGS)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_micro_batches_make_the_big_batch_step(k):
    x, y = make_data(dtype=torch.float64)
    settings = {**SETTINGS, "batch_size": 20, "optimizer": "momentum"}
    big = fit(make_model(dtype=torch.float64, norm="none", dropout=0.0), (x, y), **settings)
    acc = fit(make_model(dtype=torch.float64, norm="none", dropout=0.0), (x, y), accumulate=k,
              **settings)
    lazy = fit(make_model(dtype=torch.float64, norm="none", dropout=0.0), LazyPairs(x, y),
               accumulate=k, **settings)
    for key, value in params(big.model).items():
        torch.testing.assert_close(params(acc.model)[key], value, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(params(lazy.model)[key], value, rtol=1e-12, atol=1e-14)
    for a, b in zip(big.history, acc.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)


def test_a_stream_needs_steps_per_epoch_and_then_trains():
    x, y = make_data()
    with pytest.raises(ValueError, match="steps_per_epoch="):
        fit(make_model(), Stream(x, y), **SETTINGS)
    result = fit(make_model(), Stream(x, y), (x, y), steps_per_epoch=5, **SETTINGS)
    assert [r["step"] for r in result.history] == [5, 10, 15]
    # 60 examples / 16 = 4 batches a pass: epochs run across passes of the stream.
    assert result.history[-1]["val_loss"] < math.log(CLASSES) + 0.5


def test_stream_source_resumes_by_replay():
    x, y = make_data()

    def loader():
        return DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True,
                          generator=torch.Generator().manual_seed(1))

    straight = LoaderSource(loader(), accumulate=1, steps_per_epoch=5)
    # 60 / 7 -> 9 batches a pass: the second epoch reopens the loader (a new permutation).
    first = [b for _ in range(2) for micro, _ in straight for b in micro]
    source = LoaderSource(loader(), accumulate=1, steps_per_epoch=5)
    it = iter(source)
    taken = [next(it)[0][0] for _ in range(3)]
    state = source.state_dict()
    restored = LoaderSource(loader(), accumulate=1, steps_per_epoch=5)
    torch.manual_seed(123)  # the global stream moved on meanwhile
    restored.load_state_dict(state)
    rest = [b for micro, _ in restored for b in micro] + [b for micro, _ in restored for b in micro]
    for a, b in zip(first, taken + rest, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_metrics_max_steps_val_every_and_drop_last():
    x, y = make_data()

    def top2(output, target):
        return (output.topk(2, dim=1).indices == target[:, None]).any(1).float().mean()

    result = fit(make_model(), (x, y), (x, y), metrics={"top2": top2}, **SETTINGS)
    assert 0 <= result.history[-1]["val_top2"] <= 1
    assert result.history[-1]["val_top2"] >= result.history[-1]["val_acc"]
    short = fit(make_model(), (x, y), (x, y), max_steps=6, **{**SETTINGS, "epochs": 5})
    assert [r["step"] for r in short.history] == [4, 6]
    sparse = fit(make_model(), (x, y), (x, y), val_every=2, **SETTINGS)
    assert ["val_loss" in r for r in sparse.history] == [False, True, True]
    dropped = fit(make_model(), (x, y), drop_last=True, **SETTINGS)
    assert [r["step"] for r in dropped.history] == [3, 6, 9]


def test_an_optimizer_over_other_parameters_is_an_error():
    x, y = make_data()
    model = make_model()
    n = len(list(model.parameters()))
    other = torch.optim.SGD(make_model(1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=f"holds 0 of the model's {n} trainable parameter"):
        fit(model, (x, y), optimizer=other, quiet=True)
    part = torch.optim.SGD(list(model.parameters())[:2], lr=0.1)
    with pytest.raises(ValueError, match=f"holds 2 of the model's {n}"):
        fit(model, (x, y), optimizer=part, quiet=True)


def test_bf16_autocast_on_cpu_trains_and_fp16_is_validated():
    x, y = make_data()
    result = fit(make_model(norm="none"), (x, y), (x, y), precision="bf16", **SETTINGS)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert result.history[-1]["val_loss"] < result.history[0]["train_loss"] + 0.5
    with pytest.raises(ValueError, match="precision: Input should be 'fp32', 'bf16' or 'fp16'"):
        fit(make_model(), (x, y), precision="half", quiet=True)


def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed(tmp_path):
    x, y = make_data()
    settings = {**SETTINGS, "optimizer": "adam", "lr": 0.01}
    result = fit(make_model(norm="none"), (x, y), (x, y), precision="fp16",
                 run_dir=tmp_path / "run", **settings)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["scaler"]["scale"] > 0 and "_growth_tracker" in last["scaler"]


@pytest.mark.parametrize(
    "train, message",
    [
        ("nope", "train must be a pair \\(x, y\\) of tensors, a ravine.data.ArrayDataset"),
        ((torch.zeros(3, 2), [1, 2, 3]), "a pair \\(x, y\\) must hold tensors, got Tensor, list"),
        ((torch.zeros(3, 2), torch.zeros(4)), "same number of inputs and targets, got 3 and 4"),
        (TensorDataset(torch.zeros(0, 5), torch.zeros(0).long()), "train holds no examples"),
        (DataLoader(TensorDataset(torch.zeros(5, 5), torch.zeros(5).long()), batch_size=8,
                    drop_last=True), "yields no batches .*drop_last=True"),
    ],
)
def test_bad_training_data_is_one_line_naming_it(train, message):
    with pytest.raises(ValueError, match=message) as info:
        fit(make_model(), train, quiet=True)
    assert "\n" not in str(info.value)


def test_helpers_move_nested_batches_and_count_examples():
    batch = {"a": torch.zeros(4, 2), "b": [torch.ones(4), (torch.zeros(4, 1), "text")]}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["b"][1][1] == "text" and batch_examples(moved) == 4
    assert as_tensors(data.ArrayDataset(torch.zeros(2, 1), torch.zeros(2))) is not None


def test_a_torch_scheduler_steps_per_step_or_per_epoch():
    x, y = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    result = fit(model, (x, y), optimizer=opt, schedule=sched,
                 **{k: v for k, v in SETTINGS.items() if k not in ("optimizer", "lr")})
    steps = len(result.history) * 4
    # the lr of each epoch's last step (steps 3, 7, 11 counted from 0): 0.1 * 0.5^(k // 2)
    assert [r["lr"] for r in result.history] == [0.1 * 0.5 ** (k // 2) for k in (3, 7, 11)]
    assert steps == 12
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    result = fit(model, (x, y), optimizer=opt, schedule=sched, schedule_interval="epoch",
                 **{k: v for k, v in SETTINGS.items() if k not in ("optimizer", "lr")})
    assert [r["lr"] for r in result.history] == [0.1, 0.05, 0.025]
    with pytest.raises(ValueError, match="schedule_interval applies to a torch LRScheduler"):
        fit(make_model(), (x, y), schedule_interval="epoch", quiet=True)


def test_reduce_on_plateau_follows_the_monitored_metric():
    x, y = make_data()
    # An improvement must be 1000x (threshold 999 relative): never, so every epoch after
    # `patience` non-improving ones cuts the rate by `factor`.
    schedule = {"name": "reduce-on-plateau", "factor": 0.5, "patience": 0, "threshold": 999}
    result = fit(make_model(), (x, y), (x, y), schedule=schedule,
                 **{**SETTINGS, "optimizer": "sgd", "epochs": 4})
    # torch's ReduceLROnPlateau stepped by hand on the same validation losses
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, factor=0.5, patience=0,
                                                         threshold=999)
    expected = []
    for record in result.history:
        expected.append(reference.param_groups[0]["lr"])
        plateau.step(record["val_loss"])
    assert [r["lr"] for r in result.history] == expected
    assert expected[-1] < expected[0]


def test_csv_and_tensorboard_loggers_write_beside_metrics_jsonl(tmp_path):
    x, y = make_data()
    result = fit(make_model(), (x, y), (x, y), run_dir=tmp_path / "run",
                 loggers=["csv", "tensorboard"], **SETTINGS)
    import csv

    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val_loss"]) for r in rows] == [r["val_loss"] for r in result.history]
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    with pytest.raises(ValueError, match="did you mean 'csv'"):
        fit(make_model(), (x, y), run_dir=tmp_path / "other", loggers=["cvs"], **SETTINGS)


def test_fit_keywords_are_the_schema_and_run_control_with_the_schema_defaults():
    import inspect

    from ravine.train.options import RUN_CONTROL, FitOptions

    params = {n: p for n, p in inspect.signature(fit).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(params) == set(FitOptions.model_fields) | set(RUN_CONTROL) | {"test"}
    defaults = FitOptions.from_kwargs(**{n: params[n].default
                                         for n in FitOptions.model_fields}).describe()
    assert defaults == FitOptions().describe()


def test_in_memory_evaluation_runs_in_cache_sized_chunks_on_a_cpu():
    from ravine.data.sources import CPU_EVAL_BATCH_SIZE, eval_batches

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1100, 40, generator=g), torch.randint(0, 10, (1100,), generator=g)
    chunks = list(eval_batches((x, y), name="val", batch_size=32, rank=0, world_size=1,
                               device=torch.device("cpu")))
    assert [len(c[0]) for c in chunks] == [512, 512, 76] and CPU_EVAL_BATCH_SIZE == 512
    assert torch.equal(torch.cat([c[0] for c in chunks]), x)
    assert torch.equal(torch.cat([c[1] for c in chunks]), y)
    # a rank's strided share is chunked the same way
    share = list(eval_batches((x, y), name="val", batch_size=32, rank=1, world_size=2,
                              device=torch.device("cpu")))
    assert [len(c[0]) for c in share] == [512, 38]
    assert torch.equal(torch.cat([c[0] for c in share]), x[1::2])
    # the metrics of the chunked evaluation are those of the whole set at once
    torch.manual_seed(0)
    net = models.mlp(40, [16], 10)
    result = fit(net, (x[:200], y[:200]), (x, y), epochs=1, batch_size=50, seed=0, quiet=True)
    with torch.no_grad():
        out = result.model.eval()(x)
    assert result.history[-1]["val_loss"] == pytest.approx(F.cross_entropy(out, y).item(),
                                                           rel=1e-6)
    assert result.history[-1]["val_acc"] == (out.argmax(1) == y).double().mean().item()
