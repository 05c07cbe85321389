"""Training variants (issue 4), measured side by side in one run on the embedded scenes:

(a) a clean SGD model vs DGBA- and TOTAL-adversarially-trained ones under white-box PGD-DGBA /
    PGD-TOTAL at each eps: clean metrics, Δ per task and mean (negative = the attack hurt);
(b) Hessian λ_max, trace and SAM-sharpness (fixed training subset) of the SGD, SAM (ρ 0.05) and
    RFN (large ρ) surrogates at every kept early-stopping epoch;
(c) transfer from each of those checkpoints to independently trained targets (other seeds, one
    other layout): RFN success rate on scene_class (share of the examples every target gets
    right that the target gets wrong after the attack) and Δ over all tasks.

Models come from the model store (`mtl.train.zoo.ensure_models`), attacks and rows from
`mtl.attacks` / `mtl.evaluate`; evaluation uses a fixed subset of the test split. Adversarial
training uses few PGD steps (default 3, alternating clean/adversarial batches) to stay cheap.
Progress goes to stderr, tables to stdout; the LAST line is one JSON object.

    PYTHONPATH=. python bench/training_variants.py [--quick] [--out FILE] [--store DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "scene_class")
OBJECTIVES = ("dgba", "total", "signsum", "minmax", *(f"single:{t}" for t in TASKS))
AT_OBJECTIVES = ("dgba", "total")
HEADLINE = {"segment_semantic": "miou", "depth_zbuffer": "abs_err", "normal": "angle_mean",
            "scene_class": "accuracy"}


@dataclass(frozen=True)
class Settings:
    """Everything the measurement depends on (printed and stored in the JSON)."""

    size: int = 32
    train_len: int = 1024
    eval_len: int = 256
    data_seed: int = 0
    width: int = 8
    layout: int = 3                      # branch point of the surrogates / AT models
    epochs: int = 12
    milestones: tuple[int, ...] = (8,)   # LR × gamma from the start of these epochs
    keep_epochs: tuple[int, ...] = (4, 6, 8, 12)
    lr: float = 0.05
    gamma: float = 0.1
    weight_decay: float = 5e-4
    batch_size: int = 32
    seed: int = 0
    sam_rho: float = 0.05
    rfn_rhos: tuple[float, ...] = (0.2, 0.5, 1.0)
    at_method: str = "pgd"
    at_eps: float = 8.0
    at_steps: int = 3
    eps: tuple[float, ...] = (4.0, 8.0)
    attack_steps: int = 10
    transfer_eps: float = 8.0
    transfer_objectives: tuple[str, ...] = ("dgba", "single:scene_class")
    target_layouts: tuple[int, ...] = (3, 3, 4)
    target_seeds: tuple[int, ...] = (100, 101, 102)
    sharp_samples: int = 64
    sharp_power_iters: int = 10
    sharp_hutchinson: int = 4
    sharp_rho: float = 0.05
    sharp_ascent_steps: int = 3
    eval_batch: int = 64

    @classmethod
    def quick(cls) -> "Settings":
        """Tiny settings for the smoke test (seconds, numbers meaningless)."""
        return cls(size=16, train_len=16, eval_len=8, width=4, epochs=2, milestones=(2,),
                   keep_epochs=(1, 2), batch_size=8, rfn_rhos=(0.5,), at_steps=1, eps=(8.0,),
                   attack_steps=1, target_layouts=(3, 4), target_seeds=(100, 101),
                   sharp_samples=4, sharp_power_iters=2, sharp_hutchinson=1,
                   sharp_ascent_steps=1, eval_batch=8)

    def validate(self) -> None:
        """One ValueError naming the first bad field and its allowed values."""
        from mtl.models import NUM_BLOCKS
        for name in ("size", "train_len", "eval_len", "width", "epochs", "batch_size",
                     "attack_steps", "at_steps", "sharp_samples", "sharp_power_iters",
                     "sharp_ascent_steps", "eval_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {getattr(self, name)!r}")
        for name, vals in (("layout", (self.layout,)), ("target_layouts", self.target_layouts)):
            if any(not isinstance(v, int) or not 0 <= v <= NUM_BLOCKS for v in vals):
                raise ValueError(f"{name}: branch points must be ints in [0, {NUM_BLOCKS}], "
                                 f"got {vals!r}")
        if not self.target_seeds or len(self.target_seeds) != len(self.target_layouts) \
                or len(set(self.target_seeds)) != len(self.target_seeds):
            raise ValueError(f"target_seeds: need one distinct seed per target layout, got "
                             f"{self.target_seeds!r} for layouts {self.target_layouts!r}")
        if self.seed in self.target_seeds:
            raise ValueError(f"target_seeds: must differ from the surrogate seed {self.seed}, "
                             f"got {self.target_seeds!r}")
        if not self.rfn_rhos or any(r <= 0 for r in (self.sam_rho, *self.rfn_rhos)) \
                or len(set(self.rfn_rhos)) != len(self.rfn_rhos):
            raise ValueError(f"rfn_rhos / sam_rho: need distinct numbers > 0, got sam_rho="
                             f"{self.sam_rho}"
                             f", rfn_rhos={self.rfn_rhos!r}")
        if not self.eps or any(not 0 < e <= 255 for e in (*self.eps, self.transfer_eps)):
            raise ValueError(f"eps / transfer_eps: need numbers in (0, 255] (1/255 units), "
                             f"got {self.eps!r}, {self.transfer_eps!r}")
        bad = [o for o in self.transfer_objectives if o not in OBJECTIVES]
        if bad or not self.transfer_objectives:
            raise ValueError(f"transfer_objectives: unknown {bad}; allowed: {list(OBJECTIVES)}")
        if self.epochs not in self.keep_epochs:
            raise ValueError(f"keep_epochs: must include the last epoch {self.epochs} (targets "
                             f"and AT models use it), got {list(self.keep_epochs)}")
        all_model_configs(self)  # TrainConfig / AdvTrainConfig / SharpnessConfig checks


def _train_config(s: Settings, *, seed: int, rho: float = 0.0, adv: Any = None,
                  keep: tuple[int, ...] | None = None, sharp: bool = False) -> dict:
    from mtl.train import AdvTrainConfig, SharpnessConfig, TrainConfig
    sharpness = SharpnessConfig(num_samples=s.sharp_samples, power_iters=s.sharp_power_iters,
                                hutchinson_samples=s.sharp_hutchinson, rho=s.sharp_rho,
                                ascent_steps=s.sharp_ascent_steps) if sharp else None
    adv_cfg = None if adv is None else AdvTrainConfig(objective=adv, method=s.at_method,
                                                      eps=s.at_eps, steps=s.at_steps)
    return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, optimizer="sgd", lr=s.lr,
                       momentum=0.9, weight_decay=s.weight_decay, milestones=s.milestones,
                       gamma=s.gamma, keep_epochs=keep or s.keep_epochs, seed=seed, rho=rho,
                       adv=adv_cfg, sharpness=sharpness).to_dict()


def _model_config(s: Settings, layout: int, train: dict) -> dict:
    from mtl.models import Layout
    return {"dataset": {"source": "scenes", "train": s.train_len, "tasks": list(TASKS),
                        "options": {"size": s.size, "seed": s.data_seed}},
            "tasks": [{"name": t} for t in TASKS],
            "model": {"source": "resnet", "layout": str(Layout.branch_point(layout, len(TASKS))),
                      "options": {"width": s.width}},
            "train": train}


def all_model_configs(s: Settings) -> dict[str, tuple[str, dict]]:
    """name -> (role, model-store config) for every model the bench needs."""
    last = (s.epochs,)
    out = {"sgd": ("surrogate", _train_config(s, seed=s.seed, sharp=True)),
           f"sam_rho{s.sam_rho:g}": ("surrogate",
                                     _train_config(s, seed=s.seed, rho=s.sam_rho, sharp=True))}
    for rho in s.rfn_rhos:
        out[f"rfn_rho{rho:g}"] = ("surrogate", _train_config(s, seed=s.seed, rho=rho, sharp=True))
    for obj in AT_OBJECTIVES:
        out[f"at_{obj}"] = ("adversarial", _train_config(s, seed=s.seed, adv=obj, keep=last))
    configs = {name: (role, _model_config(s, s.layout, cfg)) for name, (role, cfg) in out.items()}
    for layout, seed in zip(s.target_layouts, s.target_seeds):
        configs[f"target_bp{layout}_s{seed}"] = (
            "target", _model_config(s, layout, _train_config(s, seed=seed, keep=last)))
    return configs


def _finite(x: Any) -> Any:
    """JSON-safe copy (str keys; NaN / inf become None)."""
    return json.loads(json.dumps(x), parse_constant=lambda _: None)


def spearman(xs: list[float | None], ys: list[float | None]) -> float | None:
    """Spearman rank correlation over the pairs where both values exist (average tie ranks)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        where: dict[float, list[int]] = {}
        for i, x in enumerate(sorted(v)):
            where.setdefault(x, []).append(i)
        return [sum(where[x]) / len(where[x]) for x in v]

    rx, ry = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else None


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def measure_robustness(models: dict, loader: Any, s: Settings, log: Callable) -> dict:
    """(a): white-box PGD-DGBA / PGD-TOTAL at each eps on the clean and AT models."""
    from mtl.attacks import AttackSpec
    from mtl.evaluate import evaluate_attacks
    specs = [AttackSpec("pgd", obj, e, s.attack_steps) for obj in AT_OBJECTIVES for e in s.eps]
    out = {}
    for name in ("sgd", *(f"at_{o}" for o in AT_OBJECTIVES)):
        log(f"(a) white-box attacks on {name}")
        rows = evaluate_attacks(models[name], loader, specs)
        clean: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["metric"] != "delta":
                clean.setdefault(r["task"], {})[r["metric"]] = r["clean"]  # same for every spec
        attacks = {}
        for sp in specs:
            mine = [r for r in rows if r["objective"] == sp.objective and r["eps"] == sp.eps
                    and r["metric"] == "delta"]
            attacks[f"pgd-{sp.objective}-eps{sp.eps:g}"] = {
                "delta": {r["task"]: r["rel_change"] for r in mine if r["task"] != "mean"},
                "mean": next(r["rel_change"] for r in mine if r["task"] == "mean")}
        out[name] = {"clean": clean, "attacks": attacks}
    return out


def success_pool(targets: dict, loader: Any) -> int:
    """How many eval examples every target classifies correctly (the success-rate denominator
    of the RFN protocol, as in `mtl.evaluate.evaluate_transfer`), for the binomial error."""
    import torch
    total = 0
    with torch.no_grad():
        for batch in loader:
            ok = torch.ones(batch["image"].shape[0], dtype=torch.bool)
            for model in targets.values():
                image = batch["image"].to(next(model.parameters()).device)
                pred = model(image, task="scene_class")["scene_class"]
                ok &= pred.argmax(1).cpu() == batch["scene_class"]
            total += int(ok.sum())
    return total


def measure_transfer(surrogates: dict, targets: dict, loader: Any, s: Settings,
                     log: Callable) -> dict:
    """(c): transfer from every surrogate checkpoint to the target zoo."""
    from mtl.attacks import AttackSpec
    from mtl.evaluate import evaluate_transfer
    specs = [AttackSpec("pgd", obj, s.transfer_eps, s.attack_steps)
             for obj in s.transfer_objectives]
    out: dict[str, dict] = {}
    for name, by_epoch in surrogates.items():
        for epoch, model in by_epoch.items():
            log(f"(c) transfer from {name} @ epoch {epoch}")
            rows = evaluate_transfer(model, targets, loader, specs)
            res = {}
            for spec in specs:
                mine = [r for r in rows if r["objective"] == spec.objective]
                sr = {r["target_id"]: r["adv"] for r in mine if r["metric"] == "success_rate"}
                dm = {r["target_id"]: r["rel_change"] for r in mine
                      if r["metric"] == "delta" and r["task"] == "mean"}
                dt = {t: _mean([r["rel_change"] for r in mine if r["metric"] == "delta"
                                and r["task"] == t]) for t in TASKS}
                res[spec.objective] = {"success_rate": {**sr, "mean": _mean(list(sr.values()))},
                                       "delta_mean": {**dm, "mean": _mean(list(dm.values()))},
                                       "delta_task": dt}
            out.setdefault(name, {})[str(epoch)] = res
    return out


def _transfer_summary(tr: dict, sh: dict, obj: str, s: Settings) -> dict:
    """Early stopping, RFN vs SAM vs early stopping, sharpness ↔ transfer, for one objective."""
    succ = {n: {int(e): v[obj]["success_rate"]["mean"] for e, v in d.items()}
            for n, d in tr.items()}
    dmean = {n: {int(e): v[obj]["delta_mean"]["mean"] for e, v in d.items()}
             for n, d in tr.items()}
    sgd, last = succ["sgd"], s.epochs
    ranked = sorted((v, -e) for e, v in sgd.items() if v is not None)
    keys = [(n, e) for n in sh for e in sh[n]]

    def rank_corr(measure: str, values: dict) -> float | None:
        return spearman([sh[n][e][measure] for n, e in keys],
                        [values[n].get(int(e)) for n, e in keys])

    return {"success_by_epoch": succ, "delta_by_epoch": dmean,
            "sgd_peak_epoch": -ranked[-1][1] if ranked else None,
            "first_decay_epoch": s.milestones[0] if s.milestones else None,
            "sgd_final_success": sgd.get(last),
            "sgd_best_early_success": max((v for e, v in sgd.items()
                                           if e < last and v is not None), default=None),
            "sam_final_success": succ[f"sam_rho{s.sam_rho:g}"].get(last),
            "rfn_final_success": {n: v[last] for n, v in succ.items() if n.startswith("rfn_")},
            "spearman_lambda_max_vs_success": rank_corr("lambda_max", succ),
            "spearman_sam_sharpness_vs_success": rank_corr("sam_sharpness", succ),
            "spearman_lambda_max_vs_delta": rank_corr("lambda_max", dmean),
            "spearman_final_lambda_max_vs_success": spearman(
                [sh[n][str(last)]["lambda_max"] for n in sh], [succ[n].get(last) for n in sh])}


def summarize(result: dict, s: Settings) -> dict:
    """Derived numbers that the claims of the RFN and DGBA papers are judged by."""
    from mtl.tasks import relative_change
    rob = result["robustness"]
    return {"transfer": {obj: _transfer_summary(result["transfer"], result["sharpness"], obj, s)
                         for obj in s.transfer_objectives},
            "at_clean_cost": {n: relative_change(rob["sgd"]["clean"], rob[n]["clean"])[1]
                              for n in rob if n != "sgd"},
            "at_delta_mean": {n: {k: a["mean"] for k, a in rob[n]["attacks"].items()}
                              for n in rob}}


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[f"{c:.4g}" if isinstance(c, float) else ("-" if c is None else str(c)) for c in r]
             for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"\n{title}"] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_tables(result: dict, s: Settings) -> None:
    """Readable tables of (a), (b), (c) on stdout."""
    rob = result["robustness"]
    keys = list(next(iter(rob.values()))["attacks"])
    print(_table("(a) clean metrics on the eval subset", ["model", *HEADLINE.values()],
                 [[n, *(r["clean"][t][m] for t, m in HEADLINE.items())] for n, r in rob.items()]))
    print(_table("(a) white-box Δ (per task, mean; negative = hurt)",
                 ["model", "attack", *TASKS, "mean"],
                 [[n, k, *(r["attacks"][k]["delta"].get(t) for t in TASKS),
                   r["attacks"][k]["mean"]] for n, r in rob.items() for k in keys]))
    sh = result["sharpness"]
    print(_table("(b) sharpness of the surrogates (training subset, eval mode)",
                 ["surrogate", "epoch", "lr", "subset_loss", "lambda_max", "hessian_trace",
                  "sam_sharpness"],
                 [[n, e, v["lr"], v.get("subset_loss"), v.get("lambda_max"),
                   v.get("hessian_trace"), v.get("sam_sharpness")]
                  for n, d in sh.items() for e, v in d.items()]))
    tr = result["transfer"]
    for obj in s.transfer_objectives:
        tids = [t for t in next(iter(next(iter(tr.values())).values()))[obj]["success_rate"]]
        print(_table(f"(c) transfer, PGD-{obj} eps {s.transfer_eps:g}: success rate per target "
                     f"(of {result['success_pool']} examples all targets get right) and Δ mean "
                     "over targets", ["surrogate", "epoch", *tids, "Δ mean"],
                     [[n, e, *(v[obj]["success_rate"][t] for t in tids),
                       v[obj]["delta_mean"]["mean"]] for n, d in tr.items()
                      for e, v in d.items()]))


def run_bench(s: Settings, store_dir: str | os.PathLike, device: str = "cpu",
              log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
              ) -> dict:
    """Train (or reuse) every model on `device`, measure (a), (b), (c); returns the JSON-able
    result (see bench/README.md for its keys)."""
    import torch
    from mtl.data import make_loader
    from mtl.data.scenes import SyntheticScenes
    from mtl.config.build import build_split
    from mtl.train.checkpoints import read_meta
    from mtl.train.zoo import checkpoint_paths, config_hash, ensure_models, find_model, load_model
    s.validate()
    configs = all_model_configs(s)
    timings: dict[str, float] = {}
    load_start = list(os.getloadavg())
    t_all = time.perf_counter()
    models: dict[str, dict] = {}
    for i, (name, (role, cfg)) in enumerate(configs.items()):
        reused = find_model(cfg, store_dir) is not None
        log(f"[{i + 1}/{len(configs)}] {'reusing' if reused else 'training'} {name} ({role})")
        t0 = time.perf_counter()
        entry = next(iter(ensure_models([cfg], store_dir, device=device, progress=True).values()))
        timings[f"train/{name}"] = time.perf_counter() - t0
        history = json.loads((entry / "history.json").read_text())
        models[name] = {"role": role, "hash": config_hash(cfg), "entry": entry, "reused": reused,
                        "layout": cfg["model"]["layout"], "seed": cfg["train"]["seed"],
                        "rho": cfg["train"]["rho"], "adv": cfg["train"]["adv"],
                        "final_train_loss": history[-1]["train_loss"]}
    eval_set = SyntheticScenes("test", size=s.size, length=s.eval_len, seed=s.data_seed,
                               tasks=list(TASKS))
    loader = list(make_loader(eval_set, s.eval_batch))  # fixed subset, identical for every model
    heads = build_split(configs["sgd"][1]["dataset"], "train", 1)  # task_channels for the heads

    def load(name: str, epoch: int) -> tuple[torch.nn.Module, dict]:
        entry, cfg = models[name]["entry"], configs[name][1]
        model = load_model(entry, cfg, heads, epoch, device=device)
        return model, read_meta(checkpoint_paths(entry)[epoch])

    t0 = time.perf_counter()
    final = {n: load(n, s.epochs)[0] for n in ("sgd", *(f"at_{o}" for o in AT_OBJECTIVES))}
    robustness = measure_robustness(final, loader, s, log)
    timings["robustness"] = time.perf_counter() - t0
    surrogate_names = [n for n, m in models.items() if m["role"] == "surrogate"]
    sharpness: dict[str, dict] = {}
    surrogates: dict[str, dict] = {}
    for name in surrogate_names:
        for epoch in s.keep_epochs:
            model, meta = load(name, epoch)
            surrogates.setdefault(name, {})[epoch] = model
            sharpness.setdefault(name, {})[str(epoch)] = {
                "lr": meta["lr"], "lr_decayed": meta["lr_decayed"], **(meta["sharpness"] or {})}
    targets = {n: load(n, s.epochs)[0] for n, m in models.items() if m["role"] == "target"}
    t0 = time.perf_counter()
    transfer = measure_transfer(surrogates, targets, loader, s, log)
    timings["transfer"] = time.perf_counter() - t0
    pool = success_pool(targets, loader)
    timings["total"] = time.perf_counter() - t_all
    result = {"bench": "training_variants", "settings": asdict(s),
              "conditions": {"device": str(device), "torch": torch.__version__,
                             "torch_threads": torch.get_num_threads(),
                             "load_avg_start": load_start,
                             "load_avg_end": list(os.getloadavg())},
              "models": {n: {k: v for k, v in m.items() if k != "entry"}
                         for n, m in models.items()},
              "robustness": robustness, "sharpness": sharpness, "transfer": transfer,
              "success_pool": pool, "timings_s": timings}
    result["summary"] = summarize(result, s)
    return _finite(result)


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--store", help="model store directory (reused across runs; default: temp)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="torch device for training and attacks")
    base = Settings.quick() if "--quick" in (argv if argv is not None else sys.argv[1:]) \
        else Settings()
    for f in fields(Settings):
        default = getattr(base, f.name)
        kind = type(default[0]) if isinstance(default, tuple) and default else type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default,
                       nargs="+" if isinstance(default, tuple) else None)
    args = p.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(Settings)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return args, replace(base, **values)


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point: run, print tables and the final JSON line."""
    import torch
    args, settings = _parse(argv)
    if args.threads < 1:
        raise ValueError(f"threads: must be an int >= 1, got {args.threads}")
    settings.validate()  # before any work
    torch.set_num_threads(args.threads)
    print(f"settings: {json.dumps(asdict(settings))}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtl-variants-") as tmp:
        result = run_bench(settings, args.store or tmp, device=args.device)
    print_tables(result, settings)
    for obj, claims in result["summary"]["transfer"].items():
        print(f"\nsummary, transfer with PGD-{obj}:")
        for key, value in claims.items():
            if not key.endswith("_by_epoch"):
                print(f"  {key}: {json.dumps(value)}")
    for key in ("at_clean_cost", "at_delta_mean"):
        print(f"{key}: {json.dumps(result['summary'][key])}")
    sys.stdout.flush()
    line = json.dumps(result, sort_keys=True)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
