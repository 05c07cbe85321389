"""Attack strength: mean relative change Delta of every objective x method x eps on one model.

Trains a small multi-task model on the embedded scenes (or loads `--checkpoint`), then attacks
the val split white-box with SINGLE (each task), TOTAL, SignSum, DGBA and MINMAX under FGSM,
PGD and APGD at eps in {2, 4, 8}/255 and prints the mean Delta over tasks (more negative =
stronger). The data are not tuned for any objective; whichever wins, wins.

    PYTHONPATH=. python bench/attack_strength.py [--out DIR] [--checkpoint PATH] [--n 128]

The LAST line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from mtl.attacks import AttackSpec, available_objectives
from mtl.data import make_loader
from mtl.data.scenes import SyntheticScenes
from mtl.evaluate import evaluate_attacks, evaluate_clean
from mtl.models import Layout, build_model

TASKS = ["segment_semantic", "depth_zbuffer", "normal", "scene_class"]
METHODS = ["fgsm", "pgd", "apgd"]
EPS = [2.0, 4.0, 8.0]


def get_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """Load `--checkpoint`, or train one (and keep its checkpoint under --out for reuse)."""
    from mtl.train import TrainConfig, load_checkpoint, train

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        return model, args.checkpoint
    train_set = SyntheticScenes(split="train", size=args.size, length=args.train_len,
                                tasks=TASKS)
    torch.manual_seed(args.seed)
    model = build_model(Layout.branch_point(args.branch_point, len(TASKS)), TASKS,
                        train_set.task_channels, width=args.width)
    config = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adam", lr=2e-3,
                         milestones=(int(0.8 * args.epochs) + 1,), keep_epochs=(args.epochs,),
                         seed=args.seed)
    result = train(model, train_set, config, checkpoint_dir=args.out, progress=True)
    return model.eval(), str(result.checkpoints[args.epochs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="use this model instead of training")
    parser.add_argument("--out", default="runs/attack_strength", help="where to keep the model")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train-len", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--branch-point", type=int, default=3)
    parser.add_argument("--n", type=int, default=128, help="val images attacked")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, source = get_model(args)
    trained_s = time.perf_counter() - start
    val = SyntheticScenes(split="val", size=args.size, length=args.n, tasks=TASKS)
    loader = make_loader(val, batch_size=64)
    clean = evaluate_clean(model, loader)
    print(f"model {source} (ready in {trained_s:.0f} s); clean: " + ", ".join(
        f"{t} {next(iter(m))} {next(iter(m.values())):.3f}" for t, m in clean.items()))

    objectives = available_objectives(TASKS)
    rows = []
    for m in METHODS:  # one call per method, so progress shows on stderr
        t0 = time.perf_counter()
        rows += evaluate_attacks(model, loader,
                                 [AttackSpec(m, o, e, args.steps) for e in EPS for o in objectives])
        print(f"{m}: {len(EPS) * len(objectives)} attacks in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    delta = {(r["attack_method"], r["eps"], r["objective"]): r["rel_change"]
             for r in rows if r["task"] == "mean" and r["metric"] == "delta"}
    per_task = {(r["attack_method"], r["eps"], r["objective"], r["task"]): r["rel_change"]
                for r in rows if r["metric"] == "delta" and r["task"] != "mean"}

    cols = [(m, e) for m in METHODS for e in EPS]
    print(f"\nmean Delta over tasks (%), {args.n} val images, {args.steps} steps "
          f"(FGSM: 1); more negative = stronger")
    print(f"{'objective':<26}" + "".join(f"{m + ' ' + format(e, 'g'):>10}" for m, e in cols)
          + f"{'average':>10}")
    average = {}
    for o in objectives:
        values = [delta[(m, e, o)] for m, e in cols]
        average[o] = statistics.fmean(values)
        print(f"{o:<26}" + "".join(f"{100 * v:>10.2f}" for v in values)
              + f"{100 * average[o]:>10.2f}")
    strongest = min(average, key=average.get)
    wins = {o: sum(1 for c in cols if min(objectives, key=lambda q: delta[(*c, q)]) == o)
            for o in objectives}
    print(f"\nstrongest on average Delta: {strongest}; "
          f"DGBA {'IS' if strongest == 'dgba' else 'is NOT'} the strongest on average; "
          f"columns won: " + ", ".join(f"{o} {w}" for o, w in wins.items() if w))
    print("per-task Delta (%) under PGD eps 8: " + "; ".join(
        f"{o}: " + " ".join(f"{t[:5]} {100 * per_task[('pgd', 8.0, o, t)]:.1f}" for t in TASKS)
        for o in ("total", "signsum", "dgba", "minmax")))
    print(json.dumps({"bench": "attack_strength", "model": source, "n": args.n,
                      "steps": args.steps, "size": args.size, "clean": clean,
                      "mean_delta": {f"{m}/{format(e, 'g')}/{o}": delta[(m, e, o)]
                                     for m, e in cols for o in objectives},
                      "average_delta": average, "strongest": strongest,
                      "dgba_strongest": strongest == "dgba", "columns_won": wins,
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
