"""Import speed per format (points/s) and archive size vs source size; prints a Markdown table.

Sources are written by the real libraries (W&B offline, torch SummaryWriter, MLflow SQLite,
csv/json) with `--steps` steps of 5 metrics; each import runs into a fresh archive. Writing
the sources is not timed. Numbers, not pass/fail.

    python -m bench.bench_import --steps 20000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

NAMES = ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s")


def _value(i: int, k: int) -> float:
    return 1.0 / (i + 1) + k * 0.25 + (float("nan") if i == 1234 and k == 0 else 0.0)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def write_wandb(root: Path, steps: int) -> Path:
    import wandb

    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project="bench", name="bench", dir=str(root), settings=wandb.Settings(x_disable_stats=True))
    for i in range(steps):
        run.log({n: _value(i, k) for k, n in enumerate(NAMES)}, step=i)
    run.finish()
    return next((root / "wandb").glob("offline-run-*/run-*.wandb"))


def write_tensorboard(root: Path, steps: int) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(root / "tb" / "run"))
    for i in range(steps):
        for k, n in enumerate(NAMES):
            w.add_scalar(n, _value(i, k), i)
    w.close()
    return root / "tb"


def write_mlflow(root: Path, steps: int) -> str:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    warnings.filterwarnings("ignore")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_name="bench") as run:
        batch = []
        for i in range(steps):
            batch.extend(Metric(n, _value(i, k), 1_700_000_000_000 + i, i) for k, n in enumerate(NAMES))
            if len(batch) >= 995:
                MlflowClient(uri).log_batch(run.info.run_id, metrics=batch)
                batch = []
        if batch:
            MlflowClient(uri).log_batch(run.info.run_id, metrics=batch)
    return uri


def write_csv(root: Path, steps: int) -> Path:
    path = root / "log.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *NAMES])
        for i in range(steps):
            w.writerow([i, *(repr(_value(i, k)) for k in range(len(NAMES)))])
    return path


def write_jsonl(root: Path, steps: int) -> Path:
    path = root / "log.jsonl"
    with open(path, "w") as f:
        for i in range(steps):
            f.write(json.dumps({"step": i, **{n: _value(i, k) for k, n in enumerate(NAMES)}}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--formats", default="wandb,tensorboard,mlflow,csv,jsonl")
    args = ap.parse_args()

    from telemetry.importers import import_csv, import_jsonl, import_mlflow, import_tensorboard, import_wandb

    plan: dict[str, tuple[Callable, Callable]] = {
        "wandb": (write_wandb, lambda src, a: import_wandb(str(src), a, quiet=True)),
        "tensorboard": (write_tensorboard, lambda src, a: import_tensorboard(str(src), a, quiet=True)),
        "mlflow (sqlite)": (write_mlflow, lambda src, a: import_mlflow(str(src), a, quiet=True)),
        "csv": (write_csv, lambda src, a: import_csv(str(src), a, quiet=True)),
        "jsonl": (write_jsonl, lambda src, a: import_jsonl(str(src), a, quiet=True)),
    }
    wanted = {f.strip() for f in args.formats.split(",")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="flightlog-bench-import-") as tmp:
        for name, (write, do_import) in plan.items():
            if name.split(" ")[0] not in wanted:
                continue
            work = Path(tmp) / name.split(" ")[0]
            work.mkdir()
            t0 = time.perf_counter()
            src = write(work, args.steps)
            write_s = time.perf_counter() - t0
            src_path = Path(str(src).removeprefix("sqlite:///"))
            archive = str(work / "archive")
            do_import(src, archive)  # warm: library imports, page cache
            archive = str(work / "archive2")
            t0 = time.perf_counter()
            summary = do_import(src, archive)
            secs = time.perf_counter() - t0
            metrics_bytes = _size(Path(archive) / "metrics")
            rows.append((name, summary.points, secs, summary.points / secs, _size(src_path), metrics_bytes,
                         write_s))
    print(f"\nImport of {args.steps:,} steps x {len(NAMES)} metrics (one run per format; warm second import)\n")
    print("| format | points | import s | points/s | source bytes/point | archive bytes/point | "
          "source write s (peer) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, points, secs, rate, src_b, arc_b, write_s in rows:
        print(f"| {name} | {points:,} | {secs:.3f} | {rate:,.0f} | {src_b / points:.1f} | {arc_b / points:.2f} | "
              f"{write_s:.1f} |")


if __name__ == "__main__":
    main()
