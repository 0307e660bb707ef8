"""A published archive on a static web host (loopback, no directory listing) opens for anyone:
`telemetry.Archive("http://...")`, `flightlog verify URL` and the journey app."""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.cli import main as cli_main
from telemetry import Archive, verify
from telemetry.maintain.publish import PublishConfig, publish

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "app" / "ui" / "main.py"


def _helpers():
    spec = importlib.util.spec_from_file_location("publish_helpers",
                                                  REPO / "tests" / "telemetry" / "publish_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


helpers = _helpers()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base URL, served folder, source folder): llm-demo and baseline published and served."""
    base_dir = tmp_path_factory.mktemp("publish-http")
    source = helpers.build_fixture_archive(base_dir / "source")
    folder = base_dir / "site"
    publish(["llm-demo", "baseline"], str(folder), source=source, config=PublishConfig(progress=False))
    with helpers.static_host(folder) as base:
        yield base, folder, source


def test_the_static_host_lists_no_folders(site):
    base, _, _ = site
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/metrics/", timeout=5)
    assert err.value.code == 403
    assert json.loads(urllib.request.urlopen(base + "/flightlog.json", timeout=5).read())["published"] is True


def test_the_published_archive_opens_over_http_through_its_manifest(site, tmp_path):
    base, _, source = site
    pub = Archive(base + "/", cache_dir=str(tmp_path / "cache"))
    src = Archive(source, recover=False)
    assert pub.snapshot.from_manifest and pub.problems == []
    assert sorted(pub.runs()["run_id"]) == ["baseline", "llm-demo"]
    for run in ("llm-demo", "baseline"):
        assert pub.curve(run, "loss", buckets=40)[["count", "nan_count", "posinf_count"]].equals(
            src.curve(run, "loss", buckets=40)[["count", "nan_count", "posinf_count"]])
    assert "llm-demo" in pub.snapshot.lod  # the level-of-detail table came along
    same = "SELECT count(*) AS n FROM {} WHERE run_id = 'llm-demo'"
    for table in ("events", "checkpoints", "evals", "memorization", "journey_metrics"):
        assert pub.sql(same.format(table)).to_pylist() == src.sql(same.format(table)).to_pylist()


def test_verify_passes_over_http_and_catches_a_file_changed_on_the_host(site, tmp_path, capsys):
    base, folder, _ = site
    report = verify(base, cache_dir=str(tmp_path / "cache"))
    assert report.ok, report.problems
    assert cli_main(["verify", base]) == 0
    manifest = json.loads((folder / "_manifest" / "manifest.json").read_text())
    victim = next(e["path"] for e in manifest["files"] if e["path"].startswith("events/"))
    path = folder / victim
    original = path.read_bytes()
    try:
        changed = bytearray(original)
        changed[len(changed) // 3] ^= 0x01
        path.write_bytes(bytes(changed))
        capsys.readouterr()
        assert cli_main(["verify", base]) == 1
        assert f"{victim}: sha256 mismatch" in capsys.readouterr().err
    finally:
        path.write_bytes(original)


def test_the_journey_app_opens_the_published_url(site, monkeypatch, tmp_path):
    base, _, _ = site
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", base)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # a fresh download cache
    at = AppTest.from_file(str(MAIN), default_timeout=90)
    at.query_params["run"] = "llm-demo"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert "llm-demo" in at.sidebar.selectbox(key="run_select").options
    at = AppTest.from_file(str(MAIN), default_timeout=90)
    at.query_params["page"] = "journey"
    at.query_params["run"] = "llm-demo"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("vega_lite_chart")) >= 3  # loss, grad norm, lr... drawn from the http archive
    assert os.listdir(tmp_path / "xdg" / "flightlog")  # files were fetched once into the local cache
