"""Four writer processes (ranks of one run, multiprocessing spawn) write one run concurrently."""

from __future__ import annotations

import multiprocessing as mp

import duckdb

from telemetry import Writer, WriterConfig

STEPS = 5_000


def _rank_main(archive: str, rank: int) -> None:
    cfg = WriterConfig(flush_interval_s=0.05, segment_interval_s=0.3)
    w = Writer(archive, "four ranks", rank=rank, attempt=0, world_size=4, dp_size=4, writer_config=cfg)
    w.rank_info(local_rank=rank, dp_rank=rank, gpu_uuid=f"GPU-{rank}")
    for step in range(STEPS):
        w.metrics(step, {"loss": 1.0 / (step + 1), "grad_norm": float(rank)})
        if step % 1000 == 0:
            w.event("note", step=step, message=f"rank {rank}")
            w.system("gpu.util", 50.0 + rank, gpu_index=rank)
    w.close()


def test_four_ranks_write_one_run_and_every_row_is_present_once(archive, rd):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(archive, r)) for r in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    files = rd.segments(archive, "metrics")
    got = duckdb.sql(f"SELECT rank, count(*), count(DISTINCT (step, name)) FROM read_parquet({files!r}) "
                     "GROUP BY rank ORDER BY rank").fetchall()
    assert got == [(r, 2 * STEPS, 2 * STEPS) for r in range(4)]
    ranks = sorted((r["rank"], r["gpu_uuid"]) for r in rd.table(archive, "ranks").to_pylist())
    assert ranks == [(r, f"GPU-{r}") for r in range(4)]
    assert sorted(r["rank"] for r in rd.table(archive, "events").to_pylist()) == sorted(list(range(4)) * 5)
    assert rd.table(archive, "system").num_rows == 20
    runs = rd.table(archive, "runs").to_pylist()
    assert sorted(r["status"] for r in runs) == ["finished", "running"]  # rank 0 alone owns the run rows
    assert all(r["world_size"] == 4 for r in runs)
