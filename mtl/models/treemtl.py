"""TreeMTL's layout order: the index space the DGBA paper's models are addressed by.

TreeMTL (Zhang, Liu & Guan, "A Tree-Structured Multi-Task Model Recommender", AutoML-Conf 2022)
enumerates layouts depth-first from the fully shared one: a *cut* at block ``i`` splits one
task set of block ``i`` into two and applies to blocks ``i..B-1``; a layout takes at most
``T - 1`` cuts, each at a block no lower than its previous cut; a layout already listed is
neither listed again nor expanded again. The DGBA paper (Zhang et al. 2023, arXiv 2305.12066)
trains and attacks "layout index i" of that list, so index 0 is the fully shared network and,
for three tasks, index 2 is three independent networks.

The rules that fix the order (they decide which index is which):

* blocks are visited from the last cut's block upward; within a block, the task sets in the
  order they were created (a cut removes its set and appends the two halves);
* the two-way splits of a set ``e0 < e1 < ... < e(n-1)`` (TreeMTL walks Python sets of small
  task indices, which iterate in ascending order) are listed by the membership pattern
  of ``e1..e(n-1)`` in the *first* half (``e0`` always goes to the second half), patterns in
  the order "member" before "non-member", position by position, the empty first half skipped;
  the new block lists the first half, then the second.

This module is pure Python and knows nothing of `Layout`: it yields canonical partition chains
(sorted groups ordered by their smallest task), which `mtl.models.layout` wraps.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

Group = tuple[int, ...]
Chain = tuple[tuple[Group, ...], ...]
_Block = tuple[frozenset, ...]  # one block's task sets, in TreeMTL's list order


def _halves(task_set: frozenset) -> Iterator[tuple[frozenset, frozenset]]:
    """TreeMTL's two-way splits of ``task_set``: (first half, second half) in its order."""
    items = sorted(task_set)
    rest = items[1:]
    n = len(rest)
    # pattern p (an n-bit number, most significant bit = rest[0]); bit 0 = "in the first half",
    # so counting up from 0 is the order member-before-non-member; all ones = empty, skipped
    for pattern in range((1 << n) - 1):
        first = frozenset(t for k, t in enumerate(rest) if not (pattern >> (n - 1 - k)) & 1)
        yield first, task_set - first


def _canonical(blocks: tuple[_Block, ...]) -> Chain:
    return tuple(tuple(sorted((tuple(sorted(s)) for s in block), key=lambda g: g[0]))
                 for block in blocks)


def iter_treemtl_chains(num_tasks: int, num_blocks: int) -> Iterator[Chain]:
    """Every layout of ``num_tasks`` tasks over ``num_blocks`` blocks, as canonical partition
    chains, in TreeMTL's enumeration order (index 0 first)."""
    root: tuple[_Block, ...] = ((frozenset(range(num_tasks)),),) * num_blocks
    seen: set[Chain] = set()

    def visit(blocks: tuple[_Block, ...], cuts: int, lowest: int) -> Iterator[Chain]:
        if cuts >= num_tasks - 1:
            return
        for i in range(lowest, num_blocks):
            for task_set in blocks[i]:
                if len(task_set) == 1:
                    continue
                for first, second in _halves(task_set):
                    cut = tuple(s for s in blocks[i] if s != task_set) + (first, second)
                    child = blocks[:i] + (cut,) * (num_blocks - i)
                    key = _canonical(child)
                    if key in seen:
                        continue
                    seen.add(key)
                    yield key
                    yield from visit(child, cuts + 1, i)

    first = _canonical(root)
    seen.add(first)
    yield first
    yield from visit(root, 0, 0)


@functools.lru_cache(maxsize=8)
def treemtl_chains(num_tasks: int, num_blocks: int) -> tuple[Chain, ...]:
    """The whole TreeMTL list (cached: a sweep looks up many indices of one list). 51 chains
    for 3 tasks x 5 blocks, 7,556 for 5 x 5 (the DGBA paper's NYUv2 and Taskonomy spaces)."""
    return tuple(iter_treemtl_chains(num_tasks, num_blocks))


@functools.lru_cache(maxsize=8)
def _positions(num_tasks: int, num_blocks: int) -> dict[Chain, int]:
    return {chain: i for i, chain in enumerate(treemtl_chains(num_tasks, num_blocks))}


def treemtl_position(chain: Chain, num_tasks: int, num_blocks: int) -> int:
    """The TreeMTL index of a canonical chain (every layout has one)."""
    return _positions(num_tasks, num_blocks)[chain]
