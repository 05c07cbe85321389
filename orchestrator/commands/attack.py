"""`mtlsweep attack`: attack one checkpoint white-box and print task, metric, clean, adv, Delta.

    mtlsweep attack --checkpoint runs/m1/epoch_008.pt --method pgd --objective dgba \
        --eps 2 4 8 --steps 10 --dataset scenes --split val --size 32 --n 64

One table per eps: a row per task x metric, then each task's Delta and the mean Delta.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
import yaml

from orchestrator.commands import check_common_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `attack` and set its handler."""
    p = subparsers.add_parser(
        "attack", help="attack one checkpoint (white-box) and print the relative change",
        description="Attack one model checkpoint with one method x objective at several eps.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="epoch_XXX.pt (with its epoch_XXX.json next to it)")
    p.add_argument("--method", default="pgd", help="fgsm | pgd | ifgsm | mifgsm | apgd")
    p.add_argument("--objective", default="dgba",
                   help="single:<task> | total | signsum | dgba | minmax")
    p.add_argument("--eps", type=float, nargs="+", default=[8.0],
                   help="L-inf budgets in 1/255 units (default 8)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method/objective option, e.g. random_start=true, denominator=clean")
    p.add_argument("--dataset", default="scenes", help="scenes | nyuv2 | taskonomy")
    p.add_argument("--root", default=None, help="dataset root (nyuv2, taskonomy)")
    p.add_argument("--split", default="val")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--n", type=int, default=64, help="number of images attacked (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict[str, Any]:
    """['random_start=true', 'alpha=1'] -> {'random_start': True, 'alpha': 1} (YAML scalars)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _dataset(args: argparse.Namespace, tasks: list[str]) -> Any:
    from mtl.data import get_dataset, subset

    if args.dataset == "scenes":
        data = get_dataset("scenes", args.split, size=args.size, length=args.n, tasks=tasks)
    else:
        if args.root is None:
            raise ValueError(f"--root: required for --dataset {args.dataset}")
        data = get_dataset(args.dataset, args.split, root=args.root, tasks=tasks,
                           size=(args.size, args.size))
    return subset(data, 0, min(args.n, len(data)))


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of evaluation rows (one spec)."""
    def num(v: Any) -> str:
        return "" if v is None else f"{v:.4g}"

    lines = [f"{'task':<17} {'metric':<13} {'clean':>10} {'adv':>10} {'delta':>9}"]
    for r in rows:
        lines.append(f"{r['task']:<17} {r['metric']:<13} {num(r['clean']):>10} "
                     f"{num(r['adv']):>10} {100 * r['rel_change']:>8.2f}%")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, attack at every eps, print one table per eps."""
    from pathlib import Path

    from mtl.attacks import AttackSpec
    from mtl.data import make_loader
    from mtl.evaluate import evaluate_attacks
    from mtl.train.checkpoints import load_checkpoint

    check_common_args(args, ("size", "n", "batch_size", "steps", "threads"))
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint: {args.checkpoint} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(args.checkpoint, device=device)
    options = parse_options(args.option)
    specs = [AttackSpec(args.method, args.objective, eps, args.steps, options).validate(
        model.tasks) for eps in args.eps]  # every argument is checked before any work
    loader = make_loader(_dataset(args, list(model.tasks)), batch_size=args.batch_size)
    rows = evaluate_attacks(model, loader, specs)
    print(f"checkpoint {args.checkpoint}  epoch {meta.get('epoch')}  "
          f"layout {meta.get('model', {}).get('layout')}  "
          f"{args.method} x {args.objective}, {args.steps} steps, n={args.n}")
    for eps in args.eps:
        print(f"\neps = {eps:g}/255")
        print(format_table([r for r in rows if r["eps"] == float(eps)]))
    return 0
