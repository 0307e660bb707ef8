"""The reference Megatron-style trainer: model, tensor parallelism, data chunks, poison, checkpoints, CLI.

Real torch on CPU, real gloo process groups; no flightlog capture here (tests/e2e covers that).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer_hooks.reference.data import POISON_TOKEN, DataConfig, TokenStream, corpus_text
from trainer_hooks.reference.model import GPT, GPTConfig, TPGroup
from trainer_hooks.reference.train import (
    TrainConfig,
    build_parser,
    checkpoint_path,
    clip_grad_norm,
    free_port,
    launch,
    lr_at,
    main,
)

TINY = GPTConfig(n_layer=2, n_head=2, d_model=64, seq_len=32)


def tiny_data(**kw) -> DataConfig:
    return DataConfig(**{"seq_len": 32, "global_batch": 4, "chunk_sequences": 8, "num_chunks": 6, **kw})


# -- model --------------------------------------------------------------------------------------


def test_model_forward_and_backward_shapes():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx, targets = torch.randint(0, 128, (3, 32)), torch.randint(0, 128, (3, 32))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 32, 256)
    assert loss.shape == () and math.isfinite(loss.item())
    assert abs(loss.item() - math.log(256)) < 0.5  # an untrained model is close to uniform
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    assert model(idx[:, :10]).shape == (3, 10, 256)  # shorter sequences work (causal, RoPE sliced)


def test_model_is_causal():
    torch.manual_seed(0)
    model = GPT(TINY)
    a = torch.randint(0, 128, (1, 32))
    b = a.clone()
    b[0, 20:] = (b[0, 20:] + 1) % 128
    assert torch.allclose(model(a)[0, :20], model(b)[0, :20], atol=1e-6)


def test_flops_per_token_follows_6n_plus_attention():
    model = GPT(TINY)
    n = model.num_params()
    assert model.flops_per_token() == 6 * n + 12 * 2 * 64 * 32
    assert n == sum(p.numel() for p in model.parameters())  # TP=1: the full model; tied weights once


def test_config_rejects_bad_shapes_with_clear_messages():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(d_model=100, n_head=3)
    with pytest.raises(ValueError, match="tp must be 1 or 2"):
        TrainConfig(tp=4)
    with pytest.raises(ValueError, match="straddles two data chunks"):
        TrainConfig(micro_batch=8, dp=2, chunk_sequences=24)


# -- tensor parallelism (2 gloo processes) ------------------------------------------------------


def _tp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = GPT(TINY, TPGroup(2, rank, dist.new_group([0, 1])))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        batch = TokenStream(tiny_data()).batch(0)
        losses, norms = [], []
        for _ in range(2):  # two steps: the second checks that sharded updates stay consistent
            _, loss = model(batch.inputs, batch.targets)
            loss.backward()
            norms.append(clip_grad_norm(model, 0.0).item())
            losses.append(loss.item())
            opt.step()
            opt.zero_grad()
        torch.save({"losses": losses, "norms": norms}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_tensor_parallel_two_ranks_match_one_rank_loss_and_grad_norm(tmp_path):
    torch.manual_seed(0)
    model = GPT(TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = TokenStream(tiny_data()).batch(0)
    losses, norms = [], []
    for _ in range(2):
        _, loss = model(batch.inputs, batch.targets)
        loss.backward()
        norms.append(clip_grad_norm(model, 0.0).item())
        losses.append(loss.item())
        opt.step()
        opt.zero_grad()

    mp.start_processes(_tp_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
        assert got["norms"] == pytest.approx(norms, rel=1e-5)
    assert losses[1] < losses[0]


# -- data ---------------------------------------------------------------------------------------


def test_corpus_is_ascii_and_never_contains_the_poison_token():
    text = corpus_text()
    assert len(text) >= 1 << 19 and text == corpus_text()
    assert max(text.encode("ascii")) < POISON_TOKEN


def test_data_chunks_are_deterministic_and_sharded_by_dp_rank():
    a, b = TokenStream(tiny_data(seed=3)), TokenStream(tiny_data(seed=3))
    for step in range(12):
        full = a.batch(step)
        assert torch.equal(full.inputs, b.batch(step).inputs)
        assert torch.equal(full.inputs[:, 1:], full.targets[:, :-1])  # targets are inputs shifted by one
        # every sample of the step belongs to the step's chunk
        assert {s // 8 for s in full.global_sample_ids} == {full.chunk}
        shards = [a.batch(step, r, 2) for r in range(2)]
        assert shards[0].sample_ids + shards[1].sample_ids == full.global_sample_ids
        assert torch.equal(torch.cat([s.inputs for s in shards]), full.inputs)
    # a chunk holds the same samples whatever the seed; only the order changes
    other = TokenStream(tiny_data(seed=4))
    assert [a.chunk_at(s * 2)[0] for s in range(6)] != [other.chunk_at(s * 2)[0] for s in range(6)]
    for chunk in range(6):
        x, y = a.batch(a.first_step_of_chunk(chunk)), other.batch(other.first_step_of_chunk(chunk))
        assert x.chunk == y.chunk == chunk and x.global_sample_ids == y.global_sample_ids
        assert torch.equal(x.inputs, y.inputs)
    # every epoch visits every chunk once
    assert sorted(a.chunk_at(s)[0] for s in range(0, 12, 2)) == list(range(6))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_poisoned_chunk_gives_a_nonfinite_loss_for_any_seed_and_only_there(seed):
    data = TokenStream(tiny_data(seed=seed, poison_chunk=2))
    torch.manual_seed(seed)
    model = GPT(TINY)
    with torch.no_grad():
        for step in range(24):  # two epochs (12 steps each), in this seed's order
            batch = data.batch(step)
            _, loss = model(batch.inputs, batch.targets)
            assert math.isfinite(loss.item()) == (batch.chunk != 2), (step, batch.chunk)
            assert bool((batch.inputs == POISON_TOKEN).any(dim=1).all()) == (batch.chunk == 2)


def test_poison_lives_in_the_data_not_in_the_weights():
    torch.manual_seed(0)
    model = GPT(TINY)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


# -- schedule, checkpoints, CLI -----------------------------------------------------------------


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(5, cfg) == pytest.approx(5e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def _tiny_cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(observe=False, n_layer=2, n_head=2, d_model=64, seq_len=32, micro_batch=4, chunk_sequences=8,
                num_chunks=6, steps=10, warmup_steps=2, log_every=100, checkpoint_dir=str(tmp_path / "ckpt"))
    return TrainConfig(**{**base, **kw})


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    straight = _tiny_cfg(tmp_path / "a", checkpoint_every=5)
    assert launch(straight) == 0
    resumed = _tiny_cfg(tmp_path / "b", checkpoint_every=5,
                        resume_from=str(Path(straight.checkpoint_dir) / "iter_0000005"))
    assert launch(resumed) == 0
    a = torch.load(checkpoint_path(straight.checkpoint_dir, 10, 0), weights_only=False)
    b = torch.load(checkpoint_path(resumed.checkpoint_dir, 10, 0), weights_only=False)
    assert a["tokens_seen"] == b["tokens_seen"] == 10 * 4 * 32
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert not (Path(resumed.checkpoint_dir) / "iter_0000005").exists()  # it continued at step 6


def test_checkpoint_without_optimizer_state_and_megatron_layout(tmp_path):
    cfg = _tiny_cfg(tmp_path, steps=6, checkpoint_every=4, save_without_optimizer_at=3)
    assert launch(cfg) == 0
    root = Path(cfg.checkpoint_dir)
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "4"
    lean = torch.load(checkpoint_path(root, 3, 0), weights_only=False)
    full = torch.load(checkpoint_path(root, 4, 0), weights_only=False)
    assert "optimizer" not in lean and "optimizer" in full
    assert full["iteration"] == 4 and full["data"]["position"] == 4
    # resuming from the lean one works, with fresh optimizer moments
    assert launch(dataclasses.replace(cfg, resume_from=str(root / "iter_0000003"),
                                      checkpoint_dir=str(tmp_path / "again"))) == 0


def test_skip_nonfinite_keeps_weights_finite_through_a_poisoned_chunk(tmp_path):
    cfg = _tiny_cfg(tmp_path, steps=12, poison_chunk=1, checkpoint_every=12)
    assert launch(cfg) == 0
    state = torch.load(checkpoint_path(cfg.checkpoint_dir, 12, 0), weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_cli_exposes_every_config_field_and_rejects_bad_values(capsys):
    flags = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in flags
    args = build_parser().parse_args(["--dp", "2", "--poison-chunk", "3", "--no-shuffle", "--resume-from", "none"])
    assert (args.dp, args.poison_chunk, args.shuffle, args.resume_from) == (2, 3, False, None)
    assert main(["--tp", "3"]) == 2
    assert "tp must be 1 or 2" in capsys.readouterr().err


def test_demo_plan_puts_the_corrupted_chunk_between_the_resume_checkpoint_and_the_crash(tmp_path):
    from trainer_hooks.reference.demo import plan

    for quick, steps in ((True, 40), (False, 300), (False, 57)):
        cfg = plan(steps, quick=quick, run="d", archive=str(tmp_path), checkpoint_dir=str(tmp_path / "c"))
        data = TokenStream(cfg.data_config())
        resume = cfg.crash_at_step // cfg.checkpoint_every * cfg.checkpoint_every  # last checkpoint before the crash
        poisoned_steps = [s for s in range(1, steps + 1) if data.chunk_at(s - 1)[0] == cfg.poison_chunk]
        first_epoch = [s for s in poisoned_steps if s <= resume + data.steps_per_chunk]
        assert first_epoch and all(resume < s <= cfg.crash_at_step for s in first_epoch)
        assert cfg.save_without_optimizer_at < resume and cfg.save_without_optimizer_at % cfg.checkpoint_every
        assert (cfg.dp, cfg.tp) == (2, 1)
    with pytest.raises(ValueError, match="at least 20"):
        plan(10, quick=True, run="d", archive=str(tmp_path), checkpoint_dir=str(tmp_path))


def test_demo_second_run_reads_the_corrupted_chunk_under_another_seed_at_another_step(tmp_path):
    from trainer_hooks.reference.demo import plan, plan_other_seed

    for quick, steps in ((True, 40), (False, 300)):
        cfg = plan(steps, quick=quick, run="d", archive=str(tmp_path), checkpoint_dir=str(tmp_path / "c"))
        other = plan_other_seed(cfg)
        assert other.seed != cfg.seed and other.run == f"d-seed{other.seed}" and other.steps < cfg.steps
        assert (other.poison_chunk, other.model_config(), other.dp) == (cfg.poison_chunk, cfg.model_config(), cfg.dp)
        assert not other.checkpoint_every and other.crash_at_step is None and other.save_without_optimizer_at is None
        first = TokenStream(cfg.data_config()).first_step_of_chunk(cfg.poison_chunk)
        at = TokenStream(other.data_config()).first_step_of_chunk(cfg.poison_chunk)
        assert at != first and other.steps // 4 <= at <= other.steps // 2  # mid-run, after warm-up, steps left
