"""EpochShuffle: the training order as a function of (seed, epoch), resumable mid-epoch."""

from langinterp.shuffle import EpochShuffle


def sampler(epoch: int, done: int = 0, size: int = 10, batch_size: int = 3) -> EpochShuffle:
    return EpochShuffle(list(range(size)), 7, lambda: epoch, batch_size, lambda: done)


def test_each_epoch_has_its_own_repeatable_permutation() -> None:
    first, again, second = list(sampler(0)), list(sampler(0)), list(sampler(1))
    assert sorted(first) == list(range(10)) and first == again and first != second


def test_a_resumed_epoch_skips_the_batches_already_trained_but_keeps_its_first_index() -> None:
    whole = list(sampler(4))
    resumed = sampler(4, done=2)
    assert list(resumed) == whole[6:]
    assert resumed.first(4) == whole[0] and resumed.first(5) == next(iter(sampler(5)))
    assert EpochShuffle([], 7, lambda: 0, 3, lambda: 0).first(0) is None
