"""Layouts: canonical form, parsing errors, branch points, sharing, enumeration, and the CLI."""
from __future__ import annotations

import itertools

import pytest

from mtl.models import Layout, count_layouts, enumerate_layouts, iter_layouts
from orchestrator.cli import main


def all_partitions(items: list[int]) -> list[list[list[int]]]:
    """Brute-force set partitions (independent of the library's generator)."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for sub in all_partitions(rest):
        out.append([[first]] + sub)
        for i in range(len(sub)):
            out.append(sub[:i] + [[first] + sub[i]] + sub[i + 1:])
    return out


def is_refining_chain(partitions) -> bool:
    """Every group of block b+1 lies inside one group of block b; every block covers 0..T-1."""
    tasks = sorted(t for g in partitions[0] for t in g)
    for part in partitions:
        if sorted(t for g in part for t in g) != tasks:
            return False
    for coarse, fine in zip(partitions, partitions[1:]):
        if not all(any(set(g) <= set(c) for c in coarse) for g in fine):
            return False
    return True


# --- enumeration ------------------------------------------------------------------------------
@pytest.mark.parametrize("tasks, blocks, expected", [(3, 5, 51), (5, 5, 7556), (2, 3, 4),
                                                      (3, 1, 5), (4, 1, 15), (1, 5, 1)])
def test_enumeration_counts_unique_and_valid(tasks, blocks, expected):
    layouts = enumerate_layouts(tasks, blocks)
    assert len(layouts) == expected == count_layouts(tasks, blocks)
    assert len(set(layouts)) == expected
    assert len({str(l) for l in layouts}) == expected
    for layout in layouts:
        assert layout.num_tasks == tasks and layout.num_blocks == blocks
        assert is_refining_chain(layout.partitions)


def test_enumeration_matches_brute_force_filter():
    """Oracle: filter the product of all partitions of 0..3 over 3 blocks."""
    parts = all_partitions([0, 1, 2, 3])
    brute = {Layout(chain) for chain in itertools.product(parts, repeat=3)
             if is_refining_chain(chain)}
    assert set(enumerate_layouts(4, 3)) == brute


def test_enumeration_is_sorted_deterministic_and_lazy():
    layouts = enumerate_layouts(3, 5)
    assert layouts == sorted(layouts) == enumerate_layouts(3, 5)
    assert layouts[0] == Layout.branch_point(5, 3) and layouts[-1] == Layout.branch_point(0, 3)
    assert list(itertools.islice(iter_layouts(5, 5), 10)) == enumerate_layouts(5, 5)[:10]


@pytest.mark.parametrize("args", [(0, 5), (3, 0), (-1, 2), (2.0, 5), (True, 5)])
def test_enumeration_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="num_tasks|num_blocks"):
        enumerate_layouts(*args)


# --- canonical string and value semantics -----------------------------------------------------
def test_round_trip_all_3x5_and_5x5():
    for layout in enumerate_layouts(3, 5) + enumerate_layouts(5, 5):
        assert Layout.parse(str(layout)) == layout


def test_canonical_form_and_value_semantics():
    a = Layout([[[2, 1, 0]], [[0, 2, 1]], [[2, 1], [0]], [[1], [0], [2]], [[2], [1], [0]]])
    assert str(a) == "0+1+2|0+1+2|0,1+2|0,1,2|0,1,2"
    assert repr(a) == "Layout('0+1+2|0+1+2|0,1+2|0,1,2|0,1,2')"
    b = Layout.parse(" 0+2+1|1+0+2|2+1,0|2,1,0|0,1,2 ")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.partitions[2] == ((0,), (1, 2))
    with pytest.raises(AttributeError):
        a.partitions = ()  # type: ignore[misc]
    assert Layout.branch_point(5, 3) < a < Layout.branch_point(0, 3)
    assert Layout.coerce(str(a)) is not a and Layout.coerce(a) is a


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("0+1|0,x", "bad token 'x'"),
    ("0+1|0,-1", "bad token '-1'"),
    ("0++1|0,1", "bad token ''"),
    ("0+1|0,,1", "bad token ''"),
    ("0+1|0,2", "out of range 0..1"),
    ("0+1+2|0,1", "missing task"),
    ("0+1|0+0", "appears twice"),
    ("0+1|0+1,1", "appears twice"),
    ("0,1|0+1", "re-merges"),
    ("0+1+2|0,1+2|0+1,2", "re-merges"),
])
def test_parse_errors_are_clear(text, needle):
    with pytest.raises(ValueError, match="layout") as info:
        Layout.parse(text)
    assert needle in str(info.value)


@pytest.mark.parametrize("bad", ["0+1|0,1", [], [[]], [[[0, 1]], [[1]]], 5, [[[0, 1.5]]],
                                 [[[True]]], [[["0"]]]])
def test_constructor_rejects_bad_partitions(bad):
    with pytest.raises(ValueError, match="partitions"):
        Layout(bad)


def test_parse_rejects_non_strings():
    with pytest.raises(ValueError, match="layout"):
        Layout.parse(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layout"):
        Layout.coerce(3)  # type: ignore[arg-type]


# --- branch points and queries ----------------------------------------------------------------
@pytest.mark.parametrize("k", range(6))
def test_branch_point_shares_exactly_blocks_below_k(k):
    layout = Layout.branch_point(k, ["a", "b", "c"])
    assert layout == Layout.branch_point(k, 3, num_blocks=5)
    assert layout.branch_point_of() == k
    assert [b for b, _ in layout.shared_blocks()] == list(range(k))
    for b in range(5):
        expected = ((0, 1, 2),) if b < k else ((0,), (1,), (2,))
        assert layout.groups(b) == expected
    assert layout.sharing() == pytest.approx(k / 5)


def test_branch_point_extremes_and_errors():
    assert str(Layout.branch_point(0, 2, num_blocks=2)) == "0,1|0,1"
    assert str(Layout.branch_point(2, 2, num_blocks=2)) == "0+1|0+1"
    for k in (-1, 6, 2.5, True):
        with pytest.raises(ValueError, match="k: branch point must be an integer in 0..5"):
            Layout.branch_point(k, 3)
    for tasks in (0, [], "abc", None):
        with pytest.raises(ValueError, match="tasks"):
            Layout.branch_point(1, tasks)
    with pytest.raises(ValueError, match="num_blocks"):
        Layout.branch_point(0, 3, num_blocks=0)


def test_branch_point_of_finds_exactly_the_family():
    found = {l.branch_point_of(): l for l in enumerate_layouts(3, 5)
             if l.branch_point_of() is not None}
    assert found == {k: Layout.branch_point(k, 3) for k in range(6)}
    assert Layout.parse("0+1+2|0,1+2|0,1,2").branch_point_of() is None
    assert Layout.parse("0,1+2|0,1,2").branch_point_of() is None
    single = Layout.branch_point(3, 1)
    assert single.branch_point_of() == 0 and single.sharing() == 0.0 and not single.shared_blocks()


def test_group_queries():
    layout = Layout.parse("0+1+2+3|0+1+2+3|0+1,2+3|0,1,2+3|0,1,2,3")
    assert (layout.num_tasks, layout.num_blocks, layout.num_modules()) == (4, 5, 1 + 1 + 2 + 3 + 4)
    assert layout.groups(2) == ((0, 1), (2, 3))
    assert layout.group_of(3, 3) == (2, 3) and layout.group_index(3, 3) == 2
    assert layout.path(2) == ((0, 1, 2, 3), (0, 1, 2, 3), (2, 3), (2, 3), (2,))
    assert layout.shared_blocks() == [(0, (0, 1, 2, 3)), (1, (0, 1, 2, 3)), (2, (0, 1)),
                                      (2, (2, 3)), (3, (2, 3))]
    # sharing: mean over blocks of (T - groups) / (T - 1) = (3 + 3 + 2 + 1 + 0) / 3 / 5
    assert layout.sharing() == pytest.approx(9 / 15)
    for bad in ((5, 0), (-1, 0), (0, 4), (0, -1)):
        with pytest.raises(ValueError, match="block|task"):
            layout.group_of(*bad)


def test_sharing_strictly_increases_under_coarsening():
    layouts = enumerate_layouts(3, 5)
    pairs = 0
    for fine, coarse in itertools.product(layouts, repeat=2):
        if fine != coarse and fine.refines(coarse):
            assert fine.sharing() < coarse.sharing()
            assert len(fine.shared_blocks()) <= len(coarse.shared_blocks())
            pairs += 1
    assert pairs > 100
    shares = [Layout.branch_point(k, 4).sharing() for k in range(6)]
    assert shares == sorted(shares) and len(set(shares)) == 6


def test_refines():
    a, b = Layout.parse("0+1|0,1"), Layout.parse("0+1|0+1")
    assert a.refines(b) and not b.refines(a) and a.refines(a)
    assert not a.refines(Layout.parse("0+1+2|0,1,2"))
    with pytest.raises(ValueError, match="other"):
        a.refines("0+1|0+1")  # type: ignore[arg-type]


# --- CLI --------------------------------------------------------------------------------------
def test_cli_lists_all_layouts(capsys):
    assert main(["layouts", "--tasks", "3", "--blocks", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# 51 layouts for 3 tasks x 5 blocks")
    assert [Layout.parse(s) for s in lines[1:]] == enumerate_layouts(3, 5)


def test_cli_branch_points_with_details(capsys):
    assert main(["layouts", "--tasks", "3", "--branch-points", "--details", "--width", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# 6 branch-point layouts")
    assert lines[1].split("\t") == ["# layout", "shared_modules", "sharing", "branch_point",
                                    "backbone_params"]
    rows = [line.split("\t") for line in lines[2:]]
    assert [Layout.parse(r[0]) for r in rows] == [Layout.branch_point(k, 3) for k in range(6)]
    assert [int(r[1]) for r in rows] == list(range(6))
    assert [int(r[3]) for r in rows] == list(range(6))
    params = [int(r[4]) for r in rows]
    assert all(a > b for a, b in zip(params, params[1:]))


def test_cli_limit_keeps_total_count(capsys):
    assert main(["layouts", "--tasks", "5", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# 7556 layouts for 5 tasks x 5 blocks, showing the first 3"
    assert lines[1:] == [str(l) for l in enumerate_layouts(5, 5)[:3]]


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "0"], "--tasks"), (["--tasks", "2", "--blocks", "0"], "--blocks"),
    (["--tasks", "2", "--limit", "-1"], "--limit"), (["--tasks", "7"], "--limit"),
])
def test_cli_rejects_bad_arguments(capsys, argv, needle):
    assert main(["layouts", *argv]) == 2
    assert needle in capsys.readouterr().err
