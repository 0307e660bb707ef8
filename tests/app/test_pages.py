"""Every page of the journey app through Streamlit's AppTest, on an archive written by the real Writer.

Pages must render without an exception, show what they promise (charts, tables, warnings), and
turn bad input (unknown run, malformed query parameters, a bad archive URL, hostile SQL) into a
message on the page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from app.ui import state

PAGES = [path for path, *_ in state.PAGES]


def charts_of(at: AppTest) -> list[dict]:
    """Each Altair chart on the page: its spec, with the datasets as DataFrames under 'frames'."""
    out = []
    for el in at.get("vega_lite_chart"):
        spec = json.loads(el.proto.spec)
        spec["frames"] = {d.name: dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data)
                          for d in el.proto.datasets}
        out.append(spec)
    return out


def chart_title(chart: dict) -> str:
    title = chart.get("title", "")
    return title.get("text", "") if isinstance(title, dict) else str(title)


def loss_chart(at: AppTest) -> dict:
    return next(c for c in charts_of(at) if chart_title(c) == "loss (nats/token)")


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# -- every page --------------------------------------------------------------------------------
TITLES = {"views/runs.py": "Runs", "views/journey.py": "Journey of llm-demo", "views/incidents.py": "Incidents",
          "views/ranks.py": "Ranks", "views/checkpoints.py": "Checkpoints", "views/compare.py": "Compare",
          "views/sql.py": "SQL"}
# incidents: one chart per metric around the event (6 metrics in the demo run)
EXPECTED_CHARTS = {"views/runs.py": 0, "views/journey.py": 5, "views/incidents.py": 6, "views/ranks.py": 2,
                   "views/checkpoints.py": 3, "views/compare.py": 1, "views/sql.py": 0}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_the_demo_run_without_exception(open_app, page):
    at = open_app(page, run="llm-demo")
    assert_clean(at)
    assert at.title and at.title[0].value.startswith(TITLES[page]), "the deep link opened the page"
    assert len(at.get("vega_lite_chart")) >= EXPECTED_CHARTS[page]
    assert at.query_params["run"] == ["llm-demo"] or at.query_params["run"] == "llm-demo"


def test_runs_page_lists_every_run_with_links_into_the_views(open_app):
    at = open_app("views/runs.py")
    assert_clean(at)
    table = at.dataframe[0].value
    assert set(table["run_id"]) == {"llm-demo", "baseline", "empty-run"}
    demo = table.set_index("run_id").loc["llm-demo"]
    assert (demo["steps"], demo["attempts"], demo["ranks"], demo["status"]) == (499, 2, 2, "finished")
    assert demo["journey"] == "./?page=journey&run=llm-demo"
    assert len(at.get("page_link")) == 5
    at.text_input(key="runs_text").input("base").run()
    assert list(at.dataframe[0].value["run_id"]) == ["baseline"]


def test_journey_draws_band_line_nan_markers_and_incidents(open_app):
    at = open_app("views/journey.py", run="llm-demo")
    assert_clean(at)
    assert at.title[0].value == "Journey of llm-demo"
    loss = loss_chart(at)
    marks = [layer["mark"]["type"] for layer in loss["layer"]]
    assert marks == ["area", "line", "rule", "point", "rule"]
    band = loss["frames"][loss["layer"][0]["data"]["name"]]
    assert band["hi"].max() == pytest.approx(50.01), "the single spike at step 420 is in the band"
    assert len(band) <= 1000
    flagged = loss["frames"][loss["layer"][2]["data"]["name"]]
    assert flagged["nan"].sum() >= 2 and flagged["posinf"].sum() >= 2
    kinds = set(loss["frames"][loss["layer"][4]["data"]["name"]]["kind"])
    assert {"nan", "loss_spike", "restart", "checkpoint_saved", "data_chunk_skipped", "dropped_records"} <= kinds
    assert "NaN" in texts(at.caption)
    lineage = next(c for c in charts_of(at) if "per attempt" in chart_title(c))
    frame = next(iter(f for f in lineage["frames"].values() if "branch" in f))
    assert set(frame["branch"]) == {"journey", "abandoned"}


def test_journey_zoom_from_the_url_requeries_at_full_resolution(open_app):
    at = open_app("views/journey.py", run="llm-demo", lo="140", hi="170")
    assert_clean(at)
    assert [n.value for n in at.number_input] == [140, 170]
    loss = loss_chart(at)
    band = loss["frames"][loss["layer"][0]["data"]["name"]]
    assert (band["x"].min(), band["x"].max(), len(band)) == (140, 170, 31), "one bucket per step when zoomed in"
    at.number_input(key="zoom_hi").set_value(499).run()
    at.number_input(key="zoom_lo").set_value(0).run()
    assert "lo" not in at.query_params and "hi" not in at.query_params


def test_journey_toggles_log_scale_smoothing_and_other_x_axes(open_app):
    at = open_app("views/journey.py", run="llm-demo")
    at.toggle(key="journey_log").set_value(True).run()
    at.slider(key="journey_smooth").set_value(10).run()
    assert_clean(at)
    loss = loss_chart(at)
    assert loss["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
    for x, title in (("tokens", "tokens seen"), ("time", "wall time (UTC)")):
        at.button_group(key="journey_x").set_value(x).run()
        assert_clean(at)
        loss = loss_chart(at)
        assert loss["layer"][0]["encoding"]["x"]["axis"]["title"] == title


def test_journey_zoom_holds_on_the_tokens_and_time_axes(open_app):
    at = open_app("views/journey.py", run="llm-demo", lo="140", hi="170")
    for x, lo, hi in (("tokens", 141 * 4096, 171 * 4096), ("time", None, None)):
        at.button_group(key="journey_x").set_value(x).run()
        assert_clean(at)
        band = loss_chart(at)["frames"][loss_chart(at)["layer"][0]["data"]["name"]]
        assert len(band) > 0
        if lo is not None:  # tokens: exactly the tokens_seen of steps 140-170 (time spans every rank's clock)
            assert band["x"].min() >= lo and band["x"].max() <= hi and len(band) == 31


@pytest.mark.parametrize("params, says", [
    ({"run": "nope"}, "unknown run 'nope'"),
    ({"run": "llm-demo", "lo": "abc"}, "ignored lo='abc'"),
    ({"run": "llm-demo", "lo": "300", "hi": "100"}, "swapped"),
    ({"run": "llm-demo", "lo": "-5", "hi": "1e99"}, "ignored lo='-5'"),
    ({"page": "nowhere"}, "ignored page='nowhere'"),
])
def test_malformed_query_params_become_warnings_not_exceptions(open_app, params, says):
    at = open_app(None, **params) if "page" in params else open_app("views/journey.py", **params)
    assert_clean(at)
    assert says in texts(at.warning)


def test_page_param_deep_link_opens_that_page(open_app):
    at = open_app(None, page="incidents", run="baseline")
    assert_clean(at)
    assert at.title[0].value == "Incidents"
    assert at.selectbox(key="run_select").value == "baseline"


@pytest.mark.parametrize("page, says", [
    ("views/journey.py", "no metrics yet"), ("views/incidents.py", "No events in this run"),
    ("views/ranks.py", "the sampler was off"), ("views/checkpoints.py", "No checkpoints recorded"),
])
def test_an_empty_run_shows_empty_states_that_say_what_to_do(open_app, page, says):
    at = open_app(page, run="empty-run")
    assert_clean(at)
    assert says in texts(at.info)


def test_ranks_page_highlights_the_straggler_and_draws_heatmaps(open_app):
    at = open_app("views/ranks.py", run="llm-demo")
    assert_clean(at)
    assert "Straggler rank(s): 1" in texts(at.warning)
    table = at.dataframe[0].value
    table = table.data if hasattr(table, "data") else table  # a Styler
    assert list(table.loc[table["straggler"], "rank"]) == [1]
    rects = [c for c in charts_of(at) if c.get("mark", {}).get("type") == "rect"]
    assert len(rects) == 2
    assert all("1 (straggler)" in set(next(iter(c["frames"].values()))["rank_label"]) for c in rects)
    at.slider(key="ranks_margin").set_value(50).run()
    assert "No straggler" in texts(at.success)


def test_ranks_page_without_gpu_samples_says_the_sampler_was_off(open_app):
    at = open_app("views/ranks.py", run="baseline")
    assert_clean(at)
    assert "No GPU samples in this run: the sampler was off" in texts(at.info)


def test_checkpoints_page_flags_missing_optimizer_state_and_bf16(open_app):
    at = open_app("views/checkpoints.py", run="llm-demo")
    assert_clean(at)
    assert "2 of 3 checkpoints have audit problems" in texts(at.warning)
    table = at.dataframe[0].value
    table = table.data if hasattr(table, "data") else table
    problems = {int(s): list(p) for s, p in zip(table["step"], table["problems"], strict=True)}
    assert any("optimizer" in p for p in problems[100]) and any("bfloat16" in p for p in problems[200])
    assert problems[400] == []
    titles = {chart_title(c) for c in charts_of(at)}
    assert {"Data chunks against steps", "Evaluations (band: ± stderr)"} <= titles
    assert len(at.dataframe) >= 2  # checkpoints and memorization


def test_incident_drilldown_shows_metrics_around_it_its_chunk_and_the_chunk_history(open_app):
    at = open_app("views/incidents.py", run="llm-demo")
    assert_clean(at)
    events = at.dataframe[0].value
    assert {"nan", "inf", "restart", "loss_spike", "checkpoint_saved", "data_chunk_skipped"} <= set(events["kind"])
    label = next(o for o in at.selectbox(key="inc_pick").options if o.startswith("nan · step 150"))
    at.selectbox(key="inc_pick").select(label).run()
    assert_clean(at)
    body = texts(at.markdown)
    assert "301, 302, 303" in body and "Data chunk **3**" in body
    assert "Chunk 3 had incidents in 2 attempts" in texts(at.warning)
    frames = [next(iter(c["frames"].values())) for c in charts_of(at)]
    assert all(f["step"].between(130, 170).all() for f in frames)
    names = [f["name"].iloc[0] for f in frames]  # one chart per metric
    assert len(names) == len(set(names)) and {"loss", "grad_norm", "lr"} <= set(names)
    at.multiselect(key="inc_kind").set_value(["checkpoint_saved"]).run()
    assert set(at.dataframe[0].value["kind"]) == {"checkpoint_saved"}


def test_compare_overlays_runs_by_tokens(open_app):
    at = open_app("views/compare.py", run="llm-demo")
    at.button_group(key="cmp_x").set_value("tokens").run()
    assert_clean(at)
    chart = charts_of(at)[0]
    frame = next(f for f in chart["frames"].values() if "run" in f)
    assert set(frame["run"]) == {"llm-demo", "baseline"}
    assert chart["layer"][0]["encoding"]["x"]["axis"]["title"] == "tokens seen"


def test_a_bad_archive_url_shows_a_clear_message_on_every_page(open_app, tmp_path):
    for page in PAGES:
        at = open_app(page, archive=str(tmp_path / "no-such-archive"))
        assert_clean(at)
        assert "Cannot open this archive" in texts(at.error) or "Cannot open archive" in texts(at.error)


def test_an_unreachable_http_archive_shows_a_message(open_app):
    at = open_app("views/journey.py", archive="http://127.0.0.1:9/archive")
    assert_clean(at)
    assert "Cannot open" in texts(at.error)


# -- SQL console ---------------------------------------------------------------------------------
ATTACKS = [
    ("SELECT * FROM read_csv('/etc/passwd')", "outside the archive"),
    ("COPY (SELECT * FROM runs) TO '/tmp/flightlog-stolen.csv'", "read-only"),
    ("ATTACH '/tmp/flightlog-other.duckdb' AS other", "read-only"),
    ("INSTALL httpfs", "read-only"),
    ("SET enable_external_access = true", "read-only"),
    ("SELECT count(*) FROM range(1000000000000) a", "time limit"),
]


def _run_sql(at: AppTest, sql: str) -> AppTest:
    at.text_area(key="sql_text").input(sql)
    return at.button(key="sql_run").click().run()


@pytest.mark.parametrize("attack, says", ATTACKS, ids=[a.split()[0] + "-" + str(i) for i, (a, _) in enumerate(ATTACKS)])
def test_sql_console_refuses_an_attack_clearly_then_keeps_working(open_app, attack, says):
    at = open_app("views/sql.py")
    at.number_input(key="sql_timeout").set_value(1).run()
    _run_sql(at, attack)
    assert_clean(at)
    assert says in texts(at.error)
    assert not Path("/tmp/flightlog-stolen.csv").exists()
    _run_sql(at, "SELECT run_id, steps FROM (SELECT run_id, max(step) AS steps FROM metrics GROUP BY run_id) "
                 "ORDER BY 1")
    assert_clean(at)
    assert not at.error
    assert list(at.dataframe[0].value["run_id"]) == ["baseline", "llm-demo"]


def test_sql_console_charts_and_downloads_a_result(open_app):
    at = open_app("views/sql.py", run="llm-demo")
    at.selectbox(key="sql_example").select("Loss every 100 steps (journey)").run()
    assert "llm-demo" in at.text_area(key="sql_text").value
    at.button(key="sql_run").click().run()
    assert_clean(at)
    result = at.dataframe[0].value
    assert list(result["step"]) == [0, 100, 200, 300, 400]
    assert len(at.get("download_button")) == 2
    at.selectbox(key="sql_x").select("step").run()
    at.selectbox(key="sql_y").select("loss").run()
    chart = charts_of(at)[0]
    assert chart["encoding"]["x"]["field"] == "step" and chart["encoding"]["y"]["field"] == "loss"


def test_sql_console_caps_rows_and_says_so(open_app):
    at = open_app("views/sql.py")
    _run_sql(at, "SELECT * FROM range(20000)")
    assert_clean(at)
    assert len(at.dataframe[0].value) == 10_000
    assert "row cap" in texts(at.caption)


# -- pure helpers (no Streamlit) ---------------------------------------------------------------------
def test_archive_url_comes_from_argv_then_environment_then_default():
    assert state.configured_archive_url(["--archive", "s3://b/a"], {"FLIGHTLOG_ARCHIVE": "/x"}) == "s3://b/a"
    assert state.configured_archive_url(["--archive=/y"], {}) == "/y"
    assert state.configured_archive_url([], {"FLIGHTLOG_ARCHIVE": "/x"}) == "/x"
    assert state.configured_archive_url([], {}) == state.DEFAULT_ARCHIVE


def test_a_brushed_range_on_a_chart_becomes_a_step_range():
    assert state.brushed_range({"selection": {"zoom": {"x": [120.4, 179.6]}}}, "zoom") == (120, 180)
    assert state.brushed_range({"selection": {"zoom": {}}}, "zoom") is None
    assert state.brushed_range(None, "zoom") is None


def test_step_range_parsing_drops_bad_values_with_a_note():
    assert (state.parse_step_range("10", "20").lo, state.parse_step_range("10", "20").hi) == (10, 20)
    r = state.parse_step_range("abc", "nan")
    assert (r.lo, r.hi) == (None, None) and len(r.problems) == 2
    r = state.parse_step_range("30", "20")
    assert (r.lo, r.hi) == (20, 30) and "swapped" in r.problems[0]
    assert state.clamp_range(None, 10_000, 5, 499) == (5, 499)
    assert state.clamp_range(600, 700, 5, 499) == (499, 499)


def test_cached_queries_follow_the_archive_version(fixture_archive, tmp_path):
    """Results are cached per (URL, archive version): a new run in the archive is a new result, not a stale one."""
    import shutil

    from telemetry import Archive, Writer

    root = tmp_path / "copy"
    shutil.copytree(fixture_archive, root)
    with Archive(str(root), recover=False) as archive:
        before = archive.version
        assert len(state.query(archive, "runs")) == 3
        with Writer(str(root), "late-run") as w:
            w.metric(0, "loss", 1.0)
        archive.refresh()
        assert archive.version != before
        assert "late-run" in set(state.query(archive, "runs")["run_id"])


# -- imported runs: each tool's names, one rule (telemetry.read.series) ------------------------------
IMPORTED_DEFAULT_CHARTS = {
    "wandb-import": ["train/loss", "val/loss", "train/grad_norm", "train/learning_rate"],
    "tensorboard-import": ["loss/train", "loss/val", "learning_rate", "accuracy/train"],
    "megatron-import": ["lm loss", "lm loss validation", "grad-norm", "lr-Adam"],
    "hf-import": ["loss", "eval_loss", "grad_norm", "learning_rate"],
}
# logged once, at the end (conftest.IMPORTED_RUNS): sizes and final scores
IMPORTED_SINGLE_VALUES = {"wandb-import": ["artifact/code (bytes)", "artifact/model (bytes)", "final/eval time ms"],
                          "tensorboard-import": [], "megatron-import": [], "hf-import": ["train_runtime"]}


@pytest.mark.parametrize("run", list(IMPORTED_DEFAULT_CHARTS))
def test_journey_of_an_import_opens_on_its_losses_and_lists_single_values_in_a_table(open_app, imported_archive, run):
    at = open_app("views/journey.py", archive=imported_archive, run=run)
    assert_clean(at)
    assert at.multiselect(key="journey_metrics").value == IMPORTED_DEFAULT_CHARTS[run]
    titles = [c["title"]["text"] for c in charts_of(at)[:4]]
    assert titles[0].startswith(IMPORTED_DEFAULT_CHARTS[run][0].replace("_", " "))
    singles = IMPORTED_SINGLE_VALUES[run]
    assert not set(singles) & set(at.multiselect(key="journey_metrics").options), "single values are no charts"
    if singles:
        table = next(d.value for d in at.dataframe if "last_step" in d.value)  # the summary table
        assert sorted(table["name"]) == sorted(singles) and set(table["last"]) == {12_345.0}


def test_runs_list_shows_the_last_training_loss_of_every_import(open_app, imported_archive):
    at = open_app("views/runs.py", archive=imported_archive)
    assert_clean(at)
    table = at.dataframe[0].value.set_index("run_id")
    for run in IMPORTED_DEFAULT_CHARTS:
        assert table.loc[run, "last_loss"] == pytest.approx(2.0 + 8.0 / (1.0 + 99 / 40.0)), run  # at step 99


def test_compare_of_imports_opens_on_the_loss(open_app, imported_archive):
    at = open_app("views/compare.py", archive=imported_archive, run="wandb-import")
    assert_clean(at)
    assert at.selectbox(key="cmp_metric").value == "train/loss"


def test_gpu_heatmap_of_one_process_with_two_gpus_has_a_row_per_gpu(open_app, imported_archive):
    at = open_app("views/ranks.py", archive=imported_archive, run="wandb-import")
    assert_clean(at)
    heat = charts_of(at)[-1]
    frame = next(iter(heat["frames"].values()))
    assert sorted(frame["rank_label"].unique()) == ["0 · GPU 0", "0 · GPU 1"]
    assert heat["encoding"]["y"]["title"] == "rank · GPU"
