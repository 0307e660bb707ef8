import math

import pyarrow as pa
import pytest

import data_schema as ds
from data_schema import layout


def test_every_table_has_the_contract_columns():
    contract = {
        "runs": "run_id project name created_at status world_size dp_size tp_size pp_size config_json git_sha host "
                "framework",
        "attempts": "run_id attempt started_at ended_at end_status resumed_from_step resumed_from_checkpoint seed "
                    "reason",
        "ranks": "run_id attempt rank local_rank host gpu_uuid dp_rank tp_rank pp_rank",
        "metrics": "run_id attempt rank step name value wall_time",
        "system": "run_id attempt rank host gpu_index gpu_uuid wall_time name value",
        "events": "run_id attempt rank step wall_time kind severity message data_chunk sample_ids layer details_json",
        "checkpoints": "run_id attempt step tokens_seen uri wall_time bytes has_optimizer_state weights_dtypes "
                       "optimizer_dtypes data_chunk sha256 problems",
        "data_chunks": "run_id chunk_id first_step last_step tokens source_mix_json",
        "evals": "run_id step benchmark metric value stderr n_shot harness source",
        "memorization": "run_id step data_chunk k l n_sequences token_match full_match",
    }
    assert set(contract) == set(ds.TABLES)
    for table, cols in contract.items():
        names = ds.schema(table).names
        for col in cols.split():
            assert col in names, (table, col)
        assert ds.schema(table).metadata[b"flightlog.format_version"] == str(ds.FORMAT_VERSION).encode()


def test_timestamps_are_utc_microseconds():
    for table in ds.TABLES:
        for field in ds.schema(table):
            if pa.types.is_timestamp(field.type):
                assert field.type == pa.timestamp("us", tz="UTC"), (table, field.name)


def test_segment_and_staged_names_round_trip():
    p = ds.segment_path("metrics", "run-a", 2, 7, 13)
    assert p == "metrics/run_id=run-a/part-a2-r7-00000013.parquet"
    key = ds.parse_path(p)
    assert (key.table, key.run_id, key.kind, key.attempt, key.rank, key.seq) == (
        "metrics", "run-a", "segment", 2, 7, 13)
    s = ds.staged_path("events", "run-a", 0, 1, 3)
    assert ds.parse_path(s).kind == "staged"


def test_temp_and_foreign_files_are_not_data_files():
    tmp = layout.temp_name(ds.segment_path("metrics", "r1", 0, 0, 1), "abc")
    assert ds.parse_path(tmp) is None
    assert ds.parse_path("metrics/run_id=r1/notes.txt") is None
    assert ds.parse_path("nosuchtable/run_id=r1/part-a0-r0-00000001.parquet") is None
    assert ds.parse_path("metrics/run_id=../part-a0-r0-00000001.parquet") is None


@pytest.mark.parametrize("bad", ["", "123", "../etc", "a/b", "a\\b", "x" * 200, "it's", ".hidden", "a..b"])
def test_unsafe_run_ids_are_refused_with_a_clear_message(bad):
    with pytest.raises(ds.LayoutError, match="invalid run id"):
        ds.validate_run_id(bad)


@pytest.mark.parametrize("name", ["my run", "../../etc/passwd", "123", "O'Brien; DROP TABLE runs", "日本語", "a" * 500])
def test_any_run_name_maps_to_a_safe_stable_run_id(name):
    rid = ds.run_id_from_name(name)
    assert ds.validate_run_id(rid) == rid
    assert ds.run_id_from_name(name) == rid
    assert "/" not in rid and ".." not in rid


def test_validation_keeps_nan_and_inf_and_names_the_bad_cell():
    rows = [dict(run_id="r", attempt=0, rank=0, step=i, name="loss", value=v)
            for i, v in enumerate([math.nan, math.inf, -math.inf, 1.5])]
    t = ds.rows_to_table("metrics", rows)
    vals = t.column("value").to_pylist()
    assert math.isnan(vals[0]) and vals[1] == math.inf and vals[2] == -math.inf and vals[3] == 1.5
    with pytest.raises(ds.SchemaError, match=r"row 1, column 'step' must be an integer"):
        ds.validate_rows("metrics", [rows[0], {**rows[1], "step": "ten"}])
    with pytest.raises(ds.SchemaError, match="unknown column"):
        ds.validate_rows("metrics", [{**rows[0], "vaule": 1.0}])
    with pytest.raises(ds.SchemaError, match="required"):
        ds.validate_rows("metrics", [{**rows[0], "name": None}])
    with pytest.raises(ds.SchemaError, match="outside the int32 range"):
        ds.validate_rows("metrics", [{**rows[0], "rank": 2**40}])


def test_conform_fills_missing_nullable_columns_and_refuses_missing_required_ones():
    t = pa.table({"run_id": ["r"], "attempt": pa.array([0], pa.int64()), "rank": [0], "step": [1], "name": ["x"]})
    out = ds.conform("metrics", t)
    assert out.schema.equals(ds.schema("metrics"), check_metadata=False)
    assert out.column("value").null_count == 1
    with pytest.raises(ds.SchemaError, match="required column 'step'"):
        ds.conform("metrics", t.drop_columns(["step"]))


def test_lenient_conform_lays_out_rows_the_archive_holds_and_can_keep_a_newer_writers_columns():
    # compaction and rows replaced by key: nothing is judged, a missing column (even required) becomes nulls
    t = pa.table({"step": pa.array([2, 1], pa.int32()), "name": ["x", "y"], "added_later": [1.0, 2.0]})
    out = ds.conform("metrics", t, strict=False)
    assert out.column_names == ds.schema("metrics").names
    assert out.column("step").type == pa.int64() and out.column("run_id").null_count == 2
    kept = ds.conform("metrics", t, strict=False, keep_extra=True)
    assert kept.column_names == [*ds.schema("metrics").names, "added_later"]
    assert kept.schema.metadata[b"flightlog.table"] == b"metrics"  # compact_bytes reads the table name from it
    with pytest.raises(ds.SchemaError, match="column 'step' has type string"):
        ds.conform("metrics", t.set_column(0, "step", pa.array(["a", "b"])), strict=False)
