"""flightlog's cost on a real training step: attached minus bare, as % of step time, on a GPT-2-small-size
model (bf16 autocast, AdamW), with the sync check and NVML samples, as one table.

    python -m bench.bench_gpu_step [--steps 300] [--block 10] [--quick]

Two copies of the model train side by side, one bare and one with `trainer_hooks.attach()` (its loop
also calls `obs.record_loss` and `obs.set_batch`); both clip gradients, as LLM loops do, so flightlog
picks up the clip's norm (`--no-clip`: neither clips and flightlog computes the norm). Blocks of
`block` steps alternate between the arms (ABBA order), each timed between two
`torch.cuda.synchronize()` calls, until each arm has `steps` steps; a pair of adjacent blocks gives one
paired difference per step, reported as median and 95% bootstrap interval, in µs and in % of the bare
step. Then a few steps of each arm run under `torch.cuda.set_sync_debug_mode("warn")` (every
synchronizing call counted) and of the attached arm under "error" (the first one raises): 0 expected.
An NvmlSampler (trainer_hooks/nvml_sampler.py) samples every `--nvml-interval` seconds (2 s) meanwhile;
its rows are summarised per metric in the same table, with the measured interval between samples.

Without CUDA it runs on the CPU with a tiny model (so a test runs it); the sync check then says n/a.
Exit code 0, or 1 when a synchronizing call was seen.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

import trainer_hooks
from bench._harness import md_table, summary, verdict
from trainer_hooks.nvml_sampler import NvmlSampler

BUDGET_PCT = 0.5


@dataclass(frozen=True)
class Size:
    layers: int
    d: int
    heads: int
    vocab: int
    seq: int
    batch: int


GPT2_SMALL = Size(layers=12, d=768, heads=12, vocab=50257, seq=1024, batch=8)  # 124M parameters
TINY = Size(layers=2, d=32, heads=2, vocab=64, seq=16, batch=4)


class Block(torch.nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc, self.out = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(torch.nn.Module):
    """GPT-2's shape: token and position embeddings, pre-norm blocks, a head tied to the token embedding."""

    def __init__(self, s: Size) -> None:
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(s.vocab, s.d), torch.nn.Embedding(s.seq, s.d)
        self.blocks = torch.nn.ModuleList(Block(s.d, s.heads) for _ in range(s.layers))
        self.ln_f = torch.nn.LayerNorm(s.d)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


class Rows:
    """A stand-in writer for the sampler: keeps its `system` rows and events in memory."""

    def __init__(self) -> None:
        self.system_rows: list[tuple[str, int | None, float, float]] = []
        self.events: list[str] = []

    def system(self, name: str, value: float, *, gpu_index: int | None = None, gpu_uuid: str | None = None,
               host: str | None = None, wall_time: float | None = None) -> None:
        self.system_rows.append((name, gpu_index, value, wall_time if wall_time is not None else time.time()))

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append(kind)


class Arm:
    def __init__(self, size: Size, dev: torch.device, *, clip: bool, archive: str | None) -> None:
        torch.manual_seed(0)
        self.model = GPT(size).to(dev)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4, weight_decay=0.1)
        self.params = list(self.model.parameters())
        self.clip, self.dev, self.tokens = clip, dev, size.batch * size.seq
        self.obs = None if archive is None else trainer_hooks.attach(
            self.model, self.opt, run="gpu-step", archive=archive, sample_gpu=False)
        self.step = 0

    def steps(self, data: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> None:
        model, opt, obs = self.model, self.opt, self.obs
        for _ in range(n):
            x, y = data[self.step % len(data)]
            if obs is not None:
                obs.set_batch(chunk=self.step // 100)
            with torch.autocast(self.dev.type, dtype=torch.bfloat16):
                loss = model(x, y)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            if obs is not None:
                obs.record_loss(loss, tokens=self.tokens)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.step += 1


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed_block(arm: Arm, data: list, n: int, dev: torch.device) -> float:
    """Seconds per step over n steps, the device drained before and after."""
    _sync(dev)
    t0 = time.perf_counter()
    arm.steps(data, n)
    _sync(dev)
    return (time.perf_counter() - t0) / n


def median_ci(xs: list[float], *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    a = np.asarray(xs, dtype=float)
    boots = np.median(a[np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))], axis=1)
    return float(np.median(a)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def count_syncs(arm: Arm, data: list, n: int, dev: torch.device) -> tuple[int | None, str]:
    """(synchronizing calls seen in n steps under sync debug mode "warn", then n under "error"; a note)."""
    if dev.type != "cuda":
        return None, "n/a (no CUDA device)"
    _sync(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            arm.steps(data, n)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    note = ""
    torch.cuda.set_sync_debug_mode("error")
    try:
        arm.steps(data, n)
    except RuntimeError as exc:
        syncs.append(str(exc))
        note = f"'error' mode raised: {str(exc)[:120]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    if arm.obs is not None:
        arm.obs.drain()
        if arm.obs._errors:  # a sync on the drainer thread would be a hook_error
            note += f" hook errors: {arm.obs._errors}"
    return len(syncs), note or (syncs[0][:120] if syncs else "")


def run(args: argparse.Namespace) -> tuple[str, bool]:
    cuda = torch.cuda.is_available() and not args.cpu
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)  # tiny matrices: more threads only contend (the machine may be shared)
    size = GPT2_SMALL if cuda and not args.tiny else TINY
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, size.vocab, (size.batch, size.seq), generator=g).to(dev),
             torch.randint(0, size.vocab, (size.batch, size.seq), generator=g).to(dev)) for _ in range(4)]
    rows = Rows()
    sampler = NvmlSampler(rows, gpu_indices=[0] if cuda else None, interval_s=args.nvml_interval, host_metrics=True)
    with tempfile.TemporaryDirectory() as archive:
        bare = Arm(size, dev, clip=not args.no_clip, archive=None)
        attached = Arm(size, dev, clip=not args.no_clip, archive=archive)
        n_params = sum(p.numel() for p in bare.params)
        for arm in (bare, attached):  # warm-up: kernels, allocator, the observer's first drain
            timed_block(arm, data, args.warmup, dev)
        sampler.start()
        t_ab = time.perf_counter()
        pairs, bare_times = [], []
        done = 0
        while done < args.steps:
            n = min(args.block, args.steps - done)
            first_bare = len(pairs) % 2 == 0  # ABBA: neither arm always runs first
            order = (bare, attached) if first_bare else (attached, bare)
            t = {id(a): timed_block(a, data, n, dev) for a in order}
            pairs.append(t[id(attached)] - t[id(bare)])
            bare_times.append(t[id(bare)])
            done += n
        ab_s = time.perf_counter() - t_ab
        sync_bare, note_bare = count_syncs(bare, data, args.sync_steps, dev)
        sync_att, note_att = count_syncs(attached, data, args.sync_steps, dev)
        time.sleep(min(args.nvml_interval, 0.5))
        sampler.stop()
        attached.obs.close()
    step = statistics.median(bare_times)
    d_us = median_ci([p * 1e6 for p in pairs])
    pct = tuple(x / (step * 1e6) * 100 for x in d_us)
    device = torch.cuda.get_device_name(dev) if cuda else "CPU (no CUDA device: tiny model)"
    table = [
        ["device", device, ""],
        ["model", f"GPT, {size.layers} layers, d={size.d}, {n_params / 1e6:.1f}M parameters, "
                  f"batch {size.batch}x{size.seq} tokens, bf16 autocast, AdamW"
                  + ("" if args.no_clip else ", clip_grad_norm_ (flightlog picks up the norm)"), ""],
        ["steps per arm, interleaved", f"{args.steps} in blocks of {args.block} (ABBA), {ab_s:.0f} s", ""],
        ["bare step time (median)", f"{step * 1e3:.2f} ms", ""],
        ["attached - bare per step (median [95% CI])", f"{d_us[0]:.0f} µs [{d_us[1]:.0f}, {d_us[2]:.0f}]", ""],
        ["attached - bare, % of step time", f"{pct[0]:.2f}% [{pct[1]:.2f}, {pct[2]:.2f}]",
         verdict(pct[0] <= BUDGET_PCT) + f" (budget <= {BUDGET_PCT}%)" if cuda else "CPU: not the budget"],
        ["synchronizing calls, bare steps", _sync_cell(sync_bare, args.sync_steps, note_bare), ""],
        ["synchronizing calls, attached steps", _sync_cell(sync_att, args.sync_steps, note_att),
         "" if sync_att is None else verdict(sync_att == 0)],
    ]
    table += _nvml_rows(rows, args.nvml_interval, sampler.gpu_enabled)
    ok = sync_att in (None, 0)
    text = md_table(["measurement", "value", "verdict"], table, align="llr")
    if cuda:
        summary("capture", "attached - bare on a GPT-2-small step (% of step time)", f"{pct[0]:.2f}%",
                f"budget <= {BUDGET_PCT}%", ok=pct[0] <= BUDGET_PCT and ok)
    return text, ok


def _sync_cell(n: int | None, steps: int, note: str) -> str:
    if n is None:
        return note
    return f"{n} in {2 * steps} steps ('warn' then 'error' mode)" + (f": {note}" if note else "")


def _nvml_rows(rows: Rows, interval: float, gpu: bool) -> list[list[str]]:
    by: dict[tuple[str, int | None], list[tuple[float, float]]] = collections.defaultdict(list)
    for name, gpu_index, value, wall in rows.system_rows:
        by[(name, gpu_index)].append((wall, value))
    out = [["sampler", f"NVML {'on' if gpu else 'off (no GPU/NVML): host rows only'}, every {interval:g} s; "
                       f"{len(rows.system_rows)} rows, events: {dict(collections.Counter(rows.events)) or 'none'}", ""]]
    for (name, gpu_index), pts in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
        walls = sorted(w for w, _ in pts)
        gaps = [b - a for a, b in zip(walls, walls[1:], strict=False)]
        vals = [v for _, v in pts]
        gap = f", every {statistics.median(gaps):.2f} s" if gaps else ""
        where = "" if gpu_index is None else f" (gpu {gpu_index})"
        out.append([f"  {name}{where}", f"{len(vals)} samples{gap}: min {min(vals):.4g}, median "
                    f"{statistics.median(vals):.4g}, max {max(vals):.4g}", ""])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="timed steps per arm (>= 300 for the budget)")
    ap.add_argument("--block", type=int, default=10, help="steps per block; blocks alternate between the arms")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--sync-steps", type=int, default=10, help="steps per sync debug mode")
    ap.add_argument("--nvml-interval", type=float, default=2.0)
    ap.add_argument("--no-clip", action="store_true", help="neither loop clips: flightlog computes the norm")
    ap.add_argument("--tiny", action="store_true", help="the tiny model even on a GPU")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is there")
    ap.add_argument("--quick", action="store_true", help="100 steps per arm (a smoke run; the budget needs 300)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 100)
    with contextlib.suppress(AttributeError):
        torch.backends.cuda.matmul.allow_tf32 = True
    text, ok = run(args)
    print(text)
    if not torch.cuda.is_available() or args.cpu:
        print("\nNo CUDA device: this run only checks that the script works; the GPU figures are still to be taken.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
