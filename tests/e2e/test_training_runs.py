"""Real training runs with flightlog attached, read back through telemetry.Archive.

Multi-process torch.distributed (gloo) on CPU, the reference Megatron-style trainer, real
Parquet and DuckDB: what a user of `flightlog train` / `flightlog demo` gets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from telemetry import Archive, recover
from trainer_hooks.reference.data import TokenStream
from trainer_hooks.reference.train import launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[2]


def _rows(archive: Archive, query: str, params: list | None = None) -> list[dict]:
    return archive.sql(query, params).to_pylist()


@pytest.mark.parametrize(("dp", "tp"), [(2, 1), (1, 2)])
def test_two_process_gloo_run_records_both_ranks_with_their_dp_tp_coordinates(tiny_config, archive, dp, tp):
    cfg = tiny_config(run=f"two-ranks-dp{dp}-tp{tp}", dp=dp, tp=tp, steps=12)
    assert launch(cfg) == 0

    run_id = cfg.run
    files = sorted(p.name for p in Path(archive, "metrics", f"run_id={run_id}").glob("*.parquet"))
    assert any("-r0-" in f for f in files) and any("-r1-" in f for f in files), files
    with Archive(archive) as a:
        ranks = _rows(a, "SELECT rank, dp_rank, tp_rank, pp_rank FROM ranks WHERE run_id = ? ORDER BY rank", [run_id])
        assert ranks == [
            {"rank": r, "dp_rank": r // tp, "tp_rank": r % tp, "pp_rank": 0} for r in range(2)
        ]
        run = _rows(a, "SELECT status, world_size, dp_size, tp_size FROM runs WHERE run_id = ?", [run_id])
        assert run == [{"status": "finished", "world_size": 2, "dp_size": dp, "tp_size": tp}]
        per_rank = _rows(a, "SELECT rank, count(DISTINCT step) AS steps, min(step) AS lo, max(step) AS hi "
                            "FROM metrics WHERE run_id = ? AND name = 'loss' GROUP BY rank ORDER BY rank", [run_id])
        assert per_rank == [{"rank": r, "steps": 12, "lo": 1, "hi": 12} for r in range(2)]
        loss = a.metrics(run_id, ["loss"], rank=0)
        assert loss.sort_values("step")["value"].iloc[-1] < loss.sort_values("step")["value"].iloc[0]
        if tp == 2:  # tensor-parallel ranks hold the same batch and compute the same loss
            same = _rows(a, "SELECT count(*) AS n FROM metrics m0 JOIN metrics m1 USING (run_id, step, name) "
                            "WHERE run_id = ? AND name = 'loss' AND m0.rank = 0 AND m1.rank = 1 "
                            "AND abs(m0.value - m1.value) < 1e-4", [run_id])
            assert same == [{"n": 12}]


def test_poisoned_chunk_is_named_by_nan_events_and_by_incidents_across_two_seeds(tiny_config, archive):
    poisoned = 3
    expected: dict[int, int] = {}  # seed -> first step (1-based) that reads the poisoned chunk
    for seed in (0, 1):
        # Chunks are 2 steps long and every 2nd step is probed: each chunk has one probed step.
        cfg = tiny_config(run="poisoned", dp=2, seed=seed, poison_chunk=poisoned, steps=12, nan_layer_probe_every=2)
        data = TokenStream(cfg.data_config())
        expected[seed] = data.first_step_of_chunk(poisoned) + 1
        assert launch(cfg) == 0  # a fresh launch of the same run: attempt 0, then attempt 1
    assert expected[0] != expected[1], "the two seeds should read the chunk at different steps"

    with Archive(archive) as a:
        nan = a.events("poisoned", kinds=["nan"])
        assert len(nan) > 0 and set(nan["data_chunk"]) == {poisoned}
        seeds = {r["attempt"]: r["seed"]
                 for r in _rows(a, "SELECT attempt, seed FROM attempts WHERE run_id = 'poisoned'")}
        assert seeds == {0: 0, 1: 1}
        for attempt, seed in seeds.items():
            cfg = tiny_config(dp=2, seed=seed, poison_chunk=poisoned)
            data = TokenStream(cfg.data_config())
            for rank in (0, 1):
                first = nan[(nan["attempt"] == attempt) & (nan["rank"] == rank)].sort_values("step").iloc[0]
                assert first["step"] == expected[seed]
                assert list(first["sample_ids"]) == data.batch(expected[seed] - 1, rank, 2).sample_ids
                assert "tok_emb" in first["layer"], first["layer"]  # the corrupt embedding row, not a later layer
                assert json.loads(first["details_json"])["metric"] in ("loss", "grad_norm")
        # every step of the chunk is non-finite, and no other step is
        loss = _rows(a, "SELECT attempt, step, value FROM metrics "
                        "WHERE run_id = 'poisoned' AND name = 'loss' AND rank = 0")
        for r in loss:
            in_chunk = expected[seeds[r["attempt"]]] <= r["step"] < expected[seeds[r["attempt"]]] + 2
            assert (r["value"] != r["value"]) == in_chunk, r  # NaN exactly inside the chunk

        chunks = a.chunk_incidents("poisoned")
        row = chunks[chunks["data_chunk"] == poisoned].iloc[0]
        assert row["n_attempts"] == 2 and list(row["seeds"]) == [0, 1]
        assert set(chunks["data_chunk"]) == {poisoned}

    out = subprocess.run([sys.executable, "-m", "app.cli", "incidents", "poisoned", "--archive", archive],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert f"chunk {poisoned}:" in out.stdout and "2 attempt(s)" in out.stdout and "seeds [0, 1]" in out.stdout


@pytest.fixture(scope="module")
def crashed_and_resumed(module_dir: Path, make_tiny_config) -> str:
    """One run, recorded once for the tests below: attempt 0 saves checkpoints at 4 and 8 (and one
    without optimizer state at 6) and is SIGKILLed after step 10; attempt 1 resumes from step 8."""
    archive = str(module_dir / "crash-archive")
    cfg = make_tiny_config(archive, str(module_dir / "crash-checkpoints"), run="crash-resume", dp=2, steps=16,
                           checkpoint_every=4, save_without_optimizer_at=6, crash_at_step=10)
    code = launch(cfg)
    assert code == -9, f"the first launch should die by SIGKILL, got exit code {code}"
    assert launch(dataclasses.replace(cfg, crash_at_step=None, resume_from=cfg.checkpoint_dir)) == 0
    # The killed launch's processes are gone: recovery converts their staged data at once.
    recover(archive)
    return archive


def test_crash_and_resume_gives_two_attempts_and_a_journey_that_continues_at_the_resume_step(crashed_and_resumed):
    with Archive(crashed_and_resumed) as a:
        attempts = _rows(a, "SELECT attempt, end_status, resumed_from_step FROM attempts "
                            "WHERE run_id = 'crash-resume' ORDER BY attempt")
        assert attempts == [
            {"attempt": 0, "end_status": "crashed", "resumed_from_step": None},
            {"attempt": 1, "end_status": "finished", "resumed_from_step": 8},
        ]
        spans = _rows(a, "SELECT attempt, min(step) AS lo, max(step) AS hi FROM metrics WHERE run_id = 'crash-resume' "
                         "AND name = 'loss' AND rank = 0 GROUP BY attempt ORDER BY attempt")
        assert spans[1] == {"attempt": 1, "lo": 9, "hi": 16}
        # the killed attempt lost at most its last flush interval: it reached the checkpoint at 8
        assert spans[0]["lo"] == 1 and 8 <= spans[0]["hi"] <= 10
        journey = _rows(a, "SELECT step, attempt FROM journey_metrics WHERE run_id = 'crash-resume' "
                           "AND name = 'loss' AND rank = 0 ORDER BY step")
        assert [r["step"] for r in journey] == list(range(1, 17))  # every step once, no gap, no double
        assert {r["attempt"] for r in journey if r["step"] <= 8} == {0}
        assert {r["attempt"] for r in journey if r["step"] > 8} == {1}
        # tokens_seen is the global count on every rank and goes on across the resume without a jump
        tokens = _rows(a, "SELECT rank, step, value FROM journey_metrics WHERE run_id = 'crash-resume' "
                          "AND name = 'tokens_seen' ORDER BY rank, step")
        per_step = tokens[0]["value"]
        assert per_step > 0 and {r["rank"] for r in tokens} == {0, 1}
        assert all(r["value"] == r["step"] * per_step for r in tokens), tokens
        lineage = a.attempt_lineage("crash-resume")
        assert int(lineage.loc[lineage["attempt"] == 0, "abandoned_steps"].iloc[0]) == spans[0]["hi"] - 8
        loaded = a.events("crash-resume", kinds=["checkpoint_loaded"])
        assert sorted(loaded["rank"]) == [0, 1]  # every rank loads its TP slice
        assert set(loaded["step"]) == {8} and set(loaded["attempt"]) == {1}


def test_checkpoint_without_optimizer_state_is_flagged(crashed_and_resumed):
    with Archive(crashed_and_resumed) as a:
        ckpts = _rows(a, "SELECT attempt, step, has_optimizer_state, problems, uri FROM checkpoints "
                         "WHERE run_id = 'crash-resume' ORDER BY step, attempt")
    by_step = {c["step"]: c for c in ckpts}
    assert sorted(by_step) == [4, 6, 8, 12, 16]
    assert by_step[6]["has_optimizer_state"] is False
    assert any("optimizer" in p for p in by_step[6]["problems"] or []), by_step[6]
    assert all(c["has_optimizer_state"] for s, c in by_step.items() if s != 6)
    assert Path(by_step[6]["uri"].removeprefix("file://")).name == "model_optim_rng.pt"


@pytest.mark.timeout(240)
def test_flightlog_demo_quick_no_ui_runs_end_to_end_and_prints_the_summary_of_two_seeds(tmp_path):
    archive = tmp_path / "demo-archive"
    env = {**os.environ, "FLIGHTLOG_ARCHIVE": str(archive)}
    out = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--quick", "--no-ui"], capture_output=True,
                         text=True, timeout=220, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "flightlog demo summary" in text
    assert "2 attempt(s)" in text and "2 rank(s)" in text
    assert "nan x" in text and ": found" in text
    assert "without optimizer state at step(s) [4]" in text
    assert f"archive: {archive}" in text
    assert "it fails whatever the order" in text
    with Archive(str(archive)) as a:
        runs = a.runs().sort_values("name")
        assert len(runs) == 2 and all(n.startswith("demo-") for n in runs["name"])
        assert set(runs["status"]) == {"finished"}
        first, second = runs["run_id"]
        name, other_name = runs["name"]
        assert other_name.startswith(f"{name}-seed")  # the second seed's run is named after the first
        seeds = {r["run_id"]: r["seeds"] for r in _rows(a, "SELECT run_id, list(DISTINCT seed) AS seeds "
                                                           "FROM attempts GROUP BY run_id")}
        assert seeds[first] == [0] and len(seeds[second]) == 1 and seeds[second] != [0]
        # the corrupted chunk failed under both seeds: chunk_incidents across runs, and each run's own view
        chunks = a.chunk_incidents()
        row = chunks.sort_values("n_incidents", ascending=False).iloc[0]
        assert row["n_runs"] == 2 and sorted(row["seeds"]) == sorted(seeds[first] + seeds[second])
        for run_id in (first, second):
            assert list(a.chunk_incidents(run_id)["data_chunk"]) == [row["data_chunk"]]
        # Compare has two loss curves to overlay
        assert all(len(a.metrics(r, ["loss"], rank=0)) > 0 for r in (first, second))
    assert (tmp_path / "flightlog-checkpoints").is_dir()  # next to the archive, not inside it
