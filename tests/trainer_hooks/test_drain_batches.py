"""The drainer works a wake-up's steps at a time (issue 16): what it writes is what a step-by-step drainer
wrote, spike decisions are those of one value at a time, and one bad step loses only itself."""

from __future__ import annotations

import collections
import glob
import math
import os
import random
import statistics

import pytest
import torch

import trainer_hooks
from telemetry import Writer, WriterConfig
from tests.trainer_hooks.conftest import batch, tiny_model
from trainer_hooks.device_buffer import DeviceBuffer
from trainer_hooks.forensics import SpikeDetector
from trainer_hooks.observer import Observer

pytestmark = pytest.mark.timeout(120)


class _Recorder:
    """A writer and a mirror that keep every call, minus the wall time the drainer stamps on events."""

    run_id, attempt = "rec", 0

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def rank_info(self, **_: object) -> None:
        pass

    def metric(self, step: int, name: str, value: float, wall_time: float | None = None) -> None:
        self.calls.append(("metric", step, name, repr(value)))

    def metrics(self, step: int, values: dict, wall_time: float | None = None) -> None:
        self.calls.append(("metrics", step, repr(list(values.items())), wall_time))

    def event(self, kind: str, **fields: object) -> None:
        fields.pop("wall_time", None)
        self.calls.append(("event", kind, repr(sorted(fields.items(), key=str))))

    def data_chunk(self, chunk: int, **fields: object) -> None:
        self.calls.append(("data_chunk", chunk, repr(sorted(fields.items()))))

    def log(self, metrics: dict, step: int) -> None:  # as the mirror
        self.calls.append(("mirror", step, repr(list(metrics.items()))))

    def flush(self, timeout: float = 30.0) -> bool:
        return True

    def close(self, *_: object) -> None:
        pass


class _Sampler:
    def stop(self) -> None:
        pass


def _staged_steps(archive: str) -> list[tuple]:
    """A run with what changes the rows: two param groups, chunks that change and vanish, skipped tokens,
    obs.log values, a loss spike and a NaN step."""
    model = tiny_model()
    opt = torch.optim.SGD([{"params": model.embed.parameters()},
                           {"params": list(model.head.parameters()), "lr": 0.02}], lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="staged", archive=archive, sample_gpu=False, seed=3)
    obs._buf.host_queue = None  # every step through stage(), where the test takes its copy
    staged: list[tuple] = []
    stage = obs._buf.stage
    obs._buf.stage = lambda values, payload: (staged.append((list(values), payload)), stage(values, payload))[1]
    for step in range(120):
        x, y = batch(step, n=32)
        if step == 70:
            y = y + 40.0
        if step == 90:
            x = x.clone()
            x[0] = 1e30
        obs.set_batch(chunk=None if step % 45 == 44 else step // 25, sample_ids=[step, step + 1])
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss, tokens=0 if step % 7 == 0 else 32)
        if step % 4 == 0:
            obs.log({"extra": float(step), "count": step})
        opt.step()
        opt.zero_grad(set_to_none=True)
    obs.close()
    return staged


def _replay(staged: list[tuple], sizes: list[int]) -> list[tuple]:
    """Hand the staged steps to a fresh Observer's drainer in batches of these sizes."""
    rec = _Recorder()
    model = tiny_model()
    obs = Observer(model, torch.optim.SGD(model.parameters(), lr=0.1), run="replay", writer=rec, sampler=_Sampler(),
                   mirror=rec, options=trainer_hooks.ObserverConfig(seed=3))
    obs._buf.close()  # no drainer thread: this test drains
    rec.calls.clear()
    i = 0
    for n in sizes:
        obs._buf._pending.extend((None, v, p) for v, p in staged[i:i + n])
        obs._buf._drain_all()
        i += n
    obs.forensics.close()
    obs._chunks.end()
    assert obs._errors == {}
    return rec.calls


def test_a_drain_of_many_steps_writes_what_draining_them_one_by_one_writes(archive):
    staged = _staged_steps(archive)
    one_by_one = _replay(staged, [1] * len(staged))
    rng = random.Random(0)
    sizes = [rng.randint(2, 40) for _ in range(len(staged))]
    batched = _replay(staged, sizes)
    kinds = {c[1] for c in one_by_one if c[0] == "event"}
    assert {"nan", "loss_spike", "data_chunk_start"} <= kinds  # the run exercised what it should
    for what in ("metrics", "metric", "mirror", "data_chunk"):  # the same rows, in the same order
        assert [c for c in batched if c[0] == what] == [c for c in one_by_one if c[0] == what], what
    # Events: the same; within one drain the data_chunk_start events come before the NaN and spike events.
    assert sorted(c for c in batched if c[0] == "event") == sorted(c for c in one_by_one if c[0] == "event")
    others = [c for c in one_by_one if c[0] == "event" and c[1] != "data_chunk_start"]
    assert [c for c in batched if c[0] == "event" and c[1] != "data_chunk_start"] == others


class _OneAtATime:
    """The spike rule, one value at a time, as written before batching: every `refresh` judged values the
    candidate threshold is renewed from the window (median + half the z-score in robust sigmas); a value
    above it is a spike when its robust z-score on the window before it exceeds `zscore`."""

    def __init__(self, window: int, min_points: int, refresh: int, zscore: float = 6.0) -> None:
        self.window: collections.deque = collections.deque(maxlen=window)
        self.min_points, self.refresh, self.zscore = min_points, refresh, zscore
        self.age, self.above = refresh, math.inf

    def stats(self) -> tuple[float, float, float]:
        s = sorted(self.window)
        n = len(s)
        med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        mad = statistics.median([abs(v - med) for v in s])
        return med, mad, 1.4826 * mad if mad > 0 else max(abs(med) * 1e-6, 1e-12)

    def update(self, value: float | None) -> dict | None:
        if value is None or not math.isfinite(value):
            return None
        spike = None
        if len(self.window) >= self.min_points:
            self.age += 1
            if self.age >= self.refresh:
                self.age = 0
                med, _, scale = self.stats()
                self.above = med + 0.5 * self.zscore * scale
            if value > self.above:
                med, mad, scale = self.stats()
                z = (value - med) / scale
                if z > self.zscore:
                    spike = {"value": value, "median": med, "mad": mad, "zscore": z, "window": len(self.window)}
        self.window.append(value)
        return spike


@pytest.mark.parametrize("window,min_points,refresh", [(50, 20, 16), (100, 20, 16), (10, 3, 1), (5, 5, 2)])
def test_spike_decisions_of_a_batch_are_those_of_one_value_at_a_time(window, min_points, refresh):
    for seed in range(20):
        rng = random.Random(seed)
        values = [rng.gauss(1.0, 0.05) * (1 + 0.002 * i) for i in range(500)]
        for _ in range(12):  # spikes, drops, non-finite and missing values
            values[rng.randrange(len(values))] = rng.choice([5.0, 40.0, 0.0, math.nan, math.inf, None])
        if seed == 0:
            values = [2.0] * 250 + [2.1, 2.0] * 125  # a flat window: the tiny-scale fallback
        one = _OneAtATime(window, min_points, refresh)
        want = [(i, s) for i, v in enumerate(values) if (s := one.update(v)) is not None]
        many = SpikeDetector(window=window, zscore=6.0, min_points=min_points, refresh=refresh)
        got, start = [], 0
        while start < len(values):  # drains of 1 to 150 steps, some spanning many threshold renewals
            n = rng.randint(1, 150)
            got += [(start + i, s) for i, s in many.update_many(values[start:start + n])]
            start += n
        assert got == want, seed
        assert list(many.window) == list(one.window)
    assert want  # the series had spikes to find


def test_a_step_that_fails_in_a_batch_loses_only_itself():
    handed: list[int] = []
    errors: list[str] = []

    def on_drain(batch: list) -> None:
        if any(payload == 3 for _, payload in batch):
            raise ValueError("bad step 3")
        handed.extend(payload for _, payload in batch)

    buf = DeviceBuffer("cpu", on_drain, on_error=lambda where, exc: errors.append(f"{where}: {exc}"))
    buf.close()  # drained by hand below
    buf._pending.extend((None, [1.0], p) for p in range(6))
    buf._drain_all()
    assert handed == [0, 1, 2, 4, 5]
    assert errors == ["drainer: bad step 3"]


def _stats_by_sorting(values: list[float]) -> tuple[float, float, float]:
    s = sorted(values)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    mad = statistics.median([abs(v - med) for v in s])
    return med, mad, 1.4826 * mad if mad > 0 else max(abs(med) * 1e-6, 1e-12)


def test_the_window_statistics_are_those_of_sorting_every_deviation():
    """SpikeDetector._stats finds the MAD by a binary search over the two sorted runs of deviations: the
    very floats of sorting them all, with ties, duplicates, signed zeros, subnormals and near-overflow."""
    rng = random.Random(7)
    detector = SpikeDetector()
    pools = [lambda: rng.choice([1.0, 2.0, 3.0]), lambda: float(rng.randint(-3, 3)),
             lambda: rng.choice([1e308, -1e308, 1.7e308, 5e-324, -5e-324, 0.0, -0.0]),
             lambda: rng.gauss(0, 1) * 10 ** rng.randint(-300, 300), lambda: rng.lognormvariate(0, 2)]
    for _ in range(3000):
        draw = rng.choice(pools)
        values = [draw() for _ in range(rng.randint(1, 130))]
        assert repr(detector._stats(values)) == repr(_stats_by_sorting(values)), values


def _archive_rows(archive: str, table: str) -> list[tuple]:
    import duckdb  # noqa: PLC0415 - lazy: a heavy reader, needed by this test alone

    files = sorted(glob.glob(os.path.join(archive, table, "**", "*.parquet"), recursive=True))
    # obs.log() values and events are stamped when the drainer writes them: their wall times differ per run
    cols = ("step, name, value::VARCHAR, CASE WHEN name IN ('extra', 'count') THEN NULL ELSE wall_time END"
            if table == "metrics" else "step, kind, message")
    return sorted(duckdb.sql(f"SELECT {cols} FROM read_parquet({files!r}, hive_partitioning=false)").fetchall())


@pytest.mark.parametrize("drain_sizes", [[1] * 10, [7, 40, 3, 150]])
def test_a_writer_taking_columns_gets_the_rows_of_a_metrics_call_per_step(tmp_path, drain_sizes):
    """The drainer hands a real Writer its columns (metrics_columns); a writer without that method gets one
    metrics() call per step: the archives hold the same rows, NaN/Inf and steps without some names included."""
    staged = _staged_steps(str(tmp_path / "staged"))
    sizes = (drain_sizes * len(staged))[:len(staged)]
    got = {}
    for how in ("columns", "metrics"):
        archive = str(tmp_path / how)
        writer = Writer(archive, "replay", writer_config=WriterConfig(flush_interval_s=0.05))
        if how == "metrics":
            writer = _WithoutColumns(writer)
        model = tiny_model()
        obs = Observer(model, torch.optim.SGD(model.parameters(), lr=0.1), run="replay", writer=writer,
                       sampler=_Sampler(), options=trainer_hooks.ObserverConfig(seed=3))
        obs._buf.close()  # no drainer thread: this test drains
        i = 0
        for n in sizes:
            obs._buf._pending.extend((None, v, p) for v, p in staged[i:i + n])
            obs._buf._drain_all()
            i += n
        obs.close()
        writer.close()
        assert obs._errors == {}
        got[how] = _archive_rows(archive, "metrics"), _archive_rows(archive, "events")
    assert len(got["columns"][0]) > 5 * len(staged)
    assert any(v in ("nan", "inf") for _, _, v, _ in got["columns"][0])
    assert got["columns"] == got["metrics"]


class _WithoutColumns:
    """A Writer seen through an object that has no metrics_columns: what a framework's own writer may be."""

    def __init__(self, writer: Writer) -> None:
        self._w = writer

    def __getattr__(self, name: str) -> object:
        if name == "metrics_columns":
            raise AttributeError(name)
        return getattr(self._w, name)
