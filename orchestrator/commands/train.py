"""`mtlsweep train`: train one multi-task model, keeping checkpoints at early-stopping epochs.

    mtlsweep train --branch-point 2 --tasks segment_semantic depth_zbuffer normal \
        --dataset scenes --size 32 --train-len 512 --epochs 8 --keep 4 8 \
        --optimizer sgd --lr 0.05 --milestones 6 --rho 0.5 --adv-objective dgba --out runs/m1

Progress goes to stderr (one line per epoch); stdout gets, per kept epoch, the key metrics and
the checkpoint path. DIR also receives `train_config.json`, `history.json` and
`train_state.pt` (the state after the last finished epoch; `--resume` continues from it).
Each kept checkpoint's sidecar records the dataset settings (`data`: source, size, seed or
root, tasks, split sizes), which `mtlsweep attack` uses by default.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from mtl.train.progress import KEY_METRICS
from orchestrator.commands import check_common_args

DEFAULT_TASKS = ["segment_semantic", "depth_zbuffer", "normal"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `train` and set its handler."""
    p = subparsers.add_parser(
        "train", help="train one multi-task model (SGD/Adam, SAM/RFN, adversarial training)",
        description="Train one multi-task model and keep checkpoints at the given epochs.")
    arch = p.add_mutually_exclusive_group(required=True)
    arch.add_argument("--layout",
                      help="canonical layout string, e.g. '0+1+2|0+1+2|0,1,2|0,1,2|0,1,2'")
    arch.add_argument("--branch-point", type=int, metavar="K",
                      help="share backbone blocks < K, then every task alone")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, metavar="TASK")
    p.add_argument("--width", type=int, default=16, help="network width (default 16)")
    p.add_argument("--dataset", default="scenes", help="scenes | nyuv2 | taskonomy")
    p.add_argument("--root", default=None, help="dataset root (nyuv2, taskonomy)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--train-len", type=int, default=None, metavar="N", help="training images")
    p.add_argument("--val-len", type=int, default=None, metavar="N", help="validation images")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--keep", type=int, nargs="*", default=None, metavar="E",
                   help="epochs whose end keeps a checkpoint (default: the last epoch)")
    p.add_argument("--optimizer", default="sgd", help="sgd | adam")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--milestones", type=int, nargs="*", default=[], metavar="E",
                   help="epochs at whose start the learning rate is multiplied by --gamma")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--rho", type=float, default=0.0,
                   help="SAM/RFN neighbourhood size (0 = base optimiser, 0.05 SAM, larger RFN)")
    p.add_argument("--sam-shared-only", action="store_true",
                   help="perturb only parameters shared by two or more tasks")
    p.add_argument("--adv-objective", default=None,
                   help="adversarial training objective: total | dgba | single:<task>")
    p.add_argument("--adv-method", default="pgd", help="fgsm | pgd")
    p.add_argument("--adv-eps", type=float, default=8.0, help="in 1/255 units (default 8)")
    p.add_argument("--adv-steps", type=int, default=10)
    p.add_argument("--adv-mix", default="alternate", help="alternate | weighted")
    p.add_argument("--adv-clean-weight", type=float, default=0.5)
    p.add_argument("--sharpness", action="store_true",
                   help="measure lambda_max, Hessian trace and SAM-sharpness at kept epochs")
    p.add_argument("--sharpness-samples", type=int, default=64)
    p.add_argument("--sharpness-rho", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="model init and data order")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from DIR/train_state.pt")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """The validated TrainConfig the arguments describe (ValueError on bad values)."""
    from mtl.train import AdvTrainConfig, SharpnessConfig, TrainConfig

    adv = None
    if args.adv_objective is not None:
        adv = AdvTrainConfig(objective=args.adv_objective, method=args.adv_method,
                             eps=args.adv_eps, steps=args.adv_steps, mix=args.adv_mix,
                             clean_weight=args.adv_clean_weight)
    sharp = (SharpnessConfig(num_samples=args.sharpness_samples, rho=args.sharpness_rho)
             if args.sharpness else None)
    keep = [args.epochs] if args.keep is None else args.keep
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                       lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                       milestones=tuple(args.milestones), gamma=args.gamma,
                       keep_epochs=tuple(sorted(set(keep))), seed=args.seed, rho=args.rho,
                       sam_shared_only=args.sam_shared_only, adv=adv, sharpness=sharp)


def _datasets(args: argparse.Namespace) -> tuple[Any, Any]:
    from mtl.data import get_dataset, subset

    if args.dataset == "scenes":
        train = get_dataset("scenes", "train", size=args.size, length=args.train_len,
                            tasks=args.tasks)
        val = get_dataset("scenes", "val", size=args.size, length=args.val_len, tasks=args.tasks)
        return train, val
    if args.root is None:
        raise ValueError(f"--root: required for --dataset {args.dataset}")
    size = (args.size, args.size) if args.size else None
    if args.dataset == "taskonomy":  # split by buildings is a list of names; no val split here
        train, val = get_dataset("taskonomy", None, root=args.root, tasks=args.tasks,
                                 size=size), None
    else:
        train = get_dataset(args.dataset, "train", root=args.root, tasks=args.tasks, size=size)
        val = get_dataset(args.dataset, "val", root=args.root, tasks=args.tasks, size=size)
    if args.train_len is not None:
        train = subset(train, 0, min(args.train_len, len(train)))
    if val is not None and args.val_len is not None:
        val = subset(val, 0, min(args.val_len, len(val)))
    return train, val


def data_settings(args: argparse.Namespace, train_set: Any, val_set: Any) -> dict[str, Any]:
    """The dataset settings a checkpoint records, in the sweep's dataset form (source,
    options, tasks, samples per split): what `mtlsweep attack` needs to rebuild the data."""
    options: dict[str, Any] = {"size": args.size}
    if args.dataset == "scenes":
        options["seed"] = int(train_set.seed)  # the rendered world, not the training seed
    else:
        options["root"] = str(Path(args.root).resolve())
    data = {"source": args.dataset, "options": options, "tasks": list(args.tasks),
            "train": len(train_set)}
    if val_set is not None:
        data["val"] = len(val_set)
    return data


def _check(args: argparse.Namespace) -> None:
    check_common_args(args, ("size", "width", "train_len", "val_len", "threads"))


def run(args: argparse.Namespace) -> int:
    """Train, then print one block per kept epoch (metrics and checkpoint path)."""
    from mtl.models import Layout, build_model
    from mtl.train import load_train_state, save_train_state, train, update_meta

    _check(args)
    config = build_config(args)  # every argument is checked before any work starts
    layout = (Layout.parse(args.layout) if args.layout is not None
              else Layout.branch_point(args.branch_point, len(args.tasks)))
    out = Path(args.out)
    state_path = out / "train_state.pt"
    resume = load_train_state(state_path) if args.resume else None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_set, val_set = _datasets(args)
    channels = {t: train_set.task_channels[t] for t in args.tasks}
    torch.manual_seed(args.seed)
    model = build_model(layout, args.tasks, channels, width=args.width).to(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))

    data = data_settings(args, train_set, val_set)

    def save_state(epoch: int, metrics: dict, state: dict) -> None:
        if metrics["kept"]:  # before the state: a resumed run rewrites an unrecorded epoch
            update_meta(state["checkpoints"][epoch], {"data": data})
        save_train_state(state, state_path)

    result = train(model, train_set, config, val_set=val_set, checkpoint_dir=out,
                   callback=save_state, resume_state=resume, progress=not args.quiet,
                   device=device)
    (out / "history.json").write_text(json.dumps(result.history, indent=2))
    print(f"layout {layout}  tasks {' '.join(args.tasks)}  out {out}")
    for record in result.history:
        if not record["kept"]:
            continue
        print(f"epoch {record['epoch']}: lr {record['lr']:.3g}"
              f"{' (decayed)' if record['lr_decayed'] else ''}  "
              f"train_loss {record['train_loss']:.4f}")
        for task in args.tasks:
            vals = {k.split("/")[2]: v for k, v in record.items()
                    if k.startswith(f"val/{task}/")}
            if vals:
                key = KEY_METRICS.get(task)
                shown = [key] if key in vals else []
                shown += [m for m in vals if m != key][:2]
                print(f"  {task:<17} " + "  ".join(f"{m} {vals[m]:.4g}" for m in shown))
        for q in ("lambda_max", "hessian_trace", "sam_sharpness"):
            if q in record:
                print(f"  {q:<17} {record[q]:.4g}")
        print(f"  checkpoint        {result.checkpoints[record['epoch']]}")
    return 0
