"""The transfer split and its rows' hash are computed once per labels tensor (engine/pretrained.py, `_split_of`):
planning a grid asks for them several times per step. Contract: every call gives what the uncached computation
gives (`stratified_split` of the labels, `short_hash` of the pre-training rows), in fresh tensors, whatever labels
came before, however the labels tensor was changed in place, and however many label sets the process has seen."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.hashing import short_hash
from poisonbench.data.splits import stratified_split
from poisonbench.engine import pretrained
from poisonbench.engine.pretrained import (
    MIN_PRETRAIN_PER_CLASS,
    TRANSFER_FRACTION,
    TRANSFER_SPLIT_SEED,
    extractor_spec,
    transfer_split,
)


def dataset(labels, num_classes: int | None = None, name: str = "fake"):
    y = torch.as_tensor(labels, dtype=torch.long)
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    return SimpleNamespace(train=SimpleNamespace(y=y), num_classes=classes, name=name, fingerprint="same",
                           family="mnist")


def reference(y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The split computed from scratch, as `transfer_split` did before the cache."""
    labels = y.numpy().copy()
    return tuple(stratified_split(labels, [int(round(TRANSFER_FRACTION * len(labels)))], seed=TRANSFER_SPLIT_SEED))


def labels_of(seed: int, n: int, classes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), MIN_PRETRAIN_PER_CLASS + 2)  # every class big enough
    return rng.permutation(np.concatenate([y, rng.integers(0, classes, n)]))


@pytest.fixture(autouse=True)
def empty_caches():
    pretrained._SPLITS.clear()
    yield
    pretrained._SPLITS.clear()


def assert_split(data) -> None:
    pretrain, transfer = transfer_split(data)
    want_pretrain, want_transfer = reference(data.train.y)
    assert pretrain.dtype == transfer.dtype == torch.int64
    assert np.array_equal(pretrain.numpy(), want_pretrain) and np.array_equal(transfer.numpy(), want_transfer)
    assert pretrained._split_of(data)[2] == short_hash(want_pretrain.tolist())


@settings(max_examples=40, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12),
       sizes=st.lists(st.integers(0, 157), min_size=12, max_size=12),
       classes=st.lists(st.integers(2, 6), min_size=12, max_size=12),
       repeats=st.lists(st.integers(0, 11), max_size=12))
def test_every_call_gives_the_uncached_split_whatever_came_before(seeds, sizes, classes, repeats):
    """Several label sets (up to 12: more than the cache holds, so it is emptied on the way), each asked again in
    any order, through fresh tensors and the same ones: always the split of their own labels."""
    sets = [dataset(labels_of(s, sizes[i], classes[i])) for i, s in enumerate(seeds)]
    for data in sets:
        assert_split(data)
    for i in repeats:
        data = sets[i % len(sets)]
        assert_split(data)
        assert_split(dataset(data.train.y.numpy().copy()))  # another tensor with the same labels
    assert len(pretrained._SPLITS) <= pretrained._MAX_SPLITS


@pytest.mark.parametrize("count", [pretrained._MAX_SPLITS - 1, pretrained._MAX_SPLITS, pretrained._MAX_SPLITS + 1])
def test_the_caches_stay_bounded_and_right_at_their_limit(count):
    sets = [dataset(labels_of(i, 40, 3)) for i in range(count)]
    for _ in range(2):
        for data in sets:
            assert_split(data)
            assert len(pretrained._SPLITS) <= pretrained._MAX_SPLITS
    # up to the limit every set stays cached; one more and the caches make room (the answers stay right, above)
    assert len(pretrained._SPLITS) == min(count, pretrained._MAX_SPLITS)


def test_labels_changed_in_place_get_their_own_split():
    data = dataset(labels_of(0, 60, 4))
    before = transfer_split(data)
    data.train.y[:7] = (data.train.y[:7] + 1) % 4  # torch's version counter moves: the split is computed again
    assert_split(data)
    assert not all(torch.equal(a, b) for a, b in zip(before, transfer_split(data), strict=True))


@pytest.mark.parametrize("where", [0, 1, -2, -1])
def test_labels_that_differ_in_one_place_get_their_own_split(where):
    """The whole labels make the key: two label sets of one length and class count that differ at one index, the
    first or the last included, are each split as their own."""
    for seed in range(500):  # labels whose change at `where` changes the split (most changes leave it alone)
        a = labels_of(seed, 70, 3)
        b = a.copy()
        b[where] = (b[where] + 1) % 3
        if not all(np.array_equal(p, q) for p, q in zip(reference(torch.as_tensor(a)), reference(torch.as_tensor(b)),
                                                         strict=True)):
            break
    else:
        pytest.fail("no labels found whose one change moves the split")
    for labels in (a, b, a):
        assert_split(dataset(labels, 3))


def test_labels_made_in_inference_mode_are_split_without_a_version_counter():
    """A dataset plugin may build its tensors in inference mode, where torch keeps no version counter: the split is
    then computed at every call, never cached, and is still the labels' own."""
    labels = labels_of(7, 60, 4)
    with torch.inference_mode():
        data = dataset(labels)
    assert data.train.y.is_inference()
    for _ in range(2):
        assert_split(data)
    assert pretrained._SPLITS == []


def test_the_same_labels_with_another_class_count_are_another_key():
    labels = labels_of(1, 50, 3)
    a = dataset(labels, 3)
    assert_split(a)
    b = SimpleNamespace(train=a.train, num_classes=4, name="fake", fingerprint="same", family="mnist")  # same tensor
    with pytest.raises(PoisonbenchError, match="smallest class"):
        transfer_split(b)  # class 3 has no image: refused, though the same labels with 3 classes were split
    assert_split(a)


def test_each_call_gives_fresh_tensors():
    data = dataset(labels_of(2, 80, 5))
    pretrain, transfer = transfer_split(data)
    want = reference(data.train.y)
    pretrain[:] = -1
    transfer.zero_()
    again = transfer_split(data)
    assert np.array_equal(again[0].numpy(), want[0]) and np.array_equal(again[1].numpy(), want[1])
    cached = pretrained._split_of(data)
    assert not cached[0].flags.writeable and not cached[1].flags.writeable


def test_a_split_too_small_is_refused_at_every_call_and_never_cached():
    data = dataset(np.repeat(np.arange(3), MIN_PRETRAIN_PER_CLASS))  # 90 % of 10 per class: under the minimum
    for _ in range(2):
        with pytest.raises(PoisonbenchError, match=f"at least {MIN_PRETRAIN_PER_CLASS} per class"):
            transfer_split(data)
    assert pretrained._SPLITS == []


def test_the_extractor_spec_names_the_uncached_rows_hash():
    data = dataset(labels_of(3, 90, 4))
    for role in ("victim", "attacker"):
        spec = extractor_spec(data, "convnet", "quick", {"epochs": 1}, role)
        assert spec["rows"] == short_hash(reference(data.train.y)[0].tolist())


def test_the_extractor_spec_and_id_are_those_of_the_code_before_the_cache():
    """The whole spec, and the ids the code before the cache (commit 9e647a1) gave for these labels: an extractor's
    id names its cache entry and the records that used it, so a renamed key, another default or another seed domain
    would orphan every cached extractor and part every new record from the packs."""
    from poisonbench.core.seeds import attacker_seed
    from poisonbench.engine.pretrained import extractor_id
    from poisonbench.engine.recipes import resolve_recipe

    data = dataset(labels_of(4, 90, 4))
    rows = short_hash(reference(data.train.y)[0].tolist())
    for args, domain, recipe, want_id in (
            ((), "extractor", resolve_recipe("mnist", "paper"), "2edb469decacd2d5"),
            (("convnet", "quick", {"epochs": 1}, "attacker"), "attacker-extractor",
             resolve_recipe("mnist", "quick", epochs=1), "2046add5f4e4ba45")):
        inputs = {"purpose": "transfer-extractor", "dataset": "fake", "dataset_fingerprint": "same",
                  "model": "convnet", "recipe": recipe.to_dict(), "rows": rows, "transfer_fraction": 0.1}
        assert extractor_spec(data, *args) == {**inputs, "seed": attacker_seed(domain, inputs)}
        assert extractor_id(data, *args) == want_id
    assert rows == "2ca9f20a6d3d1aaa"


def test_an_unknown_extractor_role_is_one_line_naming_the_choices():
    with pytest.raises(PoisonbenchError) as refused:
        extractor_spec(dataset(labels_of(5, 40, 3)), role="thief")
    assert str(refused.value) == "extractor role must be one of victim, attacker, got 'thief'"


def test_a_smallest_class_of_exactly_the_minimum_is_accepted():
    """The limit itself: a pre-training part whose smallest class has exactly `MIN_PRETRAIN_PER_CLASS` images is
    split; one fewer is refused."""
    for per_class, accepted in ((12, True), (10, False)):
        labels = np.repeat(np.arange(3), per_class)
        data = dataset(labels)
        smallest = np.bincount(labels[reference(data.train.y)[0]], minlength=3).min()
        assert smallest == (MIN_PRETRAIN_PER_CLASS if accepted else MIN_PRETRAIN_PER_CLASS - 1)
        if accepted:
            assert_split(data)
        else:
            with pytest.raises(PoisonbenchError, match="smallest class"):
                transfer_split(data)
