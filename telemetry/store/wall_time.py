"""Wall-time resolution: the one rounding rule for stored timestamps (writer, importers, compaction).

A wall time is first made exact microseconds (Unix seconds are rounded to the nearest µs), then
rounded to the nearest multiple of `res_us` microseconds counted from the Unix epoch, halves up
(toward the later time). Rounding a value that is already a multiple changes nothing, so a
compaction or re-import of rounded rows gives the same rows. The column type stays
timestamp[us, UTC] whatever the resolution.

The `metrics` table keeps its wall times to the millisecond by default (as MLflow stores metric
timestamps): sub-millisecond jitter of step ends costs about 1 B per compacted point and says
nothing a duration metric (`step_time_s`, `data_wait_s`) does not say exactly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from data_schema.tables import TS

METRICS_WALL_TIME_RESOLUTION_US = 1000
"""Default resolution of `metrics.wall_time` (WriterConfig.metrics_wall_time_resolution_us)."""


def check_resolution(where: str, value: object) -> int:
    """`value` if it is an integer >= 1 (microseconds), else a ValueError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where} must be an integer number of microseconds >= 1 (1 keeps microseconds, "
                         f"1000 rounds to the millisecond), got {value!r}")
    return int(value)


def round_micros(us: np.ndarray, res_us: int) -> np.ndarray:
    """int64 microseconds -> nearest multiple of `res_us`, halves up (floor division: negatives too)."""
    if res_us == 1:
        return us
    return (us + res_us // 2) // res_us * res_us


def round_times(col: pa.Array | pa.ChunkedArray, res_us: int) -> pa.Array | pa.ChunkedArray:
    """A timestamp[us] (or int64 µs) column rounded to `res_us`; nulls stay null, the type is kept."""
    if res_us == 1 or len(col) == 0:
        return col
    if isinstance(col, pa.ChunkedArray):
        return pa.chunked_array([round_times(c, res_us) for c in col.chunks], col.type)
    if pa.types.is_timestamp(col.type) and col.type.unit != "us":
        raise ValueError(f"wall times must be timestamp[us], got {col.type}")
    ints = col.cast(pa.int64())
    mask = ints.is_null().to_numpy(zero_copy_only=False) if ints.null_count else None
    vals = ints.fill_null(0).to_numpy() if mask is not None else ints.to_numpy()
    return pa.array(round_micros(vals, res_us), pa.int64(), mask=mask).cast(col.type)


def round_wall_time_column(data: pa.Table, res_us: int) -> pa.Table:
    """`data` with its `wall_time` column as timestamp[us, UTC] rounded to `res_us` (unchanged without one)."""
    if "wall_time" not in data.column_names:
        return data
    i = data.column_names.index("wall_time")
    return data.set_column(i, "wall_time", round_times(data.column(i).cast(TS), res_us))
