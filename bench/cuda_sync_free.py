"""Guarantee 2 on a real GPU: flightlog's per-step capture adds no host-device synchronization.

    python -m bench.cuda_sync_free [--steps 50]

Trains a small model on CUDA with `trainer_hooks.attach()` under
`torch.cuda.set_sync_debug_mode("error")` (switched on after warm-up), with the grad norm
computed by flightlog on even steps and picked up from the loop's `clip_grad_norm_` on odd
steps, `obs.log` of GPU tensors (float, int, bool, and a vector it must refuse), the NaN
layer probe armed every 10 steps,
and one poisoned batch (NaN loss) whose `nan` event must name its layer. Any synchronizing
CUDA call on the training thread raises there; one on the drainer thread would become a
`hook_error`, so both are checked. Then compares recorded vs computed losses, prints the
host cost per step (bare loop vs attached) and samples NVML for a few seconds.

Exit codes: 0 all good, 1 a check failed, 2 no CUDA device. Self-contained (temp archive).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

import duckdb
import torch

import trainer_hooks


def _rows(archive: str, table: str, where: str = "true") -> list[dict]:
    files = sorted(glob.glob(os.path.join(archive, table, "run_id=*", "*.parquet")))
    if not files:
        return []
    return duckdb.sql(f"SELECT * FROM read_parquet({files!r}, hive_partitioning=false, union_by_name=true) "
                      f"WHERE {where}").to_arrow_table().to_pylist()


class Net(torch.nn.Module):
    def __init__(self, d: int = 512) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(d, d)
        self.mid = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Linear(d, d), torch.nn.GELU())
        self.head = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.embed(x)))


def _loop(model, opt, sched, xs, steps: int, obs=None, poison: int | None = None, losses: list | None = None) -> float:
    """Host seconds per step (no sync inside the timed loop)."""
    t0 = time.perf_counter()
    for i in range(steps):
        x = xs[i % len(xs)]
        if i == poison:
            x = x * float("inf")
        if obs is not None:
            obs.set_batch(chunk=i // 10, sample_ids=torch.arange(4 * i, 4 * i + 4))  # CPU ids
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), x)
        loss.backward()
        if i % 2:  # the clip's pre-clip norm becomes the step's grad_norm (clip_watch.py)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        if obs is not None:
            obs.record_loss(loss, tokens=x.shape[0])
            obs.log({"act_abs_mean": x.abs().mean(),  # GPU tensors: none of these may sync
                     "argmax": x[0].argmax(), "all_finite": torch.isfinite(loss), "refused_vector": x[0]})
        if losses is not None:
            losses.append(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (exit 2)")
        return 2
    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    xs = [torch.randn(64, 512, device=dev) for _ in range(16)]
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as archive:
        # Baseline host cost: the same loop without flightlog.
        model = Net().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        _loop(model, opt, sched, xs, 10)
        torch.cuda.synchronize()
        bare = _loop(model, opt, sched, xs, args.steps)
        torch.cuda.synchronize()

        model = Net().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.01 * s))
        obs = trainer_hooks.attach(model, opt, run="cuda-sync-free", archive=archive, nan_layer_probe_every=10,
                                   gpu_sample_interval_s=0.5)
        _loop(model, opt, sched, xs, 5, obs=obs)  # warm-up: cuBLAS handles, allocator, pinned ring
        torch.cuda.synchronize()
        losses: list[torch.Tensor] = []
        poison = args.steps // 2  # leave steps after it: the probe, armed by the drainer, names the layer there
        torch.cuda.set_sync_debug_mode("error")
        try:
            attached = _loop(model, opt, sched, xs, args.steps, obs=obs, poison=poison, losses=losses)
        except RuntimeError as exc:
            failures.append(f"a synchronizing CUDA call during a step: {exc}")
            attached = float("nan")
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        time.sleep(2.0)  # let the sampler take a few samples
        obs.close()
        if obs._errors:
            failures.append(f"hook errors (a sync on the drainer would show here): {obs._errors}")

        want = [float(t) for t in losses]
        got = {r["step"]: r["value"] for r in _rows(archive, "metrics", "name = 'loss'")}
        for i, w in enumerate(want):
            g = got.get(5 + i)
            same = (g is not None and (g == w or abs(g - w) <= 1e-5 * max(1.0, abs(w)))) or (g != g and w != w)
            if not same:
                failures.append(f"step {5 + i}: recorded loss {g} != computed {w}")
                break
        nan_events = _rows(archive, "events", "kind IN ('nan', 'inf')")
        first = min((e["step"] for e in nan_events), default=None)
        if first != 5 + poison:
            failures.append(f"expected the first nan/inf event at step {5 + poison}, got {first}")
        layers = {e["step"]: e["layer"] for e in nan_events}
        if nan_events and layers.get(first) is None:
            failures.append(f"the first nan/inf event (step {first}) names no layer: {layers}")
        names = {r["name"] for r in _rows(archive, "metrics")}
        mem = [r["value"] for r in _rows(archive, "metrics", "name = 'mem_allocated_bytes'")]
        if not mem or min(mem) <= 0:
            failures.append(f"mem_allocated_bytes should be positive on CUDA, got {mem[:3]}")
        if "refused_vector" in {r["name"] for r in _rows(archive, "metrics")}:
            failures.append("a 512-element GPU tensor was stored by obs.log (it must be refused)")
        for n in ("grad_norm", "lr", "step_time_s", "mem_allocated_bytes", "act_abs_mean", "argmax", "all_finite"):
            if n not in names:
                failures.append(f"metric {n} missing")
        system = _rows(archive, "system")

        # Host cost, fairly: both loops without the sync debug mode (it slows every CUDA call),
        # interleaved rounds, medians. The attached loop records loss, grad norm (computed on even
        # steps, picked up from the clip on odd ones), lr, timings, memory and four obs.log values.
        timing = os.path.join(archive, "timing")
        model_b, model_a = Net().to(dev), Net().to(dev)
        opt_b, opt_a = (torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (model_b, model_a))
        sched_b, sched_a = (torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in (opt_b, opt_a))
        obs_t = trainer_hooks.attach(model_a, opt_a, run="cuda-timing", archive=timing, sample_gpu=False)
        bare_rounds, attached_rounds = [], []
        for _ in range(7):
            torch.cuda.synchronize()
            bare_rounds.append(_loop(model_b, opt_b, sched_b, xs, args.steps))
            torch.cuda.synchronize()
            attached_rounds.append(_loop(model_a, opt_a, sched_a, xs, args.steps, obs=obs_t))
        torch.cuda.synchronize()
        obs_t.close()
        bare, attached = sorted(bare_rounds)[3], sorted(attached_rounds)[3]

    print("| check | result |\n|---|---|")
    print(f"| device | {torch.cuda.get_device_name(dev)} |")
    print(f"| steps under sync_debug_mode='error' | {args.steps} |")
    print(f"| host µs/step, bare loop (median of 7 rounds, no debug mode) | {bare * 1e6:.1f} |")
    print(f"| host µs/step, attached (grad norm, 4 obs.log values) | {attached * 1e6:.1f} |")
    print(f"| host cost µs/step | {(attached - bare) * 1e6:.1f} |")
    print(f"| nan/inf events (step: layer) | {layers} |")
    print(f"| system rows from NVML/psutil | {len(system)} |")
    for r in sorted(system, key=lambda r: (r["name"], r["wall_time"]))[:40]:
        print(f"|   {r['name']} gpu={r['gpu_index']} | {r['value']:.4g} |")
    if failures:
        print("\nFAILED:\n- " + "\n- ".join(failures))
        return 1
    print("\nOK: no host-device synchronization during captured steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
