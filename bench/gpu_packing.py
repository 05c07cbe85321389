"""Fractional GPUs: 4 trials sharing one GPU (0.25 each) vs the same 4 trials one at a time.

Small multi-task trials leave most of a modern GPU idle, so packing several on one card should
multiply throughput. Each trial here is a real one: `orchestrator.trial.execute_trial` (the
code Tune trials run) trains a multi-task model with SGD, attacks its kept checkpoints (PGD
with the DGBA and total objectives) and writes its parquet rows; `setup_trial_device` picks
the GPU Ray assigned and caps the trial at its share of GPU memory. Both modes go through Ray
tasks on the same warm worker pool, alternated, so process start-up and CUDA initialisation
cost the same in each.

    python bench/gpu_packing.py            # needs CUDA; goal: throughput ratio >= 2.5
    python bench/gpu_packing.py --smoke    # CPU-only check of the harness (no ratio)

Without CUDA (and without --smoke) it says so and prints {"skipped": true, ...}. The LAST line
of output is always one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GOAL = 2.5
TRIALS = 4
SHARE = 1.0 / TRIALS


def sweep_yaml(share: float, smoke: bool) -> dict:
    """A realistic small sweep: 4 seeds of one layout, 3 tasks, 32 px scenes."""
    size, train, epochs, steps, width = (16, 16, 1, 2, 4) if smoke else (32, 512, 3, 10, 16)
    return {
        "name": "gpu_packing",
        "dataset": {"name": "scenes", "size": size, "train": train, "val": 32, "test": 64},
        "tasks": ["segment_semantic", "depth_zbuffer", "scene_class"],
        "model": {"width": width},
        "layouts": [2],
        "training": {"epochs": epochs, "keep_epochs": [epochs], "batch_size": 32, "lr": 0.05,
                     "seeds": list(range(TRIALS))},
        "attacks": {"methods": ["pgd"], "objectives": ["dgba", "total"], "eps": [8],
                    "steps": steps, "eval_samples": 16 if smoke else 64, "batch_size": 32},
        "resources": {"cpu": 1, "gpu": share},
    }


def trials_for(share: float, smoke: bool) -> list[dict]:
    from orchestrator.spec import parse_spec
    from orchestrator.trial import trial_configs
    return trial_configs(parse_spec(sweep_yaml(share, smoke)))


def run_round(run_trial, gpus: float, smoke: bool, cpus: float = 1) -> dict:
    """Run the 4 trials as Ray tasks asking for ``gpus`` each (and configured with that share,
    so each caps its GPU memory at it); wall time and per-trial facts."""
    import ray
    trials = trials_for(gpus, smoke)
    storage = tempfile.mkdtemp(prefix="mtlsweep-gpu-packing-")
    t0 = time.perf_counter()
    refs = [run_trial.options(num_cpus=cpus, num_gpus=gpus).remote(t, storage) for t in trials]
    facts = ray.get(refs)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "trials": facts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="run the harness on CPU with a toy sweep (no ratio, no goal)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed rounds per mode, alternated (median reported)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {args.repeats}")
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_packing: CUDA is not available on this machine, so 4 x 0.25 GPU vs 4 "
              "sequential cannot be measured; run it on a GPU node (or --smoke to check the "
              "harness on CPU).")
        print(json.dumps({"bench": "gpu_packing", "skipped": True,
                          "reason": "CUDA not available", "goal_ratio": GOAL}))
        return 0

    import ray
    ray.init(num_cpus=TRIALS if not cuda else max(TRIALS, os.cpu_count() or 1),
             num_gpus=1 if cuda else 0,
             include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})

    @ray.remote
    def run_trial(trial: dict, storage: str) -> dict:
        from orchestrator.store import model_store_dir
        from orchestrator.trial import execute_trial
        start = time.perf_counter()
        execute_trial(trial, storage=storage, store_dir=model_store_dir(storage))
        info = {"seconds": time.perf_counter() - start, "trial_id": trial["trial_id"]}
        if torch.cuda.is_available():
            info["device"] = str(torch.cuda.current_device())
            info["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        return info

    gpus_packed, gpus_seq = (SHARE, 1.0) if cuda else (0.0, 0.0)
    try:
        # Warm-up: renders the scenes cache and starts (and CUDA-initialises) 4 workers.
        run_round(run_trial, gpus_packed, args.smoke)
        seq, packed = [], []
        for _ in range(args.repeats):
            # smoke: no GPU to hold, so each trial holds all 4 CPUs to run one at a time
            seq.append(run_round(run_trial, gpus_seq, args.smoke, cpus=1 if cuda else TRIALS))
            packed.append(run_round(run_trial, gpus_packed, args.smoke))
    finally:
        ray.shutdown()
    seq_s = statistics.median(r["wall_s"] for r in seq)
    packed_s = statistics.median(r["wall_s"] for r in packed)
    ratio = seq_s / packed_s
    device = torch.cuda.get_device_name(0) if cuda else "cpu (smoke)"
    for name, rounds in (("sequential (1 GPU each)", seq), ("packed (0.25 GPU each)", packed)):
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in rounds)
        print(f"{name:<24} wall s per round of {TRIALS} trials: {walls}")
    result = {"bench": "gpu_packing", "skipped": False, "smoke": args.smoke, "device": device,
              "trials": TRIALS, "share": SHARE, "sequential_s": round(seq_s, 3),
              "packed_s": round(packed_s, 3), "throughput_ratio": round(ratio, 3),
              "goal_ratio": GOAL}
    if cuda:
        result["met"] = ratio >= GOAL
        result["peak_mem_gib_per_trial"] = round(max(
            t.get("peak_mem_gib", 0.0) for r in packed for t in r["trials"]), 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
