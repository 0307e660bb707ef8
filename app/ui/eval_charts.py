"""Altair builders for checkpoint science: evaluations across checkpoints and memorization scores.

Plain DataFrames in (rows of the `evals`, `memorization` and `data_chunks` tables), Altair
charts out, no Streamlit: tested on their Vega-Lite spec and on the frames they draw.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

SCHEME = "tableau10"


# How the scores chart spaces checkpoints: evenly in tokens/steps, on a log scale (log-spaced early checkpoints
# such as Pythia's 1, 2, 4, ..., 512 then every 1,000 would otherwise sit on top of each other at x = 0), or
# one slot per checkpoint in step order.
X_SCALES = ("linear", "log", "index")


def _eval_x(evals: pd.DataFrame) -> tuple[pd.Series, bool]:
    use_tokens = "tokens_seen" in evals and evals["tokens_seen"].notna().all() and len(evals) > 0
    return (evals["tokens_seen"] if use_tokens else evals["step"]).astype("float64"), bool(use_tokens)


def series_label(evals: pd.DataFrame) -> pd.Series:
    return evals["benchmark"].astype(str) + " / " + evals["metric"].astype(str)


def scores_frame(evals: pd.DataFrame, *, x_scale: str = "linear") -> tuple[pd.DataFrame, str]:
    """The rows the scores chart draws: `x` (tokens, else step; for "index" the checkpoint's position in step
    order, 0 = the first), `series`, the stderr band `lo`/`hi`; and the x axis title."""
    if x_scale not in X_SCALES:
        raise ValueError(f"x_scale must be one of {', '.join(X_SCALES)}, not {x_scale!r}")
    data = evals.copy()
    data["x"], use_tokens = _eval_x(data)
    data["series"] = series_label(data)
    err = data["stderr"].fillna(0.0) if "stderr" in data else 0.0
    data["lo"], data["hi"] = data["value"] - err, data["value"] + err
    data = data.dropna(subset=["x"])
    if x_scale == "index":
        data["x"] = data["step"].rank(method="dense").astype("float64") - 1.0
        return data.sort_values(["series", "x"]), "checkpoint (index, in step order)"
    title = "tokens seen" if use_tokens else "step"
    return data.sort_values(["series", "x"]), (f"{title} (log scale)" if x_scale == "log" else title)


def _x_encoding(data: pd.DataFrame, x_scale: str, title: str, use_tokens: bool) -> alt.X:
    if x_scale == "index":
        return alt.X("x:Q", title=title, axis=alt.Axis(format="d", tickMinStep=1))
    fmt = "~s" if use_tokens else ",d"
    if x_scale == "log":
        # symlog draws a checkpoint at step 0 too (a log scale cannot); log proper when every x is positive
        kind = "log" if len(data) and (data["x"] > 0).all() else "symlog"
        return alt.X("x:Q", title=title, scale=alt.Scale(type=kind), axis=alt.Axis(format=fmt))
    return alt.X("x:Q", title=title, axis=alt.Axis(format=fmt))


def scores_chart(evals: pd.DataFrame, *, height: int = 300, x_scale: str = "linear") -> alt.LayerChart:
    """Score against tokens (step when a checkpoint's tokens are unknown): a line per benchmark/metric,
    a band of ± stderr around it. `x_scale`: "linear", "log" or "index" (one slot per checkpoint)."""
    data, title = scores_frame(evals, x_scale=x_scale)
    x = _x_encoding(data, x_scale, title, _eval_x(evals)[1])
    color = alt.Color("series:N", scale=alt.Scale(scheme=SCHEME), legend=alt.Legend(title="benchmark / metric",
                                                                                    orient="bottom"))
    band = alt.Chart(data).mark_area(opacity=0.2).encode(
        x=x, y=alt.Y("lo:Q", title="score", scale=alt.Scale(zero=False)), y2="hi:Q", color=color)
    line = alt.Chart(data).mark_line(point=True).encode(
        x=x, y="value:Q", color=color,
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("step:Q", format=","), alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("stderr:Q", format=".4f")])
    return alt.layer(band, line).properties(height=height, title="Evaluations (band: ± stderr)")


def heatmap_frame(evals: pd.DataFrame) -> pd.DataFrame:
    """One cell per (benchmark/metric, checkpoint step); `relative` rescales each series to [0, 1]
    (its worst to its best checkpoint) so that accuracies and perplexities share one colour scale."""
    data = evals.dropna(subset=["value", "step"]).copy()
    data["series"] = series_label(data)
    data = data.groupby(["series", "step"], as_index=False).agg(value=("value", "last"), stderr=("stderr", "last"))
    grp = data.groupby("series")["value"]
    lo, hi = grp.transform("min"), grp.transform("max")
    span = (hi - lo).replace(0.0, np.nan)
    data["relative"] = ((data["value"] - lo) / span).fillna(0.5)
    lower_better = data["series"].str.contains("ppl|perplexity|loss", case=False, regex=True)
    data.loc[lower_better, "relative"] = 1.0 - data.loc[lower_better, "relative"]
    return data


def eval_heatmap(evals: pd.DataFrame, *, height: int | None = None) -> alt.Chart:
    """Benchmark × checkpoint: colour = each benchmark's score relative to its own range (darker = better)."""
    data = heatmap_frame(evals)
    n = max(1, data["series"].nunique())
    return alt.Chart(data).mark_rect().encode(
        x=alt.X("step:O", title="checkpoint (step)"),
        y=alt.Y("series:N", title=None),
        color=alt.Color("relative:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]),
                        legend=alt.Legend(title="relative score")),
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("step:Q", format=","), alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("stderr:Q", format=".4f")],
    ).properties(height=height or min(500, 30 + 22 * n), title="Benchmarks × checkpoints (colour: relative score)")


def memorization_by_checkpoint(mem: pd.DataFrame, *, measure: str = "token_match", height: int = 260) -> alt.LayerChart:
    """Memorization against checkpoint step: a thin line per data chunk, a thick line for their mean."""
    data = mem.dropna(subset=["step", measure]).copy()
    data["chunk"] = data["data_chunk"].astype("Int64").astype(str)
    mean = data.groupby("step", as_index=False)[measure].mean()
    x = alt.X("step:Q", title="checkpoint (step)", axis=alt.Axis(format=",d"))
    y_title = measure.replace("_", " ")
    per_chunk = alt.Chart(data).mark_line(point=True, opacity=0.45, strokeWidth=1).encode(
        x=x, y=alt.Y(f"{measure}:Q", title=y_title), color=alt.Color("chunk:N", scale=alt.Scale(scheme=SCHEME),
                                                                     legend=alt.Legend(title="data chunk")),
        tooltip=[alt.Tooltip("step:Q", format=","), alt.Tooltip("chunk:N"), alt.Tooltip(f"{measure}:Q", format=".4f"),
                 alt.Tooltip("n_sequences:Q")])
    avg = alt.Chart(mean).mark_line(color="black", strokeWidth=2.5).encode(x=x, y=f"{measure}:Q")
    return alt.layer(per_chunk, avg).properties(height=height,
                                                title=f"Memorization ({y_title}) against checkpoint")


def recency_frame(mem: pd.DataFrame, chunks: pd.DataFrame) -> pd.DataFrame:
    """Each memorization row with `steps_since_seen`: checkpoint step minus the last step that read the
    chunk up to then (NaN and `seen` = False when the chunk was not read before that checkpoint)."""
    data = mem.copy()
    last = []
    spans = {c: g[["first_step", "last_step"]].to_numpy() for c, g in chunks.groupby("chunk_id")} if len(chunks) else {}
    for step, chunk in zip(data["step"], data["data_chunk"], strict=True):
        rows = spans.get(chunk)
        if rows is None or pd.isna(step):
            last.append(np.nan)
            continue
        before = rows[rows[:, 0] <= step]
        last.append(float(min(before[:, 1].max(), step)) if len(before) else np.nan)
    data["last_seen_step"] = last
    data["steps_since_seen"] = data["step"] - data["last_seen_step"]
    data["seen"] = data["last_seen_step"].notna()
    return data


def memorization_by_recency(mem: pd.DataFrame, chunks: pd.DataFrame, *, measure: str = "token_match",
                            height: int = 260) -> alt.LayerChart:
    """Memorization against how many steps ago the chunk was read (per checkpoint); chunks the run had not
    read yet are drawn at the left as a dashed baseline."""
    data = recency_frame(mem, chunks)
    data["checkpoint"] = data["step"].astype("Int64").astype(str)
    seen = data[data["seen"]]
    unseen = data[~data["seen"]].groupby("checkpoint", as_index=False)[measure].mean()
    y = alt.Y(f"{measure}:Q", title=measure.replace("_", " "))
    color = alt.Color("checkpoint:N", scale=alt.Scale(scheme="viridis"), sort=sorted(set(data["checkpoint"]), key=int),
                      legend=alt.Legend(title="checkpoint step"))
    layers = [alt.Chart(seen).mark_circle(size=60).encode(
        x=alt.X("steps_since_seen:Q", title="steps since the chunk was read"), y=y, color=color,
        tooltip=[alt.Tooltip("data_chunk:Q", title="chunk"), alt.Tooltip("step:Q", format=","),
                 alt.Tooltip("steps_since_seen:Q", format=","), alt.Tooltip(f"{measure}:Q", format=".4f")])]
    if len(unseen):
        layers.append(alt.Chart(unseen).mark_rule(strokeDash=[4, 3]).encode(
            y=f"{measure}:Q", color=color, tooltip=[alt.Tooltip("checkpoint:N"),
                                                    alt.Tooltip(f"{measure}:Q", format=".4f",
                                                                title="not yet read (baseline)")]))
    return alt.layer(*layers).properties(
        height=height, title="Memorization against how recently the chunk was read (dashed: not read yet)")


def correlation_frame(mem: pd.DataFrame, *, measure: str = "token_match") -> pd.DataFrame:
    """Pearson correlation, over data chunks, of the memorization scores of every pair of checkpoints."""
    wide = mem.pivot_table(index="data_chunk", columns="step", values=measure, aggfunc="mean")
    corr = wide.corr(min_periods=2)
    corr.index.name, corr.columns.name = "step_a", "step_b"
    return corr.stack(future_stack=True).rename("correlation").reset_index()


def memorization_correlation(mem: pd.DataFrame, *, measure: str = "token_match", height: int = 280) -> alt.LayerChart:
    """Checkpoint × checkpoint heatmap of the correlation of their memorization scores across chunks: high
    values mean the same chunks stay memorized as training goes on."""
    data = correlation_frame(mem, measure=measure)
    base = alt.Chart(data).encode(x=alt.X("step_a:O", title="checkpoint (step)"),
                                  y=alt.Y("step_b:O", title="checkpoint (step)", sort="descending"))
    rect = base.mark_rect().encode(
        color=alt.Color("correlation:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)),
        tooltip=[alt.Tooltip("step_a:O"), alt.Tooltip("step_b:O"), alt.Tooltip("correlation:Q", format=".3f")])
    text = base.mark_text(fontSize=10).encode(text=alt.Text("correlation:Q", format=".2f"))
    return alt.layer(rect, text).properties(height=height,
                                            title="Correlation of memorization between checkpoints (over chunks)")
