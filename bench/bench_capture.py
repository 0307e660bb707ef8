"""Host cost of flightlog's default per-step capture vs a bare loop and vs wandb offline (CPU).

    python -m bench.bench_capture [--steps 3000] [--trials 5]

The same small model trains in each variant, one intra-op thread, variants interleaved over
`trials` rounds; each cost is the median over rounds of (variant - its baseline in the same
round), with the best round beside it (the least disturbed by other processes on a shared
machine). Three clocks: wall time, CPU time of the training thread
(`time.thread_time`: what the loop itself pays) and CPU time of the whole process (adds the
drainer and writer threads, which share the GIL). Capture cost = variant - its baseline.
Variants:

- bare: forward, backward, AdamW step, zero_grad.
- flightlog: + attach() (default capture: loss, grad norm computed on device, lr, step time,
  data wait, tokens) and `obs.record_loss(loss, tokens=n)`.
- flightlog+clip: the loop clips (`clip_grad_norm_`, also in its baseline `bare + clip`);
  flightlog picks up the norm clip returned (clip_watch.py) and computes none: capture
  without the grad-norm reduction, as in most LLM loops.
- flightlog+handed: as +clip, and the loop also passes the value with `obs.grad_norm(...)`.
- wandb offline: the clipping loop + `run.log` of 5 scalars (loss, clip's grad_norm, lr,
  tokens_seen, step_time_s) with the `.item()` calls it needs, WANDB_MODE=offline; its
  baseline is `bare + clip`.

Prints a Markdown table. Numbers, not pass/fail (budget: <= 10 µs and >= 30x below wandb).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import trainer_hooks

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))


def _data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 8, 32, generator=g)
    return [(xs[i % 64], xs[(i + 1) % 64]) for i in range(steps)]


def run_variant(kind: str, steps: int, data: list, tmp: str) -> tuple[float, float, float]:
    """(wall, training-thread CPU, process CPU) seconds per step of one variant."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clip = kind in ("bare+clip", "flightlog+clip", "flightlog+handed", "wandb")
    obs = run = None
    if kind.startswith("flightlog"):
        obs = trainer_hooks.attach(model, opt, run=f"bench-{kind}", archive=os.path.join(tmp, "archive"),
                                   sample_gpu=False)
    elif kind == "wandb":
        import wandb  # noqa: PLC0415 - optional peer

        run = wandb.init(project="flightlog-bench", dir=tmp, mode="offline", reinit="finish_previous")
    mse = torch.nn.functional.mse_loss
    tokens = 0
    t_prev = time.perf_counter()
    t0, c0, p0 = t_prev, time.thread_time(), time.process_time()
    for x, y in data[:steps]:
        loss = mse(model(x), y)
        loss.backward()
        if clip:
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if obs is not None:
            obs.record_loss(loss, tokens=256)
            if kind == "flightlog+handed":
                obs.grad_norm(gn)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if run is not None:
            tokens += 256
            now = time.perf_counter()
            run.log({"loss": loss.item(), "grad_norm": gn.item(), "lr": opt.param_groups[0]["lr"],
                     "tokens_seen": tokens, "step_time_s": now - t_prev}, step=tokens // 256)
            t_prev = now
    if obs is not None:
        obs.drain()  # the drainer's work for these steps counts in process CPU
    took = ((time.perf_counter() - t0) / steps, (time.thread_time() - c0) / steps, (time.process_time() - p0) / steps)
    if obs is not None:
        obs.close()
    if run is not None:
        run.finish()
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--no-wandb", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    kinds = ["bare", "flightlog", "bare+clip", "flightlog+clip", "flightlog+handed"] + (
        [] if args.no_wandb else ["wandb"])
    data = _data(args.steps)
    rounds: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for k in kinds:  # warm-up: imports, allocator, wandb's service
            run_variant(k, min(200, args.steps), data, tmp)
        for _ in range(args.trials):
            for k in kinds:
                rounds[k].append(run_variant(k, args.steps, data, tmp))
    clocks = ("wall", "thread", "process")
    base = {"flightlog": "bare", "flightlog+clip": "bare+clip", "flightlog+handed": "bare+clip", "wandb": "bare+clip"}
    us = {k: {c: statistics.median(r[i] for r in v) * 1e6 for i, c in enumerate(clocks)} for k, v in rounds.items()}
    # cost per round against the baseline of the same round, so a slow round shifts both alike
    per_round = {k: {c: [(rounds[k][j][i] - rounds[b][j][i]) * 1e6 for j in range(args.trials)]
                     for i, c in enumerate(clocks)} for k, b in base.items() if k in rounds}
    cost = {k: {c: statistics.median(v[c]) for c in clocks} for k, v in per_round.items()}
    best = {k: {c: min(v[c]) for c in clocks} for k, v in per_round.items()}
    print(f"Capture host cost, CPU, 1 intra-op thread, {args.steps} steps x {args.trials} rounds "
          f"(median of per-round costs; best round in brackets), torch {torch.__version__}\n")
    print("| variant | wall µs/step | cost: wall | cost: training-thread CPU | cost: process CPU | "
          "wandb cost / this cost (thread CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in kinds:
        c = cost.get(k)
        cells = ["", "", ""] if c is None else [f"{c[x]:.1f} ({best[k][x]:.1f})" for x in clocks]
        ratio = ""
        if c is not None and k != "wandb" and "wandb" in cost and c["thread"] > 0:
            ratio = f"{cost['wandb']['thread'] / c['thread']:.0f}x"
        print(f"| {k} | {us[k]['wall']:.1f} | " + " | ".join(cells) + f" | {ratio} |")
    if "flightlog" in cost and "flightlog+clip" in cost:
        print(f"\ngrad-norm reduction alone (flightlog - flightlog+clip, thread CPU): "
              f"{cost['flightlog']['thread'] - cost['flightlog+clip']['thread']:.1f} µs/step")
    print("\ncost = variant - its baseline (flightlog: bare; the others: bare+clip). flightlog's default cost "
          "includes computing the grad norm (torch._foreach_norm) because this loop does not clip; "
          "`+clip` is capture without that reduction (the loop's clip_grad_norm_ result is picked up). Process "
          "CPU adds flightlog's drainer and writer threads; wandb's own work runs in its service process, "
          "outside this process's CPU time.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
