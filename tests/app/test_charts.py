"""Chart builders, checked on their Vega-Lite spec: band + line + NaN/Inf markers, spikes kept."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from app.ui import chart_frames, chart_style, charts, heatmaps


def _curve(n: int = 10, **overrides: dict[int, dict]) -> pd.DataFrame:
    rows = []
    for b in range(n):
        rows.append({"bucket": b, "x_lo": b * 10, "x_hi": b * 10 + 9, "min": 1.0 + b, "max": 2.0 + b, "mean": 1.5 + b,
                     "first": 1.2 + b, "last": 1.8 + b, "count": 10, "nan_count": 0, "posinf_count": 0,
                     "neginf_count": 0})
    df = pd.DataFrame(rows)
    for b, values in overrides.get("rows", {}).items():
        for k, v in values.items():
            df.loc[b, k] = v
    return df


def _layers(chart) -> tuple[list[dict], dict]:
    spec = chart.to_dict()
    return spec.get("layer", [spec]), spec.get("datasets", {})


def _mark(layer: dict) -> str:
    mark = layer["mark"]
    return mark["type"] if isinstance(mark, dict) else mark


def _data(layer: dict, datasets: dict) -> list[dict]:
    return datasets[layer["data"]["name"]]


def test_envelope_draws_band_line_and_nonfinite_markers():
    curve = _curve(rows={3: {"nan_count": 2}, 7: {"posinf_count": 1, "neginf_count": 1}})
    layers, datasets = _layers(charts.envelope(curve, metric="loss"))
    marks = [_mark(layer) for layer in layers]
    assert marks[:4] == ["area", "line", "rule", "point"]
    band = layers[0]
    assert band["encoding"]["y"]["field"] == "lo" and band["encoding"]["y2"]["field"] == "hi"
    assert band["encoding"]["y"]["axis"]["title"] == "loss (nats/token)"
    assert band["encoding"]["x"]["axis"]["title"] == "step"
    flagged = _data(layers[2], datasets)
    assert sorted(r["x"] for r in flagged) == [30, 70]
    assert {(r["nan"], r["posinf"], r["neginf"]) for r in flagged} == {(2, 0, 0), (0, 1, 1)}


def test_envelope_of_a_bucket_that_is_all_nan_still_marks_it():
    curve = _curve(rows={4: {"min": math.nan, "max": math.nan, "mean": math.nan, "last": math.nan, "nan_count": 10}})
    layers, datasets = _layers(charts.envelope(curve, metric="loss"))
    assert [r["x"] for r in _data(layers[2], datasets)] == [40]


def test_a_single_spike_survives_in_the_band_while_the_line_hides_it():
    curve = _curve(rows={5: {"max": 1e4}})
    layers, datasets = _layers(charts.envelope(curve, metric="loss", smoothing=5))
    band = _data(layers[0], datasets)
    assert max(r["hi"] for r in band) == 1e4
    assert max(r["line"] for r in _data(layers[1], datasets)) < 100


@pytest.mark.parametrize("buckets", [3, 17, 200, 2000])
def test_a_single_spike_in_a_real_archive_curve_survives_any_bucket_count(fixture_archive, buckets):
    from telemetry import Archive

    with Archive(fixture_archive, recover=False) as archive:
        curve = archive.curve("llm-demo", "loss", buckets=buckets)
    layers, datasets = _layers(charts.envelope(curve, metric="loss"))
    assert max(r["hi"] for r in _data(layers[0], datasets) if r["hi"] is not None) == pytest.approx(50.01)
    assert sum(r["nan"] for r in _data(layers[2], datasets)) >= 2  # the NaN at step 150 on both ranks


def test_log_scale_leaves_nonpositive_values_out_instead_of_breaking_the_scale():
    curve = _curve(rows={0: {"min": -1.0}, 1: {"min": 0.0}})
    layers, datasets = _layers(charts.envelope(curve, metric="grad_norm", log=True))
    assert layers[0]["encoding"]["y"]["scale"]["type"] == "log"
    band = _data(layers[0], datasets)
    assert band[0]["lo"] is None and band[1]["lo"] is None and band[2]["lo"] == 3.0


def test_incidents_are_rules_with_kind_colour_and_tooltip():
    curve = _curve()
    events = pd.DataFrame({"step": [20, 55], "kind": ["loss_spike", "checkpoint_saved"],
                           "severity": ["warning", "info"],
                           "message": ["spike", None], "attempt": [0, 0], "rank": [0, 0], "wall_time": [None, None],
                           "data_chunk": [3, None]})
    layers, datasets = _layers(charts.envelope(curve, metric="loss", events=chart_frames.events_on_x(events, "step")))
    rule = layers[-1]
    assert _mark(rule) == "rule" and rule["encoding"]["color"]["field"] == "kind"
    assert {r["kind"] for r in _data(rule, datasets)} == {"loss_spike", "checkpoint_saved"}
    assert "message" in {t["field"] for t in rule["encoding"]["tooltip"]}


def test_events_on_tokens_axis_are_placed_by_interpolating_tokens_seen():
    tokens = pd.DataFrame({"x_lo": [0, 100], "mean": [0.0, 1000.0]})
    events = pd.DataFrame({"step": [50], "kind": ["nan"], "wall_time": [None]})
    assert chart_frames.events_on_x(events, "tokens", tokens)["x"].tolist() == [500.0]


def test_downsample_minmax_keeps_a_single_spike_and_dip_and_caps_rows():
    n = 1_000_000
    df = pd.DataFrame({"step": np.arange(n), "value": np.ones(n)})
    df.loc[123_457, "value"] = 1e6
    df.loc[765_431, "value"] = -1e6
    out = chart_frames.downsample_minmax(df, "step", "value", max_rows=2000)
    assert len(out) <= 2100
    assert out["value"].max() == 1e6 and out["value"].min() == -1e6


def test_smoothing_changes_the_line_only():
    curve = _curve(rows={5: {"mean": 100.0}})
    raw = chart_frames.curve_frame(curve)
    smoothed = chart_frames.curve_frame(curve, smoothing=5)
    assert smoothed["line"].max() < raw["line"].max()
    assert smoothed["hi"].tolist() == raw["hi"].tolist()


def test_find_stragglers_flags_the_rank_slower_than_the_margin():
    per_rank = pd.DataFrame({"rank": [0, 1, 2, 3], "median_step_time_s": [1.0, 1.02, 1.3, 0.99]})
    out = heatmaps.find_stragglers(per_rank, margin=0.10)
    assert out.loc[out["straggler"], "rank"].tolist() == [2]
    assert out.loc[2, "slower_pct"] == pytest.approx((1.3 / 1.01 - 1) * 100)
    assert heatmaps.find_stragglers(per_rank, margin=0.5)["straggler"].sum() == 0


def test_lineage_frame_marks_steps_rerun_by_a_later_attempt_as_abandoned():
    curves = pd.DataFrame({"attempt": [0, 0, 0, 1, 1], "x_lo": [0, 100, 250, 200, 300],
                           "x_hi": [99, 199, 299, 299, 399],
                           "min": 1.0, "max": 2.0, "mean": 1.5, "count": 1})
    lineage = pd.DataFrame({"attempt": [0, 1], "first_step": [0, 200], "last_step": [299, 399],
                            "resumed_from_step": [None, 200]})
    out = chart_frames.lineage_frame(curves, lineage)
    assert out["branch"].tolist() == ["journey", "journey", "abandoned", "journey", "journey"]
    spec = charts.lineage_chart(curves, lineage).to_dict()
    assert [_mark(layer) for layer in spec["layer"]] == ["area", "line", "rule"]


def test_heatmap_is_rank_by_bucket_rects_with_stragglers_labelled():
    df = pd.DataFrame({"rank": [0, 0, 1, 1], "bucket": [0, 1, 0, 1], "x_lo": [0, 50, 0, 50], "x_hi": [49, 99, 49, 99],
                       "value": [0.5, 0.5, 0.65, 0.7]})
    spec = heatmaps.heatmap(heatmaps.with_bucket_ends(df, "x_lo", "x_hi"), x="step", value_title="step time (s)",
                          stragglers=[1]).to_dict()
    assert spec["mark"]["type"] == "rect" and spec["encoding"]["y"]["title"] == "rank"
    rows = spec["datasets"][spec["data"]["name"]]
    assert [(r["x0"], r["x1"]) for r in rows if r["rank"] == 0] == [(0, 50), (50, 99)]
    assert {r["rank_label"] for r in rows} == {"0", "1 (straggler)"}


def test_evals_chart_has_a_line_per_benchmark_and_a_stderr_band():
    evals = pd.DataFrame({"step": [1, 2, 1, 2], "tokens_seen": [10, 20, 10, 20], "benchmark": ["a", "a", "b", "b"],
                          "metric": "acc", "value": [0.1, 0.2, 0.3, 0.4], "stderr": 0.05})
    spec = charts.evals_chart(evals).to_dict()
    band, line = spec["layer"]
    assert _mark(band) == "area" and line["encoding"]["color"]["field"] == "series"
    rows = spec["datasets"][band.get("data", spec.get("data"))["name"]]  # shared data is hoisted to the top
    assert rows[0]["lo"] == pytest.approx(0.05) and rows[0]["hi"] == pytest.approx(0.15)


def test_result_chart_of_a_big_result_ships_a_few_thousand_rows_with_the_spike():
    df = pd.DataFrame({"step": np.arange(200_000), "v": np.zeros(200_000)})
    df.loc[77_777, "v"] = 9.0
    spec = charts.result_chart(df, x="step", y="v").to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert len(rows) <= chart_style.MAX_ROWS_PER_SERIES + 100 and max(r["v"] for r in rows) == 9.0


def test_metric_titles_carry_units():
    assert chart_style.metric_title("step_time_s") == "step time (s)"
    assert chart_style.metric_title("mem_allocated_bytes") == "mem allocated (bytes)"
    assert chart_style.metric_title("tokens_per_s") == "throughput (tokens/s)"
    assert chart_style.fmt_count(2_048_000) == "2.05 M" and chart_style.fmt_count(None) == "—"
    assert chart_style.fmt_count(999_999) == "1 M" and chart_style.fmt_count(1_048_576_000_000) == "1.05 T"
    assert chart_style.fmt_count(499) == "499"


def test_heatmap_of_a_rank_driving_two_gpus_has_a_row_per_gpu():
    df = pd.DataFrame({"rank": [0, 0, 0, 0], "gpu_index": [0, 0, 1, 1], "bucket": [0, 1, 0, 1],
                       "t_lo": [0.0, 10.0, 0.0, 10.0], "t_hi": [9.0, 19.0, 9.0, 19.0], "value": [40.0, 41, 90, 91]})
    rows = heatmaps.with_bucket_ends(df, "t_lo", "t_hi", by=["rank", "gpu_index"])
    assert list(rows["x1"]) == [10.0, 19.0, 10.0, 19.0]  # each GPU's row reaches its own next bucket
    spec = heatmaps.heatmap(rows, x="step", value_title="GPU util (%)").to_dict()
    assert spec["encoding"]["y"]["sort"] == ["0 · GPU 0", "0 · GPU 1"]
    one_gpu_per_rank = df.assign(rank=[0, 0, 1, 1])
    spec = heatmaps.heatmap(heatmaps.with_bucket_ends(one_gpu_per_rank, "t_lo", "t_hi"), x="step",
                            value_title="GPU util (%)").to_dict()
    assert spec["encoding"]["y"]["sort"] == ["0", "1"]  # one GPU per rank: a row per rank, as before
