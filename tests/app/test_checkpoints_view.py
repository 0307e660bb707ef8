"""The Checkpoints & data page's checkpoint science (evals across checkpoints, memorization) through
AppTest, on an archive written by the real Writer, and the chart builders' frames without Streamlit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from app.ui import eval_charts, state

MAIN = Path(__file__).resolve().parents[2] / "app" / "ui" / "main.py"
URL = {path: url for path, _title, url, _icon in state.PAGES}["views/checkpoints.py"]
RUN = "science-run"
STEPS = (100, 200, 300)
CHUNKS = {0: (1, 50), 1: (51, 100), 2: (101, 150), 3: (151, 200), 4: (201, 300)}  # chunk -> steps that read it


def _mem(step: int, chunk: int) -> float:
    """Chunks read recently are memorized most; chunk 9 is never read (a baseline)."""
    if chunk not in CHUNKS or CHUNKS[chunk][0] > step:
        return 0.05
    return round(0.6 - (step - CHUNKS[chunk][1]) / 1000 + 0.01 * chunk, 4)


@pytest.fixture(scope="module")
def science_archive(tmp_path_factory) -> str:
    from telemetry import Writer

    root = str(tmp_path_factory.mktemp("science") / "archive")
    with Writer(root, RUN) as w:
        for step in range(1, 301):
            w.metrics(step, {"loss": 5.0 / (1 + step / 50), "tokens_seen": float(step * 1024)})
        for chunk, (lo, hi) in CHUNKS.items():
            w.data_chunk(chunk, first_step=lo, last_step=hi, tokens=(hi - lo + 1) * 1024)
        for step in STEPS:
            w.checkpoint(step=step, tokens_seen=step * 1024, uri=f"/ckpt/{step}.pt", bytes=1000,
                         has_optimizer_state=True, weights_dtypes=["float32"], optimizer_dtypes=["float32"])
            for bench, metric, value in (("arc_easy", "acc", 0.3 + step / 1000),
                                         ("hellaswag", "acc_norm", 0.25 + step / 2000),
                                         ("heldout_ppl", "perplexity", 40.0 - step / 10)):
                w.row("evals", step=step, benchmark=bench, metric=metric, value=value, stderr=0.01, n_shot=0,
                      harness="lm-eval", source="test", tokens_seen=step * 1024)
            for chunk in (0, 1, 2, 3, 4, 9):
                w.row("memorization", step=step, data_chunk=chunk, k=32, l=32, n_sequences=64,
                      token_match=_mem(step, chunk), full_match=_mem(step, chunk) / 4)
    return root


def _open(archive: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", archive)
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.query_params["page"] = URL
    at.query_params["run"] = RUN
    return at.run()


def _charts(at: AppTest) -> dict[str, dict]:
    out = {}
    for el in at.get("vega_lite_chart"):
        spec = json.loads(el.proto.spec)
        spec["frames"] = {d.name: dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data)
                          for d in el.proto.datasets}
        title = spec.get("title", "")
        out[title.get("text", "") if isinstance(title, dict) else str(title)] = spec
    return out


def test_checkpoints_page_draws_scores_heatmap_and_three_memorization_views(science_archive, monkeypatch):
    at = _open(science_archive, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    charts = _charts(at)
    assert {"Evaluations (band: ± stderr)", "Benchmarks × checkpoints (colour: relative score)",
            "Memorization (token match) against checkpoint",
            "Memorization against how recently the chunk was read (dashed: not read yet)",
            "Correlation of memorization between checkpoints (over chunks)"} <= set(charts)
    heat = pd.concat(charts["Benchmarks × checkpoints (colour: relative score)"]["frames"].values())
    assert len(heat) == 9  # 3 benchmarks x 3 checkpoints
    scores = pd.concat(charts["Evaluations (band: ± stderr)"]["frames"].values())
    arc = scores[scores["series"] == "arc_easy / acc"].sort_values("x")
    assert list(arc["x"]) == [s * 1024 for s in STEPS]  # drawn against tokens
    assert list(arc["hi"] - arc["lo"]) == pytest.approx([0.02] * 3)


def test_switching_to_full_match_redraws_the_memorization_charts(science_archive, monkeypatch):
    at = _open(science_archive, monkeypatch)
    at.radio(key="mem_measure").set_value("full_match").run()
    assert not at.exception
    assert "Memorization (full match) against checkpoint" in _charts(at)


def test_recency_frame_measures_steps_since_each_chunk_was_read():
    mem = pd.DataFrame({"step": [300, 300, 100, 100], "data_chunk": [4, 0, 2, 9],
                        "token_match": [0.6, 0.3, 0.05, 0.05]})
    chunks = pd.DataFrame({"chunk_id": list(CHUNKS), "first_step": [v[0] for v in CHUNKS.values()],
                           "last_step": [v[1] for v in CHUNKS.values()]})
    f = eval_charts.recency_frame(mem, chunks)
    assert list(f["steps_since_seen"].iloc[:2]) == [0, 250]
    assert list(f["seen"]) == [True, True, False, False]  # chunk 2 is read after step 100; chunk 9 never


def test_correlation_frame_is_one_for_checkpoints_that_rank_chunks_alike():
    mem = pd.DataFrame({"step": [1, 1, 1, 2, 2, 2, 3, 3, 3], "data_chunk": [0, 1, 2] * 3,
                        "token_match": [0.1, 0.2, 0.3, 0.2, 0.4, 0.6, 0.3, 0.2, 0.1]})
    corr = eval_charts.correlation_frame(mem).set_index(["step_a", "step_b"])["correlation"]
    assert corr[(1, 2)] == pytest.approx(1.0) and corr[(1, 3)] == pytest.approx(-1.0) and corr[(2, 2)] == 1.0


def test_heatmap_frame_puts_the_best_checkpoint_at_one_even_where_lower_is_better():
    evals = pd.DataFrame({"step": [1, 2, 1, 2], "benchmark": ["arc", "arc", "heldout_ppl", "heldout_ppl"],
                          "metric": ["acc", "acc", "perplexity", "perplexity"], "value": [0.2, 0.4, 30.0, 20.0],
                          "stderr": [None] * 4})
    f = eval_charts.heatmap_frame(evals).set_index(["series", "step"])["relative"]
    assert f[("arc / acc", 2)] == 1.0 and f[("heldout_ppl / perplexity", 2)] == 1.0
    assert f[("arc / acc", 1)] == 0.0 and f[("heldout_ppl / perplexity", 1)] == 0.0
