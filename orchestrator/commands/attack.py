"""`mtlsweep attack`: attack one checkpoint white-box and print task, metric, clean, adv, Delta.

    mtlsweep attack --checkpoint runs/m1/epoch_008.pt --method pgd --objective dgba \
        --eps 2 4 8 --steps 10 --dataset scenes --split val --size 32 --n 64

One table per eps: a row per task x metric, then each task's Delta and the mean Delta.

The data defaults to what the checkpoint was trained on: `--dataset`, `--size`, `--root` (and
the scenes world seed) come from the sidecar's `data` record (written by `mtlsweep train` and
the model store); a flag overrides it, and a `--size` other than the trained one prints a
warning. Only the built-in datasets are built: a source named in a sidecar is never imported.
`--option` values are YAML scalars (safe_load) of at most MAX_OPTION_CHARS characters.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from typing import Any, Mapping

import torch
import yaml

from mtl.data import DATASETS, dataset_factory
from mtl.train.checkpoints import data_settings
from orchestrator.commands import check_common_args

MAX_OPTION_CHARS = 200
DEFAULT_DATASET, DEFAULT_SIZE = "scenes", 32  # for checkpoints that record no data settings
_OPTION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


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
    p.add_argument("--dataset", default=None,
                   help="scenes | nyuv2 | taskonomy (default: the checkpoint's)")
    p.add_argument("--root", default=None,
                   help="dataset root (nyuv2, taskonomy; default: the checkpoint's)")
    p.add_argument("--split", default="val")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default: the checkpoint's, else 32)")
    p.add_argument("--n", type=int, default=64, help="number of images attacked (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict[str, Any]:
    """['random_start=true', 'alpha=1'] -> {'random_start': True, 'alpha': 1}: each value one
    YAML scalar (yaml.safe_load) of at most MAX_OPTION_CHARS characters, each key once."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _OPTION_KEY.match(key):
            raise ValueError(f"--option: expected KEY=VALUE with KEY a name of letters, digits "
                             f"and _, got {item[:60]!r}")
        if key in options:
            raise ValueError(f"--option {key}: given twice; give each option once")
        if len(value) > MAX_OPTION_CHARS:
            raise ValueError(f"--option {key}: the value has {len(value)} characters; at most "
                             f"{MAX_OPTION_CHARS} are allowed")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"--option {key}: not a YAML value "
                             f"({str(err).splitlines()[0][:80]})") from None
        if parsed is not None and not isinstance(parsed, (bool, int, float, str)):
            raise ValueError(f"--option {key}: expected one value (number, true/false, text), "
                             f"got a {type(parsed).__name__}")
        options[key] = parsed
    return options


def _trained_size(source: str, options: Mapping[str, Any], where: str) -> int | None:
    """The square image side a data record trained at (int or [h, w] with h == w); without
    a recorded size, the built-in factory's default (None: the files' native size)."""
    if "size" in options or "resize" in options:
        size = options.get("size", options.get("resize"))
    else:
        param = inspect.signature(dataset_factory(source)).parameters.get("size")
        size = None if param is None or param.default is param.empty else param.default
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
        return size
    raise ValueError(f"--size: {where} records data.options.size {str(size)[:40]}, which is "
                     "not one square side; pass --size")


def resolve_data(args: argparse.Namespace, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Fill `--dataset/--size/--root` left unset from the checkpoint's `data` record (else the
    defaults); warn on stderr when `--size` differs from the trained size. Returns the
    recorded options the attack reuses for the same source (the scenes world `seed`)."""
    where = str(args.checkpoint)
    data = data_settings(meta, where)
    if data is None:
        if args.dataset is None or args.size is None:
            args.dataset = DEFAULT_DATASET if args.dataset is None else args.dataset
            args.size = DEFAULT_SIZE if args.size is None else args.size
            print(f"mtlsweep attack: note: {where} records no dataset settings; using "
                  f"--dataset {args.dataset} --size {args.size}", file=sys.stderr)
        return {}
    if args.dataset is None:
        if data["source"] not in DATASETS:
            raise ValueError(f"--dataset: {where} was trained on {data['source'][:60]!r}, "
                             f"which this command cannot build; pass one of "
                             f"{', '.join(DATASETS)}")
        args.dataset = data["source"]
    if args.dataset != data["source"]:
        return {}
    options = data["options"]
    trained = _trained_size(data["source"], options, where)
    if args.size is None:
        args.size = trained  # None: the native size of the dataset's files
    elif args.size != trained:
        print(f"mtlsweep attack: warning: {where} was trained at "
              f"{'native size' if trained is None else f'{trained} px'}; attacking at "
              f"--size {args.size}", file=sys.stderr)
    if args.root is None and isinstance(options.get("root"), str):
        args.root = options["root"]
    seed = options.get("seed")
    if args.dataset == "scenes":
        return {"seed": seed} if isinstance(seed, int) else {}
    # the DGBA protocol's resize and class weights go with the files (--size overrides resize)
    kept = {k: options[k] for k in ("resize", "class_weights") if options.get(k) is not None}
    if "resize" in kept and args.size != trained:
        kept.pop("resize")
    return kept


def _dataset(args: argparse.Namespace, tasks: list[str], extra: Mapping[str, Any]) -> Any:
    from mtl.data import get_dataset, subset

    if args.dataset == "scenes":
        data = get_dataset("scenes", args.split, size=args.size, length=args.n, tasks=tasks,
                           **extra)
    else:
        if args.root is None:
            raise ValueError(f"--root: required for --dataset {args.dataset}")
        size = None if args.size is None or "resize" in extra else (args.size, args.size)
        data = get_dataset(args.dataset, args.split, root=args.root, tasks=tasks, size=size,
                           **extra)
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
    from mtl.train.checkpoints import load_checkpoint, read_meta

    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint: {args.checkpoint} does not exist")
    extra = resolve_data(args, read_meta(args.checkpoint))
    check_common_args(args, ("size", "n", "batch_size", "steps", "threads"))
    options = parse_options(args.option)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(args.checkpoint, device=device)
    specs = [AttackSpec(args.method, args.objective, eps, args.steps, options).validate(
        model.tasks) for eps in args.eps]  # every argument is checked before any work
    loader = make_loader(_dataset(args, list(model.tasks), extra), batch_size=args.batch_size)
    rows = evaluate_attacks(model, loader, specs)
    print(f"checkpoint {args.checkpoint}  epoch {meta.get('epoch')}  "
          f"layout {(meta.get('model') or {}).get('layout')}  "
          f"{args.method} x {args.objective}, {args.steps} steps, n={args.n}, "
          f"{args.dataset} {args.split} at "
          f"{'native size' if args.size is None else f'{args.size} px'}")
    for eps in args.eps:
        print(f"\neps = {eps:g}/255")
        print(format_table([r for r in rows if r["eps"] == float(eps)]))
    return 0
