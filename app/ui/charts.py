"""Altair chart builders and the frames they draw. No Streamlit here: every builder takes plain
DataFrames (usually `Archive.curve()` output) and returns an Altair chart, so they are tested
on their Vega-Lite spec.

The rule of every curve: draw the per-bucket min-max band (so a single spike is visible at any
zoom), a mean/last line over it, and a red marker wherever a bucket holds NaN or +-Inf. No
chart gets more than a few thousand rows per series (`downsample_minmax`, or the archive's own
buckets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import altair as alt
import numpy as np
import pandas as pd

MAX_ROWS_PER_SERIES = 4000
# the plot area of a half-width chart (two columns) on a 1440-px laptop screen with the sidebar open
HALF_WIDTH_PLOT_PX = 480
PX_PER_BUCKET = 1.5  # the browser draws every row: a bucket narrower than this only costs time
NONFINITE_COLOR = "#d62728"
BAND_OPACITY = 0.25

X_TITLES = {"step": "step", "tokens": "tokens seen", "time": "wall time (UTC)"}
X_FORMATS = {"step": ",d", "tokens": "~s"}
METRIC_TITLES = {
    "loss": "loss (nats/token)",
    "grad_norm": "grad norm (L2)",
    "lr": "learning rate",
    "loss_scale": "loss scale",
    "tokens_seen": "tokens seen",
    "tokens_per_s": "throughput (tokens/s)",
    "step_time_s": "step time (s)",
    "data_wait_s": "data wait (s)",
    "mfu": "MFU (fraction)",
    "param_norm": "param norm (L2)",
    "gpu.util": "GPU util (%)",
    "gpu.power_w": "GPU power (W)",
    "gpu.temp_c": "GPU temperature (°C)",
    "gpu.mem_used_bytes": "GPU memory used (bytes)",
    "gpu.energy_j": "GPU energy (J)",
    "gpu.sm_clock_mhz": "SM clock (MHz)",
    "cpu.util": "CPU util (%)",
    "host.mem_used_bytes": "host memory used (bytes)",
}
METRIC_FORMATS = {"lr": ".2e", "tokens_per_s": "~s", "tokens_seen": "~s"}
# incident kinds drawn on curves, with their colour (the legend's order)
INCIDENT_COLORS = {
    "nan": "#d62728", "inf": "#9467bd", "loss_spike": "#ff7f0e", "grad_spike": "#e377c2",
    "restart": "#1f77b4", "checkpoint_saved": "#2ca02c", "checkpoint_loaded": "#17becf",
    "data_chunk_skipped": "#8c564b", "dropped_records": "#7f7f7f", "oom": "#bcbd22",
    "straggler": "#aec7e8", "gpu_xid": "#ff9896", "gpu_throttle": "#c5b0d5",
}
OVERLAY_KINDS = ("nan", "inf", "loss_spike", "grad_spike", "restart", "checkpoint_saved", "data_chunk_skipped",
                 "dropped_records", "oom")


def metric_title(name: str) -> str:
    """An axis title with units for a metric name (`step_time_s` -> `step time (s)`)."""
    if name in METRIC_TITLES:
        return METRIC_TITLES[name]
    for suffix, unit in (("_bytes", "bytes"), ("_s", "s"), ("_w", "W"), ("_c", "°C"), ("_pct", "%")):
        if name.endswith(suffix):
            return f"{name[: -len(suffix)].replace('_', ' ')} ({unit})"
    return name.replace("_", " ")


def _x_encoding(x: str, field: str = "x", title: str | None = None, scale: alt.Scale | None = None) -> alt.X:
    kind = "temporal" if x == "time" else "quantitative"
    axis = alt.Axis(format=X_FORMATS[x], title=title or X_TITLES[x]) if x in X_FORMATS else alt.Axis(
        title=title or X_TITLES.get(x, x))
    return alt.X(field, type=kind, axis=axis, scale=scale or alt.Scale(zero=False, nice=False))


def fmt_count(value: object) -> str:
    """A count for a headline: 2.05 M, 1.3 B, 512 ("—" when unknown)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(v):
        return "—"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div * 0.9995:  # 999,999 reads 1.00 M, not 1,000.00 k
            return f"{v / div:,.3g} {unit}"
    return f"{v:,.0f}"


def buckets_for_width(plot_px: int = HALF_WIDTH_PLOT_PX, px_per_bucket: float = PX_PER_BUCKET) -> int:
    """How many min-max buckets a chart `plot_px` wide can show: more rows than pixels draw nothing new
    (each bucket keeps its min and max, so no spike is lost) but slow the browser down; zoom re-queries."""
    return max(50, int(plot_px / px_per_bucket))


# -- frames ----------------------------------------------------------------------------------
def smooth(values: pd.Series, window: int) -> pd.Series:
    """Exponential moving average with a span of `window` buckets (0/1: unchanged); NaN skipped."""
    if window <= 1:
        return values
    return values.ewm(span=window, ignore_na=True).mean()


def curve_frame(curve: pd.DataFrame, *, line: str = "mean", smoothing: int = 0, log: bool = False) -> pd.DataFrame:
    """`Archive.curve()` rows -> what the envelope draws: x, x_end, lo, hi, line, nan, posinf, neginf, nonfinite.

    On a log scale values <= 0 cannot be drawn: they become missing (the band shows a gap there),
    and the number of them is kept in `nonpositive` for the tooltip.
    """
    if curve.empty:
        return pd.DataFrame(columns=["x", "x_end", "lo", "hi", "line", "count", "nan", "posinf", "neginf", "nonfinite"])
    out = pd.DataFrame({
        "x": curve["x_lo"].to_numpy(), "x_end": curve["x_hi"].to_numpy(),
        "lo": curve["min"].astype("float64").to_numpy(), "hi": curve["max"].astype("float64").to_numpy(),
        "line": curve[line if line in curve else "mean"].astype("float64").to_numpy(),
        "count": curve["count"].astype("int64").to_numpy(),
        "nan": curve["nan_count"].astype("int64").to_numpy(),
        "posinf": curve["posinf_count"].astype("int64").to_numpy(),
        "neginf": curve["neginf_count"].astype("int64").to_numpy(),
    })
    # the line of a bucket whose last value is NaN/Inf falls back to the bucket's finite mean
    bad_line = ~np.isfinite(out["line"].to_numpy())
    out.loc[bad_line, "line"] = curve["mean"].astype("float64").to_numpy()[bad_line]
    out["line"] = smooth(out["line"], smoothing)
    out["nonfinite"] = out["nan"] + out["posinf"] + out["neginf"]
    if log:
        for col in ("lo", "hi", "line"):
            out[col] = out[col].where(out[col] > 0)
    return out


def downsample_minmax(df: pd.DataFrame, x: str, y: str | list[str], max_rows: int = MAX_ROWS_PER_SERIES,
                      by: str | None = None) -> pd.DataFrame:
    """At most ~max_rows rows per series, keeping each x bucket's rows holding the min and max of y.

    Unlike every-nth sampling, a single spike (or dip) always survives. Rows whose y is NaN/Inf
    are all kept up to the budget, so non-finite values still show.
    """
    if df.empty:
        return df
    ys = [y] if isinstance(y, str) else list(y)
    groups = [df] if by is None else [g for _, g in df.groupby(by, sort=False, dropna=False)]
    out = []
    for g in groups:
        if len(g) <= max_rows:
            out.append(g)
            continue
        g = g.sort_values(x, kind="stable")
        n_buckets = max(1, max_rows // (2 * len(ys)))
        pos = np.arange(len(g)) * n_buckets // len(g)
        keep = set()
        for col in ys:
            vals = pd.to_numeric(g[col], errors="coerce").to_numpy(dtype="float64")
            finite = np.where(np.isfinite(vals), vals, np.nan)
            frame = pd.DataFrame({"b": pos, "v": finite, "i": np.arange(len(g))})
            frame = frame.dropna(subset=["v"])
            keep.update(frame.loc[frame.groupby("b")["v"].idxmax(), "i"])
            keep.update(frame.loc[frame.groupby("b")["v"].idxmin(), "i"])
            keep.update(np.flatnonzero(~np.isfinite(vals) & ~pd.isna(g[col]).to_numpy())[: max_rows // 10])
        out.append(g.iloc[sorted(keep)])
    return pd.concat(out, ignore_index=True)


def events_on_x(events: pd.DataFrame, x: str, tokens_curve: pd.DataFrame | None = None) -> pd.DataFrame:
    """Events placed on the x axis of a curve: step, tokens (interpolated from tokens_seen) or wall time."""
    if events.empty:
        return events.assign(x=pd.Series(dtype="float64"))
    ev = events.copy()
    if x == "step":
        ev["x"] = ev["step"].astype("float64")
    elif x == "time":
        ev["x"] = ev["wall_time"]
    else:
        if tokens_curve is None or tokens_curve.empty:
            return ev.iloc[0:0].assign(x=pd.Series(dtype="float64"))
        xs = tokens_curve["x_lo"].astype("float64").to_numpy()
        ys = tokens_curve["mean"].astype("float64").to_numpy()
        ev["x"] = np.interp(ev["step"].astype("float64").to_numpy(), xs, ys)
    return ev.dropna(subset=["x", "step"]) if "step" in ev else ev


# -- curves ----------------------------------------------------------------------------------
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
    x_enc = _x_encoding(x, scale=x_scale)
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
        x=_x_encoding(x, scale=x_scale),
        color=alt.Color("kind:N", scale=alt.Scale(domain=kinds, range=colors), legend=None),  # one legend for the page: events_legend_html
        tooltip=tooltip,
    ).properties(name="incidents")


def lineage_frame(curves: pd.DataFrame, lineage: pd.DataFrame) -> pd.DataFrame:
    """Per-attempt curve rows tagged `journey` or `abandoned` (a later attempt re-ran those steps)."""
    if curves.empty:
        return curves.assign(branch=pd.Series(dtype="object"))
    spans = [(int(r.attempt), int(r.first_step), int(r.last_step)) for r in lineage.dropna(
        subset=["first_step", "last_step"]).itertuples()]
    out = curves.copy()
    abandoned = np.zeros(len(out), dtype=bool)
    att = out["attempt"].to_numpy()
    xs = out["x_lo"].to_numpy()
    for a, lo, hi in spans:
        abandoned |= (att < a) & (xs >= lo) & (xs <= hi)
    out["branch"] = np.where(abandoned, "abandoned", "journey")
    out["attempt"] = out["attempt"].astype(str)
    return out


def lineage_chart(curves: pd.DataFrame, lineage: pd.DataFrame, *, metric: str = "loss", log: bool = False,
                  height: int = 260) -> alt.LayerChart:
    """Attempts of a run: the stitched journey solid, abandoned branches dashed, resumes as rules."""
    data = lineage_frame(curves, lineage)
    if log:
        for col in ("min", "max", "mean"):
            data[col] = data[col].where(data[col] > 0)
    y_scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    y_axis = alt.Axis(title=metric_title(metric), format=METRIC_FORMATS.get(metric, ".4~g"))
    x_enc = _x_encoding("step", field="x_lo")
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
    x_enc = _x_encoding(x)
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
        x=x_enc, tooltip=[alt.Tooltip("run:N"), alt.Tooltip("nan:Q", title="NaN"), alt.Tooltip("posinf:Q", title="+Inf"),
                          alt.Tooltip("neginf:Q", title="-Inf")])
    return alt.layer(band, line, marks).properties(height=height, title=f"{metric_title(metric)} by run")


# -- ranks and GPUs --------------------------------------------------------------------------
def find_stragglers(per_rank: pd.DataFrame, *, column: str = "median_step_time_s", margin: float = 0.10) -> pd.DataFrame:
    """Adds `slower_pct` (vs the median over ranks) and `straggler` (slower than the margin allows)."""
    out = per_rank.copy()
    if out.empty or column not in out:
        return out.assign(slower_pct=pd.Series(dtype="float64"), straggler=pd.Series(dtype="bool"))
    vals = pd.to_numeric(out[column], errors="coerce")
    ref = float(vals.median())
    if not math.isfinite(ref) or ref <= 0:
        return out.assign(slower_pct=np.nan, straggler=False)
    out["slower_pct"] = (vals / ref - 1.0) * 100.0
    out["straggler"] = (vals > ref * (1.0 + margin)).fillna(False).astype(bool)
    return out


def with_bucket_ends(df: pd.DataFrame, start: str, end: str, *, by: str = "rank") -> pd.DataFrame:
    """Rect ends for a heatmap: each bucket reaches the next bucket's start (the last one its own end)."""
    if df.empty:
        return df.assign(x0=df.get(start), x1=df.get(end))
    out = df.sort_values([by, start]).copy()
    nxt = out.groupby(by)[start].shift(-1)
    out["x0"] = out[start]
    out["x1"] = nxt.where(nxt.notna(), out[end])
    same = out["x1"] == out["x0"]
    if same.any():  # a one-sample bucket still gets a visible width
        width = (out[end].max() - out[start].min()) / max(1, out["bucket"].nunique()) if "bucket" in out else 1
        out.loc[same, "x1"] = out.loc[same, "x0"] + width
    return out


def heatmap(df: pd.DataFrame, *, x: str, value_title: str, stragglers: list[int] | None = None,
            height: int | None = None, value_format: str = ".3g") -> alt.Chart:
    """Rank x bucket rectangles coloured by the value (x: "step" or "time"); straggler ranks labelled on the axis."""
    data = df.copy()
    data["rank"] = data["rank"].astype(int)
    slow = {int(r) for r in stragglers or []}
    data["rank_label"] = [f"{r} (straggler)" if r in slow else str(r) for r in data["rank"]]
    order = [f"{r} (straggler)" if r in slow else str(r) for r in sorted(data["rank"].unique())]
    n_ranks = max(1, len(order))
    x_kind = "temporal" if x == "time" else "quantitative"
    x_enc = alt.X("x0", type=x_kind, title=X_TITLES[x], scale=alt.Scale(nice=False, zero=False),
                  axis=alt.Axis(format=X_FORMATS[x]) if x in X_FORMATS else alt.Axis())
    y_enc = alt.Y("rank_label:O", title="rank", sort=order, axis=alt.Axis(
        labelColor=alt.ExprRef(f"indexof(datum.value, 'straggler') >= 0 ? '{NONFINITE_COLOR}' : 'gray'")))
    return alt.Chart(data).mark_rect().encode(
        x=x_enc, x2="x1", y=y_enc,
        color=alt.Color("value:Q", title=value_title, scale=alt.Scale(scheme="viridis")),
        tooltip=[alt.Tooltip("rank:O"), alt.Tooltip("x0", type=x_kind, title="from"),
                 alt.Tooltip("x1", type=x_kind, title="to"),
                 alt.Tooltip("value:Q", title=value_title, format=value_format)],
    ).properties(height=height or min(420, max(120, 30 * n_ranks)))


# -- checkpoints, data, evals ------------------------------------------------------------------
def checkpoints_chart(loss_curve: pd.DataFrame, checkpoints: pd.DataFrame, *, height: int = 220) -> alt.LayerChart:
    """The loss journey with one rule per checkpoint: green when clean, red when its audit found problems."""
    data = curve_frame(loss_curve)
    x_enc = _x_encoding("step")
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


def around_chart(rows: pd.DataFrame, *, center: int, height: int = 130) -> alt.FacetChart | alt.Chart:
    """Every metric of a run around one step (small multiples, one line per rank, the step marked)."""
    data = rows[["name", "step", "rank", "attempt", "value"]].copy()
    data["finite_value"] = data["value"].where(np.isfinite(data["value"]))
    data["nonfinite"] = ~np.isfinite(data["value"])
    data["rank"] = data["rank"].astype(str)
    base = alt.Chart(data)
    line = base.mark_line(point=True).encode(
        x=alt.X("step:Q", title="step", axis=alt.Axis(format=",d"), scale=alt.Scale(zero=False, nice=False)),
        y=alt.Y("finite_value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("rank:N", legend=alt.Legend(title="rank", orient="top")),
        tooltip=["name:N", alt.Tooltip("step:Q", format=","), "rank:N", "attempt:Q",
                 alt.Tooltip("value:Q", format=".5g")])
    bad = base.transform_filter("datum.nonfinite").mark_rule(color=NONFINITE_COLOR).encode(x="step:Q")
    center_rule = base.mark_rule(color="#ff7f0e", strokeDash=[4, 2]).encode(x=alt.datum(center))
    return alt.layer(line, bad, center_rule).properties(height=height, width=320).facet(
        facet=alt.Facet("name:N", title=None), columns=3).resolve_scale(y="independent")
