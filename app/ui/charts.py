"""Altair chart builders and the frames they draw. No Streamlit here: every builder takes plain
DataFrames (usually `Archive.curve()` output) and returns an Altair chart, so they are tested
on their Vega-Lite spec.

The rule of every curve: draw the per-bucket min-max band (so a single spike is visible at any
zoom), a mean/last line over it, and a red marker wherever a bucket holds NaN or +-Inf. No
chart gets more than a few thousand rows per series (`downsample_minmax`, or the archive's own
buckets). Shared titles, formats and colours: chart_style.py; the frames: chart_frames.py;
rank and GPU heatmaps: heatmaps.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import altair as alt
import numpy as np
import pandas as pd

from app.ui.chart_frames import curve_frame, downsample_minmax, lineage_frame
from app.ui.chart_style import (
    BAND_OPACITY,
    INCIDENT_COLORS,
    MAX_ROWS_PER_SERIES,
    METRIC_FORMATS,
    NONFINITE_COLOR,
    X_FORMATS,
    X_TITLES,
    metric_title,
    x_encoding,
)


def envelope(
    curve: pd.DataFrame,
    *,
    metric: str,
    x: str = "step",
    log: bool = False,
    smoothing: int = 0,
    line: str = "mean",
    events: pd.DataFrame | None = None,
    title: str | None = None,
    height: int = 240,
    color: str = "#1f77b4",
    x_domain: tuple | None = None,
    brush: str | None = None,
) -> alt.LayerChart:
    """The journey curve: min-max band + mean/last line + NaN/Inf markers (+ incident rules).

    `events` (with an `x` column, see `events_on_x`) are drawn as dashed rules coloured by kind.
    `brush`: name of an x-interval selection on the band (drag to pick a range; the page zooms to it).
    """
    data = curve_frame(curve, line=line, smoothing=smoothing, log=log)
    y_title = metric_title(metric)
    y_scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    y_axis = alt.Axis(title=y_title, format=METRIC_FORMATS.get(metric, ".4~g"))
    x_scale = alt.Scale(zero=False, nice=False, domain=list(x_domain)) if x_domain else None
    x_enc = x_encoding(x, scale=x_scale)
    base = alt.Chart(data)
    tooltip = [
        alt.Tooltip("x", title=X_TITLES[x], type="temporal" if x == "time" else "quantitative",
                    format=X_FORMATS.get(x, "")),
        alt.Tooltip("x_end", title="to", type="temporal" if x == "time" else "quantitative",
                    format=X_FORMATS.get(x, "")),
        alt.Tooltip("lo:Q", title="min", format=".5g"), alt.Tooltip("hi:Q", title="max", format=".5g"),
        alt.Tooltip("line:Q", title=line, format=".5g"), alt.Tooltip("count:Q", title="points", format=","),
    ]
    band = base.mark_area(opacity=BAND_OPACITY, color=color, interpolate="step-after").encode(
        x=x_enc, y=alt.Y("lo:Q", scale=y_scale, axis=y_axis), y2=alt.Y2("hi:Q"), tooltip=tooltip,
    ).properties(name="band")
    if brush:
        band = band.add_params(alt.selection_interval(name=brush, encodings=["x"]))
    # the line's stroke is thin so the band's extremes stay visible around it
    mean_line = base.mark_line(color=color, strokeWidth=1.4).encode(
        x=x_enc, y=alt.Y("line:Q", scale=y_scale, axis=y_axis), tooltip=tooltip,
    ).properties(name="line")
    bad = data[data["nonfinite"] > 0] if not data.empty else data
    nonfinite_tooltip = [
        alt.Tooltip("x", title=X_TITLES[x], type="temporal" if x == "time" else "quantitative",
                    format=X_FORMATS.get(x, "")),
        alt.Tooltip("nan:Q", title="NaN"), alt.Tooltip("posinf:Q", title="+Inf"), alt.Tooltip("neginf:Q", title="-Inf"),
    ]
    nf_base = alt.Chart(bad)
    nf_rule = nf_base.mark_rule(color=NONFINITE_COLOR, strokeWidth=1.5, opacity=0.8).encode(
        x=x_enc, tooltip=nonfinite_tooltip).properties(name="nonfinite_rule")
    nf_mark = nf_base.mark_point(shape="triangle-down", filled=True, size=80, color=NONFINITE_COLOR).encode(
        x=x_enc, y=alt.value(6), tooltip=nonfinite_tooltip).properties(name="nonfinite_marker")
    layers: list[alt.Chart] = [band, mean_line, nf_rule, nf_mark]
    if events is not None and not events.empty:
        layers.append(incident_rules(events, x=x, x_scale=x_scale))
    chart = alt.layer(*layers).properties(height=height, title=alt.TitleParams(title or y_title, anchor="start"),
                                          padding={"top": 8, "left": 4, "right": 8, "bottom": 4})
    return chart.resolve_scale(color="independent")


def events_legend_html(kinds: list[str]) -> str:
    """The event colours of the journey charts as one line of HTML (shared by all charts on a page)."""
    parts = [f'<span style="color:{INCIDENT_COLORS.get(k, "#333333")};white-space:nowrap">&#9474;&#8202;{k}</span>'
             for k in kinds]
    return '<span style="font-size:0.85rem">events (dashed, hover for details): ' + " &nbsp; ".join(parts) + "</span>"


def incident_rules(events: pd.DataFrame, *, x: str = "step", x_scale: alt.Scale | None = None) -> alt.Chart:
    """Dashed vertical rules at events (kind coloured), tooltips with step, severity and message."""
    cols = [c for c in ("x", "step", "kind", "severity", "message", "attempt", "rank", "data_chunk") if c in events]
    data = events[cols].copy()
    for c in ("message", "severity"):
        if c in data:
            data[c] = data[c].fillna("").astype(str)
    kinds = [k for k in INCIDENT_COLORS if k in set(data["kind"])] + sorted(set(data["kind"]) - set(INCIDENT_COLORS))
    colors = [INCIDENT_COLORS.get(k, "#333333") for k in kinds]
    tooltip = [alt.Tooltip("kind:N"), alt.Tooltip("step:Q", format=","), alt.Tooltip("severity:N"),
               alt.Tooltip("message:N")]
    tooltip += [alt.Tooltip(f"{c}:Q") for c in ("attempt", "rank", "data_chunk") if c in data]
    return alt.Chart(data).mark_rule(strokeDash=[4, 3], strokeWidth=1.5).encode(
        x=x_encoding(x, scale=x_scale),
        # no legend per chart: one for the page (events_legend_html)
        color=alt.Color("kind:N", scale=alt.Scale(domain=kinds, range=colors), legend=None),
        tooltip=tooltip,
    ).properties(name="incidents")


def lineage_chart(curves: pd.DataFrame, lineage: pd.DataFrame, *, metric: str = "loss", log: bool = False,
                  height: int = 260) -> alt.LayerChart:
    """Attempts of a run: the stitched journey solid, abandoned branches dashed, resumes as rules."""
    data = lineage_frame(curves, lineage)
    if log:
        for col in ("min", "max", "mean"):
            data[col] = data[col].where(data[col] > 0)
    y_scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    y_axis = alt.Axis(title=metric_title(metric), format=METRIC_FORMATS.get(metric, ".4~g"))
    x_enc = x_encoding("step", field="x_lo")
    color = alt.Color("attempt:N", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(title="attempt"))
    band = alt.Chart(data).mark_area(opacity=0.15).encode(
        x=x_enc, y=alt.Y("min:Q", scale=y_scale, axis=y_axis), y2="max:Q", color=color, detail="branch:N")
    lines = alt.Chart(data).mark_line(strokeWidth=1.5).encode(
        x=x_enc, y=alt.Y("mean:Q", scale=y_scale, axis=y_axis), color=color,
        strokeDash=alt.StrokeDash("branch:N", scale=alt.Scale(domain=["journey", "abandoned"], range=[[1, 0], [5, 3]]),
                                  legend=alt.Legend(title="branch")),
        tooltip=[alt.Tooltip("attempt:N"), alt.Tooltip("branch:N"), alt.Tooltip("x_lo:Q", title="step", format=","),
                 alt.Tooltip("mean:Q", format=".5g"), alt.Tooltip("min:Q", format=".5g"),
                 alt.Tooltip("max:Q", format=".5g")],
    )
    layers: list[alt.Chart] = [band, lines]
    resumes = lineage.dropna(subset=["resumed_from_step"]) if "resumed_from_step" in lineage else lineage.iloc[0:0]
    if not resumes.empty:
        r = resumes[["attempt", "resumed_from_step"]].astype({"attempt": str, "resumed_from_step": "float64"})
        layers.append(alt.Chart(r).mark_rule(color="#555", strokeDash=[2, 2]).encode(
            x=alt.X("resumed_from_step:Q"),
            tooltip=[alt.Tooltip("attempt:N", title="attempt resumed"),
                     alt.Tooltip("resumed_from_step:Q", title="from step", format=",")]))
    return alt.layer(*layers).properties(height=height, title=f"{metric_title(metric)} per attempt")


def compare_chart(curves: Mapping[str, pd.DataFrame], *, metric: str, x: str = "step", log: bool = False,
                  height: int = 380) -> alt.LayerChart:
    """One metric of several runs on one axis: a band and a mean line per run (colour = run)."""
    frames = []
    for run, curve in curves.items():
        f = curve_frame(curve, log=log)
        if not f.empty:
            frames.append(f.assign(run=run))
    data = pd.concat(frames, ignore_index=True) if frames else curve_frame(pd.DataFrame()).assign(run="")
    y_scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    y_axis = alt.Axis(title=metric_title(metric), format=METRIC_FORMATS.get(metric, ".4~g"))
    x_enc = x_encoding(x)
    color = alt.Color("run:N", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(title="run", orient="bottom"))
    band = alt.Chart(data).mark_area(opacity=0.18).encode(
        x=x_enc, y=alt.Y("lo:Q", scale=y_scale, axis=y_axis), y2="hi:Q", color=color)
    line = alt.Chart(data).mark_line(strokeWidth=1.5).encode(
        x=x_enc, y=alt.Y("line:Q", scale=y_scale, axis=y_axis), color=color,
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("x", type="temporal" if x == "time" else "quantitative",
                                                   title=X_TITLES[x]),
                 alt.Tooltip("line:Q", title="mean", format=".5g"), alt.Tooltip("lo:Q", title="min", format=".5g"),
                 alt.Tooltip("hi:Q", title="max", format=".5g")])
    bad = data[data["nonfinite"] > 0]
    marks = alt.Chart(bad).mark_rule(color=NONFINITE_COLOR, opacity=0.7).encode(
        x=x_enc, tooltip=[alt.Tooltip("run:N"), alt.Tooltip("nan:Q", title="NaN"),
                          alt.Tooltip("posinf:Q", title="+Inf"), alt.Tooltip("neginf:Q", title="-Inf")])
    return alt.layer(band, line, marks).properties(height=height, title=f"{metric_title(metric)} by run")



# -- checkpoints, data, evals ------------------------------------------------------------------
def checkpoints_chart(loss_curve: pd.DataFrame, checkpoints: pd.DataFrame, *, height: int = 220) -> alt.LayerChart:
    """The loss journey with one rule per checkpoint: green when clean, red when its audit found problems."""
    data = curve_frame(loss_curve)
    x_enc = x_encoding("step")
    layers: list[alt.Chart] = [
        alt.Chart(data).mark_area(opacity=BAND_OPACITY).encode(x=x_enc, y=alt.Y("lo:Q", title=metric_title("loss"),
                                                                               scale=alt.Scale(zero=False)), y2="hi:Q"),
        alt.Chart(data).mark_line(strokeWidth=1.2).encode(x=x_enc, y="line:Q"),
    ]
    if not checkpoints.empty:
        ck = checkpoints[["step", "attempt", "uri", "audit"]].copy()
        ck["x"] = ck["step"].astype("float64")
        layers.append(alt.Chart(ck).mark_rule(strokeWidth=2).encode(
            x=x_enc,
            color=alt.Color("audit:N", scale=alt.Scale(domain=["ok", "problems"], range=["#2ca02c", NONFINITE_COLOR]),
                            legend=alt.Legend(title="checkpoint")),
            tooltip=[alt.Tooltip("step:Q", format=","), alt.Tooltip("attempt:Q"), alt.Tooltip("uri:N"),
                     alt.Tooltip("audit:N")]))
    return alt.layer(*layers).properties(height=height, title="Checkpoints along the loss journey")


def chunks_chart(chunks: pd.DataFrame, *, height: int | None = None) -> alt.Chart:
    """Data chunks as bars over the steps they fed (red when incidents happened in them)."""
    data = chunks.copy()
    data["incidents"] = data.get("incidents", 0)
    data["with_incidents"] = np.where(data["incidents"] > 0, "incidents", "clean")
    return alt.Chart(data).mark_bar(height=10).encode(
        x=alt.X("first_step:Q", title="step", axis=alt.Axis(format=",d")), x2="last_step:Q",
        y=alt.Y("chunk_id:O", title="data chunk"),
        color=alt.Color("with_incidents:N", scale=alt.Scale(domain=["clean", "incidents"],
                                                            range=["#4c78a8", NONFINITE_COLOR]),
                        legend=alt.Legend(title="chunk")),
        tooltip=[alt.Tooltip("chunk_id:Q", title="chunk"), alt.Tooltip("first_step:Q", format=","),
                 alt.Tooltip("last_step:Q", format=","), alt.Tooltip("tokens:Q", format="~s"),
                 alt.Tooltip("incidents:Q")],
    ).properties(height=height or min(400, 30 + 14 * max(1, data["chunk_id"].nunique())),
                 title="Data chunks against steps")


def evals_chart(evals: pd.DataFrame, *, height: int = 300) -> alt.LayerChart:
    """Eval score against tokens (or step when tokens are unknown): a line per benchmark, a stderr band."""
    data = evals.copy()
    use_tokens = "tokens_seen" in data and data["tokens_seen"].notna().any()
    data["x"] = data["tokens_seen"] if use_tokens else data["step"]
    data["series"] = data["benchmark"].astype(str) + " / " + data["metric"].astype(str)
    err = data["stderr"].fillna(0.0) if "stderr" in data else 0.0
    data["lo"] = data["value"] - err
    data["hi"] = data["value"] + err
    data = data.dropna(subset=["x"]).sort_values(["series", "x"])
    x_enc = alt.X("x:Q", title="tokens seen" if use_tokens else "step",
                  axis=alt.Axis(format="~s" if use_tokens else ",d"))
    color = alt.Color("series:N", scale=alt.Scale(scheme="tableau10"),
                      legend=alt.Legend(title="benchmark / metric", orient="bottom"))
    band = alt.Chart(data).mark_area(opacity=0.2).encode(x=x_enc, y=alt.Y("lo:Q", title="score"), y2="hi:Q",
                                                          color=color)
    line = alt.Chart(data).mark_line(point=True).encode(
        x=x_enc, y="value:Q", color=color,
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("step:Q", format=","), alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("stderr:Q", format=".4f")])
    return alt.layer(band, line).properties(height=height, title="Evaluations (band: ± stderr)")


def result_chart(df: pd.DataFrame, *, x: str, y: str, kind: str = "line", color: str | None = None,
                 height: int = 320) -> alt.Chart:
    """A chart of a SQL result (x/y picked by the reader), downsampled min/max per series."""
    cols = [c for c in dict.fromkeys([x, y, color]) if c]
    data = df[cols].copy()
    data = downsample_minmax(data, x, y, by=color) if pd.api.types.is_numeric_dtype(data[y]) else data.head(
        MAX_ROWS_PER_SERIES)
    mark = {"line": alt.Chart(data).mark_line(point=len(data) < 60), "points": alt.Chart(data).mark_point(),
            "bars": alt.Chart(data).mark_bar()}[kind]
    if pd.api.types.is_datetime64_any_dtype(data[x]):
        x_type = "temporal"
    elif pd.api.types.is_numeric_dtype(data[x]) and kind != "bars":
        x_type = "quantitative"
    else:
        x_type = "nominal"
    enc = dict(x=alt.X(x, type=x_type, title=x), y=alt.Y(y, type="quantitative", title=y),
               tooltip=[alt.Tooltip(c, type=_vl_type(data[c])) for c in cols])
    if color:
        enc["color"] = alt.Color(color, type="nominal", title=color)
    return mark.encode(**enc).properties(height=height)


def _vl_type(s: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(s):
        return "temporal"
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return "quantitative"
    return "nominal"


def around_chart(rows: pd.DataFrame, *, center: int, name: str | None = None, height: int = 170) -> alt.LayerChart:
    """One metric of a run around a step (one line per rank, NaN/Inf as red rules, the step marked).

    A chart per metric, each as wide as its container (`width="stretch"`): a facet of fixed-width
    panels overflowed its page column and drew over the column beside it. `name`: the metric to draw
    (default: the only one in `rows`).
    """
    picked = rows if name is None else rows[rows["name"] == name]
    data = picked[["name", "step", "rank", "attempt", "value"]].copy()
    data["finite_value"] = data["value"].where(np.isfinite(data["value"]))
    data["nonfinite"] = ~np.isfinite(data["value"])
    data["rank"] = data["rank"].astype(str)
    base = alt.Chart(data)
    # no legend: a stretched chart fits title, legend and plot into `height`, and a legend per small
    # chart squeezed the plot flat; the page says "one line per rank", the tooltip names it
    line = base.mark_line(point=True).encode(
        x=alt.X("step:Q", title=None, axis=alt.Axis(format=",d"), scale=alt.Scale(zero=False, nice=False)),
        y=alt.Y("finite_value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("rank:N", scale=alt.Scale(scheme="tableau10"), legend=None),
        tooltip=["name:N", alt.Tooltip("step:Q", format=","), "rank:N", "attempt:Q",
                 alt.Tooltip("value:Q", format=".5g")])
    bad = base.transform_filter("datum.nonfinite").mark_rule(color=NONFINITE_COLOR).encode(x="step:Q")
    center_rule = base.mark_rule(color="#333333", strokeDash=[4, 2]).encode(x=alt.datum(center))  # not a rank colour
    title = metric_title(name if name is not None else str(data["name"].iloc[0]) if len(data) else "")
    return alt.layer(line, bad, center_rule).properties(
        height=height, title=alt.TitleParams(title, anchor="start", fontSize=12))
