"""`mtlsweep analyze` at scale (issue 12 item 4), side by side in one run.

Writes synthetic sweeps of 12, 1,000 and 10,000 trials (one file per trial per table, as the
result sink writes them: same schema, same parquet metadata keys) whose files hold the demo's
row counts per trial (``sweeps/demo.yaml``: 1,152 measurement rows: clean 16, white-box 336,
cross-task 72, transfer 728; 56 epoch rows; 9 timing rows). Then, per size, each step in its
own subprocess:

* **sweep_end**: ``analysis_tables.consolidate(sweep_dir)``, the last step of a sweep that ran
  trials (orchestrator/sweep.py): the footer pass, a read of every per-trial file, and the
  consolidated copy written (orchestrator/analysis_copy.py);
* **after_sweep**: ``mtlsweep analyze`` of that sweep, as a user runs it when the sweep is done
  (it reads the copy: three files). This is the goal's case: 10,000 trials within 20 s and 2 GB;
* **cold**: ``mtlsweep analyze`` with no copy (e.g. only ``results/`` was copied elsewhere):
  the footer pass, every per-trial file read, the copy written for the next analysis.

Each reports the wall time and the peak resident memory (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` of that subprocess); the analyses also their import time and whether torch was
imported (``mtlsweep analyze`` runs through ``orchestrator.cli``, which imports only the named
command's module). The 1-minute load average is recorded (shared machine).

The sweeps are cached under ``--cache`` (generating 10,000 trials writes 30,000 files, about a
minute); a cached sweep is reused when its file count matches. The last line is one JSON object.

    PYTHONPATH=. python bench/analysis_scale.py [--sizes 12 1000 10000] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.analysis_copy import COPY_DIR  # noqa: E402
from orchestrator.results_schema import ATTEMPT_KEY, TRIAL_KEY, validate_rows  # noqa: E402

GOAL_S, GOAL_MB = 20.0, 2048.0
TASKS = ("segment_semantic", "depth_zbuffer", "scene_class")
METRICS = {"segment_semantic": ("miou", "pixel_acc"),
           "depth_zbuffer": ("abs_err", "rel_err", "delta_1.25", "delta_1.25^2", "delta_1.25^3"),
           "scene_class": ("accuracy",)}
OBJECTIVES = (*(f"single:{t}" for t in TASKS), "total", "signsum", "dgba", "minmax")
STRENGTH = {"dgba": 1.0, "minmax": 0.95, "total": 0.8, "signsum": 0.75}
EPS, KEPT, EPOCHS = (4.0, 8.0), (2, 4), (1, 2, 3, 4)
TARGETS = ("bp2-s1-none-rho0-adam-e4", "bp5-s2-none-rho0-adam-e4")
LAYOUTS = {1: "0+1+2|0,1,2|0,1,2|0,1,2|0,1,2", 4: "0+1+2|0+1+2|0+1+2|0+1+2|0,1,2"}
AT_LABELS = ("none", "dgba-fgsm-eps4-k1-alternate")
RHOS = (0.0, 0.05, 0.5)
QUANTITIES = (*(f"train_loss/{t}" for t in TASKS), "train_loss",
              *(f"val/{t}/{m}" for t in TASKS for m in METRICS[t]), "subset_loss", "lambda_max",
              "hessian_trace", "sam_sharpness")
SURROGATE = "ec23a9431137ba71"


def _config(i: int) -> dict:
    """Trial i of the demo's grid (2 layouts x 2 AT x 3 rho), seed i // 12."""
    k = (1, 4)[i % 2]
    return dict(attempt=0, layout=LAYOUTS[k], branch_point=k, adv_train=AT_LABELS[i // 2 % 2],
                rho=RHOS[i // 4 % 3], optimizer="adam", seed=i // 12, train_epochs=4,
                dataset="scenes", model="resnet")


def _metric_rows(base: dict, with_success: bool) -> list[dict]:
    rows = [dict(base, task=t, metric=m, clean=0.5, adv=0.4, rel_change=-0.2, n=32)
            for t in TASKS for m in METRICS[t]]
    rows += [dict(base, task=t, metric="delta", rel_change=-0.2, n=32) for t in (*TASKS, "mean")]
    if with_success:
        rows.append(dict(base, task="scene_class", metric="success_rate", adv=0.1, n=32,
                         numerator=3, denominator=32))
    return rows


def template_rows() -> dict[str, list[dict]]:
    """One trial's rows with the demo's structure (values are overwritten per trial)."""
    common = _config(0)
    measurements: list[dict] = []
    for epoch in KEPT:
        row = dict(common, epoch=epoch, surrogate_id=SURROGATE, target_id=SURROGATE)
        measurements += [dict(row, kind="clean", attack_method="none", objective="none", eps=0.0,
                              steps=0, task=t, metric=m, clean=0.5, n=32)
                         for t in TASKS for m in METRICS[t]]
        for objective in OBJECTIVES:
            for eps in EPS:
                attack = dict(row, kind="whitebox", attack_method="pgd", objective=objective,
                              eps=eps, steps=2, attack_options="{}")
                measurements += _metric_rows(attack, False)
        for task in TASKS:
            attack = dict(row, kind="cross_task", attack_method="fgsm", objective=f"single:{task}",
                          eps=8.0, steps=1, attack_options="{}")
            measurements += _metric_rows(attack, False)
        for target in TARGETS:
            for objective in OBJECTIVES:
                for eps in EPS:
                    attack = dict(row, kind="transfer", attack_method="pgd", objective=objective,
                                  eps=eps, steps=2, attack_options="{}", target_id=target)
                    measurements += _metric_rows(attack, True)
    epochs = [dict(common, epoch=e, lr=0.005 if e < 4 else 0.0005, lr_decayed=e == 4,
                   kept=e in KEPT, quantity=q, value=1.0) for e in EPOCHS for q in QUANTITIES]
    phases = ("data", "train", "zoo", "eval_clean", "eval_whitebox", "eval_cross_task",
              "eval_transfer", "write", "total")
    timings = [dict(attempt=0, phase=p, seconds=1.0) for p in phases]
    return {"measurements": measurements, "epochs": epochs, "timings": timings}


def _with_config(table: pa.Table, config: dict) -> pa.Table:
    """``table`` with the trial-level columns of ``config``."""
    for name, value in config.items():
        if name in table.column_names:
            field = table.schema.field(name)
            table = table.set_column(table.schema.get_field_index(name), field,
                                     pa.array([value] * table.num_rows, type=field.type))
    return table


def _set(table: pa.Table, name: str, values: np.ndarray, mask: np.ndarray | None) -> pa.Table:
    field = table.schema.field(name)
    return table.set_column(table.schema.get_field_index(name), field,
                            pa.array(values, type=field.type, mask=mask))


def _values(table: pa.Table, config: dict, rng: np.random.Generator) -> pa.Table:
    """Noisy values with the demo's effects: DGBA strongest, AT halves Δ, more sharing more
    damage, transfer highest after the LR decay, λ_max falling with the epoch and with ρ."""
    n = table.num_rows
    epoch = table["epoch"].to_numpy()
    if "objective" not in table.column_names:
        return _set(table, "value", 100.0 / epoch - 20 * config["rho"] + rng.normal(0, 1, n),
                    None)
    strength = np.array([STRENGTH.get(o, 0.5) for o in table["objective"].to_pylist()])
    scale = (0.5 if config["adv_train"] != "none" else 1.0) * (1 + 0.1 * config["branch_point"])
    delta = -0.05 * table["eps"].to_numpy() * strength * scale + rng.normal(0, 0.02, n)
    success = np.clip(0.1 + 0.05 * (epoch == 4) + 0.2 * config["rho"]
                      + rng.normal(0, 0.03, n), 0, 1)
    is_rate = np.array([m == "success_rate" for m in table["metric"].to_pylist()])
    for name, values in (("rel_change", delta), ("adv", np.where(is_rate, success, 0.4)),
                         ("clean", rng.uniform(0.3, 0.7, n))):
        table = _set(table, name, values, table[name].is_null().to_numpy(zero_copy_only=False))
    return table


def generate(root: Path, trials: int, sweep: str = "scale") -> Path:
    """Write ``trials`` trials of the demo's shape under ``root/sweep`` (cached by file count)."""
    directory = root / sweep
    tables = ("measurements", "epochs", "timings")
    if all(len(list((directory / "results" / t).glob("*.parquet"))) == trials for t in tables):
        return directory
    templates = {t: validate_rows(t, sweep, "template", rows)
                 for t, rows in template_rows().items()}
    per_config = {c: {t: _with_config(table, _config(c)) for t, table in templates.items()}
                  for c in range(min(trials, 12))}
    rng = np.random.default_rng(0)
    for t in tables:
        (directory / "results" / t).mkdir(parents=True, exist_ok=True)
    for i in range(trials):
        config = _config(i)
        trial = (f"bp{config['branch_point']}-{config['adv_train'].split('-')[0]}-"
                 f"rho{config['rho']:g}-adam-s{config['seed']}-e4-{i:08x}")
        for t in tables:
            table = per_config[i % 12][t]
            table = _set(table, "trial_id", np.full(table.num_rows, trial, dtype=object), None)
            if t == "epochs":
                table = _set(table, "seed", np.full(table.num_rows, config["seed"]), None)
            if t == "measurements":
                table = _set(table, "seed", np.full(table.num_rows, config["seed"]), None)
            if t != "timings":
                table = _values(table, config, rng)
            table = table.replace_schema_metadata({**table.schema.metadata,
                                                   TRIAL_KEY: trial.encode(),
                                                   ATTEMPT_KEY: b"0"})
            pq.write_table(table, directory / "results" / t / f"{trial}.parquet")
    return directory


CHILD = """
import json, resource, sys, time
start = time.perf_counter()
{setup}
imported = time.perf_counter()
code = {call}
done = time.perf_counter()
print(json.dumps({{"code": code, "import_s": imported - start, "analyze_s": done - imported,
                  "torch_imported": "torch" in sys.modules,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
ANALYZE = CHILD.format(  # through the CLI, which imports only the analyze command's module
    setup="from orchestrator.cli import main",
    call='main(["analyze", sys.argv[1], "--out", sys.argv[2]])')
CONSOLIDATE = CHILD.format(setup="from orchestrator.analysis_tables import consolidate",
                           call="0 if consolidate(sys.argv[1]) else 1")
STEPS = {"sweep_end": CONSOLIDATE, "after_sweep": ANALYZE, "cold": ANALYZE}


def measure(step: str, sweep_dir: Path, out: Path) -> dict:
    """One step (see the module docstring) in a fresh subprocess: wall time, peak RSS."""
    if step in ("sweep_end", "cold"):
        shutil.rmtree(sweep_dir / COPY_DIR, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STEPS[step], str(sweep_dir), str(out)],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed on {sweep_dir}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{step} exited {result['code']} on {sweep_dir}")
    return {"wall_s": round(wall, 2), "import_s": round(result["import_s"], 2),
            "work_s": round(result["analyze_s"], 2),
            "peak_rss_mb": round(result["maxrss_mb"], 1),
            "torch_imported": result["torch_imported"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 1000, 10000])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "mtlsweep_bench_analysis")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        sweep_dir = generate(args.cache / f"trials_{size}", size)
        print(f"{size} trials ready in {time.perf_counter() - start:.1f} s: {sweep_dir}",
              flush=True)
    for size in args.sizes:
        sweep_dir = args.cache / f"trials_{size}" / "scale"
        row = {"trials": size, "files": 3 * size}
        for step in STEPS:
            with tempfile.TemporaryDirectory() as out:
                load = os.getloadavg()[0]
                result = measure(step, sweep_dir, Path(out))
            row.update({f"{step}_{k}": v for k, v in result.items()},
                       **{f"{step}_load_avg_1m": round(load, 2)})
            print(f"{step} at {size} trials: {result}, load {load:.2f}", flush=True)
        rows.append(row)
    print()
    head = ("trials", "files", *(f"{step}_{k}" for step in STEPS
                                 for k in ("wall_s", "peak_rss_mb", "load_avg_1m")))
    print(" | ".join(f"{h:>14}" for h in ("trials", "files")) + " | " +
          " | ".join(f"{step:>34}" for step in STEPS))
    for row in rows:
        cells = [f"{row['trials']:>14}", f"{row['files']:>14}"]
        cells += [f"{row[f'{s}_wall_s']:>9} s {row[f'{s}_peak_rss_mb']:>8} MB load "
                  f"{row[f'{s}_load_avg_1m']:>4}" for s in STEPS]
        print(" | ".join(cells))
    big = max(rows, key=lambda r: r["trials"])

    def met(step: str) -> bool:
        return big[f"{step}_wall_s"] <= GOAL_S and big[f"{step}_peak_rss_mb"] <= GOAL_MB

    print(json.dumps({"sizes": rows, "columns": head, "goal_s": GOAL_S, "goal_mb": GOAL_MB,
                      "largest": big["trials"], "met_after_sweep": met("after_sweep"),
                      "met_cold": met("cold"), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
