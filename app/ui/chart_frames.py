"""The frames charts draw, made from archive rows: the envelope's band/line/NaN-Inf columns, min-max
downsampling that keeps every spike, events placed on the x axis, and attempts tagged as journey or
abandoned branch. Pandas only: tested on their values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.ui.chart_style import MAX_ROWS_PER_SERIES


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

