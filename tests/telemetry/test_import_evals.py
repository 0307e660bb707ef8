"""`flightlog import evals`: lm-evaluation-harness result files (v0.4 and v0.3 layouts) and CSV into a
recorded run's `evals` table; re-importing replaces, never duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main as cli
from telemetry import Archive, Writer
from telemetry.importers._common import ImportSourceError
from telemetry.importers.evals import first_step, import_evals, parse_harness_json, step_from_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"
CKPT_100 = str(FIXTURES / "results_2024-05-14T10-22-31.482913.json")   # model_args revision=ckpt_100
CKPT_200 = str(FIXTURES / "results_2024-05-14T12-22-31.901144.json")   # revision=ckpt_200
PYTHIA = str(FIXTURES / "pythia-160m-deduped_v0.3.json")               # revision=step143000, v0.3 layout
RUN = "amber-like"


@pytest.fixture
def archive(tmp_path) -> str:
    root = str(tmp_path / "archive")
    with Writer(root, RUN) as w:
        w.metric(1, "loss", 3.0)
        w.checkpoint(step=100, tokens_seen=100 * 4_194_304, uri="/ckpt/100")
    return root


def _evals(root: str) -> list[dict]:
    a = Archive(root)
    try:
        return a.sql("SELECT * FROM evals ORDER BY step, benchmark, metric").to_pylist()
    finally:
        a.close()


def _one(rows: list[dict], step: int, benchmark: str, metric: str) -> dict:
    found = [r for r in rows if (r["step"], r["benchmark"], r["metric"]) == (step, benchmark, metric)]
    assert len(found) == 1, found
    return found[0]


def test_harness_json_becomes_one_row_per_task_metric_with_stderr_and_shots(archive):
    summary = import_evals([CKPT_100, CKPT_200], archive, RUN, quiet=True)
    rows = _evals(archive)
    assert summary.rows == len(rows) == 22 and summary.steps == {100, 200}
    assert summary.benchmarks == {"arc_challenge", "hellaswag", "mmlu", "mmlu_humanities", "mmlu_formal_logic",
                                  "truthfulqa_mc2", "gsm8k", "winogrande"}
    hs = _one(rows, 200, "hellaswag", "acc_norm")
    assert (hs["value"], hs["stderr"], hs["n_shot"]) == (0.7203, 0.004479, 10)
    assert hs["harness"] == "lm-evaluation-harness 4600d6bf" and hs["source"] == CKPT_200
    assert _one(rows, 200, "gsm8k", "exact_match (strict-match)")["value"] == 0.0227
    assert _one(rows, 200, "winogrande", "acc")["stderr"] is None  # the harness wrote "N/A"
    assert _one(rows, 100, "arc_challenge", "acc")["n_shot"] == 25
    # tokens come from the run's recorded checkpoint of that step; step 200 has none
    assert _one(rows, 100, "mmlu", "acc")["tokens_seen"] == 100 * 4_194_304
    assert _one(rows, 200, "mmlu", "acc")["tokens_seen"] is None


def test_reimporting_replaces_and_never_duplicates(archive):
    import_evals([CKPT_100, CKPT_200], archive, RUN, quiet=True)
    again = import_evals([CKPT_200], archive, RUN, quiet=True)
    assert again.replaced == 11
    import_evals([CKPT_200], archive, RUN, step=200, tokens=123, quiet=True)
    rows = _evals(archive)
    assert len(rows) == 22
    assert _one(rows, 200, "mmlu", "acc")["tokens_seen"] == 123


def test_rows_written_by_a_trainer_are_replaced_by_key_and_others_kept(tmp_path):
    root = str(tmp_path / "archive")
    with Writer(root, RUN) as w:
        w.row("evals", step=100, benchmark="hellaswag", metric="acc", value=0.1)
        w.row("evals", step=100, benchmark="heldout_ppl", metric="perplexity", value=12.5)
    import_evals([CKPT_100], root, RUN, quiet=True)
    rows = _evals(root)
    assert _one(rows, 100, "hellaswag", "acc")["value"] == 0.4848
    assert _one(rows, 100, "heldout_ppl", "perplexity")["value"] == 12.5


def test_v03_layout_and_step_from_the_revision(archive):
    import_evals([PYTHIA], archive, RUN, quiet=True)
    rows = _evals(archive)
    lam = _one(rows, 143000, "lambada_openai", "ppl")
    assert (lam["value"], lam["stderr"], lam["n_shot"]) == (38.26, 1.42, 0)


def test_csv_with_optional_columns(archive, tmp_path):
    csv = tmp_path / "evals.csv"
    csv.write_text("step,benchmark,metric,value,stderr,n_shot\n100,arc_easy,acc,0.41,0.01,0\n"
                   "200,arc_easy,acc,0.45,,0\n")
    import_evals([str(csv)], archive, RUN, quiet=True)
    rows = _evals(archive)
    assert [(r["step"], r["value"], r["stderr"]) for r in rows] == [(100, 0.41, 0.01), (200, 0.45, None)]
    assert rows[0]["tokens_seen"] == 100 * 4_194_304 and rows[0]["harness"] == "csv"


def test_step_names():
    assert step_from_name("pretrained=EleutherAI/pythia-1b,revision=step143000") == 143000
    assert step_from_name("runs/out/checkpoint-200/") == 200
    assert step_from_name("iter_0001000") == 1000
    assert step_from_name("global_step500") == 500
    assert step_from_name("results_2024-05-14T10-22-31.json") is None
    assert step_from_name("filter_3") is None


def _with_model_args(tmp_path, name: str, model_args: str) -> str:
    obj = json.loads(Path(PYTHIA).read_text())
    obj["config"]["model_args"] = model_args
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_step_zero_is_a_checkpoint_from_the_file_name_and_from_the_revision(archive, tmp_path):
    assert step_from_name("pythia-160m-step0.json") == 0 and first_step("step0.json", "revision=step1000") == 0
    by_name = _with_model_args(tmp_path, "pythia-160m-step0.json", "pretrained=EleutherAI/pythia-160m")
    by_revision = _with_model_args(tmp_path, "results.json", "pretrained=EleutherAI/pythia-160m,revision=step0")
    assert import_evals([by_name], archive, RUN, quiet=True).steps == {0}
    assert import_evals([by_revision], archive, RUN, quiet=True).steps == {0}
    assert {r["step"] for r in _evals(archive)} == {0}


def test_a_run_the_archive_lacks_is_created_and_the_summary_says_so(tmp_path, capsys):
    empty = str(tmp_path / "empty")
    assert cli(["import", "evals", CKPT_100, CKPT_200, "--run", "pythia-160m", "--archive", empty, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "into new run pythia-160m (created: the archive had no such run)" in out
    rows = _evals(empty)
    assert len(rows) == 22 and {r["run_id"] for r in rows} == {"pythia-160m"}
    # the second time the run exists: found by its name, scores replaced, nothing created
    again = import_evals([CKPT_100], empty, "pythia-160m", quiet=True)
    assert not again.created and again.replaced == 11 and len(_evals(empty)) == 22
    a = Archive(empty)
    try:
        assert a.sql("SELECT run_id, name FROM runs").to_pylist() == [{"run_id": "pythia-160m", "name": "pythia-160m"}]
    finally:
        a.close()


def test_a_run_is_found_by_its_display_name(tmp_path):
    root = str(tmp_path / "archive")
    with Writer(root, "run-7f3a", name="Amber 7B") as w:
        w.metric(1, "loss", 3.0)
    summary = import_evals([CKPT_100], root, "Amber 7B", quiet=True)
    assert summary.run_id == "run-7f3a" and not summary.created


def test_not_a_harness_file_says_so():
    with pytest.raises(ImportSourceError, match="no \"results\" object"):
        parse_harness_json({"foo": 1}, "x.json")


@pytest.mark.parametrize("argv, says", [
    (["import", "evals", "missing.json", "--run", RUN], "missing.json is not a file"),
    (["import", "evals", CKPT_100, CKPT_200, "--run", RUN, "--step", "5"], "--step/--tokens name one checkpoint"),
])
def test_cli_mistakes_are_one_line(archive, capsys, argv, says):
    assert cli([*argv, "--archive", archive]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "Traceback" not in err


def test_cli_file_without_a_step_asks_for_step(archive, tmp_path, capsys):
    bare = tmp_path / "results.json"
    bare.write_text('{"results": {"arc_easy": {"acc,none": 0.5}}, "config": {"model_args": "pretrained=x"}}')
    assert cli(["import", "evals", str(bare), "--run", RUN, "--archive", archive]) == 2
    assert "pass --step N" in capsys.readouterr().err
    assert cli(["import", "evals", str(bare), "--run", RUN, "--archive", archive, "--step", "7", "--quiet"]) == 0
    assert "imported 1 eval scores from 1 file(s) into run amber-like" in capsys.readouterr().out
