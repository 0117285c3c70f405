"""Key hashing, partition ids and the DP trie."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from dds.partition import DPTrie, PartitionId, initial_partitions, key_hash


def test_key_hash_is_xxh64_seed_zero() -> None:
    assert key_hash(b"") == 0xEF46DB3751D8E999      # the published xxh64("") value


def test_partition_ids_round_trip_through_text() -> None:
    pid = PartitionId(3, 5)
    assert str(pid) == "p3.5"
    assert PartitionId.parse("p3.5") == pid


@pytest.mark.parametrize("text", ["p3", "3.5", "p3.8", "px.1", "p33.0", "", "p3.5 "])
def test_malformed_partition_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        PartitionId.parse(text)


def test_a_leaf_owns_keys_whose_low_bits_equal_its_prefix() -> None:
    key = b"some key"
    h = key_hash(key)
    assert PartitionId(4, h & 0xF).owns(key)
    assert not PartitionId(4, (h + 1) & 0xF).owns(key)


def test_children_split_on_the_next_bit_and_parent_undoes_it() -> None:
    pid = PartitionId(2, 0b11)
    left, right = pid.children()
    assert (left, right) == (PartitionId(3, 0b011), PartitionId(3, 0b111))
    assert left.parent() == pid and right.parent() == pid
    assert left.sibling() == right


@given(st.binary(max_size=64))
def test_every_key_has_exactly_one_owner_in_an_initial_map(key: bytes) -> None:
    leaves = initial_partitions(16)
    assert sum(p.owns(key) for p in leaves) == 1
    assert DPTrie(leaves).lookup(key).owns(key)


@given(st.lists(st.binary(max_size=16), min_size=1, max_size=50), st.integers(0, 15))
def test_lookup_after_split_and_merge_finds_the_owner(keys: list[bytes], which: int) -> None:
    trie = DPTrie(initial_partitions(16))
    split = trie.split(PartitionId(4, which))
    for key in keys:
        owner = split.lookup(key)
        assert owner.owns(key)
        assert owner.depth in (4, 5)
    merged = split.merge(PartitionId(5, which))
    assert merged.leaves == trie.leaves


def test_overlapping_leaves_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        DPTrie([PartitionId(1, 0), PartitionId(1, 1), PartitionId(2, 1)])


def test_leaves_that_leave_a_gap_are_refused() -> None:
    with pytest.raises(ValueError, match="cover"):
        DPTrie([PartitionId(2, 0), PartitionId(2, 1), PartitionId(2, 2)])


def test_merge_needs_both_siblings() -> None:
    trie = DPTrie(initial_partitions(4)).split(PartitionId(2, 1))
    with pytest.raises(ValueError, match="not both partitions"):
        trie.merge(PartitionId(2, 3))


def test_partition_counts_must_be_powers_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        initial_partitions(12)
