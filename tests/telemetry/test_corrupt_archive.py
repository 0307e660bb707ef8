"""A corrupt file never takes the archive down: readers skip it and name it, `flightlog verify`
lists it (path: what is wrong) and exits 1, `flightlog index` warns and keeps it out of the
manifest, `flightlog index --quarantine` moves it to `_quarantine/`. Everything else still reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schema import FORMAT_VERSION
from data_schema.layout import MANIFEST_FILE, ROOT_FILE, segment_path
from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.file_integrity import verify
from telemetry.maintain.manifest import write_manifest
from telemetry.store.errors import FormatVersionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 50
GOOD_ROWS = STEPS * 2  # loss and lr per step


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real `flightlog` command in a fresh process."""
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("FLIGHTLOG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture()
def url(tmp_path) -> str:
    url = str(tmp_path / "archive")
    cfg = WriterConfig(flush_interval_s=0.1, segment_interval_s=3600, close_timeout_s=20)
    with Writer(url, run="good", writer_config=cfg) as w:
        for s in range(STEPS):
            w.metrics(s, {"loss": 1.0 / (s + 1), "lr": 1e-3})
        w.event("note", step=3, message="still here")
    write_manifest(url)
    return url


def _segment(url: str) -> str:
    folder = os.path.join(url, "metrics", "run_id=good")
    return os.path.join(folder, sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))[0])


def _write(url: str, rel: str, data: bytes) -> str:
    with open(os.path.join(url, rel), "wb") as fh:
        fh.write(data)
    return rel


def truncated(url: str) -> str:
    data = open(_segment(url), "rb").read()
    return _write(url, segment_path("metrics", "good", 0, 0, 900), data[: len(data) // 2])


def zero_bytes(url: str) -> str:
    return _write(url, segment_path("metrics", "good", 0, 0, 901), b"")


def garbage(url: str) -> str:
    return _write(url, segment_path("metrics", "good", 0, 0, 902), os.urandom(4096))


def foreign_schema(url: str) -> str:
    rel = segment_path("metrics", "good", 0, 0, 903)
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), os.path.join(url, rel))
    return rel


def corrupt_page(url: str) -> str:
    """Footer intact, a data page flipped: only decoding the pages shows it."""
    data = bytearray(open(_segment(url), "rb").read())
    md = pq.read_metadata(_segment(url))
    col = md.row_group(0).column(md.schema.names.index("value"))
    start = col.data_page_offset + 8  # inside the zstd frame of the value column's page
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    return _write(url, segment_path("metrics", "good", 0, 0, 904), bytes(data))


def newer_format(url: str) -> str:
    rel = segment_path("metrics", "good", 0, 0, 905)
    table = pq.read_table(_segment(url))
    meta = {**(table.schema.metadata or {}), b"flightlog.format_version": str(FORMAT_VERSION + 1).encode()}
    pq.write_table(table.replace_schema_metadata(meta), os.path.join(url, rel))
    return rel


BAD_FILES = {
    truncated: "truncated or not Parquet at all",
    zero_bytes: "empty file, 0 bytes",
    garbage: "no Parquet footer",
    foreign_schema: "does not fit table 'metrics': required column 'run_id' is missing",
    corrupt_page: "a data page does not decode",
    newer_format: f"written by a newer flightlog (format version {FORMAT_VERSION + 1}",
}


def _assert_good_data_intact(a: Archive) -> None:
    rows, total = a.sql("SELECT count(*), sum(value) FROM metrics WHERE run_id = 'good'").to_pylist()[0].values()
    assert rows == GOOD_ROWS and total == pytest.approx(sum(1.0 / (s + 1) for s in range(STEPS)) + STEPS * 1e-3)
    curve = a.curve("good", "loss", buckets=10)
    assert int(curve["count"].sum()) == STEPS and curve["max"].max() == 1.0
    assert a.events("good")["message"].tolist() == ["still here"]


# -- through the API ---------------------------------------------------------------------------
@pytest.mark.parametrize("make_bad", list(BAD_FILES), ids=lambda f: f.__name__)
def test_a_bad_file_is_skipped_and_named_while_everything_else_reads(url, make_bad):
    rel = make_bad(url)
    with Archive(url) as a:
        _assert_good_data_intact(a)  # a corrupt page is found by the first query that hits it
        named = [p for p in a.problems if rel in p]
        assert len(named) == 1 and BAD_FILES[make_bad] in named[0], a.problems
    report = verify(url)
    assert not report.ok
    assert [p for p in report.problems if p.startswith(f"{rel}: ")] == [f"{rel}: {report.bad_files[rel]}"]
    assert BAD_FILES[make_bad] in report.bad_files[rel]


def test_a_corrupt_page_is_not_visible_to_a_footer_only_check(url):
    rel = corrupt_page(url)
    assert verify(url, deep=False).ok
    assert rel in verify(url).bad_files


def test_a_manifest_entry_without_its_file_is_a_problem_until_reindexed(url):
    manifest = json.load(open(os.path.join(url, MANIFEST_FILE)))
    ghost = segment_path("metrics", "good", 0, 0, 906)
    manifest["files"].append({"path": ghost, "size": 123, "rows": 7, "table": "metrics", "run_id": "good"})
    _write(url, MANIFEST_FILE, json.dumps(manifest).encode())
    with Archive(url) as a:  # a listable archive reads what is there
        _assert_good_data_intact(a)
    assert any(p.startswith(f"{ghost}: listed in the manifest but missing") for p in verify(url).problems)
    write_manifest(url)
    assert verify(url).ok


def test_an_http_archive_skips_a_manifest_entry_whose_file_is_gone(url, tmp_path):
    manifest = json.load(open(os.path.join(url, MANIFEST_FILE)))
    ghost = segment_path("metrics", "good", 0, 0, 907)
    manifest["files"].append({"path": ghost, "size": 123, "rows": 7, "table": "metrics", "run_id": "good"})
    _write(url, MANIFEST_FILE, json.dumps(manifest).encode())
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        port = int(line.split(" port ")[1].split()[0])
        with Archive(f"http://127.0.0.1:{port}", cache_dir=str(tmp_path / "cache")) as a:
            _assert_good_data_intact(a)
            assert [p for p in a.problems if ghost in p] == [
                f"skipped {ghost}: listed in the manifest but missing from the archive"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_unreadable_flightlog_json_is_named_but_does_not_stop_reading(url):
    _write(url, ROOT_FILE, b"{not json")
    with Archive(url) as a:
        _assert_good_data_intact(a)
        named = [p for p in a.problems if p.startswith(f"{ROOT_FILE}: ")]
        assert len(named) == 1 and "readers go on without it" in named[0], a.problems
    assert any(p.startswith(f"{ROOT_FILE}: ") for p in verify(url).problems)


def test_an_unreadable_manifest_is_named_but_does_not_stop_reading(url):
    _write(url, MANIFEST_FILE, b"[{broken")
    with Archive(url) as a:
        _assert_good_data_intact(a)
        assert any("manifest" in p and "not valid JSON" in p for p in a.problems), a.problems
    assert not verify(url).ok


def test_an_archive_of_a_newer_format_is_refused_with_a_clear_message(url):
    _write(url, ROOT_FILE, json.dumps({"format_version": FORMAT_VERSION + 1}).encode())
    with pytest.raises(FormatVersionError, match=f"format version {FORMAT_VERSION + 1}, newer than this flightlog"):
        Archive(url)


def proc_reason(url: str, rel: str) -> str:
    return verify(url).bad_files[rel]


# -- through the real CLI -------------------------------------------------------------------------
def test_verify_and_index_name_every_bad_file_and_quarantine_moves_the_broken_ones(url):
    bad = {make(url): reason for make, reason in BAD_FILES.items()}

    proc = cli("verify", url)
    assert proc.returncode == 1, proc.stderr
    lines = [ln.strip()[2:] for ln in proc.stderr.splitlines() if ln.strip().startswith("- ")]
    for rel, reason in bad.items():
        assert len([ln for ln in lines if ln.startswith(f"{rel}: ") and reason in ln]) == 1, (rel, lines)
    assert "Traceback" not in proc.stderr

    proc = cli("index", "--quiet", url)
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("flightlog: warning: ")]
    footer_bad = {rel for rel, reason in bad.items() if reason != BAD_FILES[corrupt_page]}
    for rel in footer_bad:
        assert len([w for w in warned if rel in w]) == 1, (rel, warned)
    listed = {e["path"] for e in json.load(open(os.path.join(url, MANIFEST_FILE)))["files"]}
    newer = next(rel for rel, reason in bad.items() if reason == BAD_FILES[newer_format])
    assert not (footer_bad - {newer}) & listed  # broken files are never offered to readers of the manifest
    assert newer in listed  # not broken: a newer flightlog reading the manifest needs it

    proc = cli("index", "--quiet", "--quarantine", url)
    assert proc.returncode == 0, proc.stderr
    for rel, reason in bad.items():
        kept = reason == BAD_FILES[newer_format]
        assert os.path.exists(os.path.join(url, rel)) == kept, rel
        assert os.path.exists(os.path.join(url, "_quarantine", rel)) == (not kept), rel
        assert any(rel in ln and ("kept" if kept else "moved to _quarantine/") in ln
                   for ln in proc.stderr.splitlines()), (rel, proc.stderr)

    proc = cli("verify", url)  # only the newer-format file is left: not broken, still unreadable here
    assert proc.returncode == 1
    listed = [ln for ln in proc.stderr.splitlines() if ln.startswith("  - ")]
    assert listed == [f"  - {newer}: {proc_reason(url, newer)}"]
    with Archive(url) as a:
        _assert_good_data_intact(a)


def test_cli_on_an_archive_of_a_newer_format_says_so_in_one_line(url):
    _write(url, ROOT_FILE, json.dumps({"format_version": FORMAT_VERSION + 1}).encode())
    for command in ("verify", "index"):
        proc = cli(command, url)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"flightlog: error: archive {url} has format version {FORMAT_VERSION + 1}, newer than this flightlog "
            f"reads ({FORMAT_VERSION}): upgrade flightlog (pip install -U flightlog)"]
