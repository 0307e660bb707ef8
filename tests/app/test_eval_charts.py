"""Evaluations against log-spaced checkpoints (Pythia: 0, 1, 2, 4, ..., 512, then every 1,000): the scores chart
offers a log x axis and one slot per checkpoint, so the early checkpoints do not pile up at x = 0."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from app.ui import eval_charts, state
from telemetry import Writer

STEPS = [0] + [2**i for i in range(10)] + list(range(1000, 6000, 1000))  # 0, 1, 2, 4, ..., 512, 1000, ..., 5000
MAIN = Path(__file__).resolve().parents[2] / "app" / "ui" / "main.py"
URL = {path: url for path, _title, url, _icon in state.PAGES}["views/checkpoints.py"]


def _evals(steps=STEPS) -> pd.DataFrame:
    return pd.DataFrame({"step": steps, "benchmark": "lambada", "metric": "acc", "value": [0.1 + i / 100 for i in
                                                                                          range(len(steps))],
                         "stderr": 0.01, "tokens_seen": [None] * len(steps)})


def _x_scale(chart) -> dict:
    return chart.to_dict()["layer"][1]["encoding"]["x"]


def test_checkpoint_index_gives_every_checkpoint_one_slot_in_step_order():
    frame, title = eval_charts.scores_frame(_evals(), x_scale="index")
    assert list(frame["x"]) == list(range(len(STEPS))) and list(frame["step"]) == STEPS
    assert title == "checkpoint (index, in step order)"
    assert _x_scale(eval_charts.scores_chart(_evals(), x_scale="index"))["title"] == title


def test_the_index_is_shared_by_all_benchmarks_even_where_one_skipped_a_checkpoint():
    two = pd.concat([_evals(), _evals([1, 512, 5000]).assign(benchmark="piqa")])
    frame, _ = eval_charts.scores_frame(two, x_scale="index")
    piqa = frame[frame["benchmark"] == "piqa"]
    assert list(piqa["x"]) == [STEPS.index(1), STEPS.index(512), STEPS.index(5000)]


def test_log_scale_is_symlog_when_a_checkpoint_is_at_step_zero_and_log_otherwise():
    assert _x_scale(eval_charts.scores_chart(_evals(), x_scale="log"))["scale"] == {"type": "symlog"}
    assert _x_scale(eval_charts.scores_chart(_evals(STEPS[1:]), x_scale="log"))["scale"] == {"type": "log"}
    assert "scale" not in _x_scale(eval_charts.scores_chart(_evals()))  # linear: the default
    frame, title = eval_charts.scores_frame(_evals(), x_scale="log")
    assert list(frame["x"]) == STEPS and title == "step (log scale)"


def test_an_unknown_x_scale_is_refused():
    with pytest.raises(ValueError, match="x_scale must be one of linear, log, index"):
        eval_charts.scores_frame(_evals(), x_scale="sqrt")


def test_the_checkpoints_page_switches_the_x_axis(tmp_path, monkeypatch):
    root = str(tmp_path / "archive")
    with Writer(root, "pythia-like") as w:
        w.metric(1, "loss", 3.0)
        for i, step in enumerate(STEPS):
            w.row("evals", step=step, benchmark="lambada", metric="acc", value=0.1 + i / 100, stderr=0.01)
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", root)
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.query_params["page"] = URL
    at.query_params["run"] = "pythia-like"
    at.run()
    at.radio(key="evals_x").set_value("index").run()
    assert not at.exception, [e.value for e in at.exception]
    charts = [json.loads(el.proto.spec) | {"frames": [dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data)
                                                      for d in el.proto.datasets]}
              for el in at.get("vega_lite_chart")]
    scores = next(c for c in charts if "Evaluations" in str(c.get("title")))
    frame = pd.concat(scores["frames"]).drop_duplicates(subset=["step"]).sort_values("step")
    assert list(frame["x"]) == list(range(len(STEPS)))
