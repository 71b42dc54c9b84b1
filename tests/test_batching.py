"""EpochBatches / RandomBatches: coverage, the shuffle-then-blocks order, resumption, sharding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ravine.data import EpochBatches, RandomBatches, batches


def reference_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The documented order of an epoch: randperm seeded from SeedSequence((seed, epoch))."""
    torch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(torch_seed))


def epochs(sampler, count: int) -> list[list[torch.Tensor]]:
    return [list(sampler) for _ in range(count)]


def assert_same_batches(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == torch.long
        assert torch.equal(x, y)


# --------------------------------------------------------------------------- EpochBatches


@pytest.mark.parametrize(("n", "m"), [(10, 3), (12, 4), (7, 10), (1, 1), (100, 1)])
def test_every_example_exactly_once_per_epoch(n: int, m: int) -> None:
    sampler = EpochBatches(n, m, seed=3)
    for got in epochs(sampler, 3):
        assert len(got) == len(sampler) == math.ceil(n / m)
        assert [len(b) for b in got] == [min(m, n - k * m) for k in range(len(got))]
        assert torch.equal(torch.sort(torch.cat(got)).values, torch.arange(n))
    assert sampler.epoch == 3


def test_batches_are_contiguous_blocks_of_a_fresh_permutation_per_epoch() -> None:
    n, m, seed = 23, 5, 11
    sampler = EpochBatches(n, m, seed=seed)
    for epoch, got in enumerate(epochs(sampler, 4)):
        perm = reference_permutation(n, seed, epoch)
        assert_same_batches(got, [perm[k * m : (k + 1) * m] for k in range(math.ceil(n / m))])
        assert torch.equal(sampler.order(epoch), perm)
    orders = [tuple(reference_permutation(n, seed, e).tolist()) for e in range(4)]
    assert len(set(orders)) == 4  # each epoch is shuffled anew


def test_without_shuffle_walks_in_index_order() -> None:
    got = list(EpochBatches(7, 3, shuffle=False))
    assert_same_batches(got, [torch.arange(0, 3), torch.arange(3, 6), torch.arange(6, 7)])


def test_reproducible_by_seed_and_independent_of_history() -> None:
    a, b = EpochBatches(50, 8, seed=5), EpochBatches(50, 8, seed=5)
    for got_a, got_b in zip(epochs(a, 3), epochs(b, 3), strict=True):
        assert_same_batches(got_a, got_b)
    other = epochs(EpochBatches(50, 8, seed=6), 1)[0]
    assert not torch.equal(torch.cat(other), a.order(0))
    # Epoch 2 on its own equals the third epoch of a sampler that iterated the first two.
    fresh = EpochBatches(50, 8, seed=5)
    fresh.load_state_dict({**fresh.state_dict(), "epoch": 2})
    assert torch.equal(torch.cat(list(fresh)), reference_permutation(50, 5, 2))


def test_drop_last_skips_the_tail_of_each_epochs_permutation() -> None:
    n, m, seed = 10, 3, 1
    sampler = EpochBatches(n, m, drop_last=True, seed=seed)
    assert len(sampler) == 3
    dropped = set()
    for epoch, got in enumerate(epochs(sampler, 5)):
        perm = reference_permutation(n, seed, epoch)
        assert_same_batches(got, [perm[k * m : (k + 1) * m] for k in range(3)])
        dropped.add(int(perm[-1]))
    assert len(dropped) > 1  # a different example is left out in different epochs


def test_resume_mid_epoch_yields_exactly_the_remaining_batches() -> None:
    reference = epochs(EpochBatches(37, 6, seed=2), 3)
    sampler = EpochBatches(37, 6, seed=2)
    list(sampler)
    taken = []
    for idx in sampler:
        taken.append(idx)
        if len(taken) == 3:
            break
    state = json.loads(json.dumps(sampler.state_dict()))  # plain, serializable values
    assert state["epoch"] == 1 and state["position"] == 3
    resumed = EpochBatches(37, 6, seed=2)
    resumed.load_state_dict(state)
    assert_same_batches(taken + list(resumed), reference[1])
    assert_same_batches(list(resumed), reference[2])
    # The interrupted object itself also continues where it stopped.
    assert_same_batches(list(sampler), reference[1][3:])


def test_state_after_the_last_batch_resumes_with_nothing_left_then_the_next_epoch() -> None:
    reference = epochs(EpochBatches(9, 4, seed=0), 2)
    sampler = EpochBatches(9, 4, seed=0)
    iterator = iter(sampler)
    for _ in range(len(sampler)):
        next(iterator)
    resumed = EpochBatches(9, 4, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == []
    assert resumed.epoch == 1
    assert_same_batches(list(resumed), reference[1])


def test_load_state_dict_rejects_other_settings_and_bad_positions() -> None:
    state = EpochBatches(10, 3, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"saved with n=10, but this EpochBatches has n=11"):
        EpochBatches(11, 3, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with drop_last=False"):
        EpochBatches(10, 3, drop_last=True, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with kind='epoch'"):
        RandomBatches(10, 3, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"position'\] must be an integer in \[0, 4\], got 5"):
        EpochBatches(10, 3, seed=0).load_state_dict({**state, "position": 5})
    with pytest.raises(ValueError, match=r"missing keys \['epoch'\]"):
        EpochBatches(10, 3, seed=0).load_state_dict(
            {k: v for k, v in state.items() if k != "epoch"}
        )


@pytest.mark.parametrize(("n", "m", "world"), [(23, 8, 4), (40, 8, 2), (9, 8, 4), (5, 6, 3)])
def test_ranks_partition_each_global_batch(n: int, m: int, world: int) -> None:
    single = epochs(EpochBatches(n, m, seed=4), 2)
    ranks = [EpochBatches(n, m, seed=4, rank=r, world_size=world) for r in range(world)]
    per_rank = [epochs(s, 2) for s in ranks]
    for epoch in range(2):
        for k, global_batch in enumerate(single[epoch]):
            shards = [per_rank[r][epoch][k] for r in range(world)]
            assert torch.equal(torch.cat(shards), global_batch)
            expected = [len(a) for a in np.array_split(np.arange(len(global_batch)), world)]
            assert [len(s) for s in shards] == expected == ranks[0].shard_sizes(k)
            if len(global_batch) == m:
                assert expected == [m // world] * world
            assert all(s.dtype == torch.long for s in shards)


def test_sharding_rejects_a_global_batch_not_divisible_by_world_size() -> None:
    with pytest.raises(
        ValueError, match=r"divisible by world_size, got batch_size=10, world_size=3"
    ):
        EpochBatches(100, 10, world_size=3)
    with pytest.raises(
        ValueError, match=r"rank must be an integer in \[0, world_size\) = \[0, 2\)"
    ):
        EpochBatches(100, 10, rank=2, world_size=2)


def test_resume_on_another_world_size_continues_the_same_global_batches() -> None:
    single = EpochBatches(30, 6, seed=9)
    reference = list(EpochBatches(30, 6, seed=9))
    iterator = iter(single)
    next(iterator), next(iterator)
    shards = []
    for rank in range(3):
        sampler = EpochBatches(30, 6, seed=9, rank=rank, world_size=3)
        sampler.load_state_dict(single.state_dict())
        shards.append(list(sampler))
    assert_same_batches([torch.cat(s) for s in zip(*shards, strict=True)], reference[2:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0, "batch_size": 1}, "n must be an integer >= 1, got 0"),
        ({"n": 5, "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"n": 5, "batch_size": 2.0}, "batch_size must be an integer >= 1, got 2.0"),
        ({"n": 5, "batch_size": 2, "seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"n": 5, "batch_size": 2, "world_size": 0}, "world_size must be an integer >= 1, got 0"),
        ({"n": 5, "batch_size": 2, "shuffle": 1}, "shuffle must be True or False, got 1"),
        (
            {"n": 5, "batch_size": 6, "drop_last": True},
            "batch_size must be <= n when drop_last=True",
        ),
    ],
)
def test_epoch_batches_validates_arguments(kwargs: dict, message: str) -> None:
    n, m = kwargs.pop("n"), kwargs.pop("batch_size")
    with pytest.raises(ValueError, match=message):
        EpochBatches(n, m, **kwargs)


def test_shard_sizes_validates_the_step() -> None:
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 2\), got 2"):
        EpochBatches(10, 5).shard_sizes(2)


# --------------------------------------------------------------------------- RandomBatches


def test_random_batches_are_distinct_valid_indices_and_reproducible() -> None:
    n, m = 30, 7
    sampler = RandomBatches(n, m, seed=1)
    assert len(sampler) == math.ceil(n / m)
    got = epochs(sampler, 3)
    for epoch in got:
        for idx in epoch:
            assert idx.dtype == torch.long and len(idx) == m
            assert len(set(idx.tolist())) == m  # without replacement within a batch
            assert 0 <= int(idx.min()) and int(idx.max()) < n
    again = epochs(RandomBatches(n, m, seed=1), 3)
    for a, b in zip(got, again, strict=True):
        assert_same_batches(a, b)
    other = torch.cat(list(RandomBatches(n, m, seed=2)))
    assert not torch.equal(other, torch.cat(got[0]))
    assert not torch.equal(torch.cat(got[0]), torch.cat(got[1]))
    assert len(RandomBatches(n, m, seed=1, steps_per_epoch=11)) == 11


def test_random_batches_draw_with_replacement_across_steps() -> None:
    # Ten batches of 10 from 100 examples: unlike an epoch of blocks, they repeat examples.
    first_epoch = torch.cat(list(RandomBatches(100, 10, seed=0)))
    assert len(first_epoch) == 100
    assert len(set(first_epoch.tolist())) < 100


def test_random_batches_are_uniform_and_independent_across_steps() -> None:
    n, m, steps = 50, 10, 4000
    drawn = [set(idx.tolist()) for idx in RandomBatches(n, m, seed=0, steps_per_epoch=steps)]
    # Marginal uniformity: chi-square of the inclusion counts. Sampling without replacement
    # within a batch only reduces their variance, so the test is conservative.
    counts = np.bincount(np.concatenate([list(s) for s in drawn]), minlength=n)
    expected = steps * m / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-6, df=n - 1)
    # Independence of consecutive steps: their overlap is hypergeometric(n, m, m).
    overlaps = np.array([len(a & b) for a, b in zip(drawn, drawn[1:], strict=False)])
    law = stats.hypergeom(n, m, m)
    assert abs(overlaps.mean() - law.mean()) < 5 * law.std() / math.sqrt(len(overlaps))


def test_random_batches_resume_mid_epoch() -> None:
    reference = epochs(RandomBatches(40, 8, seed=3), 2)
    sampler = RandomBatches(40, 8, seed=3)
    list(sampler)
    iterator = iter(sampler)
    taken = [next(iterator), next(iterator)]
    resumed = RandomBatches(40, 8, seed=3)
    resumed.load_state_dict(sampler.state_dict())
    assert_same_batches(taken + list(resumed), reference[1])
    with pytest.raises(ValueError, match=r"saved with steps_per_epoch=5, but .* steps_per_epoch=6"):
        RandomBatches(40, 8, seed=3, steps_per_epoch=6).load_state_dict(sampler.state_dict())


def test_random_batches_shard_like_epoch_batches() -> None:
    single = list(RandomBatches(20, 6, seed=8))
    shards = [list(RandomBatches(20, 6, seed=8, rank=r, world_size=3)) for r in range(3)]
    assert_same_batches([torch.cat(s) for s in zip(*shards, strict=True)], single)
    assert all(len(b) == 2 for s in shards for b in s)


def test_random_batches_validate_arguments() -> None:
    with pytest.raises(ValueError, match=r"batch_size must be <= n .* got batch_size=11, n=10"):
        RandomBatches(10, 11)
    with pytest.raises(ValueError, match=r"steps_per_epoch must be an integer >= 1, got 0"):
        RandomBatches(10, 2, steps_per_epoch=0)


# --------------------------------------------------------------------------- factory


def test_batches_factory_builds_by_name() -> None:
    epoch = batches("epoch", 10, 4, seed=1, drop_last=True)
    assert isinstance(epoch, EpochBatches) and epoch.drop_last and len(epoch) == 2
    assert_same_batches(list(epoch), list(EpochBatches(10, 4, seed=1, drop_last=True)))
    random = batches("random", 10, 4, seed=1, steps_per_epoch=2)
    assert isinstance(random, RandomBatches) and len(random) == 2


def test_batches_factory_suggests_names_and_options() -> None:
    with pytest.raises(ValueError, match=r"unknown batching 'epochs'; did you mean 'epoch'\?"):
        batches("epochs", 10, 2, seed=0)
    with pytest.raises(ValueError, match=r"unknown option 'shufle'; did you mean 'shuffle'\?"):
        batches("epoch", 10, 2, seed=0, shufle=False)
    with pytest.raises(ValueError, match=r"batches\('random'\) got an unknown option 'shuffle'"):
        batches("random", 10, 2, seed=0, shuffle=False)
