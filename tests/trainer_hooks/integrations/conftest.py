"""Helpers for the integration tests: read what a run left in the archive through telemetry.Archive."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tiny models are built from configs; nothing is downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from telemetry import Archive  # noqa: E402


def series(archive: str, run_id: str, name: str, rank: int = 0) -> dict[int, float]:
    """step -> value of one metric of one rank (all attempts)."""
    a = Archive(archive)
    try:
        rows = a.sql("SELECT step, value FROM metrics WHERE run_id = ? AND name = ? AND rank = ? ORDER BY step",
                     [run_id, name, rank]).to_pylist()
    finally:
        a.close()
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"{name}: more than one row per step: {steps}"
    return {r["step"]: r["value"] for r in rows}


def rows(archive: str, query: str, params: list | None = None) -> list[dict]:
    a = Archive(archive)
    try:
        return a.sql(query, params).to_pylist()
    finally:
        a.close()
