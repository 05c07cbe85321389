"""Rendering throughput of the synthetic scenes (no cache): images per second at 64x64.

Renders `--images` scenes (default 2000) in dataset-sized chunks, sampling included, and
reports wall-clock and CPU-time rates side by side (CPU time is the fairer number on a shared
machine). With --workers 2 the same work is split over two processes, the dataset's layout on
a 2-core machine.

With --cache N it measures the scenes cache instead, side by side in one run: length N cold,
length 2N with N cached (renders only the N new samples), length 2N cold (what a longer
length cost when the cache was keyed by the length) and length 2N fully cached (open and
checksum only). The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mtl.data import render as render_mod  # noqa: E402
from mtl.data.scenes import SyntheticScenes, scene_params  # noqa: E402


def _render_range(args: tuple[int, int, int, int]) -> tuple[float, float]:
    """Render indices [lo, hi) in chunks; returns (wall seconds, CPU seconds) of this process."""
    lo, hi, size, chunk = args
    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(lo, hi, chunk):
        render_mod.render(scene_params("train", np.arange(start, min(hi, start + chunk))), size)
    return time.perf_counter() - wall, time.process_time() - cpu


def _timed_open(cache: str, length: int, size: int, rendered: list[int]) -> dict:
    """Open the train split at `length` in `cache`: wall and CPU seconds, samples rendered."""
    rendered.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    SyntheticScenes("train", size=size, length=length, cache_dir=cache)
    return {"wall_s": round(time.perf_counter() - wall, 3),
            "cpu_s": round(time.process_time() - cpu, 3), "rendered": sum(rendered)}


def cache_bench(prefix: int, size: int) -> dict:
    """The four cache cases of the module docstring, in fresh temporary caches."""
    real, rendered = render_mod.render, []

    def counting(params, size, **kwargs):
        rendered.append(params.batch)
        return real(params, size, **kwargs)

    render_mod.render = counting
    try:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            cases = {"cold_n": _timed_open(a, prefix, size, rendered),
                     "extend_to_2n": _timed_open(a, 2 * prefix, size, rendered),
                     "cold_2n": _timed_open(b, 2 * prefix, size, rendered),
                     "cached_2n": _timed_open(a, 2 * prefix, size, rendered)}
    finally:
        render_mod.render = real
    for name, c in cases.items():
        print(f"{name:>13}: {c['wall_s']:7.3f} s wall, {c['cpu_s']:7.3f} s CPU, "
              f"{c['rendered']} samples rendered")
    ratio = cases["extend_to_2n"]["cpu_s"] / cases["cold_2n"]["cpu_s"]
    print(f"extending {prefix} -> {2 * prefix} costs {ratio:.2f}x a cold {2 * prefix} (CPU time)")
    return {"bench": "data_gen_cache", "size": size, "prefix": prefix, **cases,
            "extend_over_cold_2n_cpu": round(ratio, 3), "load_avg": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, choices=(1, 2))
    parser.add_argument("--cache", type=int, default=0, metavar="N",
                        help="measure the scenes cache at lengths N and 2N instead")
    args = parser.parse_args(argv)
    if args.images < 1:
        raise ValueError(f"images: must be >= 1, got {args.images}")
    if args.cache < 0:
        raise ValueError(f"cache: must be >= 0, got {args.cache}")
    torch.set_num_threads(1)
    chunk = max(1, render_mod.CHUNK_RAYS // (args.size * args.size))
    _render_range((0, min(chunk, args.images), args.size, chunk))        # warm-up
    if args.cache:
        print(json.dumps(cache_bench(args.cache, args.size)))
        return 0
    if args.workers == 1:
        wall = time.perf_counter()
        cpu_parts = [_render_range((0, args.images, args.size, chunk))[1]]
        wall = time.perf_counter() - wall
    else:
        half = args.images // 2
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_render_range, [(0, 4, args.size, chunk)] * 2))   # start + import
            jobs = [(0, half, args.size, chunk), (half, args.images, args.size, chunk)]
            wall = time.perf_counter()
            cpu_parts = [c for _, c in pool.map(_render_range, jobs)]
            wall = time.perf_counter() - wall
    per_cpu = args.images / sum(cpu_parts)
    load = os.getloadavg()[0]
    print(f"rendered {args.images} images at {args.size}x{args.size} with {args.workers} "
          f"process(es): {args.images / wall:.0f} images/s wall, {per_cpu:.0f} images/s per CPU "
          f"second (load average {load:.1f} on {os.cpu_count()} cores)")
    print(json.dumps({"bench": "data_gen", "size": args.size, "images": args.images,
                      "workers": args.workers, "images_per_s": round(args.images / wall, 1),
                      "images_per_cpu_s": round(per_cpu, 1), "load_avg": round(load, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
