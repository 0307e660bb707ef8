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


def with_bucket_ends(df: pd.DataFrame, start: str, end: str, *, by: str | list[str] = "rank") -> pd.DataFrame:
    """Rect ends for a heatmap: each bucket reaches the next bucket of its row's start (the last one its own end).
    `by`: the column(s) naming a row (rank, or rank and gpu_index)."""
    if df.empty:
        return df.assign(x0=df.get(start), x1=df.get(end))
    keys = [by] if isinstance(by, str) else list(by)
    out = df.sort_values([*keys, start]).copy()
    nxt = out.groupby(keys, dropna=False)[start].shift(-1)
    out["x0"] = out[start]
    out["x1"] = nxt.where(nxt.notna(), out[end])
    same = out["x1"] == out["x0"]
    if same.any():  # a one-sample bucket still gets a visible width
        width = (out[end].max() - out[start].min()) / max(1, out["bucket"].nunique()) if "bucket" in out else 1
        out.loc[same, "x1"] = out.loc[same, "x0"] + width
    return out


def several_gpus_per_rank(df: pd.DataFrame) -> bool:
    """Whether some rank drove more than one GPU (then a heatmap has a row per GPU, not per rank)."""
    return "gpu_index" in df and not df.empty and int(df.groupby("rank")["gpu_index"].nunique().max()) > 1


def heatmap(df: pd.DataFrame, *, x: str, value_title: str, stragglers: list[int] | None = None,
            height: int | None = None, value_format: str = ".3g") -> alt.Chart:
    """Row x bucket rectangles coloured by the value (x: "step" or "time"); straggler ranks labelled on the axis.

    A row per rank, or per GPU when a rank drove several (`gpu_index`: one process on a multi-GPU host,
    e.g. W&B's gpu.0.*, gpu.1.* system series): `rank · GPU g`.
    """
    data = df.copy()
    data["rank"] = data["rank"].astype(int)
    slow = {int(r) for r in stragglers or []}
    per_gpu = several_gpus_per_rank(data)

    def label(rank: int, gpu: object) -> str:
        text = f"{rank} · GPU {int(gpu)}" if per_gpu and pd.notna(gpu) else str(rank)
        return f"{text} (straggler)" if rank in slow else text

    gpus = data["gpu_index"] if per_gpu else pd.Series([None] * len(data), index=data.index)
    data["rank_label"] = [label(r, g) for r, g in zip(data["rank"], gpus, strict=True)]
    rows = data.assign(_gpu=gpus.astype("float64")).drop_duplicates(["rank", "_gpu"]).sort_values(
        ["rank", "_gpu"], na_position="first")
    order = list(dict.fromkeys(rows["rank_label"]))
    n_rows = max(1, len(order))
    x_kind = "temporal" if x == "time" else "quantitative"
    x_enc = alt.X("x0", type=x_kind, title=X_TITLES[x], scale=alt.Scale(nice=False, zero=False),
                  axis=alt.Axis(format=X_FORMATS[x]) if x in X_FORMATS else alt.Axis())
    y_enc = alt.Y("rank_label:O", title="rank · GPU" if per_gpu else "rank", sort=order, axis=alt.Axis(
        labelColor=alt.ExprRef(f"indexof(datum.value, 'straggler') >= 0 ? '{NONFINITE_COLOR}' : 'gray'")))
    tooltip = [alt.Tooltip("rank:O")] + ([alt.Tooltip("gpu_index:O", title="GPU")] if per_gpu else [])
    return alt.Chart(data).mark_rect().encode(
        x=x_enc, x2="x1", y=y_enc,
        color=alt.Color("value:Q", title=value_title, scale=alt.Scale(scheme="viridis")),
        tooltip=tooltip + [alt.Tooltip("x0", type=x_kind, title="from"), alt.Tooltip("x1", type=x_kind, title="to"),
                           alt.Tooltip("value:Q", title=value_title, format=value_format)],
    ).properties(height=height or min(420, max(120, 30 * n_rows)))
