"""flightlog vs wandb offline, TensorBoard SummaryWriter and MLflow (SQLite), side by side, in one run.

    python -m bench.bench_peers [--quick] [--only log,curve] [--dir DIR] [--timeout S]

Same workload, same machine, same run; every tool runs in its own fresh interpreter
(bench._harness.run_child), so imports, threads and heaps never mix; peak RSS is the child's
(os.wait4), plus the sampled RSS of its process tree (wandb's service process runs outside it).

1. Host cost per training step of logging 5 and 50 scalars: the time the logging calls take
   in the training thread (median over chunks of steps; values prepared beforehand, so only
   the call is timed): `Writer.metrics(step, {...})`, `wandb.Run.log(dict, step=)`,
   `SummaryWriter.add_scalar` per name, `mlflow.log_metrics(dict, step=)`. flightlog's
   `trainer_hooks.attach()` default capture is measured as a training loop's cost over the
   same loop without it (tiny model, CPU, 1 thread; 50 scalars: + `obs.log` of 45 more).
2. Writer throughput (points/s, logging + close/finish) and bytes per point on disk after
   close (flightlog also after `telemetry.maintain.compaction.compact`).
3. Loading a 1M-step loss curve for display, cold (new process): flightlog
   `Archive(url).curve(run, "loss", buckets=2000)`; TensorBoard `EventAccumulator` with every
   point kept, `Reload()` + `Scalars()`; MLflow `get_metric_history` (measured at 1/10 of the
   size, then at full size under a timeout; extrapolated linearly when it runs out).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._harness import (
    child_task,
    emit,
    flightlog_live_bytes,
    fmt_bytes,
    fmt_rate,
    fmt_ratio,
    fmt_s,
    fmt_us,
    machine_note,
    md_table,
    median,
    run_child,
    self_peak_rss,
    summary,
    tree_bytes,
    verdict,
)

MODULE = "bench.bench_peers"
NAMES5 = ["loss", "grad_norm", "lr", "tokens_per_s", "step_time_s"]
TOOLS = ["flightlog", "wandb", "tensorboard", "mlflow"]
LABEL = {
    "flightlog": "flightlog `Writer.metrics`", "hooks": "flightlog `attach()` default capture",
    "wandb": "wandb offline `run.log`", "tensorboard": "TensorBoard `add_scalar`",
    "mlflow": "MLflow SQLite `log_metrics`",
}
# Steps per (tool, scalars): enough for a stable median, small enough that MLflow ends (default, quick).
STEPS = {
    ("flightlog", 5): (1_000_000, 100_000), ("flightlog", 50): (200_000, 20_000),
    ("wandb", 5): (20_000, 2_000), ("wandb", 50): (4_000, 400),
    ("tensorboard", 5): (20_000, 2_000), ("tensorboard", 50): (2_000, 300),
    ("mlflow", 5): (1_000, 100), ("mlflow", 50): (300, 40),
}
# Steps per round of the in-loop measurement (default; --quick uses a sixth).
LOOP_STEPS = {("tensorboard", 50): 500, ("mlflow", 5): 300, ("mlflow", 50): 150}
WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
             "WANDB_CONSOLE": "off"}


# ---- workload ---------------------------------------------------------------------------------

def scalar_names(n: int) -> list[str]:
    return (NAMES5 + [f"layers.{i:02d}.grad_norm" for i in range(n - len(NAMES5))])[:n]


def series(names: list[str], start: int, n: int, total: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Training-like values: fp32 noisy decaying loss, lognormal norms, cosine lr, noisy rates."""
    rng = np.random.default_rng(seed + start)
    t = np.arange(start, start + n, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        if name == "loss":
            v = (2.2 * np.exp(-t / max(1, total / 7)) + 1.9 + rng.normal(0, 0.03, n)).astype(np.float32)
        elif name == "lr":
            v = 3e-4 * 0.5 * (1 + np.cos(np.pi * t / max(1, total)))
        elif name == "tokens_per_s":
            v = 1.2e5 + rng.normal(0, 800, n)
        elif name == "step_time_s":
            v = 0.3 + rng.normal(0, 0.002, n)
        else:  # grad norms
            v = (rng.lognormal(-0.7 + 0.01 * i, 0.2, n)).astype(np.float32)
        out[name] = v.astype(np.float64)
    return out


def rows_of(cols: dict[str, np.ndarray]) -> list[dict[str, float]]:
    names = list(cols)
    return [dict(zip(names, vals, strict=True)) for vals in zip(*(cols[k].tolist() for k in names), strict=True)]


def loss_curve(start: int, n: int, total: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, fp32 losses with rare NaN/spikes, wall times ~0.3 s apart with jitter) of a loss-like series."""
    rng = np.random.default_rng(start + 1)
    steps = np.arange(start, start + n, dtype=np.int64)
    loss = (2.2 * np.exp(-steps / max(1, total / 7)) + 1.9 + rng.normal(0, 0.03, n)).astype(np.float32).astype(float)
    loss[rng.integers(0, n, max(1, n // 500_000))] = np.nan
    loss[rng.integers(0, n, max(1, n // 1_000_000))] = 50.0
    wall = 1.7e9 + 0.3 * steps + rng.normal(0, 0.002, n)
    return steps, loss, wall


# ---- children: tools ------------------------------------------------------------------------------

class _Tool:
    """One logging library behind a common face: open, log one step, close, the files it wrote."""

    def __init__(self, tool: str, root: Path) -> None:
        self.tool, self.root = tool, root
        root.mkdir(parents=True, exist_ok=True)
        self.base_bytes = 0
        if tool == "flightlog":
            from telemetry import Writer, WriterConfig

            # compaction on close is timed separately (see compact_flightlog)
            self.w = Writer(str(root / "archive"), "bench-peers", writer_config=WriterConfig(compact_on_close=False))
            m = self.w.metrics
            self.log = lambda step, row: m(step, row)
        elif tool == "wandb":
            import wandb

            settings = wandb.Settings(x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
                                      console="off", disable_git=True, disable_code=True, save_code=False,
                                      x_save_requirements=False, silent=True)
            self.run = wandb.init(project="flightlog-bench", dir=str(root), mode="offline", settings=settings)
            log = self.run.log
            self.log = lambda step, row: log(row, step=step)
        elif tool == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.sw = SummaryWriter(str(root / "tb"))
            add = self.sw.add_scalar

            def log_tb(step: int, row: dict[str, float]) -> None:
                for k, v in row.items():
                    add(k, v, step)

            self.log = log_tb
        elif tool == "mlflow":
            import logging

            import mlflow

            logging.getLogger("mlflow").setLevel(logging.ERROR)
            mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
            mlflow.start_run(run_name="bench-peers")
            self.base_bytes = tree_bytes(root / "mlflow.db")  # the schema and run rows, not the points
            lm = mlflow.log_metrics
            self.log = lambda step, row: lm(row, step=step)
        else:
            raise ValueError(tool)

    def close(self) -> None:
        if self.tool == "flightlog":
            self.w.close()
        elif self.tool == "wandb":
            self.run.finish()
        elif self.tool == "tensorboard":
            self.sw.close()
        else:
            import mlflow

            mlflow.end_run()

    def data_bytes(self) -> tuple[int, int]:
        """(bytes of the files holding the points, bytes of everything the tool wrote)."""
        if self.tool == "flightlog":
            return tree_bytes(self.root / "archive" / "metrics", "*.parquet"), tree_bytes(self.root / "archive")
        if self.tool == "wandb":
            runs = glob.glob(str(self.root / "wandb" / "offline-run-*"))
            return sum(tree_bytes(r, "*.wandb") for r in runs), sum(tree_bytes(r) for r in runs)
        if self.tool == "tensorboard":
            return tree_bytes(self.root / "tb", "events.out.tfevents.*"), tree_bytes(self.root / "tb")
        db = tree_bytes(self.root / "mlflow.db")
        return db - self.base_bytes, db + tree_bytes(self.root / "mlruns")


def child_log(task: dict[str, Any]) -> dict[str, Any]:
    tool, n, steps, root = task["tool"], task["scalars"], task["steps"], Path(task["dir"])
    names = scalar_names(n)
    chunk = max(1, min(50_000, steps // 10))
    t = time.perf_counter()
    tl = _Tool(tool, root)
    setup_s = time.perf_counter() - t
    per_step, log_s = [], 0.0
    for start in range(0, steps, chunk):
        rows = rows_of(series(names, start, min(chunk, steps - start), steps))  # not timed
        log = tl.log
        t = time.perf_counter()
        for i, row in enumerate(rows, start):
            log(i, row)
        took = time.perf_counter() - t
        log_s += took
        per_step.append(took / len(rows))
    t = time.perf_counter()
    tl.close()
    close_s = time.perf_counter() - t
    data_b, all_b = tl.data_bytes()
    out = {"setup_s": setup_s, "log_s": log_s, "close_s": close_s, "points": steps * n, "steps": steps,
           "us_per_step": median(per_step[1:] or per_step) * 1e6, "data_bytes": data_b, "all_bytes": all_b,
           "rss": self_peak_rss()}
    if tool == "flightlog":  # after the peak RSS above: compaction's memory is not the writer's
        out.update(compact_flightlog(root / "archive"))
        out["compact_rss"] = self_peak_rss()
    return out


def compact_flightlog(archive: Path) -> dict[str, Any]:
    """Compact the run (and build its LOD), then drop the replaced parts: bytes of what stays live."""
    try:
        from telemetry.maintain.compaction import compact
    except ImportError:
        return {}
    t = time.perf_counter()
    report = compact(str(archive), "bench-peers", grace_s=0.0)  # grace 0: the replaced parts go in the same pass
    compact_s = time.perf_counter() - t
    return {"compact_s": compact_s, "compact_problems": report.problems[:3],
            "compact_bytes": tree_bytes(archive / "metrics", "*.parquet"),
            "lod_bytes": tree_bytes(archive / "metrics_lod", "*.parquet"), "compact_all_bytes": tree_bytes(archive)}


def child_inloop(task: dict[str, Any]) -> dict[str, Any]:
    """A tool's cost inside a real (tiny, CPU) training loop: the loop with logging minus the same loop
    without, rounds interleaved, best round of each. Logging code runs with cold caches there, as in training.

    hooks: `attach()` default capture (`record_loss`; loss, grad norm on device, lr, step time, data wait,
    tokens), 50 scalars adds `obs.log` of 45 more. Others: `loss.item()` plus the prepared values."""
    import torch

    torch.set_num_threads(1)
    tool, n, steps, rounds, root = task["tool"], task["scalars"], task["steps"], task["rounds"], Path(task["dir"])
    xs = torch.randn(64, 8, 32, generator=torch.Generator().manual_seed(0))
    mse = torch.nn.functional.mse_loss
    total = steps * (rounds + 1)
    names = scalar_names(n)

    def model_opt() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    bare, logged = model_opt(), model_opt()
    obs = tl = None
    if tool == "hooks":
        import trainer_hooks

        obs = trainer_hooks.attach(*logged, run="in-loop", archive=str(root / "archive"), sample_gpu=False)
        names = names[5:]  # attach() records the first five itself
    else:
        tl = _Tool(tool, root)
    done = [0]  # steps logged so far: steps keep increasing across rounds

    def one(kind: str, k: int) -> tuple[float, float]:
        model, opt = bare if kind == "bare" else logged
        first = done[0]
        if kind != "bare":
            done[0] += k
        rows = rows_of(series(names, first, k, total)) if names and kind != "bare" else []
        log = None if tl is None or kind == "bare" else tl.log
        hooks = obs if kind != "bare" else None
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(k):
            x, y = xs[i % 64], xs[(i + 1) % 64]
            loss = mse(model(x), y)
            loss.backward()
            if hooks is not None:
                hooks.record_loss(loss, tokens=256)
                if rows:
                    hooks.log(rows[i])
            elif log is not None:
                row = rows[i]
                row["loss"] = loss.item()
                log(first + i, row)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / k, (time.thread_time() - c0) / k

    one("bare", min(100, steps))  # warm-up: allocator, first steps of each tool
    one("logged", min(100, steps))
    res: dict[str, list[tuple[float, float]]] = {"bare": [], "logged": []}
    for _ in range(rounds):  # interleaved, so a burst of load from elsewhere hits both
        for kind in res:
            res[kind].append(one(kind, steps))
    if obs is not None:
        obs.close()
    if tl is not None:
        tl.close()
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in res.items()}
    return {"bare_us": best["bare"][0] * 1e6, "logged_us": best["logged"][0] * 1e6,
            "cost_us": (best["logged"][0] - best["bare"][0]) * 1e6,
            "cost_thread_us": (best["logged"][1] - best["bare"][1]) * 1e6, "rss": self_peak_rss()}


# ---- children: 1M-step curve -------------------------------------------------------------------

def child_build(task: dict[str, Any]) -> dict[str, Any]:
    """Write the same loss series with each tool (not timed against each other: setup for the loads)."""
    n, mlflow_base, root = task["steps"], task["mlflow_base"], Path(task["dir"])
    out: dict[str, Any] = {}
    chunk = 250_000
    # flightlog: the real Writer; default config compacts and builds the LOD on close
    from telemetry import Writer, WriterConfig

    for variant, cfg in (("flightlog", WriterConfig(queue_size=2 * chunk)),
                         ("flightlog_raw", WriterConfig(queue_size=2 * chunk, compact_on_close=False))):
        t = time.perf_counter()
        w = Writer(str(root / variant), "curve", writer_config=cfg)
        for start in range(0, n, chunk):
            steps, loss, wall = loss_curve(start, min(chunk, n - start), n)
            metric = w.metric
            for s, v, wt in zip(steps.tolist(), loss.tolist(), wall.tolist(), strict=True):
                metric(s, "loss", v, wt)
            w.flush(120)
        w.close()
        out[f"{variant}_build_s"] = time.perf_counter() - t
        out[f"{variant}_bytes"] = flightlog_live_bytes(root / variant)
        out[f"{variant}_all_parquet"] = tree_bytes(root / variant / "metrics", "*.parquet")
        out[f"{variant}_lod_bytes"] = tree_bytes(root / variant / "metrics_lod", "*.parquet")
        out[f"{variant}_dropped"] = w.dropped

    # TensorBoard: the event-file records SummaryWriter writes, through tensorboard's RecordWriter
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    t = time.perf_counter()
    (root / "tb").mkdir(parents=True, exist_ok=True)
    with open(root / "tb" / "events.out.tfevents.1700000000.bench.1.0", "wb") as fh:
        rw = RecordWriter(fh)
        rw.write(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString())
        Event, Summary, Value = event_pb2.Event, summary_pb2.Summary, summary_pb2.Summary.Value
        for start in range(0, n, chunk):
            steps, loss, wall = loss_curve(start, min(chunk, n - start), n)
            for s, v, wt in zip(steps.tolist(), loss.tolist(), wall.tolist(), strict=True):
                rw.write(Event(wall_time=wt, step=s, summary=Summary(value=[Value(tag="loss", simple_value=v)]))
                         .SerializeToString())
    out["tb_build_s"] = time.perf_counter() - t
    out["tb_bytes"] = tree_bytes(root / "tb")

    # MLflow: `mlflow_base` points through log_batch; the full run copies those rows with shifted steps in SQL
    import logging
    import sqlite3

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    t = time.perf_counter()
    db = root / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("bench-curve")
    small, big = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    steps, loss, wall = loss_curve(0, mlflow_base, n)
    loss = np.nan_to_num(loss, nan=0.0)  # MLflow stores NaN as is_nan + 0; keep the rows comparable
    batch = [Metric("loss", float(v), int(wt * 1000), int(s)) for s, v, wt in zip(steps, loss, wall, strict=True)]
    for i in range(0, len(batch), 1000):
        client.log_batch(small, metrics=batch[i:i + 1000])
    with sqlite3.connect(db) as con:
        for k in range(n // mlflow_base):
            con.execute("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                        "SELECT key, value, timestamp + ?, ?, step + ?, is_nan FROM metrics WHERE run_uuid = ?",
                        (k * mlflow_base * 300, big, k * mlflow_base, small))
    out.update(mlflow_build_s=time.perf_counter() - t, mlflow_db=str(db), mlflow_small=small, mlflow_big=big,
               mlflow_bytes=tree_bytes(db))
    return out


def child_load(task: dict[str, Any]) -> dict[str, Any]:
    tool, path = task["tool"], task["path"]
    t0 = time.perf_counter()
    if tool == "flightlog":
        from telemetry import Archive

        t1 = time.perf_counter()
        a = Archive(path)
        t2 = time.perf_counter()
        c = a.curve("curve", "loss", buckets=2000)
        t3 = time.perf_counter()
        warm = []
        for _ in range(task.get("repeat", 5)):
            t = time.perf_counter()
            a.curve("curve", "loss", buckets=2000)
            warm.append(time.perf_counter() - t)
        return {"import_s": t1 - t0, "open_s": t2 - t1, "load_s": t3 - t2, "warm_s": median(warm),
                "rows": len(c), "points": int(c["count"].sum() + c["nan_count"].sum()), "rss": self_peak_rss()}
    if tool == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        t1 = time.perf_counter()
        ea = EventAccumulator(path, size_guidance={"scalars": 0})  # 0: keep every point
        ea.Reload()
        s = ea.Scalars("loss")
        t3 = time.perf_counter()
        return {"import_s": t1 - t0, "open_s": 0.0, "load_s": t3 - t1, "rows": len(s), "points": len(s),
                "rss": self_peak_rss()}
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    t1 = time.perf_counter()
    h = MlflowClient(f"sqlite:///{path}").get_metric_history(task["run_id"], "loss")
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "open_s": 0.0, "load_s": t3 - t1, "rows": len(h), "points": len(h),
            "rss": self_peak_rss()}


# ---- parent ---------------------------------------------------------------------------------

def _rss(r: Any) -> str:
    if "compact_rss" in r.data:  # the writer's own peak, before compaction ran in the same process
        return fmt_bytes(r.data["rss"])
    extra = f" (tree {fmt_bytes(r.peak_tree_rss)})" if r.peak_tree_rss > 1.2 * r.peak_rss else ""
    return fmt_bytes(r.peak_rss) + extra


def section_log(tmp: Path, quick: bool, timeout: float) -> tuple[str, dict]:
    env = {**WANDB_ENV}
    res: dict[tuple[str, int], Any] = {}
    loop: dict[tuple[str, int], Any] = {}
    for n in (5, 50):
        for tool in TOOLS:
            steps = STEPS[(tool, n)][1 if quick else 0]
            res[(tool, n)] = run_child(MODULE, {"task": "log", "tool": tool, "scalars": n, "steps": steps,
                                                "dir": str(tmp / f"log-{tool}-{n}")}, timeout_s=timeout, env=env)
        for tool in ["hooks", *TOOLS]:
            steps = LOOP_STEPS.get((tool, n), 2000)
            steps = max(30, steps // 6) if quick else steps
            loop[(tool, n)] = run_child(MODULE, {"task": "inloop", "tool": tool, "scalars": n, "steps": steps,
                                                 "rounds": 2 if quick else 5, "dir": str(tmp / f"loop-{tool}-{n}")},
                                        timeout_s=timeout, env=env)

    def call(tool: str, n: int) -> float | None:
        r = res.get((tool, n))
        return r.data["us_per_step"] if r is not None and r.ok else None

    def inloop(tool: str, n: int) -> float | None:
        r = loop[(tool, n)]
        return r.data["cost_us"] if r.ok else None

    lines = ["### Host cost per training step\n"]
    rows = []
    for tool in ["hooks", *TOOLS]:
        cells = [LABEL[tool]]
        for n in (5, 50):
            c, cw = call(tool, n), call("flightlog", n)
            lp, lh = inloop(tool, n), inloop("hooks", n)
            r = loop[(tool, n)]
            cells += [fmt_us(c) if tool != "hooks" else "",
                      fmt_ratio(c / cw) if c and cw and tool != "flightlog" else "",
                      fmt_us(lp) if r.ok else f"failed: {r.error}",
                      fmt_ratio(lp / lh) if lp and lh and lh > 0 and tool not in ("hooks", "flightlog") else ""]
        r5 = res.get((tool, 5)) or loop[(tool, 5)]
        cells.append(_rss(r5))
        rows.append(cells)
    lines.append(md_table(["tool", "call µs, 5", "÷ Writer", "in loop µs, 5", "÷ attach()", "call µs, 50", "÷ Writer",
                           "in loop µs, 50", "÷ attach()", "peak RSS"], rows))
    hook5, wandb5 = inloop("hooks", 5), inloop("wandb", 5)
    bare = loop[("hooks", 5)].data.get("bare_us")
    for n in (5, 50):
        for tool in ("hooks", "flightlog"):
            mine = inloop(tool, n)
            peers = ", ".join(f"{LABEL[p].split()[0]} {fmt_ratio(inloop(p, n) / mine)}" for p in TOOLS[1:]
                              if mine and mine > 0 and inloop(p, n))
            summary("host cost per step", f"{LABEL[tool]}, {n} scalars, in a CPU loop (peers: their cost ÷ this)",
                    f"{fmt_us(mine)} µs", peers, None, loop[(tool, n)].peak_rss)
    lines += [
        "\n`call`: the logging call(s) of one step alone (median over chunks; values prepared beforehand). "
        f"`in loop`: a tiny CPU training loop ({fmt_us(bare)} µs/step bare, 1 thread) with the tool minus the same "
        "loop without it (best of interleaved rounds); the peers add `loss.item()`, flightlog's `attach()` "
        "computes the grad norm on device itself. 50 scalars: `attach()` adds `obs.log` of 45 floats. "
        "`÷ Writer` / `÷ attach()`: how many times the peer's cost is flightlog's.",
        "",
        md_table(["budget", "measured", "verdict"], [
            ["default capture (`attach()`) host cost ≤ 10 µs/step", f"{fmt_us(hook5)} µs (thread CPU "
             f"{fmt_us(loop[('hooks', 5)].data.get('cost_thread_us'))} µs)",
             verdict(None if hook5 is None else hook5 <= 10)],
            ["default capture ≥ 30× below wandb offline (in loop, same run)",
             fmt_ratio(wandb5 / hook5) if hook5 and wandb5 and hook5 > 0 else "—",
             verdict(None if not (hook5 and wandb5) or hook5 <= 0 else wandb5 / hook5 >= 30)],
            ["`Writer.metrics` ≥ 30× below wandb offline (in loop, 5 scalars)",
             fmt_ratio(wandb5 / inloop("flightlog", 5)) if inloop("flightlog", 5) and wandb5 else "—",
             # a cost at or below 0 is lost in the loop's noise (a busy machine): no verdict then
             verdict(None if not (inloop("flightlog", 5) and wandb5) or inloop("flightlog", 5) <= 0 else
                     wandb5 / inloop("flightlog", 5) >= 30)],
        ]),
    ]

    # throughput and bytes
    lines.append("\n### Writer throughput and bytes on disk\n")
    rows = []
    for n in (5, 50):
        fl = res[("flightlog", n)]
        fl_rate = fl.data["points"] / (fl.data["log_s"] + fl.data["close_s"]) if fl.ok else None
        for tool in TOOLS:
            r = res[(tool, n)]
            if not r.ok:
                rows.append([LABEL[tool], n, "", "", "", f"failed: {r.error}", "", "", "", ""])
                continue
            d = r.data
            rate = d["points"] / (d["log_s"] + d["close_s"])
            rows.append([LABEL[tool], n, f"{d['points']:,}", fmt_s(d["log_s"]), fmt_s(d["close_s"]),
                         f"{fmt_rate(rate)}/s", fmt_ratio(fl_rate / rate) if fl_rate and tool != "flightlog" else "",
                         f"{d['data_bytes'] / d['points']:.2f}", f"{d['all_bytes'] / d['points']:.2f}", _rss(r)])
            if tool == "flightlog" and "compact_bytes" in d:
                rows.append([" ↳ after `compaction.compact` (+LOD)", n, "", fmt_s(d["compact_s"]), "", "", "",
                             f"{d['compact_bytes'] / d['points']:.2f}",
                             f"{d['compact_all_bytes'] / d['points']:.2f} (LOD {d['lod_bytes'] / d['points']:.2f})",
                             fmt_bytes(d["compact_rss"])])
    lines.append(md_table(["tool", "scalars", "points", "log", "close", "points/s incl. close",
                           "flightlog ÷ peer", "B/point (data files)", "B/point (everything written)", "peak RSS"],
                          rows, "lrrrrrrrrr"))
    lines.append("\nData files: flightlog metrics Parquet; wandb the `.wandb` log; TensorBoard the event file; "
                 "MLflow the growth of the SQLite db. `everything written` adds metadata files (and for "
                 "flightlog the runs/attempts/ranks rows, manifest and LOD). The 5 series are mixed (fp32 "
                 "loss/norms, float64 lr and rates); the loss-only budget is checked in the curve section.")
    for n in (5, 50):
        fl = res[("flightlog", n)]
        if not fl.ok:
            continue
        fl_rate = fl.data["points"] / (fl.data["log_s"] + fl.data["close_s"])
        peers, bpp = [], []
        for tool in TOOLS[1:]:
            r = res[(tool, n)]
            if r.ok:
                rate = r.data['points'] / (r.data['log_s'] + r.data['close_s'])
                peers.append(f"{LABEL[tool].split()[0]} {fmt_rate(rate)}/s")
                bpp.append(f"{LABEL[tool].split()[0]} {r.data['data_bytes'] / r.data['points']:.1f}")
        summary("writer", f"throughput, {n} scalars/step, incl. close", f"{fmt_rate(fl_rate)}/s",
                ", ".join(peers), None, fl.peak_rss)
        after = fl.data.get("compact_bytes")
        summary("writer", f"bytes/point on disk, {n} mixed scalars" + (" (after compaction)" if after else ""),
                f"{(after or fl.data['data_bytes']) / fl.data['points']:.2f} B", ", ".join(bpp), None,
                fl.data.get("compact_rss"))
    rates = [(n, res[("flightlog", n)]) for n in (5, 50)]
    lines.append("\n" + md_table(["budget", "measured", "verdict"], [
        [f"writer ≥ 2 M points/s ({n} scalars, `metrics()`, incl. close)",
         f"{fmt_rate(r.data['points'] / (r.data['log_s'] + r.data['close_s']))}/s" if r.ok else "—",
         verdict(r.data["points"] / (r.data["log_s"] + r.data["close_s"]) >= 2e6 if r.ok else None)]
        for n, r in rates]))
    return "\n".join(lines), {"wandb5": wandb5, "hook5": hook5}


def section_curve(tmp: Path, quick: bool, timeout: float) -> str:
    n = 100_000 if quick else 1_000_000
    base = n // 10
    root = tmp / "curve"
    b = run_child(MODULE, {"task": "build", "steps": n, "mlflow_base": base, "dir": str(root)},
                  timeout_s=max(timeout, 900))
    if not b.ok:
        return f"### {n:,}-step loss curve\n\nbuild failed: {b.error}"
    d = b.data
    loads: list[tuple[str, str, Any, int]] = []  # (label, tool, result, points)
    for variant, label in (("flightlog", "flightlog `curve()`, compacted + LOD (default close)"),
                           ("flightlog_raw", "flightlog `curve()`, raw segments")):
        loads.append((label, "flightlog", run_child(MODULE, {"task": "load", "tool": "flightlog",
                                                             "path": str(root / variant)}, timeout_s=timeout), n))
    loads.append(("TensorBoard `EventAccumulator` (all points)", "tensorboard",
                  run_child(MODULE, {"task": "load", "tool": "tensorboard", "path": str(root / "tb")},
                            timeout_s=max(timeout, 600)), n))
    ml_small = run_child(MODULE, {"task": "load", "tool": "mlflow", "path": d["mlflow_db"],
                                  "run_id": d["mlflow_small"]}, timeout_s=timeout)
    loads.append((f"MLflow `get_metric_history` at {base:,} (measured)", "mlflow", ml_small, base))
    ml_cap = 120 if quick else 300
    ml_big = run_child(MODULE, {"task": "load", "tool": "mlflow", "path": d["mlflow_db"], "run_id": d["mlflow_big"]},
                       timeout_s=ml_cap)
    loads.append((f"MLflow `get_metric_history` at {n:,}", "mlflow", ml_big, n))

    fl = loads[0][2]
    fl_total = fl.data["open_s"] + fl.data["load_s"] if fl.ok else None
    rows = []
    for label, tool, r, pts in loads:
        if not r.ok:
            if tool == "mlflow" and pts == n and ml_small.ok:
                est = ml_small.data["load_s"] * n / base
                rows.append([label + f" — stopped after {ml_cap} s; ×{n // base} extrapolated", "", fmt_s(est),
                             "", "", fmt_ratio(est / fl_total) if fl_total else "", "", ""])
            else:
                rows.append([label, "", f"failed: {r.error}", "", "", "", "", ""])
            continue
        x = r.data
        total = x["open_s"] + x["load_s"]
        rows.append([label, fmt_s(x["import_s"]), fmt_s(total), fmt_s(x.get("warm_s")), fmt_s(r.wall_s),
                     fmt_ratio(total / fl_total) if fl_total and tool != "flightlog" else "",
                     f"{x['rows']:,}", _rss(r)])
    out = [f"### Loading a {n:,}-step loss curve for display (cold: a new process)\n",
           md_table(["tool", "import", "open + load (cold)", "warm (same process)", "process wall",
                     "peer ÷ flightlog", "rows returned", "peak RSS"], rows)]
    out.append(f"\nflightlog returns 2,000 min/max/mean buckets (spikes and NaN counted), the peers every point. "
               f"TensorBoard's event file was written with tensorboard's RecordWriter (the format SummaryWriter "
               f"writes); the MLflow {n:,}-point run is the {base:,}-point run's rows copied with shifted steps "
               f"in SQL (the load is what is measured).")
    pts = n
    fl_b, fl_raw_b = d["flightlog_bytes"], d["flightlog_raw_bytes"]
    out.append("\n" + md_table(["loss-only series, bytes on disk", "B/point"], [
        ["flightlog, compacted on close (LOD extra)", f"{fl_b / pts:.2f} (+{d['flightlog_lod_bytes'] / pts:.2f}; "
         f"{d['flightlog_all_parquet'] / pts:.2f} until the replaced parts' grace period ends)"],
        ["flightlog, raw segments after close", f"{fl_raw_b / pts:.2f}"],
        ["TensorBoard event file", f"{d['tb_bytes'] / pts:.2f}"],
        ["MLflow SQLite (both runs, whole db)", f"{d['mlflow_bytes'] / (pts + base):.2f}"],
    ]))
    warm = fl.data.get("warm_s") if fl.ok else None
    peers = [f"{label.split(' `')[0]}{' ' + label.split(' at ')[1].split(' ')[0] if ' at ' in label else ''} "
             f"{fmt_s(r.data['open_s'] + r.data['load_s'])} ({r.data['rows']:,} points, {fmt_bytes(r.peak_rss)})"
             for label, tool, r, _ in loads[2:] if r.ok]
    summary("curve load", f"{n:,}-step loss curve, cold (new process: open + load)",
            f"{fmt_s(fl_total)} (2,000 buckets)", "; ".join(peers), None, fl.peak_rss if fl.ok else None)
    summary("bytes on disk", "loss-like series after compaction", f"{fl_b / pts:.2f} B",
            f"TensorBoard {d['tb_bytes'] / pts:.1f} B, MLflow {d['mlflow_bytes'] / (pts + base):.0f} B")
    out.append("\n" + md_table(["budget", "measured", "verdict"], [
        ["≤ 4 B/point, loss-like series after compaction", f"{fl_b / pts:.2f} B", verdict(fl_b / pts <= 4)],
        [f"2,000-bucket curve cold ≤ 1 s ({n:,} points here; 10 M in bench_scale)",
         fmt_s(fl_total), verdict(None if fl_total is None else fl_total <= 1)],
        [f"2,000-bucket curve warm ≤ 100 ms ({n:,} points here)", fmt_s(warm),
         verdict(None if warm is None else warm <= 0.1)],
    ]))
    out.append(f"\nBuild (not compared): flightlog Writer incl. close {fmt_s(d['flightlog_build_s'])}, "
               f"TensorBoard {fmt_s(d['tb_build_s'])}, MLflow {fmt_s(d['mlflow_build_s'])}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    task = child_task(argv)
    if task is not None:
        os.environ.update(WANDB_ENV)
        fn = {"log": child_log, "inloop": child_inloop, "build": child_build, "load": child_load}[task["task"]]
        emit(fn(task))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute or two)")
    ap.add_argument("--only", default="log,curve", help="sections: log (host cost, throughput, bytes), curve")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    args = ap.parse_args(argv)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="flightlog-bench-peers-"))
    tmp.mkdir(parents=True, exist_ok=True)
    sections = {s.strip() for s in args.only.split(",")}
    print(f"flightlog vs peers{' (--quick)' if args.quick else ''}: {machine_note()}\n")
    t = time.perf_counter()
    try:
        if "log" in sections:
            text, _ = section_log(tmp, args.quick, args.timeout)
            print(text + "\n", flush=True)
        if "curve" in sections:
            print(section_curve(tmp, args.quick, args.timeout) + "\n", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"({time.perf_counter() - t:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
