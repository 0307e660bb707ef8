"""`flightlog memorization` on a real run of the reference trainer: memorization and held-out perplexity
rows per checkpoint, replaced (not duplicated) when measured again, and clear one-line mistakes."""

from __future__ import annotations

import pytest

from app.cli import main as cli
from telemetry import Archive
from trainer_hooks.reference.science import load_model, spread_chunks
from trainer_hooks.reference.train import TrainConfig, launch

RUN = "science"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, TrainConfig]:
    tmp = tmp_path_factory.mktemp("science")
    cfg = TrainConfig(run=RUN, archive=str(tmp / "archive"), checkpoint_dir=str(tmp / "ckpt"), n_layer=1, n_head=2,
                      d_model=32, seq_len=16, micro_batch=4, chunk_sequences=8, steps=8, warmup_steps=1,
                      checkpoint_every=4, log_every=100)
    assert launch(cfg) == 0
    return cfg.archive, cfg


def _rows(root: str, table: str) -> list[dict]:
    a = Archive(root)
    try:
        return a.sql(f"SELECT * FROM {table} ORDER BY step").to_pylist()
    finally:
        a.close()


def test_memorization_command_writes_rows_per_checkpoint_and_chunk(trained, capsys):
    root, cfg = trained
    argv = ["memorization", "--run", RUN, "--chunk", "0", "3", "--k", "8", "--l", "8", "--n", "5", "--archive", root,
            "--quiet"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "wrote 4 memorization row(s) and 2 held-out perplexity row(s) for 2 checkpoint(s)" in out
    mem = _rows(root, "memorization")
    assert [(r["step"], r["data_chunk"], r["k"], r["l"], r["n_sequences"]) for r in mem] == [
        (4, 0, 8, 8, 5), (4, 3, 8, 8, 5), (8, 0, 8, 8, 5), (8, 3, 8, 8, 5)]
    assert all(0.0 <= r["token_match"] <= 1.0 and 0.0 <= r["full_match"] <= r["token_match"] for r in mem)
    ppl = _rows(root, "evals")
    assert [(r["step"], r["benchmark"], r["tokens_seen"]) for r in ppl] == [
        (4, "heldout_ppl", 4 * 4 * 16), (8, "heldout_ppl", 8 * 4 * 16)]
    assert all(1.0 < r["value"] < 300 and r["stderr"] > 0 for r in ppl)  # an untrained byte model is near 256
    # measuring again replaces; one checkpoint only touches its own rows
    assert cli([*argv[:-3], "--checkpoint", "8", "--archive", root, "--quiet"]) == 0
    assert len(_rows(root, "memorization")) == 4 and len(_rows(root, "evals")) == 2


def test_memorization_mistakes_are_one_line(trained, capsys):
    root, _ = trained
    for argv, says in ((["--checkpoint", "5"], "no checkpoint at step(s) [5]"),
                       (["--k", "16", "--l", "16"], "lower --k/--l"),
                       (["--chunk", "99999"], "data chunk 99999 does not exist"),
                       (["--checkpoint", "four"], "--checkpoint must be whole numbers")):
        assert cli(["memorization", "--run", RUN, "--archive", root, "--quiet", "--k", "8", "--l", "8", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "\n" not in err, err


def test_a_checkpoint_loads_back_into_the_same_model(trained):
    root, cfg = trained
    a = Archive(root)
    uri = a.sql("SELECT uri FROM checkpoints WHERE step = 8").to_pylist()[0]["uri"]
    a.close()
    model, loaded_cfg, state = load_model(uri)
    assert loaded_cfg.d_model == 32 and state["iteration"] == 8 and not model.training
    chunks = spread_chunks(loaded_cfg, seen=2, unseen=1)
    assert 2 <= len(chunks) <= 3 and all(isinstance(c, int) for c in chunks)


def test_tensor_parallel_shards_merge_into_the_tp1_model(tmp_path):
    import dataclasses

    import torch

    from trainer_hooks.reference.model import GPT, TPGroup

    cfg = TrainConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, tp=2)
    shape = dataclasses.replace(cfg, tp=1).model_config()
    torch.manual_seed(3)
    whole = GPT(shape).state_dict()
    for r in range(2):  # every TP rank draws the full weights from the same seed and keeps its slice
        torch.manual_seed(3)
        shard = GPT(shape, TPGroup(2, r, None)).state_dict()
        path = tmp_path / "iter_0000004" / f"mp_rank_{r:02d}" / "model_optim_rng.pt"
        path.parent.mkdir(parents=True)
        torch.save({"iteration": 4, "model": shard, "config": dataclasses.asdict(cfg)}, path)
    model, _, _ = load_model(str(tmp_path / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt"))
    merged = model.state_dict()
    assert merged.keys() == whole.keys()
    assert all(torch.equal(merged[k], whole[k]) for k in whole)
