"""A small archive written by the real `telemetry.Writer`, holding everything the app draws.

Runs:
- `llm-demo` (2 ranks, 2 attempts): attempt 0 runs steps 0-299 and crashes, attempt 1 resumes
  from step 200 and finishes at 499 (steps 200-299 of attempt 0 are an abandoned branch).
  Loss has a NaN at step 150 (attempt 0), +Inf at 160 and a single spike (50.0) at step 420;
  grad_norm has -Inf at 430. Rank 1 is 30% slower (a straggler). Events, checkpoints (one
  without optimizer state, one saved in bf16), data chunks, GPU samples, evals, memorization.
- `baseline` (1 rank, finished, no GPU samples): a second run to compare with.
- `empty-run`: opened and closed without a single point.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.ui import state

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
DEMO_RUN = "llm-demo"
BASELINE_RUN = "baseline"
EMPTY_RUN = "empty-run"
SPIKE_STEP = 420
NAN_STEP = 150
POSINF_STEP = 160
NEGINF_STEP = 430


def _loss(step: int) -> float:
    if step == NAN_STEP:
        return math.nan
    if step == POSINF_STEP:
        return math.inf
    if step == SPIKE_STEP:
        return 50.0
    return 2.0 + 8.0 / (1.0 + step / 40.0) + 0.05 * math.sin(step / 3.0)


def _write_demo_attempt(root: str, attempt: int, steps: range, status: str, **extra) -> None:
    from telemetry import Writer, WriterConfig

    cfg = WriterConfig(flush_interval_s=0.2)
    writers = [
        Writer(root, DEMO_RUN, rank=r, attempt=attempt, world_size=2, project="fixture", dp_size=2, tp_size=1,
               pp_size=1, framework="reference", host="node-0", seed=1234 + attempt, writer_config=cfg, **extra)
        for r in range(2)
    ]
    for r, w in enumerate(writers):
        w.rank_info(local_rank=r, host="node-0", gpu_uuid=f"GPU-{r}", dp_rank=r, tp_rank=0, pp_rank=0)
    for step in steps:
        for r, w in enumerate(writers):
            slow = 1.3 if r == 1 else 1.0
            wall = T0 + attempt * 10_000 + step * 0.5 * slow
            grad = -math.inf if step == NEGINF_STEP else 1.0 + 0.3 * math.cos(step / 7.0)
            w.metrics(step, {
                "loss": _loss(step) + 0.01 * r, "grad_norm": grad, "lr": 3e-4 * min(1.0, (step + 1) / 50),
                "tokens_seen": float((step + 1) * 4096), "tokens_per_s": 8192.0 / slow + 10 * math.sin(step),
                "step_time_s": 0.5 * slow,
            }, wall_time=wall)
            if step % 10 == 0:
                for name, value in (("gpu.util", 90.0 / slow), ("gpu.power_w", 300.0 - 20 * r),
                                    ("gpu.temp_c", 60.0 + 5 * r), ("gpu.mem_used_bytes", 40e9 + r * 1e9)):
                    w.system(name, value, gpu_index=r, gpu_uuid=f"GPU-{r}", host="node-0", wall_time=wall)
    w0 = writers[0]
    last = steps[-1]
    if attempt == 0:
        w0.event("nan", step=NAN_STEP, severity="error", message="loss is NaN", data_chunk=3,
                 sample_ids=[301, 302, 303], wall_time=T0 + NAN_STEP * 0.5)
        w0.event("inf", step=POSINF_STEP, severity="error", message="loss is +Inf", data_chunk=3,
                 sample_ids=[321], wall_time=T0 + POSINF_STEP * 0.5)
        w0.event("dropped_records", step=120, severity="warning", message="12 records dropped (queue full)",
                 details={"dropped": 12}, wall_time=T0 + 60)
        w0.checkpoint(step=100, tokens_seen=101 * 4096, uri="file:///ckpt/step100", bytes=1_000_000,
                      has_optimizer_state=False, weights_dtypes=["float32"], optimizer_dtypes=[],
                      data_chunk=2, problems=["no optimizer state: resuming restarts Adam moments"])
        w0.event("checkpoint_saved", step=100, message="saved step 100", wall_time=T0 + 50)
        w0.checkpoint(step=200, tokens_seen=201 * 4096, uri="file:///ckpt/step200", bytes=900_000,
                      has_optimizer_state=True, weights_dtypes=["bfloat16"], optimizer_dtypes=["float32"],
                      data_chunk=4, problems=["weights saved in bfloat16, not float32"])
        w0.event("checkpoint_saved", step=200, message="saved step 200", wall_time=T0 + 100)
        for chunk in range(6):
            w0.data_chunk(chunk, first_step=chunk * 50, last_step=chunk * 50 + 49, tokens=50 * 4096,
                          source_mix={"web": 0.7, "code": 0.3})
    else:
        w0.event("restart", step=200, severity="warning", message="resumed from step 200 after a crash",
                 wall_time=T0 + 10_000 + 100)
        w0.event("nan", step=250, severity="error", message="loss is NaN again in chunk 3 (other order)",
                 data_chunk=3, sample_ids=[301], wall_time=T0 + 10_000 + 125)
        w0.event("loss_spike", step=SPIKE_STEP, severity="warning", message="loss 50.0 is 20x the running mean",
                 data_chunk=8, sample_ids=[801, 802], wall_time=T0 + 10_000 + SPIKE_STEP * 0.5)
        w0.event("data_chunk_skipped", step=440, severity="warning", message="chunk 8 skipped after the spike",
                 data_chunk=8, wall_time=T0 + 10_000 + 220)
        w0.checkpoint(step=400, tokens_seen=401 * 4096, uri="file:///ckpt/step400", bytes=2_000_000,
                      has_optimizer_state=True, weights_dtypes=["float32"], optimizer_dtypes=["float32"],
                      data_chunk=8, problems=[])
        w0.event("checkpoint_saved", step=400, message="saved step 400", wall_time=T0 + 10_000 + 200)
        for chunk in range(4, 10):
            w0.data_chunk(chunk, first_step=chunk * 50, last_step=chunk * 50 + 49, tokens=50 * 4096)
        for step in (100, 200, 400, last):
            for bench, base in (("hellaswag", 0.3), ("arc_easy", 0.4)):
                w0.row("evals", step=step, benchmark=bench, metric="acc", value=base + step / 2000, stderr=0.01,
                       n_shot=0, harness="lm-eval", source="fixture", tokens_seen=(step + 1) * 4096)
        w0.row("memorization", step=400, data_chunk=3, k=32, l=32, n_sequences=1000, token_match=0.12,
               full_match=0.01)
    for w in reversed(writers):
        w.close(status=status)
    del last


def _write_baseline(root: str) -> None:
    from telemetry import Writer, WriterConfig

    with Writer(root, BASELINE_RUN, world_size=1, project="fixture", seed=7,
                writer_config=WriterConfig(flush_interval_s=0.2)) as w:
        for step in range(300):
            w.metrics(step, {"loss": 2.2 + 8.0 / (1.0 + step / 30.0), "grad_norm": 1.1, "lr": 3e-4,
                             "tokens_seen": float((step + 1) * 4096), "tokens_per_s": 9000.0},
                      wall_time=T0 + 50_000 + step)


def build_fixture_archive(root: str | os.PathLike) -> str:
    """Write the fixture archive at `root` with the real Writer; return its URL (the folder)."""
    from telemetry import Writer

    root = str(root)
    _write_demo_attempt(root, 0, range(0, 300), "crashed")
    _write_demo_attempt(root, 1, range(200, 500), "finished", resumed_from_step=200,
                        resumed_from_checkpoint="file:///ckpt/step200", reason="crash at step 299")
    _write_baseline(root)
    Writer(root, EMPTY_RUN, project="fixture").close()
    return root


# Runs as importers write them: each tool names its series its own way (W&B's history keys, TensorBoard
# tags, Megatron's log, the HF Trainer's log) and logs a few single-point values (sizes, final scores)
IMPORTED_RUNS = {
    "wandb-import": {"train/loss": 0, "val/loss": 10, "train/grad_norm": 0, "train/learning_rate": 0,
                     "_runtime": 0, "artifact/code (bytes)": None, "artifact/model (bytes)": None,
                     "final/eval time ms": None},
    "tensorboard-import": {"loss/train": 0, "loss/val": 10, "learning_rate": 0, "accuracy/train": 0},
    "megatron-import": {"lm loss": 0, "lm loss validation": 10, "grad-norm": 0, "lr-Adam": 0, "loss-scale": 0},
    "hf-import": {"loss": 0, "eval_loss": 10, "grad_norm": 0, "learning_rate": 0, "train_runtime": None},
}
IMPORTED_LAST_LOSS = 2.0 + 8.0 / (1.0 + 99 / 40.0)  # the training loss at the last step (99)
WANDB_GPUS = 2  # the W&B run: one process on a host with two GPUs (gpu.0.*, gpu.1.*)


def build_imported_archive(root: str | os.PathLike) -> str:
    """Runs named the way W&B, TensorBoard, Megatron and HF imports name their series (see IMPORTED_RUNS):
    a series with offset 0 is logged every step, 10 every tenth step (validation), None once at the end."""
    from telemetry import Writer, WriterConfig

    root = str(root)
    for run, series in IMPORTED_RUNS.items():
        with Writer(root, run, world_size=1, project="imports", writer_config=WriterConfig(flush_interval_s=0.2)) as w:
            for step in range(100):
                values = {}
                for name, every in series.items():
                    if every == 0 or (every and step % every == 0):
                        loss = 2.0 + 8.0 / (1.0 + step / 40.0)
                        values[name] = loss + (0.3 if every == 10 else 0.0) if "loss" in name else 1e-4 * (step + 1)
                    elif every is None and step == 99:
                        values[name] = 12_345.0
                w.metrics(step, values, wall_time=T0 + 80_000 + step)
                if run == "wandb-import" and step % 10 == 0:
                    for gpu in range(WANDB_GPUS):
                        w.system("gpu.util", 40.0 + 50 * gpu, gpu_index=gpu, wall_time=T0 + 80_000 + step)
    return root


@pytest.fixture(scope="session")
def imported_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_imported_archive(Path(tmp_path_factory.mktemp("imported-archive")) / "archive")


@pytest.fixture(scope="session")
def fixture_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The fixture archive (built once per session; tests only read it)."""
    return build_fixture_archive(Path(tmp_path_factory.mktemp("app-archive")) / "archive")


URLS = {path: url for path, _title, url, _icon in state.PAGES}  # page file -> deep-link name
MAIN = Path(__file__).resolve().parents[2] / "app" / "ui" / "main.py"


@pytest.fixture
def open_app(fixture_archive, monkeypatch):
    """open_app(page_file=None, archive=None, **query_params) -> AppTest after its first run.

    The page is opened the way a deep link does (`?page=journey`), so main.py (sidebar, archive,
    run and parameter checks) runs before the page, as in the browser.
    """
    def make(page_file: str | None = None, archive: str | None = None, **params: str) -> AppTest:
        monkeypatch.setenv("FLIGHTLOG_ARCHIVE", archive or fixture_archive)
        at = AppTest.from_file(str(MAIN), default_timeout=60)
        if page_file:
            at.query_params["page"] = URLS[page_file]
        for k, v in params.items():
            at.query_params[k] = v
        return at.run()
    return make
