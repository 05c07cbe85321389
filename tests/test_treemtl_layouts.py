"""TreeMTL layout indices (the DGBA paper's "layout_idx"): the whole 3 x 5 and 5 x 5 lists
against a transcription of TreeMTL's enumerator written here with its own data structures
(lists of Python sets, itertools.product patterns, copied states), and the YAML spelling
``treemtl:<i>``."""
from __future__ import annotations

import itertools

import pytest

from mtl.config.reading import ConfigError
from mtl.config.sections import expand_layouts, parse_model
from mtl.models import Layout, enumerate_layouts


def treemtl_reference(num_tasks: int, num_blocks: int) -> list[list[list[set[int]]]]:
    """TreeMTL's enumerator as its paper and code describe it: start fully shared; a cut at
    block i splits one task set of block i into two (the set's first element always in the
    second half, patterns True-first) and applies to blocks i..B-1; at most T-1 cuts, each at
    or above the previous one; a layout already listed is neither listed nor expanded."""
    start = {"state": [[set(range(num_tasks))] for _ in range(num_blocks)], "cuts": 0,
             "lowest": 0}
    found = [start]
    keys = {key(start["state"])}

    def divide(task_set: set[int]) -> list[list[set[int]]]:
        out = []
        for pattern in itertools.product([True, False], repeat=len(task_set)):
            if pattern[0] is False and sum(pattern) != 0:  # a Python set's own order, as theirs
                first = {t for t, p in zip(task_set, pattern) if p}
                out.append([first, task_set - first])
        return out

    def recurse(layout: dict) -> None:
        if layout["cuts"] >= num_tasks - 1:
            return
        for i in range(layout["lowest"], num_blocks):
            for task_set in layout["state"][i]:
                if len(task_set) == 1:
                    continue
                for halves in divide(task_set):
                    new = {"state": [[set(s) for s in block] for block in layout["state"]],
                           "cuts": layout["cuts"] + 1, "lowest": i}
                    for j in range(i, num_blocks):
                        new["state"][j].remove(task_set)
                        new["state"][j] += [set(h) for h in halves]
                    k = key(new["state"])
                    if k not in keys:
                        keys.add(k)
                        found.append(new)
                        recurse(new)

    recurse(start)
    return [layout["state"] for layout in found]


def key(state: list[list[set[int]]]) -> tuple:
    return tuple(frozenset(frozenset(s) for s in block) for block in state)


def layout_key(layout: Layout) -> tuple:
    return tuple(frozenset(frozenset(g) for g in block) for block in layout.partitions)


@pytest.mark.parametrize("tasks, blocks, count", [(3, 5, 51), (5, 5, 7556), (2, 3, 4),
                                                   (4, 2, 60), (1, 5, 1)])
def test_treemtl_order_matches_an_independent_transcription(tasks, blocks, count):
    reference = [key(s) for s in treemtl_reference(tasks, blocks)]
    ours = [Layout.from_treemtl_index(i, tasks, blocks) for i in range(count)]
    assert len(reference) == count
    assert [layout_key(layout) for layout in ours] == reference
    assert set(ours) == set(enumerate_layouts(tasks, blocks))  # the same space, another order
    assert all(layout.treemtl_index() == i for i, layout in enumerate(ours))
    with pytest.raises(ValueError, match=rf"0\.\.{count - 1}"):
        Layout.from_treemtl_index(count, tasks, blocks)


def test_the_indices_the_paper_names():
    shared = Layout.from_treemtl_index(0, 3)
    assert shared == Layout.branch_point(5, 3) and shared.branch_point_of() == 5
    assert Layout.from_treemtl_index(2, 3) == Layout.branch_point(0, 3)  # independent
    assert str(Layout.from_treemtl_index(1, 3)) == "|".join(["0,1+2"] * 5)
    assert str(Layout.from_treemtl_index(3, 3)) == "0,1+2" + "|0,1,2" * 4


@pytest.mark.parametrize("bad", [-1, 51, 1.0, True, "2"])
def test_out_of_range_index_names_the_range(bad):
    with pytest.raises(ValueError, match=r"treemtl index: must be an integer in 0\.\.50 "
                                         r"\(TreeMTL lists 51 layouts of 3 tasks over 5 blocks\)"):
        Layout.from_treemtl_index(bad, 3, 5)


TASKS = ({"name": "segment_semantic"}, {"name": "normal"}, {"name": "depth_zbuffer"})


def test_yaml_spelling_in_layouts_and_model_layout():
    got = expand_layouts(["treemtl:0", "treemtl:2", " treemtl: 3 ", 4], {}, 3)
    assert got == [str(Layout.from_treemtl_index(i, 3)) for i in (0, 2, 3)] + [
        str(Layout.branch_point(4, 3))]
    model = parse_model({"layout": "treemtl:2"}, TASKS)
    assert model["layout"] == str(Layout.branch_point(0, 3))


@pytest.mark.parametrize("raw, where, words", [
    (["treemtl:0", "treemtl:51"], "layouts[1]", r"0\.\.50"),
    (["treemtl:x"], "layouts[0]", "integer index"),
    (["treemtl:-1"], "layouts[0]", "integer index"),
    (["treemtl:0", "treemtl:0"], "layouts", "duplicate"),
])
def test_yaml_errors_name_the_field_and_range(raw, where, words):
    with pytest.raises(ConfigError, match=words) as info:
        expand_layouts(raw, {}, 3)
    assert str(info.value).startswith(where)


def test_model_layout_error_names_model_layout():
    with pytest.raises(ConfigError, match=r"^model\.layout: .*0\.\.50"):
        parse_model({"layout": "treemtl:99"}, TASKS)
