"""Key hashing, partition ids and the data-partitioning (DP) trie (DESIGN §2).

A key hashes to ``h = xxh64(key)``.  The DP map is a binary trie over the bits of ``h``,
least significant bit first: the leaf at depth ``d`` with prefix ``p`` owns every key whose
low ``d`` bits equal ``p``.  Leaves are partitions, named canonically ``p{depth}.{prefix}``.
"""

from __future__ import annotations

import re
from typing import Iterable

import attrs
import xxhash

MAX_DEPTH = 32
_PID_RE = re.compile(r"^p(\d{1,2})\.(\d{1,10})$")


def key_hash(key: bytes) -> int:
    """The 64-bit hash that places a key (xxh64, seed 0)."""
    return xxhash.xxh64_intdigest(key)


def _check_prefix(inst: "PartitionId", attribute: object, value: int) -> None:
    if not 0 <= inst.depth <= MAX_DEPTH:
        raise ValueError(f"partition depth must be 0..{MAX_DEPTH}, got {inst.depth}")
    if not 0 <= value < (1 << inst.depth) and not (inst.depth == 0 and value == 0):
        raise ValueError(f"prefix {value} does not fit in {inst.depth} bits")


@attrs.frozen(order=True, cache_hash=True)
class PartitionId:
    """A leaf of the DP trie: owns keys whose low ``depth`` hash bits equal ``prefix``."""

    depth: int = attrs.field(validator=attrs.validators.instance_of(int))
    prefix: int = attrs.field(validator=[attrs.validators.instance_of(int), _check_prefix])

    @classmethod
    def parse(cls, text: str) -> "PartitionId":
        m = _PID_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"not a partition id: {text!r} (expected p<depth>.<prefix>)")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"p{self.depth}.{self.prefix}"

    @property
    def mask(self) -> int:
        return (1 << self.depth) - 1

    def owns_hash(self, h: int) -> bool:
        return (h & self.mask) == self.prefix

    def owns(self, key: bytes) -> bool:
        return self.owns_hash(key_hash(key))

    def children(self) -> tuple["PartitionId", "PartitionId"]:
        """The two halves a split produces: next hash bit 0, then 1."""
        if self.depth >= MAX_DEPTH:
            raise ValueError(f"{self} is at the maximum depth and cannot split")
        return (PartitionId(self.depth + 1, self.prefix),
                PartitionId(self.depth + 1, self.prefix | (1 << self.depth)))

    def parent(self) -> "PartitionId":
        if self.depth == 0:
            raise ValueError("the root partition has no parent")
        d = self.depth - 1
        return PartitionId(d, self.prefix & ((1 << d) - 1))

    def sibling(self) -> "PartitionId":
        if self.depth == 0:
            raise ValueError("the root partition has no sibling")
        return PartitionId(self.depth, self.prefix ^ (1 << (self.depth - 1)))

    def covers(self, other: "PartitionId") -> bool:
        """Whether ``other`` lies inside this subtree (or is this leaf)."""
        return other.depth >= self.depth and (other.prefix & self.mask) == self.prefix


def initial_partitions(count: int) -> list[PartitionId]:
    """``count`` equal partitions (a power of two) at depth log2(count)."""
    if count < 1 or count & (count - 1):
        raise ValueError(f"partition count must be a power of two, got {count}")
    depth = count.bit_length() - 1
    return [PartitionId(depth, p) for p in range(count)]


class DPTrie:
    """Lookup of the partition owning a hash, over a complete set of leaves.

    Leaves are kept per depth in dicts keyed by prefix, so a lookup is one dict probe per
    distinct depth present (usually one or two), not a walk of the tree.
    """

    def __init__(self, leaves: Iterable[PartitionId]) -> None:
        self._leaves = sorted(set(leaves))
        by_depth: dict[int, dict[int, PartitionId]] = {}
        for leaf in self._leaves:
            by_depth.setdefault(leaf.depth, {})[leaf.prefix] = leaf
        self._levels = sorted(((d, (1 << d) - 1, m) for d, m in by_depth.items()),
                              key=lambda t: t[0])
        self._check_partition()

    def _check_partition(self) -> None:
        """Leaves must neither overlap nor leave a gap: their key shares add up to 1."""
        present = set(self._leaves)
        for leaf in self._leaves:
            anc = leaf
            while anc.depth > 0:
                anc = anc.parent()
                if anc in present:
                    raise ValueError(f"partitions {anc} and {leaf} overlap")
        total = sum(1 << (MAX_DEPTH - leaf.depth) for leaf in self._leaves)
        if self._leaves and total != 1 << MAX_DEPTH:
            raise ValueError("partitions do not cover the whole key space")

    @property
    def leaves(self) -> list[PartitionId]:
        return list(self._leaves)

    def lookup_hash(self, h: int) -> PartitionId:
        for _depth, mask, level in self._levels:
            leaf = level.get(h & mask)
            if leaf is not None:
                return leaf
        raise LookupError("empty DP trie")

    def lookup(self, key: bytes) -> PartitionId:
        return self.lookup_hash(key_hash(key))

    def split(self, leaf: PartitionId) -> "DPTrie":
        if leaf not in self._leaves:
            raise ValueError(f"{leaf} is not a partition")
        return DPTrie([x for x in self._leaves if x != leaf] + list(leaf.children()))

    def merge(self, leaf: PartitionId) -> "DPTrie":
        """Replace ``leaf`` and its sibling by their parent."""
        sib = leaf.sibling()
        if leaf not in self._leaves or sib not in self._leaves:
            raise ValueError(f"{leaf} and {sib} are not both partitions")
        return DPTrie([x for x in self._leaves if x not in (leaf, sib)] + [leaf.parent()])
