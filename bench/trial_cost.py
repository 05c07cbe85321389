"""Trial cost (issue 12): one demo trial end to end and its phase split, then, side by side on
the same kept checkpoints, the evaluation as one pass per phase (clean, white-box, cross-task,
transfer: each crafts its own attacks, as before) vs crafted once and scored everywhere
(`mtl.evaluate.evaluate_checkpoint`, what the trial runs now).

Crafted attacks are counted by wrapping `mtl.evaluate._craft`; "per checkpoint" is per batch
of the evaluation set (each batch of a checkpoint crafts the same list): the per-phase passes
craft every spec twice (white-box and transfer) plus the cross-task specs, the new path once.
Both ways are run after the trial's phase seeds and their rows are compared. The transfer
targets are trained into a temporary model store first (a sweep does that once for all its
trials) and timed apart. The last line of output is one JSON object.

    PYTHONPATH=. python bench/trial_cost.py [--sweep sweeps/demo.yaml] [--trial 0]
        [--threads 1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mtl.evaluate as evaluate  # noqa: E402
from mtl.attacks import AttackSpec  # noqa: E402
from mtl.config.build import build_model, build_split, register_tasks  # noqa: E402
from mtl.data import make_loader  # noqa: E402
from mtl.models.task_model import as_task_model  # noqa: E402
from mtl.train import load_checkpoint  # noqa: E402
from mtl.train.zoo import checkpoint_paths  # noqa: E402
from orchestrator import store  # noqa: E402
from orchestrator.results_reading import read_results  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.trial import execute_trial, trial_configs  # noqa: E402


class CraftCounter:
    """Counts `mtl.evaluate._craft` calls while installed."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = evaluate._craft

    def __enter__(self) -> "CraftCounter":
        def counted(*args, **kwargs):
            self.calls += 1
            return self.real(*args, **kwargs)
        evaluate._craft = counted
        return self

    def __exit__(self, *exc: object) -> None:
        evaluate._craft = self.real


def canonical(rows: list[dict]) -> list:
    def value(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v
    return sorted((tuple(sorted((k, value(v)) for k, v in r.items())) for r in rows), key=repr)


def per_phase(model, loader, specs, cross, targets, seed) -> list[dict]:
    """The evaluation before craft-once: one pass per phase, each after the phase seed."""
    rows = evaluate.clean_rows(model, loader)
    torch.manual_seed(seed)
    rows += evaluate.evaluate_attacks(model, loader, specs)
    if cross:
        torch.manual_seed(seed)
        rows += evaluate.cross_task_rows(model, loader, cross["method"], cross["eps"],
                                         cross["steps"])
    if targets:
        torch.manual_seed(seed)
        rows += evaluate.evaluate_transfer(model, targets, loader, specs)
    return rows


def craft_once(model, loader, specs, cross_specs, reference, seed) -> list[dict]:
    torch.manual_seed(seed)
    result = evaluate.evaluate_checkpoint(model, loader, specs, reference, cross=cross_specs)
    return result.clean + result.whitebox + result.cross_task + result.transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="sweeps/demo.yaml")
    parser.add_argument("--trial", type=int, default=0, help="index in the grid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="alternated eval rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="trial-cost-") as tmp:
        spec = load_spec(args.sweep, storage=tmp)
        trial = dict(trial_configs(spec)[args.trial])
        trial["reuse_surrogates"] = True  # keeps the checkpoints in the store for part 2
        trial["resources"] = {**trial["resources"], "cpu": args.threads, "gpu": 0}
        run = trial["run"]
        register_tasks(run.tasks)
        store_dir = store.model_store_dir(tmp)
        t0 = time.perf_counter()
        train_set = build_split(run.dataset, "train")
        targets = store.load_targets(trial["targets"], store_dir, device, train_set)
        targets_s = time.perf_counter() - t0
        print(f"trial {trial['trial_id']}: {len(targets)} targets trained in {targets_s:.1f} s")

        with CraftCounter() as counter:
            t0 = time.perf_counter()
            execute_trial(trial, storage=tmp, store_dir=store_dir)
            trial_s = time.perf_counter() - t0
        timings = read_results(os.path.join(tmp, spec.name), "timings").collect()
        phases = dict(zip(timings["phase"], timings["seconds"]))
        print(f"\nend to end {trial_s:.1f} s; phases (s, share of total):")
        for phase, seconds in phases.items():
            print(f"  {phase:16s} {seconds:8.2f}  {seconds / phases['total']:6.1%}")

        # part 2: per-phase passes vs craft once on the same checkpoints, alternated
        specs = [AttackSpec(**s) for s in run.attacks["specs"]]
        cross = run.cross_task
        test = build_split(run.dataset, "test", run.attacks["eval_samples"])
        loader = make_loader(test, run.attacks["batch_size"])
        n_batches = len(loader)
        labels = {t["id"]: t["label"] for t in trial["targets"]}
        targets = {labels[k]: m for k, m in targets.items()}
        model = build_model(trial["model_config"], train_set)
        cross_specs = (evaluate.cross_task_specs(as_task_model(model, None).tasks,
                                                 cross["method"], cross["eps"],
                                                 cross["steps"]) if cross else [])
        ckpts = checkpoint_paths(store.find_surrogate(trial["model_config"], store_dir))
        seconds = {"per_phase": [], "craft_once": []}
        crafted = {}
        equal = True
        for _ in range(args.repeats):
            for way in ("per_phase", "craft_once"):
                rows = []
                with CraftCounter() as count:
                    t0 = time.perf_counter()
                    reference = (evaluate.TargetReference(targets, loader)
                                 if targets and way == "craft_once" else None)
                    for epoch, path in sorted(ckpts.items()):
                        load_checkpoint(str(path), model=model, device=device)
                        model.eval()
                        seed = int(run.training["seed"]) * 100_003 + epoch
                        rows += (per_phase(model, loader, specs, cross, targets, seed)
                                 if way == "per_phase" else
                                 craft_once(model, loader, specs, cross_specs, reference, seed))
                    seconds[way].append(time.perf_counter() - t0)
                crafted[way] = count.calls / (len(ckpts) * n_batches)
                if way == "per_phase":
                    before = canonical(rows)
                else:
                    equal = equal and before == canonical(rows)
    median = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
    ratio = median["craft_once"] / median["per_phase"]
    in_trial = counter.calls / (len(ckpts) * n_batches)
    print(f"\nevaluation of {len(ckpts)} checkpoints x {n_batches} batches, "
          f"{len(specs)} specs + {len(cross_specs)} cross-task specs, {len(targets)} targets:")
    print(f"  {'way':12s} {'seconds':>8s} {'crafted/ckpt/batch':>19s}")
    for way in ("per_phase", "craft_once"):
        print(f"  {way:12s} {median[way]:8.2f} {crafted[way]:19.0f}")
    print(f"  craft_once / per_phase = {ratio:.2f}; rows equal: {equal}; "
          f"crafted per checkpoint in the trial: {in_trial:.0f}")
    print(json.dumps({
        "trial_id": trial["trial_id"], "trial_s": trial_s, "targets_train_s": targets_s,
        "phases_s": phases, "specs": len(specs), "cross_specs": len(cross_specs),
        "kept_checkpoints": len(ckpts), "batches": n_batches,
        "crafted_per_checkpoint_batch": {**crafted, "trial": in_trial},
        "eval_s": median, "craft_once_over_per_phase": ratio, "rows_equal": equal,
        "threads": args.threads, "repeats": args.repeats, "load_avg": os.getloadavg()[0],
        "device": str(device)}))


if __name__ == "__main__":
    main()
