"""Cost of one attack step: DGBA vs TOTAL, MINMAX vs SignSum, our PGD vs a raw autograd loop.

Same model and batch, measured side by side in one run: warm-up, then interleaved repeats
(rotating order) and the median per variant. Reported per number of tasks T (3 and 5):

* dgba_over_total: time of a DGBA direction / a TOTAL direction (goal <= 1.05);
* reference_over_dgba: T-backward reference / our one-backward DGBA direction;
* step_dgba_over_total: the same ratio for whole PGD steps (direction + LP step + projection),
  the marginal cost per step: (time of a 6-step attack - time of a 2-step attack) / 4;
* dgba_fixed_overhead_ms: what a DGBA attack pays once more than TOTAL (the clean forward
  that gives the clean losses its relative-change value needs);
* minmax_over_signsum: a MINMAX direction / a SignSum direction (both T backward passes on one
  forward; goal <= 1.3);
* pgd_over_raw: a whole `attack(..., method="pgd", objective="total")` / the same PGD written
  as a raw autograd loop (goal <= 1.05), and step_pgd_over_raw for the marginal step;
* cpu_*: the goal ratios from median CPU (process) seconds, fairer on a loaded machine;
  paired_cpu_*: the median of the ratios within each repeat (the two variants run back to back,
  so each ratio sees one load level, not the swings between repeats);
* attack_dgba_over_total: whole PGD attacks of `--steps` steps, DGBA / TOTAL, each attack on
  its own (DGBA runs one clean forward per attack for its clean losses);
* sweep_attack_dgba_over_total: the same, as a sweep runs it: DGBA given the clean outputs of
  the evaluation's clean forward (`attack(..., clean_outputs=...)`, see mtl/evaluate.py), which
  the sweep runs for scoring whatever the objective (goal <= 1.05).

    PYTHONPATH=. python bench/attack_cost.py [--size 32] [--batch 32] [--repeats 15]
        [--tasks 3 5] [--steps 10] [--warmup 3]

The LAST line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from mtl.attacks import attack
from mtl.attacks.context import forward_losses
from mtl.attacks.dgba import dgba_direction, dgba_direction_reference
from mtl.attacks.minmax import minmax_direction
from mtl.attacks.objectives import AttackContext, signsum_direction, total_direction
from mtl.models import Layout, build_model
from mtl.models.outputs import task_outputs

TASK_SETS = {3: ["segment_semantic", "depth_zbuffer", "normal"],
             5: ["segment_semantic", "depth_zbuffer", "normal", "edge_texture", "keypoints2d"]}
SEG_CLASSES = 8


def make_batch(tasks: list[str], batch: int, size: int) -> dict[str, torch.Tensor]:
    """Random labels with the shapes of the batch contract (timings do not depend on values)."""
    g = torch.Generator().manual_seed(0)
    out = {"image": torch.rand(batch, 3, size, size, generator=g)}
    shapes = {"depth_zbuffer": 1, "edge_texture": 1, "keypoints2d": 1}
    for t in tasks:
        if t == "segment_semantic":
            out[t] = torch.randint(0, SEG_CLASSES, (batch, size, size), generator=g)
        elif t == "normal":
            out[t] = torch.nn.functional.normalize(torch.randn(batch, 3, size, size, generator=g),
                                                   dim=1)
        else:
            out[t] = torch.rand(batch, shapes[t], size, size, generator=g)
    return out


def raw_pgd(model: torch.nn.Module, batch: dict[str, torch.Tensor], tasks: list[str],
            eps: float, steps: int) -> torch.Tensor:
    """PGD on the summed losses as a plain autograd loop: no checks, no hooks, no bookkeeping."""
    x0 = batch["image"]
    lo, hi = (x0 - eps).clamp(0.0, 1.0), (x0 + eps).clamp(0.0, 1.0)
    alpha, x = eps / steps, x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(forward_losses(model, x, batch, tasks).sum(), x)
        x = torch.minimum(torch.maximum(x.detach() + alpha * g.sign(), lo), hi)
    return x


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU (process) seconds of one call; with torch on one thread the CPU time is the
    fairer number on a machine shared with other jobs (waiting for a core does not count)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 3
            ) -> tuple[dict[str, float], dict[str, float], dict[str, float],
                       dict[str, list[float]]]:
    """Median and minimum wall seconds, median CPU seconds and the CPU seconds of each repeat
    per variant, interleaved with a rotating order (the minimum is the steadier wall estimate
    on a shared machine; see `paired` for ratios of neighbours)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(timed(variants[name]))
    return ({n: statistics.median(w for w, _ in s) for n, s in samples.items()},
            {n: min(w for w, _ in s) for n, s in samples.items()},
            {n: statistics.median(c for _, c in s) for n, s in samples.items()},
            {n: [c for _, c in s] for n, s in samples.items()})


def paired(cpu: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repeats of a's CPU time / b's in the same repeat: variants listed next to
    each other run back to back (but once per rotation), so each ratio sees one load level."""
    return statistics.median(x / y for x, y in zip(cpu[a], cpu[b]))


def bench_tasks(T: int, args: argparse.Namespace) -> dict[str, float]:
    tasks = TASK_SETS[T]
    torch.manual_seed(0)
    model = build_model(Layout.branch_point(2, T), tasks, {"segment_semantic": SEG_CLASSES},
                        width=args.width).eval()
    batch = make_batch(tasks, args.batch, args.size)
    x = batch["image"]
    ctx = AttackContext(model, batch, tuple(tasks), x, 8 / 255).prepare()
    few, many = 2, 6  # whole PGD attacks at two lengths: the difference is the per-step cost

    def pgd(objective: str, steps: int, clean_outputs: object = None) -> Callable[[], object]:
        return lambda: attack(model, batch, method="pgd", objective=objective, eps=8,
                              steps=steps, clean_outputs=clean_outputs)

    with torch.no_grad():  # the sweep's clean forward for scoring (runs for TOTAL too)
        clean_outputs = dict(task_outputs(model, x, tasks))

    mm_ctx = AttackContext(model, batch, tuple(tasks), x, 8 / 255,
                           {"solver": "fast", "denominator": "current", "dual_iters": 50}
                           ).prepare()
    steps = args.steps
    times, fastest, cpu, per_repeat = measure({
        "total": lambda: total_direction(ctx, x),
        "dgba": lambda: dgba_direction(ctx, x),
        "reference": lambda: dgba_direction_reference(model, x, batch, tasks),
        "signsum": lambda: signsum_direction(ctx, x),
        "minmax": lambda: minmax_direction(mm_ctx, x),
        "raw_few": lambda: raw_pgd(model, batch, tasks, 8 / 255, few),
        "raw_many": lambda: raw_pgd(model, batch, tasks, 8 / 255, many),
        "raw_steps": lambda: raw_pgd(model, batch, tasks, 8 / 255, steps),
        "pgd_dgba_steps": pgd("dgba", steps), "pgd_total_steps": pgd("total", steps),
        "pgd_dgba_shared_steps": pgd("dgba", steps, clean_outputs),
        "pgd_total_few": pgd("total", few), "pgd_total_many": pgd("total", many),
        "pgd_dgba_few": pgd("dgba", few), "pgd_dgba_many": pgd("dgba", many),
    }, args.repeats, args.warmup)
    step = {o: (times[f"pgd_{o}_many"] - times[f"pgd_{o}_few"]) / (many - few)
            for o in ("total", "dgba")}
    raw_step = (times["raw_many"] - times["raw_few"]) / (many - few)
    return {"tasks": T,
            "total_ms": 1e3 * times["total"], "dgba_ms": 1e3 * times["dgba"],
            "reference_ms": 1e3 * times["reference"],
            "signsum_ms": 1e3 * times["signsum"], "minmax_ms": 1e3 * times["minmax"],
            "dgba_over_total": times["dgba"] / times["total"],
            "reference_over_dgba": times["reference"] / times["dgba"],
            "minmax_over_signsum": times["minmax"] / times["signsum"],
            "pgd_over_raw": times["pgd_total_steps"] / times["raw_steps"],
            "step_pgd_over_raw": step["total"] / raw_step,
            "attack_dgba_over_total": times["pgd_dgba_steps"] / times["pgd_total_steps"],
            "sweep_attack_dgba_over_total": (times["pgd_dgba_shared_steps"]
                                             / times["pgd_total_steps"]),
            "min_sweep_attack_dgba_over_total": (fastest["pgd_dgba_shared_steps"]
                                                 / fastest["pgd_total_steps"]),
            "step_dgba_over_total": step["dgba"] / step["total"],
            "min_dgba_over_total": fastest["dgba"] / fastest["total"],
            "min_reference_over_dgba": fastest["reference"] / fastest["dgba"],
            "min_minmax_over_signsum": fastest["minmax"] / fastest["signsum"],
            "min_pgd_over_raw": fastest["pgd_total_steps"] / fastest["raw_steps"],
            "cpu_minmax_over_signsum": cpu["minmax"] / cpu["signsum"],
            "cpu_pgd_over_raw": cpu["pgd_total_steps"] / cpu["raw_steps"],
            "cpu_attack_dgba_over_total": cpu["pgd_dgba_steps"] / cpu["pgd_total_steps"],
            "cpu_sweep_attack_dgba_over_total": (cpu["pgd_dgba_shared_steps"]
                                                 / cpu["pgd_total_steps"]),
            "cpu_dgba_over_total": cpu["dgba"] / cpu["total"],
            "paired_cpu_dgba_over_total": paired(per_repeat, "dgba", "total"),
            "paired_cpu_minmax_over_signsum": paired(per_repeat, "minmax", "signsum"),
            "paired_cpu_sweep_attack_dgba_over_total": paired(
                per_repeat, "pgd_dgba_shared_steps", "pgd_total_steps"),
            "pgd_step_total_ms": 1e3 * step["total"], "pgd_step_dgba_ms": 1e3 * step["dgba"],
            "raw_step_ms": 1e3 * raw_step,
            "dgba_fixed_overhead_ms": 1e3 * (times["pgd_dgba_few"] - few * step["dgba"]
                                             - (times["pgd_total_few"] - few * step["total"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="steps of the whole attacks")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--tasks", type=int, nargs="+", default=sorted(TASK_SETS),
                        choices=sorted(TASK_SETS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = {}
    for T in args.tasks:
        r = bench_tasks(T, args)
        results[f"T{T}"] = r
        print(f"T={T}: total {r['total_ms']:.1f} ms  dgba {r['dgba_ms']:.1f} ms  "
              f"reference {r['reference_ms']:.1f} ms  | dgba/total {r['dgba_over_total']:.3f}  "
              f"reference/dgba {r['reference_over_dgba']:.2f}  "
              f"pgd step dgba/total {r['step_dgba_over_total']:.3f}  "
              f"(+{r['dgba_fixed_overhead_ms']:.1f} ms once per attack) | by minimum: dgba/total "
              f"{r['min_dgba_over_total']:.3f}  reference/dgba {r['min_reference_over_dgba']:.2f}")
        print(f"T={T}: signsum {r['signsum_ms']:.1f} ms  minmax {r['minmax_ms']:.1f} ms  | "
              f"minmax/signsum {r['minmax_over_signsum']:.3f} (min {r['min_minmax_over_signsum']:.3f})"
              f"  pgd/raw {r['pgd_over_raw']:.3f} (min {r['min_pgd_over_raw']:.3f}, per step "
              f"{r['step_pgd_over_raw']:.3f})  whole attack dgba/total "
              f"{r['attack_dgba_over_total']:.3f}  | by CPU time: minmax/signsum "
              f"{r['cpu_minmax_over_signsum']:.3f}  pgd/raw {r['cpu_pgd_over_raw']:.3f}  "
              f"whole attack dgba/total {r['cpu_attack_dgba_over_total']:.3f}")
        print(f"T={T}: whole attack dgba/total as the sweep runs it (clean outputs given): "
              f"{r['sweep_attack_dgba_over_total']:.3f} (min "
              f"{r['min_sweep_attack_dgba_over_total']:.3f}, by CPU time "
              f"{r['cpu_sweep_attack_dgba_over_total']:.3f}, paired "
              f"{r['paired_cpu_sweep_attack_dgba_over_total']:.3f})  | paired CPU: dgba/total "
              f"{r['paired_cpu_dgba_over_total']:.3f}  minmax/signsum "
              f"{r['paired_cpu_minmax_over_signsum']:.3f}")
    load = [round(a, 2) for a in load_before + os.getloadavg()]
    print(f"load average before (1/5/15 min) {load[:3]}, after {load[3:]} on "
          f"{os.cpu_count()} cores")
    print(json.dumps({"bench": "attack_cost", "size": args.size, "batch": args.batch,
                      "width": args.width, "threads": args.threads, "steps": args.steps,
                      "warmup": args.warmup, "goal_dgba_over_total": 1.05,
                      "goal_sweep_attack_dgba_over_total": 1.05, "goal_minmax_over_signsum": 1.3,
                      "goal_pgd_over_raw": 1.05, "load_avg_before": load[:3],
                      "load_avg_after": load[3:], **results}))


if __name__ == "__main__":
    main()
