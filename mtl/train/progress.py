"""One human-readable progress line per epoch, on stderr (stdout stays for results)."""
from __future__ import annotations

import sys
from typing import Any, Mapping, TextIO

# Headline validation metric per task, shown in the progress line when present.
KEY_METRICS = {"segment_semantic": "miou", "depth_zbuffer": "abs_err", "normal": "angle_mean",
               "edge_texture": "l1", "keypoints2d": "l1", "scene_class": "accuracy"}


def format_epoch(record: Mapping[str, Any], epochs: int) -> str:
    """`epoch  3/10 loss 0.8123 lr 1.0e-02 (decayed) 2.4s | val seg miou 0.412 ...` for a record."""
    width = len(str(epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{epochs}", f"loss {record['train_loss']:.4f}",
             f"lr {record['lr']:.1e}" + (" (decayed)" if record.get("lr_decayed") else ""),
             f"{record['time_s']:.1f}s"]
    vals = []
    for task, metric in KEY_METRICS.items():
        key = f"val/{task}/{metric}"
        if key in record:
            vals.append(f"{task} {metric} {record[key]:.4g}")
    if "lambda_max" in record:
        vals.append(f"lambda_max {record['lambda_max']:.4g}")
    if record.get("kept"):
        vals.append("kept")
    return " ".join(parts) + (" | " + ", ".join(vals) if vals else "")


def print_epoch(record: Mapping[str, Any], epochs: int, stream: TextIO | None = None) -> None:
    """Print `format_epoch(record)` to `stream` (default stderr) and flush."""
    stream = stream or sys.stderr
    print(format_epoch(record, epochs), file=stream, flush=True)
