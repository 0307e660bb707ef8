"""What every chart of the app shares: axis titles and units, number formats, event colours, the
x encoding, and how many buckets a chart's width can show. No Streamlit, no data frames.
"""

from __future__ import annotations

import math

import altair as alt

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


def x_encoding(x: str, field: str = "x", title: str | None = None, scale: alt.Scale | None = None) -> alt.X:
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

