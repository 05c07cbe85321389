"""Sweep overhead, measured side by side in one run:

1. the same trials run one at a time through Ray Tune (cpu: 1, max_concurrent: 1, including
   ``ray.init``) / in a plain Python loop (goal <= 1.10 once trials last >= 30 s);
2. throughput of the trials packed as 4 x 0.5 CPU through Tune vs that sequential loop.

Each trial trains a tiny multi-task model on the synthetic scenes and attacks it; the training
set is sized so one trial lasts about ``--trial-seconds`` (calibrated on one plain run first).
Every trial is pinned to one torch thread (its CPU share rounded up), as in a real sweep.
The last line of output is one JSON object.

    PYTHONPATH=. python bench/sweep_overhead.py --trial-seconds 30 --trials 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sweep_raw(train_len: int, trials: int, cpu: float, concurrent: int) -> dict:
    return {"dataset": {"name": "scenes", "size": 16, "train": train_len, "val": 16,
                        "test": 16},
            "tasks": ["segment_semantic", "depth_zbuffer", "scene_class"],
            "model": {"width": 8}, "layouts": [2],
            "training": {"epochs": 3, "keep_epochs": [3], "batch_size": 16, "lr": 0.05,
                         "seeds": list(range(trials))},
            "attacks": {"methods": ["pgd"], "objectives": ["total", "dgba"], "eps": [8],
                        "steps": 3, "eval_samples": 16},
            "resources": {"cpu": cpu}, "max_concurrent": concurrent, "max_failures": 0}


def plain_loop(spec, storage: str) -> float:
    """The sweep's trials one after another in this process, without Ray."""
    from orchestrator.store import model_store_dir
    from orchestrator.trial import execute_trial, trial_configs
    t0 = time.perf_counter()
    for trial in trial_configs(spec):
        execute_trial(trial, storage=storage, store_dir=model_store_dir(storage))
    return time.perf_counter() - t0


def via_tune(spec, storage: str) -> float:
    """The same sweep through Ray Tune, ``ray.init`` and shutdown included."""
    import ray
    from orchestrator.sweep import run_sweep
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_sweep(spec, storage=storage)
    finally:
        ray.shutdown()
    if outcome.errored:
        raise RuntimeError(f"{outcome.errored} trials failed; see the output above")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trial-seconds", type=float, default=30.0)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("MTLSWEEP_CACHE", tempfile.mkdtemp(prefix="mtlsweep-bench-cache-"))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from orchestrator.spec import parse_spec
    work = Path(tempfile.mkdtemp(prefix="mtlsweep-bench-"))

    def spec(train_len: int, cpu: float, concurrent: int, name: str, trials: int):
        return parse_spec(sweep_raw(train_len, trials, cpu, concurrent), name=name)

    base_len = 64
    plain_loop(spec(base_len, 1, 1, "warm", 1), str(work / "warm"))  # renders + caches data
    one = plain_loop(spec(base_len, 1, 1, "calibrate", 1), str(work / "calibrate"))
    train_len = max(16, int(base_len * args.trial_seconds / one))
    print(f"calibration: {base_len} samples -> {one:.1f} s; using {train_len} samples per trial",
          flush=True)
    for n in (train_len,):  # warm the cache of the real size too
        plain_loop(spec(n, 1, 1, "warm2", 1), str(work / "warm2"))
    sequential = spec(train_len, 1, 1, "sequential", args.trials)
    packed = spec(train_len, 0.5, 0, "packed", args.trials)
    t_plain = plain_loop(sequential, str(work / "plain"))
    print(f"plain loop: {t_plain:.1f} s", flush=True)
    t_tune = via_tune(sequential, str(work / "tune"))
    print(f"tune, 1 CPU each, one at a time: {t_tune:.1f} s", flush=True)
    t_packed = via_tune(packed, str(work / "tune_packed"))
    print(f"tune, 0.5 CPU each, all at once: {t_packed:.1f} s", flush=True)
    result = {"bench": "sweep_overhead", "trials": args.trials,
              "trial_seconds": round(t_plain / args.trials, 2), "train_samples": train_len,
              "plain_loop_s": round(t_plain, 2), "tune_sequential_s": round(t_tune, 2),
              "tune_packed_s": round(t_packed, 2),
              "overhead_ratio": round(t_tune / t_plain, 3),
              "packed_throughput_ratio": round(t_plain / t_packed, 3),
              "cpus": os.cpu_count(), "goal_overhead_ratio": 1.10}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
