"""Host cost of flightlog's per-step capture on a CPU training loop: bookkeeping and the grad-norm reduction
apart, against wandb offline in the same run.

    python -m bench.bench_capture [--rounds 20] [--block 2000] [--quick] [--no-wandb]

Every arm trains its own copy of one small model (one intra-op thread) and stays alive for the whole
run; a round runs one block of `block` steps of each arm, in a shuffled order, so a burst of load from
other processes lands on every arm alike. Costs are paired per round (arm - its baseline in the same
round); the table gives their median and a 95% bootstrap confidence interval of that median. Arms:

- bare: forward, backward, AdamW step, zero_grad.
- bare+norm: + the reduction flightlog runs when the loop does not clip (`torch._foreach_norm` over
  the gradients, combined on the host): the grad-norm reduction alone.
- flightlog: bare + attach() (loss, grad norm computed, lr, step time, data wait, tokens) and
  `obs.record_loss(loss, tokens=n)`.
- bare+clip: the loop clips (`clip_grad_norm_`), as most LLM loops do.
- flightlog+clip: + attach(); flightlog picks up the norm clip returned (clip_watch.py), no reduction.
- wandb: the clipping loop + `run.log` of 5 scalars (loss, clip's grad_norm, lr, tokens_seen,
  step_time_s) with the `.item()` calls it needs, WANDB_MODE=offline, one run for the whole bench.

Bookkeeping = everything but the reduction: flightlog - bare+norm (flightlog computes the norm) and
flightlog+clip - bare+clip (the norm is picked up). Three clocks: wall, CPU of the training thread
(`time.thread_time`: what the loop pays) and CPU of the process (adds whatever background threads ran
during the block). A flightlog block ends with `obs.drain()` inside its timing, so its drainer's work
does not land in the next arm's block; blocks are long (2,000 steps, many drainer wake-ups) so that
waiting for the last batch adds little. The CPU of each flightlog arm's own drainer and writer threads
is read from their thread clocks over the whole run. wandb's own work runs in its service process.
Budget (issue 16): bookkeeping <= 10 µs wall per step and >= 30x below wandb offline, clip loop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import trainer_hooks
from bench._harness import machine_note, md_table, summary, verdict
from trainer_hooks import clip_watch
from trainer_hooks.device_buffer import norm_of_norms

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

CLOCKS = ("wall", "thread", "process")
BUDGET_US, BUDGET_RATIO = 10.0, 30.0


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))


def _data(n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, 8, 32, generator=g)
    return [(xs[i], xs[(i + 1) % n]) for i in range(n)]


class Arm:
    """One variant of the loop: its own model, optimizer and (for flightlog) observer, kept for the whole run."""

    def __init__(self, kind: str, tmp: str, wandb_run: Any = None) -> None:
        self.kind = kind
        self.model = _model()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.clip = kind in ("bare+clip", "flightlog+clip", "wandb")
        self.obs = None
        if kind.startswith("flightlog"):
            self.obs = trainer_hooks.attach(self.model, self.opt, run=f"bench-{kind}",
                                            archive=os.path.join(tmp, "archive"), sample_gpu=False)
            clip_watch.unwatch(self.obs)  # watched only during its own blocks (see block())
        self.run = wandb_run if kind == "wandb" else None
        self.tokens = 0
        self.steps = 0

    def block(self, data: list, steps: int) -> tuple[float, float, float]:
        """(wall, training-thread CPU, process CPU) seconds per step over `steps` steps."""
        model, opt, obs, run, clip, norm = self.model, self.opt, self.obs, self.run, self.clip, self.kind == "bare+norm"
        mse, params = torch.nn.functional.mse_loss, list(model.parameters())
        if obs is not None and clip:
            clip_watch.watch(obs)  # the only watcher in its blocks: other arms' clips cost what they cost alone
        t_prev = time.perf_counter()
        t0, c0, p0 = t_prev, time.thread_time(), time.process_time()
        for i in range(steps):
            x, y = data[i % len(data)]
            loss = mse(model(x), y)
            loss.backward()
            if clip:
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            elif norm:  # what flightlog's pre-step hook computes on CPU
                norm_of_norms(torch._foreach_norm([p.grad for p in params], 2, dtype=torch.float32))
            if obs is not None:
                obs.record_loss(loss, tokens=256)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if run is not None:
                self.tokens += 256
                now = time.perf_counter()
                run.log({"loss": loss.item(), "grad_norm": gn.item(), "lr": opt.param_groups[0]["lr"],
                         "tokens_seen": self.tokens, "step_time_s": now - t_prev}, step=self.tokens // 256)
                t_prev = now
        if obs is not None:
            # The drainer's last batch is this block's, not the next arm's. Waiting for it serially overstates
            # the cost by at most one poll interval's drain per block (under 0.5 µs/step at 2,000-step blocks).
            obs.drain()
            clip_watch.unwatch(obs)
        took = (time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0)
        self.steps += steps
        return took[0] / steps, took[1] / steps, took[2] / steps

    def background_cpu(self) -> float:
        """CPU seconds so far of this arm's drainer and writer threads (0 for the bare arms)."""
        if self.obs is None:
            return 0.0
        run_id = self.obs.writer.run_id
        threads = [self.obs._buf._thread] + [t for t in threading.enumerate() if run_id in t.name]
        total = 0.0
        for t in threads:
            with contextlib.suppress(OSError, ProcessLookupError, TypeError):  # a thread that has ended
                total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        return total

    def close(self) -> None:
        if self.obs is not None:
            self.obs.close()


def median_ci(xs: list[float], *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): a 95% percentile-bootstrap interval of the median."""
    a = np.asarray(xs, dtype=float)
    rng = np.random.default_rng(seed)
    boots = np.median(a[rng.integers(0, len(a), size=(n_boot, len(a)))], axis=1)
    return float(np.median(a)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def run_rounds(kinds: list[str], rounds: int, block: int, tmp: str, wandb_run: Any = None,
               progress: Callable[[int], None] | None = None) -> dict[str, list[tuple[float, float, float]]]:
    """Per arm, one (wall, thread, process) per round; arms shuffled within each round."""
    data = _data()
    arms = {k: Arm(k, tmp, wandb_run) for k in kinds}
    out: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    order = random.Random(0)
    try:
        for k in kinds:  # warm-up: allocator, the observers' first flush, wandb's first logs
            arms[k].block(data, min(block, 100))
        cpu0 = {k: (a.background_cpu(), a.steps) for k, a in arms.items()}
        for r in range(rounds):
            for k in order.sample(kinds, len(kinds)):
                out[k].append(arms[k].block(data, block))
            if progress is not None:
                progress(r)
        for k, a in arms.items():
            if a.obs is not None:
                a.obs.flush()  # the writer's work for the last blocks
            BACKGROUND[k] = (a.background_cpu() - cpu0[k][0]) / max(1, a.steps - cpu0[k][1]) * 1e6
    finally:
        for a in arms.values():
            a.close()
    return out


BACKGROUND: dict[str, float] = {}  # arm -> µs of CPU per step on its drainer and writer threads (run_rounds)


COSTS = {  # name: (arm, its baseline)
    "total, flightlog computes the norm": ("flightlog", "bare"),
    "grad-norm reduction (foreach_norm)": ("bare+norm", "bare"),
    "bookkeeping, flightlog computes the norm": ("flightlog", "bare+norm"),
    "bookkeeping, loop clips (norm picked up)": ("flightlog+clip", "bare+clip"),
    "wandb offline (clip loop)": ("wandb", "bare+clip"),
}


def costs(per_arm: dict[str, list[tuple[float, float, float]]]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per cost and clock: (median, CI low, CI high) in µs per step of the paired per-round differences."""
    out = {}
    for name, (arm, base) in COSTS.items():
        if arm in per_arm and base in per_arm:
            out[name] = {c: median_ci([(a[i] - b[i]) * 1e6 for a, b in zip(per_arm[arm], per_arm[base], strict=True)])
                         for i, c in enumerate(CLOCKS)}
    return out


def low_costs(per_arm: dict[str, list[tuple[float, float, float]]]) -> dict[str, float]:
    """Per cost: the 10th percentile of the arm's wall per step minus its baseline's, µs: the blocks least
    disturbed by other processes (a check on the median when the machine is busy)."""
    p10 = {k: float(np.percentile([x[0] for x in v], 10)) for k, v in per_arm.items()}
    return {name: (p10[arm] - p10[base]) * 1e6 for name, (arm, base) in COSTS.items() if arm in p10 and base in p10}


def ratios(per_arm: dict[str, list[tuple[float, float, float]]], arm: str, base: str) -> dict[str, tuple]:
    """wandb's median cost / this median cost per clock, with a 95% bootstrap interval (rounds resampled
    jointly, so each resample pairs the same rounds' wandb and flightlog blocks)."""
    if "wandb" not in per_arm:
        return {}
    rng = np.random.default_rng(1)
    w, bc, a, b = (np.asarray(per_arm[k]) for k in ("wandb", "bare+clip", arm, base))
    out = {}
    for i, c in enumerate(CLOCKS):
        num, den = w[:, i] - bc[:, i], a[:, i] - b[:, i]
        idx = rng.integers(0, len(num), size=(2000, len(num)))
        boots = np.median(num[idx], axis=1) / np.maximum(np.median(den[idx], axis=1), 1e-12)
        out[c] = (float(np.median(num) / max(np.median(den), 1e-12)), float(np.percentile(boots, 2.5)),
                  float(np.percentile(boots, 97.5)))
    return out


def ci_verdict(m: tuple[float, float, float], budget: float, *, below: bool) -> str:
    """pass / miss only when the interval [m[1], m[2]] lies on one side of the budget."""
    lo, hi = m[1], m[2]
    if (hi <= budget) if below else (lo >= budget):
        return verdict(True)
    if (lo > budget) if below else (hi < budget):
        return verdict(False)
    return "undecided (noise)"


def ratio_verdict(m: tuple[float, float, float]) -> str:
    """A ratio interval reaching 0 or below comes from resamples where a cost was at or below zero: noise, never
    a miss."""
    return "undecided (noise)" if m[1] <= 0 else ci_verdict(m, BUDGET_RATIO, below=False)


def _fmt(m: tuple[float, float, float]) -> str:
    return f"{m[0]:.1f} [{m[1]:.1f}, {m[2]:.1f}]"


def _fmt_ratio(m: tuple[float, float, float]) -> str:
    def one(x: float) -> str:  # a cost at or below zero makes the ratio unbounded
        return ">10^6" if x >= 1e6 else f"{x:.0f}"
    return f"{one(m[0])}× [{one(m[1])}, {one(m[2])}]"


def report(per_arm: dict, rounds: int, block: int) -> str:
    c = costs(per_arm)
    lines = [f"Capture host cost on a CPU loop, 1 intra-op thread, {rounds} rounds x {block} steps per arm, arms "
             f"shuffled per round; µs per step, median of paired per-round differences [95% CI]; "
             f"torch {torch.__version__}; {machine_note()}", ""]
    per_step = {k: statistics.median(x[0] for x in v) * 1e6 for k, v in per_arm.items()}
    lines.append("Step time per arm (wall µs, median): " + ", ".join(f"{k} {v:.1f}" for k, v in per_step.items()))
    lines.append("")
    low = low_costs(per_arm)
    rows = [[name, _fmt(v["wall"]), _fmt(v["thread"]), _fmt(v["process"]), f"{low[name]:.1f}"] for name, v in c.items()]
    lines.append(md_table(["cost", "wall", "training-thread CPU", "process CPU", "least disturbed, wall"], rows))
    if BACKGROUND:
        lines += ["", "flightlog's own threads (drainer, writer), CPU per step over the whole run: " + ", ".join(
            f"{k} {v:.1f} µs" for k, v in BACKGROUND.items() if k.startswith("flightlog"))]
    ratio_rows = []
    for name, (arm, base) in (("bookkeeping, flightlog computes the norm", ("flightlog", "bare+norm")),
                              ("bookkeeping, loop clips", ("flightlog+clip", "bare+clip")),
                              ("total, flightlog computes the norm", ("flightlog", "bare"))):
        r = ratios(per_arm, arm, base)
        if r:
            ratio_rows.append([name, _fmt_ratio(r["wall"]), _fmt_ratio(r["thread"])])
    if ratio_rows:
        lines += ["", "wandb offline's cost / flightlog's (paired per round)", "",
                  md_table(["flightlog cost", "ratio, wall", "ratio, thread CPU"], ratio_rows)]
    book = c.get("bookkeeping, loop clips (norm picked up)")
    if book is not None:
        r = ratios(per_arm, "flightlog+clip", "bare+clip")
        budget_rows = [["bookkeeping, clip loop: wall µs/step <= 10", _fmt(book["wall"]) + " µs",
                        ci_verdict(book["wall"], BUDGET_US, below=True)]]
        if r:
            budget_rows.append(["wandb offline cost / bookkeeping (wall) >= 30x", _fmt_ratio(r["wall"]),
                                ratio_verdict(r["wall"])])
        lines += ["", md_table(["budget", "measured", "verdict"], budget_rows),
                  "", "A verdict needs the whole 95% interval on one side of the budget; otherwise the noise of "
                  "this machine cannot decide it (undecided: rerun on a quieter machine, or with more --rounds)."]
    lines += ["", "Bookkeeping = everything flightlog does but the grad-norm reduction; the reduction is what "
              "`torch._foreach_norm` costs on this loop (on a GPU: one asynchronous launch). Process CPU adds the "
              "drainer and writer threads; wandb's service process is outside it."]
    return "\n".join(lines)


def _decided(book: tuple, budget: float, below: bool, ratio: tuple | None) -> bool | None:
    """True/False when every verdict is decided and agrees; None (no verdict) when noise leaves one open."""
    vs = [ci_verdict(book, budget, below=below)] + ([ratio_verdict(ratio)] if ratio else [])
    if any(v.startswith("undecided") for v in vs):
        return None
    return all(v == verdict(True) for v in vs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=int, default=2000, help="steps per arm per round")
    ap.add_argument("--quick", action="store_true", help="8 rounds x 1000 steps (about a minute on a quiet machine)")
    ap.add_argument("--no-wandb", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.block = 8, 1000
    torch.set_num_threads(1)
    kinds = ["bare", "bare+norm", "flightlog", "bare+clip", "flightlog+clip"]
    with tempfile.TemporaryDirectory() as tmp:
        run = None
        if not args.no_wandb:
            with contextlib.suppress(ImportError):
                import wandb  # noqa: PLC0415 - lazy: an optional peer, heavy to import

                run = wandb.init(project="flightlog-bench", dir=tmp, mode="offline")
                kinds.append("wandb")
        try:
            per_arm = run_rounds(kinds, args.rounds, args.block, tmp, run)
        finally:
            if run is not None:
                run.finish()
    print(report(per_arm, args.rounds, args.block))
    c = costs(per_arm)
    book = c.get("bookkeeping, loop clips (norm picked up)")
    if book is not None:
        r = ratios(per_arm, "flightlog+clip", "bare+clip")
        summary("capture", "bookkeeping per step, CPU clip loop (wall, median [95% CI])", _fmt(book["wall"]) + " µs",
                f"wandb offline {_fmt_ratio(r['wall'])} more" if r else "",
                ok=_decided(book["wall"], BUDGET_US, True, r["wall"] if r else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
