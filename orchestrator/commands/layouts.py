"""`mtlsweep layouts`: list the sharing layouts (task trees) a sweep can choose from.

    mtlsweep layouts --tasks 3 --blocks 5                 # all 51, most shared first
    mtlsweep layouts --tasks 3 --branch-points --details  # the k = 0..5 family with its costs

The first line is a `#` comment with the count; then one canonical layout string per line
(with `--details`: tab-separated columns under a `#` header), ready for a sweep's `layouts:`.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable

from mtl.models.layout import Layout, count_layouts, iter_layouts

# Listing more than this many layouts without --limit is refused (5 tasks x 5 blocks = 7,556;
# 7 tasks give 2.2 million).
MAX_LISTED = 200_000


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `layouts` and set its handler."""
    parser = subparsers.add_parser(
        "layouts", help="list sharing layouts (task trees) for T tasks and B blocks",
        description="List every sharing layout (a chain of task partitions, one per backbone "
                    "block, each refining the previous) in canonical string form, most "
                    "shared first.")
    parser.add_argument("--tasks", type=int, required=True, metavar="N",
                        help="number of tasks T (indices 0..T-1)")
    parser.add_argument("--blocks", type=int, default=5, metavar="B",
                        help="number of backbone blocks (default 5, the network's)")
    parser.add_argument("--branch-points", action="store_true",
                        help="only the branch-point family k = 0..B (share blocks < k)")
    parser.add_argument("--limit", type=int, default=None, metavar="K",
                        help="print at most the first K layouts (the count is still the total)")
    parser.add_argument("--details", action="store_true",
                        help="add columns: shared modules, sharing, branch point and, for 5 "
                             "blocks, backbone parameters at --width")
    parser.add_argument("--width", type=int, default=16,
                        help="network width for the parameter column (default 16)")
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.tasks < 1:
        raise ValueError(f"--tasks: must be >= 1, got {args.tasks}")
    if args.blocks < 1:
        raise ValueError(f"--blocks: must be >= 1, got {args.blocks}")
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit: must be >= 0, got {args.limit}")
    if args.width < 1:
        raise ValueError(f"--width: must be >= 1, got {args.width}")


def _block_parameters(num_blocks: int, width: int) -> list[int] | None:
    """Parameters of one module of each backbone block, or None if B is not the network's."""
    from mtl.models.blocks import NUM_BLOCKS, make_block  # torch only when asked for
    if num_blocks != NUM_BLOCKS:
        return None
    return [sum(p.numel() for p in make_block(b, width).parameters()) for b in range(num_blocks)]


def _row(layout: Layout, block_params: list[int] | None) -> str:
    k = layout.branch_point_of()
    cells = [str(layout), str(len(layout.shared_blocks())), f"{layout.sharing():.3f}",
             "-" if k is None else str(k)]
    if block_params is not None:
        cells.append(str(sum(len(layout.groups(b)) * n for b, n in enumerate(block_params))))
    return "\t".join(cells)


def run(args: argparse.Namespace) -> int:
    """Print the count, then the layouts (one per line)."""
    _check(args)
    layouts: Iterable[Layout]
    if args.branch_points:
        total = args.blocks + 1
        layouts = (Layout.branch_point(k, args.tasks, args.blocks) for k in range(total))
        kind = "branch-point layouts"
    else:
        total = count_layouts(args.tasks, args.blocks)
        if args.limit is None and total > MAX_LISTED:
            raise ValueError(f"--limit: {total:,} layouts for {args.tasks} tasks x "
                             f"{args.blocks} blocks; pass --limit K (at most {MAX_LISTED:,} are "
                             f"listed without it)")
        layouts = iter_layouts(args.tasks, args.blocks)
        kind = "layouts"
    shown = total if args.limit is None else min(args.limit, total)
    suffix = "" if shown == total else f", showing the first {shown}"
    out = sys.stdout
    out.write(f"# {total} {kind} for {args.tasks} tasks x {args.blocks} blocks{suffix}\n")
    block_params = _block_parameters(args.blocks, args.width) if args.details else None
    if args.details:
        header = "# layout\tshared_modules\tsharing\tbranch_point"
        out.write(header + ("\tbackbone_params\n" if block_params is not None else "\n"))
    for layout in itertools.islice(layouts, shown):
        out.write((_row(layout, block_params) if args.details else str(layout)) + "\n")
    return 0
