"""Fixtures for end-to-end runs: a fresh archive per test and a tiny reference-trainer config.

Tiny means 2 layers, d_model 64, seq 32: a step costs milliseconds, so a multi-process run's
time is mostly process start-up (about 3-5 s per launch on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An archive folder of this test only; $FLIGHTLOG_ARCHIVE points at it so nothing lands in the cwd."""
    url = str(tmp_path / "archive")
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", url)
    return url


def tiny_train_config(archive: str, checkpoint_dir: str, **overrides):
    """A small TrainConfig recording into `archive` (keyword overrides win)."""
    from trainer_hooks.reference.train import TrainConfig

    base = dict(
        archive=archive, n_layer=2, n_head=2, d_model=64, seq_len=32, micro_batch=4, chunk_sequences=16,
        num_chunks=6, steps=16, warmup_steps=2, log_every=1000, checkpoint_dir=checkpoint_dir,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def make_tiny_config():
    """`tiny_train_config` itself, for module-scoped fixtures that pick their own folders."""
    pytest.importorskip("torch")
    return tiny_train_config


@pytest.fixture
def tiny_config(tmp_path: Path, archive: str, make_tiny_config):
    """Factory of tiny TrainConfigs for this test's archive."""
    return lambda **overrides: make_tiny_config(archive, str(tmp_path / "checkpoints"), **overrides)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by the tests of one module (for a run several tests read)."""
    return tmp_path_factory.mktemp("module")
