"""The reference Megatron-style trainer: data and tensor parallel, checkpoints, resume, injected faults.

Reads top to bottom, nanoGPT-like (its configuration, every field a --flag, is train_config.py).
flightlog's capture is the handful of `obs.` lines, the same few lines a user adds to their own
loop. Run it with `flightlog train --help`, or:

    python -m trainer_hooks.reference.train --dp 2 --steps 200 --poison-chunk 3

Ranks are laid out as in Megatron-LM: tensor-parallel ranks are neighbours
(rank = dp_rank * tp + tp_rank). Checkpoints use Megatron's folder layout
(`iter_0000100/mp_rank_00/model_optim_rng.pt` + `latest_checkpointed_iteration.txt`).
Steps count from 1; a checkpoint at step N holds the state after N steps, and a run resumed
from it continues at step N + 1 as a new attempt.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer_hooks import attach
from trainer_hooks.reference.data import TokenStream
from trainer_hooks.reference.model import GPT, TPGroup
from trainer_hooks.reference.train_config import TrainConfig, build_parser

__all__ = ["TrainConfig", "build_parser", "launch", "main", "train"]  # the config's names are importable from here too

# -----------------------------------------------------------------------------
# Learning rate, gradients


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / max(1, cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def allreduce_gradients(model: torch.nn.Module, dp_group: dist.ProcessGroup | None, dp: int) -> None:
    """Average gradients over the data-parallel group in one flat bucket (one collective, not one per tensor)."""
    if dp == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, group=dp_group)
    flat /= dp
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(chunk.view_as(g))


def clip_grad_norm(model: GPT, max_norm: float) -> torch.Tensor:
    """The global gradient norm (clipped to `max_norm` unless 0), correct under tensor parallelism.

    With TP=1 this is torch's clip_grad_norm_. With TP=2 each rank holds a slice of the sharded
    weights, so their squared norms are summed over the TP group; replicated weights count once."""
    params = [p for p in model.parameters() if p.grad is not None]
    if model.tp.size == 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    zero = torch.zeros((), device=params[0].device)
    sharded = sum((p.grad.float().pow(2).sum() for p in params if getattr(p, "tensor_parallel", False)), zero)
    dist.all_reduce(sharded, group=model.tp.group)
    replicated = sum((p.grad.float().pow(2).sum() for p in params if not getattr(p, "tensor_parallel", False)), zero)
    total = (sharded + replicated).sqrt()
    if max_norm > 0:
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for p in params:
            p.grad.mul_(coef)
    return total


# -----------------------------------------------------------------------------
# Checkpoints (Megatron layout)

TRACKER = "latest_checkpointed_iteration.txt"


def checkpoint_path(root: str | Path, step: int, tp_rank: int) -> Path:
    return Path(root) / f"iter_{step:07d}" / f"mp_rank_{tp_rank:02d}" / "model_optim_rng.pt"


def save_checkpoint(cfg: TrainConfig, model: GPT, optimizer: torch.optim.Optimizer | None, step: int, tokens: int,
                    chunk: int) -> Path:
    path = checkpoint_path(cfg.checkpoint_dir, step, model.tp.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "iteration": step,
        "tokens_seen": tokens,
        "data": {"position": step, "chunk": chunk, "seed": cfg.seed},  # batches depend on the step only
        "model": model.state_dict(),
        "rng": torch.get_rng_state(),
        "config": dataclasses.asdict(cfg),
        "tp_size": cfg.tp,
        "dp_size": cfg.dp,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a half-written checkpoint under the real name
    return path


def resolve_checkpoint(where: str, tp_rank: int) -> Path:
    """A checkpoint root (its latest iteration), an iter_* folder, or a .pt file -> this TP rank's file."""
    p = Path(where)
    if p.is_file():
        return p
    if (p / TRACKER).is_file():
        p = p / f"iter_{int((p / TRACKER).read_text().strip()):07d}"
    f = p / f"mp_rank_{tp_rank:02d}" / "model_optim_rng.pt"
    if not f.is_file():
        raise FileNotFoundError(f"no checkpoint for TP rank {tp_rank} at {f}; "
                                "pass a checkpoint folder or iter_* folder")
    return f


# -----------------------------------------------------------------------------
# Observation: attach flightlog, or a do-nothing stand-in so the loop never asks "is logging on?"


class _NoObserver:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _attach(cfg: TrainConfig, model: GPT, optimizer: torch.optim.Optimizer, start: int,
            resumed_from: int | None, resumed_path: str | None):
    if not cfg.observe:
        return _NoObserver()
    tokens_per_step = cfg.global_batch * cfg.seq_len  # start_tokens is the global count, like tokens_seen
    return attach(
        model, optimizer, run=cfg.run, archive=cfg.archive, config=dataclasses.asdict(cfg),
        attempt=None,  # rank 0 finds the next attempt of this run in the archive
        start_step=start, start_tokens=(start - 1) * tokens_per_step,
        resumed_from_step=resumed_from, resumed_from_checkpoint=resumed_path, seed=cfg.seed,
        tp_size=cfg.tp, pp_size=1, framework="flightlog-reference", master_weights_dtype="float32",
        model_flops_per_token=model.flops_per_token(), nan_layer_probe_every=cfg.nan_layer_probe_every,
    )


# -----------------------------------------------------------------------------
# One rank's training


def train(cfg: TrainConfig, rank: int = 0) -> None:
    world = cfg.world_size
    dp_rank, tp_rank = divmod(rank, cfg.tp)
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}") if cfg.device == "cuda" else torch.device("cpu")
    tp, dp_group = TPGroup(), None
    if world > 1:
        if cfg.device == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo", rank=rank, world_size=world)
        # Every rank creates every group, in the same order (torch.distributed requires it).
        for d in range(cfg.dp):
            ranks = [d * cfg.tp + t for t in range(cfg.tp)]
            group = dist.new_group(ranks) if cfg.tp > 1 else None
            if rank in ranks and cfg.tp > 1:
                tp = TPGroup(cfg.tp, tp_rank, group)
        for t in range(cfg.tp):
            ranks = [d * cfg.tp + t for d in range(cfg.dp)]
            group = dist.new_group(ranks)
            if rank in ranks:
                dp_group = group

    torch.manual_seed(cfg.seed)  # same seed on every rank: identical replicas, consistent TP slices
    model = GPT(cfg.model_config(), tp).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norms: no weight decay (as in GPT-3, Llama)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=cfg.device == "cuda",
    )
    data = TokenStream(cfg.data_config())

    # Resume: model, optimizer (if the checkpoint has it), step; the data position follows from the step.
    start, resumed_from, resumed_path = 1, None, None
    if cfg.resume_from:
        path = resolve_checkpoint(cfg.resume_from, tp_rank)
        state = torch.load(path, map_location=device, weights_only=False)
        if state.get("tp_size", 1) != cfg.tp:
            raise ValueError(f"{path} was saved with tp={state.get('tp_size')}, this launch has tp={cfg.tp}")
        model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        elif rank == 0:
            print(f"warning: {path} has no optimizer state; AdamW moments restart from zero", flush=True)
        resumed_from, resumed_path, start = state["iteration"], str(path), state["iteration"] + 1

    obs = _attach(cfg, model, optimizer, start, resumed_from, resumed_path)
    if resumed_from is not None:
        obs.checkpoint_loaded(resumed_path, step=resumed_from)
    try:
        _loop(cfg, model, optimizer, data, obs, start, rank, dp_rank, dp_group)
    except KeyboardInterrupt:
        obs.close(status="killed")
        raise
    except BaseException:
        obs.close(status="crashed")
        raise
    else:
        obs.close(status="finished")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _loop(cfg: TrainConfig, model: GPT, optimizer: torch.optim.Optimizer, data: TokenStream, obs: Any,
          start: int, rank: int, dp_rank: int, dp_group: dist.ProcessGroup | None) -> None:
    device = next(model.parameters()).device
    tokens_per_step = cfg.global_batch * cfg.seq_len
    t_last = time.perf_counter()
    for step in range(start, cfg.steps + 1):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        batch = data.batch(step - 1, dp_rank, cfg.dp)  # step N reads batch N-1 of the stream
        obs.set_batch(chunk=batch.chunk, sample_ids=batch.sample_ids)
        inputs, targets = batch.inputs.to(device, non_blocking=True), batch.targets.to(device, non_blocking=True)

        _, loss = model(inputs, targets)
        obs.record_loss(loss, tokens=batch.tokens)
        loss.backward()
        allreduce_gradients(model, dp_group, cfg.dp)
        grad_norm = clip_grad_norm(model, cfg.grad_clip)
        obs.grad_norm(grad_norm)

        # Megatron skips the update when the gradient norm is inf/NaN. The norm is the same on every
        # rank after the reductions above, so all ranks take the same branch without a vote.
        # A skipped update still calls optimizer.step(), with no gradients (AdamW leaves such parameters
        # untouched), so step hooks - flightlog's included - see every iteration.
        skip = cfg.skip_nonfinite and not math.isfinite(grad_norm.item())
        if skip:
            optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if skip:
            obs.log({"step_skipped": 1.0}, step=step)

        tokens = step * tokens_per_step
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.save_without_optimizer_at:
            with_optimizer = step != cfg.save_without_optimizer_at
            if dp_rank == 0:  # one copy per TP slice, as in Megatron
                path = save_checkpoint(cfg, model, optimizer if with_optimizer else None, step, tokens, batch.chunk)
                obs.checkpoint_saved(str(path), step=step, tokens=tokens)
            # A checkpoint is a natural sync point: make the telemetry up to it durable too, so a
            # crash followed by a resume from this checkpoint leaves no gap in the journey.
            obs.flush()
            if dist.is_initialized():
                dist.barrier()
            if rank == 0:
                (Path(cfg.checkpoint_dir) / TRACKER).write_text(str(step))

        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            print(
                f"step {step:5d}/{cfg.steps} | loss {loss.item():.4f} | lr {lr:.2e} | grad norm {grad_norm.item():.3f}"
                f" | chunk {batch.chunk:3d} | {n * tokens_per_step / (now - t_last):8.0f} tok/s",
                flush=True,
            )
            t_last = now

        if step == cfg.crash_at_step:
            print(f"rank {rank}: simulated crash after step {step} (SIGKILL)", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: like a node dying


# -----------------------------------------------------------------------------
# Launching ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, cfg: TrainConfig, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(cfg.world_size), LOCAL_WORLD_SIZE=str(cfg.world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.world_size))  # ranks share the host's cores
    train(cfg, rank)


def launch(cfg: TrainConfig, grace_s: float = 10.0) -> int:
    """Run every rank of `cfg` (dp * tp processes) and wait; 0 when all finished, else the first failure's
    exit code (negative: killed by that signal). A single rank runs in this process."""
    if cfg.world_size == 1:
        train(cfg, 0)
        return 0
    ctx = torch.multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, cfg, port), name=f"flightlog-rank{r}") for r in range(cfg.world_size)]
    for p in procs:
        p.start()
    failed_at: float | None = None
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(timeout=0.2)
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        # Survivors of a failed rank block in their next collective: stop them after a grace period.
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for p in procs:
                if p.is_alive():
                    p.terminate()
    codes = [p.exitcode for p in procs]
    return next((c for c in codes if c), 0)


# -----------------------------------------------------------------------------
# Command line: every TrainConfig field is a --flag (train_config.py)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = TrainConfig(**vars(args))
    except ValueError as err:
        print(f"flightlog train: {err}", file=sys.stderr)
        return 2
    code = launch(cfg)
    if code:
        print(f"flightlog train: a rank exited with code {code}", file=sys.stderr)
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
