"""Ranks and GPUs: stragglers (a rank slower than the median by a margin) and the row x time heatmaps
of the Ranks & GPUs page (one row per rank, or per GPU where one process drives several).
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from app.ui.chart_style import NONFINITE_COLOR, X_FORMATS, X_TITLES


def find_stragglers(per_rank: pd.DataFrame, *, column: str = "median_step_time_s",
                    margin: float = 0.10) -> pd.DataFrame:
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

