"""`flightlog demo`: record a small but eventful training run (and a second seed), summarise it, open the app.

About a minute and a half on 2 CPU cores: the reference GPT trains on 2 data-parallel ranks (gloo) with
flightlog attached, and meets the troubles LLM360's Amber met:

1. one data chunk is corrupted: each of its batches gives a NaN loss (the step is skipped);
2. a checkpoint is saved without optimizer state;
3. the job crashes (every rank SIGKILLed) after a checkpoint; a second launch resumes from the
   last checkpoint as attempt 1, and hits the corrupted chunk again;
4. a second, shorter run trains the same model on the same data with another seed (another chunk
   order) and meets the corrupted chunk at another step: the chunk fails whatever the order, which
   `flightlog incidents`, the `chunk_incidents` view and the Incidents page show across seeds, and
   the Compare page has two runs to overlay.

After training, every checkpoint gets a held-out perplexity (`evals`, benchmark `heldout_ppl`)
and memorization scores over a few data chunks (`memorization`), as LLM360 publishes them.

Then the archive is recovered and indexed, a summary says what flightlog saw, and the journey
app opens on it (`--no-ui`: print the command instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from telemetry import Archive, recover
from telemetry.maintain.manifest import write_manifest
from trainer_hooks.reference.data import TokenStream
from trainer_hooks.reference.science import measure_run, spread_chunks
from trainer_hooks.reference.train import TrainConfig, launch


def _default_archive() -> str:
    return os.environ.get("FLIGHTLOG_ARCHIVE") or "./flightlog-archive"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def plan(steps: int, *, quick: bool, run: str, archive: str, checkpoint_dir: str, seed: int = 0) -> TrainConfig:
    """The demo's first launch: where it checkpoints, which chunk is corrupted, when it crashes."""
    if steps < 20:
        raise ValueError(f"--steps must be at least 20 for the demo's story to fit, got {steps}")
    shape = (dict(n_layer=2, n_head=2, d_model=64, seq_len=32, micro_batch=4, chunk_sequences=16)
             if quick else dict(n_layer=4, n_head=4, d_model=128, seq_len=64, micro_batch=8, chunk_sequences=64))
    steps_per_chunk = shape["chunk_sequences"] // (2 * shape["micro_batch"])
    every = max(steps_per_chunk, steps // 5 // steps_per_chunk * steps_per_chunk)  # checkpoints on chunk borders
    # Crash just before the 3rd checkpoint: the most work lost, and (on the full demo) seconds after
    # the corrupted chunk, so attempt 0's records of it are flushed before the kill.
    crash_at = 3 * every - 1
    cfg = TrainConfig(
        run=run, archive=archive, dp=2, tp=1, steps=steps, seed=seed, warmup_steps=max(2, steps // 20),
        checkpoint_every=every, checkpoint_dir=checkpoint_dir, save_without_optimizer_at=every // 2,
        crash_at_step=crash_at, log_every=max(1, steps // 10),
        nan_layer_probe_every=2,  # a chunk spans 2 or 4 steps: one of them is probed for the first non-finite layer
        **shape,
    )
    # Corrupt the chunk read between the last checkpoint and the crash: both attempts read it.
    data = TokenStream(cfg.data_config())
    poisoned, _ = data.chunk_at(2 * every)  # step N reads batch N - 1: the chunk right after checkpoint 2
    return dataclasses.replace(cfg, poison_chunk=poisoned)


def plan_other_seed(cfg: TrainConfig) -> TrainConfig:
    """The demo's second run: the first run's model and data, a quarter of its steps, no checkpoints or
    crash, and the first seed after its seed whose chunk order reads the corrupted chunk in the middle
    of the run (past warm-up, with steps left after it), at another step than the first run reads it."""
    steps = max(20, cfg.steps // 4)
    data = TokenStream(cfg.data_config())
    first_run_reads_it_at = data.first_step_of_chunk(cfg.poison_chunk)
    for seed in range(cfg.seed + 1, cfg.seed + 100_000):
        at = data.reseeded(seed).first_step_of_chunk(cfg.poison_chunk)  # 0-based: read by step at + 1
        if steps // 4 <= at <= steps // 2 and at != first_run_reads_it_at:
            return dataclasses.replace(cfg, run=f"{cfg.run}-seed{seed}", seed=seed, steps=steps,
                                       warmup_steps=max(2, steps // 20), checkpoint_every=0,
                                       save_without_optimizer_at=None, crash_at_step=None, resume_from=None,
                                       log_every=max(1, steps // 5))
    raise ValueError(f"no seed after {cfg.seed} reads data chunk {cfg.poison_chunk} within {steps} steps")


def summarize(archive_url: str, run: str, expected_chunk: int | None) -> tuple[str, bool]:
    """The summary text, and whether flightlog pointed at the corrupted chunk."""
    archive = Archive(archive_url)
    try:
        run_id = archive.resolve_run(run)
        runs = archive.runs()
        row = runs[runs["run_id"] == run_id].iloc[0]
        events = archive.events(run_id)
        incidents = events[events["kind"].isin(["nan", "inf", "loss_spike", "grad_spike"])]
        nonfinite = events[events["kind"].isin(["nan", "inf"])]
        chunks = sorted({int(c) for c in nonfinite["data_chunk"].dropna()})
        lineage = archive.attempt_lineage(run_id)
        ckpts = archive.sql("SELECT step, has_optimizer_state FROM checkpoints WHERE run_id = ? ORDER BY step",
                            [run_id]).to_pylist()
    finally:
        archive.close()
    lines = [
        f"run {run_id}: status {row['status']}, {int(row['steps'])} steps, {int(row['attempts'])} attempt(s), "
        f"{int(row['ranks'])} rank(s), last loss {float(row['last_loss']):.3f}",
    ]
    for a in lineage.itertuples():
        resumed = "" if pd.isna(a.resumed_from_step) else f", resumed from step {int(a.resumed_from_step)}"
        lines.append(f"  attempt {a.attempt}: steps {a.first_step}-{a.last_step}, {a.end_status}{resumed}")
    kinds = incidents["kind"].value_counts().to_dict()
    lines.append("incidents: " + (", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())) or "none"))
    lines.append("events: " + ", ".join(f"{k} x{v}" for k, v in sorted(events["kind"].value_counts().items())))
    found = expected_chunk is not None and chunks == [expected_chunk]
    if chunks:
        layers = sorted({str(v) for v in nonfinite["layer"].dropna()})
        lines.append(f"non-finite losses came from data chunk(s) {chunks} (first non-finite layer: "
                     f"{', '.join(layers) or 'unknown'}); the corrupted chunk was {expected_chunk}: "
                     + ("found" if found else "NOT found"))
    else:
        lines.append(f"no non-finite loss was recorded; the corrupted chunk was {expected_chunk}: NOT found")
    no_opt = [c["step"] for c in ckpts if c["has_optimizer_state"] is False]
    lines.append(f"checkpoints: {len(ckpts)} recorded, without optimizer state at step(s) {no_opt or 'none'}")
    lines.append(f"archive: {archive_url}")
    return "\n".join(lines), found


def across_seeds(archive_url: str, chunk: int | None, seeds: list[int]) -> tuple[str, bool]:
    """The summary line of the corrupted chunk across runs and seeds, and whether it failed under every seed."""
    archive = Archive(archive_url)
    try:
        chunks = archive.chunk_incidents()
    finally:
        archive.close()
    row = chunks[chunks["data_chunk"] == chunk]
    if row.empty:
        return f"data chunk {chunk}: no incidents in any run", False
    r = row.iloc[0]
    failed_under = sorted(int(s) for s in r["seeds"] if s is not None and s == s)
    ok = failed_under == sorted(seeds)
    return (f"data chunk {chunk} failed in {int(r['n_runs'])} run(s) and {int(r['n_attempts'])} attempt(s) under "
            f"seeds {failed_under} (steps {int(r['first_step'])}-{int(r['last_step'])}): "
            + ("it fails whatever the order" if ok else f"expected seeds {sorted(seeds)}")), ok


def _index(archive_url: str) -> None:
    # The crashed launch's processes are gone, so recovery takes their writers for dead at once.
    recover(archive_url)  # the crashed attempt's staged (write-ahead) data becomes Parquet
    write_manifest(archive_url)


def _checkpoint_science(archive_url: str, run: str, cfg: TrainConfig) -> str:
    """Held-out perplexity and memorization of every checkpoint, so the Checkpoints page has data."""
    half = min(32, (cfg.seq_len + 1) // 2)  # k = l = 32 on the full demo (Biderman et al.), 16 on --quick
    # The demo's models are tiny: one thread does the work, and more only spin against each other on a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:  # 4 chunks read at spread points + 1 never read, 32 sequences each: well under a second a checkpoint
        report = measure_run(archive_url, run, chunks=spread_chunks(cfg, seen=4, unseen=1), k=half, l=half,
                             n=min(32, cfg.chunk_sequences), progress=False)
    except Exception as exc:  # noqa: BLE001 - the run is recorded; its analysis failing must not hide that
        return f"checkpoint science failed: {type(exc).__name__}: {exc}"
    finally:
        torch.set_num_threads(threads)
    best = max(report.results, key=lambda r: r["token_match"], default=None)
    line = (f"checkpoint science: {report.eval_rows} held-out perplexities and {report.memorization_rows} "
            f"memorization scores (k = l = {half}) in {time.perf_counter() - t0:.1f} s")
    if best is not None:
        line += (f"; most memorized: chunk {best['data_chunk']} at step {best['step']} "
                 f"(token match {best['token_match']:.2f})")
    return line + "".join(f"\n  problem: {p}" for p in report.problems)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flightlog demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", default=None,
                   help="archive URL or folder (default: $FLIGHTLOG_ARCHIVE or ./flightlog-archive)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of the first run (default 300; 40 with --quick); the second seed's run "
                        "trains a quarter of them")
    p.add_argument("--quick", action="store_true", help="a tiny model and few steps (~20 s), for tests")
    p.add_argument("--run", default=None, help="run name (default: demo-<timestamp>)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where checkpoints go (default: flightlog-checkpoints/<run> next to a local archive)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run (the second run takes a later one)")
    p.add_argument("--no-ui", action="store_true", help="do not start the journey app at the end")
    p.add_argument("--port", type=int, default=8501, help="port of the journey app")
    return p


def main(argv: list[str] | None = None, serve: Callable[..., object] | None = None) -> int:
    """Train, index, summarise; then `serve(archive, port=..., open_browser=True)` opens the app.

    `serve` comes from the caller (the CLI passes `app.ui.server.serve`): the app is a layer
    above trainer_hooks, so this module never imports it.
    """
    args = build_parser().parse_args(argv)
    archive = args.archive or _default_archive()
    run = args.run or "demo-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.checkpoint_dir:
        ckpt_dir = args.checkpoint_dir
    elif _is_local(archive):
        ckpt_dir = str(Path(archive.removeprefix("file://")).resolve().parent / "flightlog-checkpoints" / run)
    else:
        ckpt_dir = str(Path(tempfile.gettempdir()) / "flightlog-checkpoints" / run)
    try:
        cfg = plan(args.steps or (40 if args.quick else 300), quick=args.quick, run=run, archive=archive,
                   checkpoint_dir=ckpt_dir, seed=args.seed)
        other = plan_other_seed(cfg)
    except ValueError as err:
        print(f"flightlog demo: {err}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    print(f"flightlog demo: run {run!r}, {cfg.steps} steps on {cfg.dp} data-parallel CPU ranks, archive {archive}")
    print(f"  checkpoints every {cfg.checkpoint_every} steps (one without optimizer state at step "
          f"{cfg.save_without_optimizer_at}), a crash after step {cfg.crash_at_step}, one corrupted data chunk",
          flush=True)
    code = launch(cfg)
    if code == 0:
        print("flightlog demo: the first launch was meant to crash but finished", file=sys.stderr)
        return 1
    resume_step = int((Path(ckpt_dir) / "latest_checkpointed_iteration.txt").read_text())
    print(f"\n-- attempt 0 died (exit code {code}); resuming from the checkpoint of step {resume_step} --\n",
          flush=True)
    code = launch(dataclasses.replace(cfg, crash_at_step=None, resume_from=ckpt_dir))
    if code:
        print(f"flightlog demo: the resumed launch failed (exit code {code})", file=sys.stderr)
        return 1
    print(f"\n-- a second run, {other.run!r}: seed {other.seed}, {other.steps} steps over the same data, "
          f"in another chunk order --\n", flush=True)
    code = launch(other)
    if code:
        print(f"flightlog demo: the second seed's run failed (exit code {code})", file=sys.stderr)
        return 1
    train_s = time.perf_counter() - t0

    _index(archive)
    science = _checkpoint_science(archive, run, cfg)
    text, found = summarize(archive, run, cfg.poison_chunk)
    seeds_line, every_seed = across_seeds(archive, cfg.poison_chunk, [cfg.seed, other.seed])
    text += f"\nsecond run {other.run}: seed {other.seed}, {other.steps} steps\n{seeds_line}\n{science}"
    print(f"\n== flightlog demo summary ({train_s:.0f} s of training) ==\n{text}")
    print(f"\nexplore: flightlog incidents {run} --archive {archive}\n"
          f"         flightlog incidents {other.run} --archive {archive}\n"
          f"         flightlog sql \"SELECT * FROM chunk_incidents\" --archive {archive}\n"
          f"         flightlog sql \"SELECT kind, step, data_chunk, layer FROM events WHERE run_id = '{run}'\" "
          f"--archive {archive}", flush=True)
    if not (found and every_seed):
        print("flightlog demo: flightlog did not point at the corrupted chunk under every seed (see the summary "
              "above)", file=sys.stderr)
        return 1
    if args.no_ui or serve is None:
        print(f"open the journey app: flightlog ui {archive}")
        return 0
    print(f"\nopening the journey app on http://localhost:{args.port} (Ctrl-C stops it)", flush=True)
    result = serve(archive, port=args.port, open_browser=True)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
