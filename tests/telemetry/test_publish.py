"""`telemetry.maintain.publish`: a compacted, checksummed copy of chosen runs that reads like the source."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from publish_helpers import TABLES_OF_DEMO, build_fixture_archive

from app.cli import main as cli_main
from telemetry import Archive, Writer, WriterConfig, verify
from telemetry.maintain.publish import PublishConfig, publish
from telemetry.store.errors import ArchiveError, UnknownRunError

QUIET = PublishConfig(progress=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """The app's fixture archive, uncompacted (every table, 2 attempts, NaN/Inf, a spike)."""
    return build_fixture_archive(tmp_path_factory.mktemp("publish-src") / "archive")


def table_counts(archive: Archive, run_id: str) -> dict[str, int]:
    return {t: archive.sql(f"SELECT count(*) AS n FROM {t}_log WHERE run_id = ?" if t in ("runs", "attempts")
                           else f"SELECT count(*) AS n FROM {t} WHERE run_id = ?", [run_id]).column("n")[0].as_py()
            for t in TABLES_OF_DEMO}


def manifest_of(root: str) -> dict:
    with open(os.path.join(root, "_manifest", "manifest.json")) as fh:
        return json.load(fh)


def test_a_published_run_holds_every_table_compacted_and_reads_like_the_source(source, tmp_path):
    dest = str(tmp_path / "site")
    report = publish(["llm-demo"], dest, source=source, config=QUIET)
    assert report.runs == ["llm-demo"] and report.files > 10
    src, pub = Archive(source, recover=False), Archive(dest, recover=False)
    assert list(pub.runs()["run_id"]) == ["llm-demo"]  # only the chosen run
    counts = table_counts(pub, "llm-demo")
    assert counts == table_counts(src, "llm-demo") and all(counts[t] > 0 for t in TABLES_OF_DEMO)
    # the journey (attempts stitched), NaN/Inf and the spike survive compaction unchanged
    for name in ("loss", "grad_norm"):
        a, b = src.curve("llm-demo", name, buckets=50), pub.curve("llm-demo", name, buckets=50)
        assert a[["count", "nan_count", "posinf_count", "neginf_count"]].equals(
            b[["count", "nan_count", "posinf_count", "neginf_count"]])
        assert a["max"].max() == b["max"].max()
    assert pub.curve("llm-demo", "loss", buckets=50)["max"].max() == 50.01  # the spike (rank 1 logs +0.01)
    # every data file is compacted (one per table), and the run has a level-of-detail table
    data = [f for f in pub.snapshot.all_files()]
    assert data and all(f.key.kind == "compact" for f in data)
    assert "llm-demo" in pub.snapshot.lod
    assert verify(dest).ok


def test_the_manifest_lists_every_file_with_its_size_and_sha256(source, tmp_path):
    import hashlib

    dest = str(tmp_path / "site")
    publish(["llm-demo", "baseline"], dest, source=source, config=QUIET)
    manifest = manifest_of(dest)
    assert sorted(manifest["published"]["runs"]) == ["baseline", "llm-demo"]
    on_disk = sorted(os.path.relpath(os.path.join(d, f), dest).replace(os.sep, "/")
                     for d, _, files in os.walk(dest) for f in files)
    listed = sorted(e["path"] for e in manifest["files"])
    assert on_disk == sorted([*listed, "_manifest/manifest.json"])  # complete, and nothing else
    for e in manifest["files"]:
        with open(os.path.join(dest, e["path"]), "rb") as fh:
            body = fh.read()
        assert e["size"] == len(body) and e["sha256"] == hashlib.sha256(body).hexdigest()
        if e["path"].endswith(".parquet"):
            assert e["rows"] == pq.read_metadata(os.path.join(dest, e["path"])).num_rows


def test_verify_finds_a_changed_a_missing_and_an_unlisted_file(source, tmp_path):
    dest = str(tmp_path / "site")
    publish(["baseline"], dest, source=source, config=QUIET)
    files = manifest_of(dest)["files"]
    metrics = next(e["path"] for e in files if e["path"].startswith("metrics/"))
    events_like = next(e["path"] for e in files if e["path"].startswith("runs/"))
    path = os.path.join(dest, metrics)
    body = bytearray(open(path, "rb").read())
    body[len(body) // 2] ^= 0xFF  # same size, different bytes
    open(path, "wb").write(bytes(body))
    os.remove(os.path.join(dest, events_like))
    stray = os.path.join(dest, "metrics", "run_id=baseline", "part-a0-r0-00000099.parquet")
    shutil.copyfile(os.path.join(dest, metrics), stray)
    report = verify(dest)
    text = "\n".join(report.problems)
    assert not report.ok
    assert f"{metrics}: sha256 mismatch" in text
    assert f"{events_like}: listed in the manifest but missing" in text
    assert "part-a0-r0-00000099.parquet: in the archive but not in the manifest" in text


def test_publishing_refuses_unknown_runs_and_a_non_empty_destination(source, tmp_path):
    dest = str(tmp_path / "site")
    with pytest.raises(UnknownRunError, match="unknown run 'nope'.*known runs: baseline"):
        publish(["nope"], dest, source=source, config=QUIET)
    assert not os.path.exists(os.path.join(dest, "_manifest"))
    publish(["llm-demo"], dest, source=source, config=QUIET)
    with pytest.raises(ArchiveError, match="not empty.*--overwrite"):
        publish(["baseline"], dest, source=source, config=QUIET)
    # --overwrite replaces the former publication: its files are gone, the new run reads
    report = publish(["baseline"], dest, source=source, config=PublishConfig(overwrite=True, progress=False))
    assert report.removed > 0
    assert list(Archive(dest, recover=False).runs()["run_id"]) == ["baseline"]
    assert not [f for _, _, files in os.walk(os.path.join(dest, "metrics", "run_id=llm-demo")) for f in files]
    assert verify(dest).ok


def test_publishing_refuses_to_overwrite_a_folder_that_is_not_an_archive(source, tmp_path):
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "thesis.tex").write_text("precious")
    with pytest.raises(ArchiveError, match="not a flightlog archive"):
        publish(["baseline"], str(dest), source=source, config=PublishConfig(overwrite=True, progress=False))
    assert (dest / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("dest, says", [
    ("https://example.org/archive", "read-only"),
    ("{file}/below-a-file", "not writable"),
])
def test_an_unusable_destination_is_a_clear_error(source, tmp_path, dest, says):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ArchiveError, match=says):
        publish(["baseline"], dest.format(file=blocker), source=source, config=QUIET)


def test_spark_compatible_publishing_writes_no_byte_stream_split(source, tmp_path):
    def encodings(root: str) -> set[str]:
        out = set()
        for e in manifest_of(root)["files"]:
            if e["path"].endswith(".parquet"):
                md = pq.read_metadata(os.path.join(root, e["path"]))
                for g in range(md.num_row_groups):
                    for i in range(md.num_columns):
                        out |= set(md.row_group(g).column(i).encodings)
        return out

    default, plain = str(tmp_path / "default"), str(tmp_path / "plain")
    publish(["baseline"], default, source=source, config=QUIET)
    publish(["baseline"], plain, source=source, config=PublishConfig(spark_compatible=True, progress=False))
    assert "BYTE_STREAM_SPLIT" in encodings(default)
    assert "BYTE_STREAM_SPLIT" not in encodings(plain)
    a, b = Archive(default, recover=False), Archive(plain, recover=False)
    assert a.curve("baseline", "loss", buckets=20).equals(b.curve("baseline", "loss", buckets=20))
    assert verify(plain).ok


def test_a_run_still_being_written_is_published_with_a_warning(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "site")
    with Writer(src, run="done") as w:
        for s in range(20):
            w.metric(s, "loss", 1.0 / (s + 1))
    live = Writer(src, run="live", writer_config=WriterConfig(flush_interval_s=0.1, segment_interval_s=3600))
    try:
        live.metrics(0, {"loss": 3.0})
        assert live.flush(timeout=10)
        report = publish(None, dest, source=src, config=QUIET)  # None: every run
        assert report.runs == ["done", "live"]
        assert any("run live is still being written" in w for w in report.warnings)
    finally:
        live.close()
    assert Archive(dest, recover=False).sql("SELECT count(*) AS n FROM metrics WHERE run_id = 'done'").column(
        "n")[0].as_py() == 20


def test_publish_to_s3_on_a_real_s3_api(source, moto_server, tmp_path):
    opts = {k: v for k, v in moto_server["storage_options"].items() if k != "retries"}
    url = f"s3://{moto_server['bucket']}/published-{tmp_path.name}"
    publish(["llm-demo"], url, source=source, config=QUIET, dest_storage_options=opts)
    pub = Archive(url, storage_options=opts, cache_dir=str(tmp_path / "cache"), recover=False)
    assert table_counts(pub, "llm-demo") == table_counts(Archive(source, recover=False), "llm-demo")
    assert verify(url, storage_options=opts, cache_dir=str(tmp_path / "cache2")).ok


def test_the_cli_publishes_verifies_and_reports_mistakes_in_one_line(source, tmp_path, capsys):
    dest = str(tmp_path / "site")
    assert cli_main(["publish", "baseline", "--archive", source, "--to", dest, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "published 1 run(s) (baseline)" in out and "flightlog verify" in out
    assert cli_main(["verify", dest]) == 0
    capsys.readouterr()
    assert cli_main(["publish", "baseline", "--archive", source, "--to", dest, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "Traceback" not in err
    assert cli_main(["publish", "--archive", source, "--to", str(tmp_path / "other"), "--quiet"]) == 2
    assert "--all" in capsys.readouterr().err
    victim = next(e["path"] for e in manifest_of(dest)["files"] if e["path"].endswith(".parquet"))
    with open(os.path.join(dest, victim), "ab") as fh:
        fh.write(b"tail")
    assert cli_main(["verify", dest]) == 1
    assert f"{victim}: the manifest says" in capsys.readouterr().err
