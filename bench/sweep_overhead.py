"""Sweep overhead, measured side by side in one run:

1. the same trials run one at a time through Ray Tune (cpu: 1, max_concurrent: 1) / in a
   plain Python loop (goal <= 1.10 once trials last >= 30 s); ``ray.init`` is timed apart
   (``overhead_ratio_with_init`` adds it);
2. throughput of the trials packed as 4 x 0.5 CPU through Tune vs one at a time through Tune
   (``packed_throughput_ratio``; on 2 cores the ceiling is 2) and vs the plain loop.

Rounds of (plain, Tune sequential, Tune packed) run back to back (``--repeats``, medians), so
load from other processes hits every mode alike; the 1-minute load average is reported.

Each trial trains a tiny multi-task model on the synthetic scenes and attacks it; the training
set is sized so one trial lasts about ``--trial-seconds`` (a linear fit of two plain runs).
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
    """The same sweep through Ray Tune (Ray already up; its start-up is timed on its own)."""
    from orchestrator.sweep import run_sweep
    t0 = time.perf_counter()
    outcome = run_sweep(spec, storage=storage)
    if outcome.errored:
        raise RuntimeError(f"{outcome.errored} trials failed; see the output above")
    return time.perf_counter() - t0


def calibrate(make_spec, work: Path, seconds: float) -> int:
    """Training-set size for trials of about ``seconds``: fit t = a + b * n on two sizes."""
    plain_loop(make_spec(64, 1), str(work / "warm"))  # first run: renders and caches data
    sizes = (64, 512)
    times = [plain_loop(make_spec(n, 1), str(work / f"calibrate{n}")) for n in sizes]
    slope = max((times[1] - times[0]) / (sizes[1] - sizes[0]), 1e-6)
    n = int(sizes[0] + (seconds - times[0]) / slope)
    print(f"calibration: {sizes[0]} samples {times[0]:.1f} s, {sizes[1]} samples "
          f"{times[1]:.1f} s -> {n} samples per trial", flush=True)
    return max(16, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trial-seconds", type=float, default=30.0)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of (plain, Tune sequential, Tune packed); medians reported")
    args = parser.parse_args()
    import statistics

    import ray
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("MTLSWEEP_CACHE", tempfile.mkdtemp(prefix="mtlsweep-bench-cache-"))
    from orchestrator.spec import parse_spec
    work = Path(tempfile.mkdtemp(prefix="mtlsweep-bench-"))

    def spec(train_len: int, trials: int, cpu: float = 1.0, concurrent: int = 1, name="b"):
        return parse_spec(sweep_raw(train_len, trials, cpu, concurrent), name=name)

    train_len = calibrate(spec, work, args.trial_seconds)
    plain_loop(spec(train_len, 1), str(work / "warm2"))  # the real size's data, cached
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    times: dict[str, list[float]] = {"plain": [], "tune": [], "packed": []}
    try:
        for r in range(args.repeats):
            times["plain"].append(plain_loop(spec(train_len, args.trials), str(work / f"p{r}")))
            times["tune"].append(via_tune(spec(train_len, args.trials, name=f"t{r}"),
                                          str(work / "tune")))
            times["packed"].append(via_tune(spec(train_len, args.trials, 0.5, 0, f"k{r}"),
                                            str(work / "tune")))
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
                  flush=True)
    finally:
        ray.shutdown()
    plain, tune, packed = (statistics.median(times[k]) for k in ("plain", "tune", "packed"))
    result = {"bench": "sweep_overhead", "trials": args.trials, "repeats": args.repeats,
              "trial_seconds": round(plain / args.trials, 2), "train_samples": train_len,
              "plain_loop_s": round(plain, 2), "tune_sequential_s": round(tune, 2),
              "tune_packed_s": round(packed, 2), "ray_init_s": round(t_init, 2),
              "overhead_ratio": round(tune / plain, 3),
              "overhead_ratio_with_init": round((tune + t_init) / plain, 3),
              "packed_throughput_ratio": round(tune / packed, 3),
              "packed_vs_plain_ratio": round(plain / packed, 3),
              "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
              "goal_overhead_ratio": 1.10}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
