"""Sharing layouts: which tasks share which backbone block (TreeMTL-style task trees).

A `Layout` is a chain of partitions of the task indices ``0..T-1``, one partition per backbone
block. Each block's partition refines the previous one: tasks that were split never re-merge, so
every layout is a tree whose root is the input and whose leaves are the task heads. Layouts are
immutable, hashable, totally ordered and have one canonical string form, e.g.
``0+1+2|0+1+2|0,1+2|0,1,2|0,1,2`` (blocks joined by ``|``, groups by ``,``, tasks by ``+``),
which is what configs and result tables store.
"""
from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from mtl.models.treemtl import treemtl_chains, treemtl_position

Group = tuple[int, ...]
Partition = tuple[Group, ...]

DEFAULT_NUM_BLOCKS = 5


def _index(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"task index {value!r} is not an integer")
    return int(value)


def _canonical_partition(groups: Iterable[Iterable[int]]) -> Partition:
    """Sort each group and order the groups by their smallest index."""
    canon = [tuple(sorted(_index(i) for i in g)) for g in groups]
    return tuple(sorted(canon, key=lambda g: g[0] if g else -1))


def _partition_str(partition: Partition) -> str:
    return ",".join("+".join(str(i) for i in group) for group in partition)


@functools.total_ordering
@dataclass(frozen=True, eq=True, repr=False)
class Layout:
    """A chain of task partitions, one per backbone block, each refining the previous one.

    `partitions[b]` is a tuple of groups (sorted tuples of task indices, groups ordered by their
    smallest index). Construct from any nesting of iterables; it is canonicalised and validated
    (ValueError naming the problem). Ordering puts more sharing first: blocks are compared by
    their number of groups, then by the groups themselves.
    """

    partitions: tuple[Partition, ...]

    def __post_init__(self) -> None:
        if isinstance(self.partitions, (str, bytes)):
            raise ValueError("partitions: expected a sequence of partitions, got a string; "
                             "use Layout.parse() for the canonical string form")
        try:
            canon = tuple(_canonical_partition(p) for p in self.partitions)
        except (TypeError, ValueError) as err:
            raise ValueError(f"partitions: expected a sequence of sequences of sequences of "
                             f"task indices ({err})") from None
        _validate(canon)
        object.__setattr__(self, "partitions", canon)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Layout:
        """Read the canonical string form, e.g. ``"0+1+2|0+1+2|0,1+2|0,1,2|0,1,2"``."""
        if not isinstance(text, str):
            raise ValueError(f"layout: expected a string, got {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise ValueError("layout: empty string; expected blocks like '0+1|0,1'")
        partitions = []
        for b, block in enumerate(stripped.split("|")):
            groups = []
            for group in block.split(","):
                indices = []
                for token in group.split("+"):
                    token = token.strip()
                    if not token.isdigit() or not token.isascii():
                        raise ValueError(
                            f"layout {text!r}: bad token {token!r} in block {b}; expected task "
                            f"indices joined by '+', groups by ',', blocks by '|'")
                    indices.append(int(token))
                groups.append(indices)
            partitions.append(groups)
        try:
            return cls(partitions)
        except ValueError as err:
            raise ValueError(f"layout {text!r}: {str(err).removeprefix('partitions: ')}") from None

    @classmethod
    def coerce(cls, layout: Layout | str) -> Layout:
        """Accept a `Layout` or its canonical string."""
        if isinstance(layout, Layout):
            return layout
        if isinstance(layout, str):
            return cls.parse(layout)
        raise ValueError(f"layout: expected a Layout or its string form, got "
                         f"{type(layout).__name__}")

    @classmethod
    def branch_point(cls, k: int, tasks: int | Sequence, num_blocks: int = DEFAULT_NUM_BLOCKS
                     ) -> Layout:
        """Blocks ``< k`` shared by all tasks, every block from ``k`` on one task alone.

        ``k = 0`` is fully separate networks, ``k = num_blocks`` is a fully shared backbone.
        `tasks` is the number of tasks or a sequence of them (its length is used).
        """
        num_tasks = _num_tasks_arg(tasks)
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks: must be an integer >= 1, got {num_blocks!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= num_blocks:
            raise ValueError(f"k: branch point must be an integer in 0..{num_blocks}, got {k!r}")
        shared = (tuple(range(num_tasks)),)
        alone = tuple((t,) for t in range(num_tasks))
        return cls(tuple(shared if b < k else alone for b in range(num_blocks)))

    @classmethod
    def from_treemtl_index(cls, index: int, num_tasks: int,
                           num_blocks: int = DEFAULT_NUM_BLOCKS) -> Layout:
        """Layout number ``index`` of TreeMTL's enumeration (mtl.models.treemtl), the index the
        DGBA paper's models are named by: 0 = fully shared; for 3 tasks, 2 = independent."""
        _check_sizes(num_tasks, num_blocks)
        chains = treemtl_chains(num_tasks, num_blocks)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or \
                not 0 <= index < len(chains):
            raise ValueError(f"treemtl index: must be an integer in 0..{len(chains) - 1} "
                             f"(TreeMTL lists {len(chains)} layouts of {num_tasks} tasks over "
                             f"{num_blocks} blocks), got {index!r}")
        return _trusted(chains[int(index)])

    def treemtl_index(self) -> int:
        """This layout's position in TreeMTL's enumeration (inverse of `from_treemtl_index`)."""
        return treemtl_position(self.partitions, self.num_tasks, self.num_blocks)

    # --- value semantics ----------------------------------------------------------------------
    def __str__(self) -> str:
        return "|".join(_partition_str(p) for p in self.partitions)

    def __repr__(self) -> str:
        return f"Layout('{self}')"

    def sort_key(self) -> tuple:
        """Key behind the ordering: per block (number of groups, groups)."""
        return (self.num_tasks, self.num_blocks,
                tuple((len(p), p) for p in self.partitions))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    # --- queries ------------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        """Number of tasks T (indices ``0..T-1``)."""
        return sum(len(g) for g in self.partitions[0])

    @property
    def num_blocks(self) -> int:
        """Number of backbone blocks B."""
        return len(self.partitions)

    def groups(self, block: int) -> Partition:
        """The partition (groups of task indices) of `block`."""
        self._check_block(block)
        return self.partitions[block]

    def group_of(self, block: int, task: int) -> Group:
        """The group of `block` that contains task index `task`."""
        self._check_block(block)
        self._check_task(task)
        for group in self.partitions[block]:
            if task in group:
                return group
        raise AssertionError("unreachable: partitions cover every task")  # pragma: no cover

    def group_index(self, block: int, task: int) -> int:
        """Position in `groups(block)` of the group that contains `task`."""
        return self.partitions[block].index(self.group_of(block, task))

    def path(self, task: int) -> tuple[Group, ...]:
        """The groups task `task` belongs to, block by block (its root-to-leaf path)."""
        self._check_task(task)
        return tuple(self.group_of(b, task) for b in range(self.num_blocks))

    def shared_blocks(self) -> list[tuple[int, Group]]:
        """``(block, group)`` pairs whose module serves more than one task."""
        return [(b, g) for b, p in enumerate(self.partitions) for g in p if len(g) > 1]

    def branch_point_of(self) -> int | None:
        """k if this is ``Layout.branch_point(k, T, B)``, else None.

        With a single task every block is "alone" and nothing is shared, so the answer is 0.
        """
        if self.num_tasks == 1:
            return 0
        shared = (tuple(range(self.num_tasks)),)
        alone = tuple((t,) for t in range(self.num_tasks))
        k = 0
        while k < self.num_blocks and self.partitions[k] == shared:
            k += 1
        if all(p == alone for p in self.partitions[k:]):
            return k
        return None

    def sharing(self) -> float:
        """How much is shared, in [0, 1]: mean over blocks of ``(T - groups_b) / (T - 1)``.

        0 = separate networks, 1 = one shared backbone; a branch-point layout at k gives k / B.
        It strictly increases whenever a layout is strictly coarsened (fewer groups somewhere),
        so it is monotone in the branch point. A single-task layout shares nothing: 0.
        """
        t = self.num_tasks
        if t == 1:
            return 0.0
        return sum((t - len(p)) / (t - 1) for p in self.partitions) / self.num_blocks

    def num_modules(self) -> int:
        """Number of distinct (block, group) modules a network with this layout holds."""
        return sum(len(p) for p in self.partitions)

    def refines(self, other: Layout) -> bool:
        """True if every block of `self` refines the same block of `other` (self shares less).

        ``a.refines(b) and a != b`` means `b` is a strict coarsening of `a`.
        """
        if not isinstance(other, Layout):
            raise ValueError(f"other: expected a Layout, got {type(other).__name__}")
        if (self.num_tasks, self.num_blocks) != (other.num_tasks, other.num_blocks):
            return False
        return all(_refines(mine, theirs)
                   for mine, theirs in zip(self.partitions, other.partitions))

    # --- internals ----------------------------------------------------------------------------
    def _check_block(self, block: int) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or \
                not 0 <= block < self.num_blocks:
            raise ValueError(f"block: must be an integer in 0..{self.num_blocks - 1}, "
                             f"got {block!r}")

    def _check_task(self, task: int) -> None:
        if isinstance(task, bool) or not isinstance(task, int) or \
                not 0 <= task < self.num_tasks:
            raise ValueError(f"task: must be a task index in 0..{self.num_tasks - 1}, "
                             f"got {task!r}")


def _num_tasks_arg(tasks: int | Sequence) -> int:
    if isinstance(tasks, bool):
        raise ValueError(f"tasks: expected a task count >= 1 or a sequence of tasks, got {tasks!r}")
    if isinstance(tasks, int):
        num = tasks
    elif isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence):
        raise ValueError(f"tasks: expected a task count >= 1 or a sequence of tasks, "
                         f"got {tasks!r}")
    else:
        num = len(tasks)
    if num < 1:
        raise ValueError(f"tasks: need at least one task, got {tasks!r}")
    return num


def _refines(fine: Partition, coarse: Partition) -> bool:
    """Every group of `fine` lies inside one group of `coarse`."""
    owner = {t: i for i, g in enumerate(coarse) for t in g}
    return all(len({owner[t] for t in g}) == 1 for g in fine)


def _validate(partitions: tuple[Partition, ...]) -> None:
    """Raise ValueError unless `partitions` is a refining chain over tasks 0..T-1."""
    if not partitions:
        raise ValueError("partitions: need at least one block")
    num_tasks = sum(len(g) for g in partitions[0])
    if num_tasks < 1:
        raise ValueError("partitions: block 0 holds no task")
    allowed = f"0..{num_tasks - 1}"
    for b, partition in enumerate(partitions):
        seen: set[int] = set()
        for group in partition:
            if not group:
                raise ValueError(f"partitions: block {b} has an empty group")
            for t in group:
                if not 0 <= t < num_tasks:
                    raise ValueError(f"partitions: task index {t} in block {b} is out of range "
                                     f"{allowed} (block 0 holds {num_tasks} tasks)")
                if t in seen:
                    raise ValueError(f"partitions: task {t} appears twice in block {b}")
                seen.add(t)
        missing = sorted(set(range(num_tasks)) - seen)
        if missing:
            raise ValueError(f"partitions: block {b} is missing task(s) {missing}; every block "
                             f"must hold each of {allowed} exactly once")
        if b > 0 and not _refines(partition, partitions[b - 1]):
            raise ValueError(
                f"partitions: block {b} ({_partition_str(partition)}) re-merges tasks that "
                f"block {b - 1} ({_partition_str(partitions[b - 1])}) split; each block must "
                f"refine the previous one")


# --- enumeration ------------------------------------------------------------------------------
def _set_partitions(items: tuple[int, ...]) -> Iterator[Partition]:
    """All partitions of `items` (first item starts a group, the rest join or open groups)."""
    if not items:
        yield ()
        return
    first, rest = items[0], items[1:]
    for sub in _set_partitions(rest):
        # put `first` into a new group or into each existing group
        yield _canonical_partition(((first,),) + sub)
        for i in range(len(sub)):
            yield _canonical_partition(sub[:i] + ((first,) + sub[i],) + sub[i + 1:])


@functools.lru_cache(maxsize=None)
def _partitions_of(items: tuple[int, ...]) -> tuple[Partition, ...]:
    """All set partitions of `items`, coarsest first, deterministic."""
    return tuple(sorted(set(_set_partitions(items)), key=lambda p: (len(p), p)))


@functools.lru_cache(maxsize=None)
def _refinements(partition: Partition) -> tuple[Partition, ...]:
    """All partitions that refine `partition` (itself included), coarsest first."""
    choices = [_partitions_of(group) for group in partition]
    result = {_canonical_partition(itertools.chain.from_iterable(combo))
              for combo in itertools.product(*choices)}
    return tuple(sorted(result, key=lambda p: (len(p), p)))


def _check_sizes(num_tasks: int, num_blocks: int) -> None:
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks: must be an integer >= 1, got {num_tasks!r}")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks: must be an integer >= 1, got {num_blocks!r}")


def _trusted(chain: tuple[Partition, ...]) -> Layout:
    """A Layout from a chain that is canonical and refining by construction (no re-check)."""
    layout = Layout.__new__(Layout)
    object.__setattr__(layout, "partitions", chain)
    return layout


def iter_layouts(num_tasks: int, num_blocks: int = DEFAULT_NUM_BLOCKS) -> Iterator[Layout]:
    """Lazily yield every layout in `Layout` order (see `enumerate_layouts`)."""
    _check_sizes(num_tasks, num_blocks)

    def walk(prev: Partition, remaining: int) -> Iterator[tuple[Partition, ...]]:
        if remaining == 0:
            yield ()
            return
        for nxt in _refinements(prev):  # coarsest first, so chains come out sorted
            for tail in walk(nxt, remaining - 1):
                yield (nxt,) + tail

    for chain in walk((tuple(range(num_tasks)),), num_blocks):
        yield _trusted(chain)


def enumerate_layouts(num_tasks: int, num_blocks: int = DEFAULT_NUM_BLOCKS) -> list[Layout]:
    """Every layout (refining chain of partitions) for `num_tasks` tasks and `num_blocks` blocks.

    Built by refining recursively from the fully shared root (never by filtering the product
    of all partitions); 51 layouts for 3 x 5, 7,556 for 5 x 5. Sorted by `Layout` order: the fully
    shared backbone first, separate networks last. The count grows fast (120,196 for 6 x 5):
    use `count_layouts` / `iter_layouts` for larger sizes.
    """
    return list(iter_layouts(num_tasks, num_blocks))


def count_layouts(num_tasks: int, num_blocks: int = DEFAULT_NUM_BLOCKS) -> int:
    """Number of layouts, by dynamic programming over partitions (no enumeration)."""
    _check_sizes(num_tasks, num_blocks)

    @functools.lru_cache(maxsize=None)
    def count(prev: Partition, remaining: int) -> int:
        if remaining == 0:
            return 1
        return sum(count(nxt, remaining - 1) for nxt in _refinements(prev))

    return count((tuple(range(num_tasks)),), num_blocks)
