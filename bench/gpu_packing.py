"""Fractional GPUs: 4 trials sharing one GPU (0.25 each) vs the same 4 trials one at a time.

Small multi-task trials leave most of a modern GPU idle, so packing several on one card should
multiply throughput. Each trial here is a real one: `orchestrator.trial.execute_trial` (the
code Tune trials run) trains a multi-task model with SGD, attacks its kept checkpoints (PGD
with the DGBA and total objectives) and writes its parquet rows; `setup_trial_device` picks
the GPU Ray assigned and caps the trial at its share of GPU memory. Trials run in warm Ray
actors (like Tune's reused trial actors), so process start-up and CUDA initialisation are
paid before timing in both modes; the modes are alternated and the median round reported.

    python bench/gpu_packing.py            # needs CUDA; goal: throughput ratio >= 2.5
    python bench/gpu_packing.py --smoke    # CPU-only check of the harness (no ratio)

Without CUDA (and without --smoke) it says so and prints {"skipped": true, ...}. The LAST line
of output is always one JSON object.
"""
from __future__ import annotations

import argparse
import json
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


def make_runner():
    """A Ray actor class that runs trials in one long-lived (warm) worker process."""
    import ray

    @ray.remote
    class TrialRunner:
        def run(self, trial: dict, storage: str) -> dict:
            from orchestrator.store import model_store_dir
            from orchestrator.trial import execute_trial
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            execute_trial(trial, storage=storage, store_dir=model_store_dir(storage))
            info = {"seconds": time.perf_counter() - start, "trial_id": trial["trial_id"]}
            if torch.cuda.is_available():
                info["device"] = str(torch.cuda.current_device())
                info["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            return info

    return TrialRunner


def timed(assignments: list[tuple[object, dict]]) -> dict:
    """Run (actor, trial) pairs at once (an actor runs its own trials in order); wall time."""
    import ray
    storage = tempfile.mkdtemp(prefix="mtlsweep-gpu-packing-")
    t0 = time.perf_counter()
    facts = ray.get([actor.run.remote(trial, storage) for actor, trial in assignments])
    return {"wall_s": time.perf_counter() - t0, "trials": facts}


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
    root = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=TRIALS + 1, num_gpus=1 if cuda else 0, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": root}})
    try:
        # 5 warm worker processes on the one GPU: 4 packed trial runners and 1 that runs the
        # same 4 trials back to back. Ray's accounting splits the card 5 ways so all can live
        # at once; what each trial may use is its configured share (1.0 for the sequential
        # runner, 0.25 when packed), which setup_trial_device enforces as a memory cap.
        gpus = 1.0 / (TRIALS + 1) if cuda else 0
        runner = make_runner().options(num_cpus=1, num_gpus=gpus)
        packed_actors = [runner.remote() for _ in range(TRIALS)]
        seq_actor = runner.remote()
        seq_trials = trials_for(1.0 if cuda else 0, args.smoke)
        packed_trials = trials_for(SHARE if cuda else 0, args.smoke)
        # Warm-up (untimed): imports, CUDA context, the scenes cache, cuDNN autotuning.
        timed(list(zip(packed_actors + [seq_actor], packed_trials + seq_trials[:1])))
        seq, packed = [], []
        for _ in range(args.repeats):
            seq.append(timed([(seq_actor, t) for t in seq_trials]))
            packed.append(timed(list(zip(packed_actors, packed_trials))))
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
