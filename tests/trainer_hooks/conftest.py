"""Shared pieces for trainer_hooks tests: a temp archive, a Parquet reader, tiny models, a fake NVML."""

from __future__ import annotations

import glob
import json
import os

import duckdb
import pytest
import torch


@pytest.fixture
def archive(tmp_path) -> str:
    return str(tmp_path / "archive")


def read_table(archive: str, table: str, where: str = "true") -> list[dict]:
    """Rows of `table` from the archive's Parquet segments (after the writer closed), oldest first."""
    files = sorted(glob.glob(os.path.join(archive, table, "run_id=*", "*.parquet")))
    if not files:
        return []
    con = duckdb.connect()
    rows = con.sql(f"SELECT * FROM read_parquet({files!r}, hive_partitioning=false, union_by_name=true) "
                   f"WHERE {where}").to_arrow_table().to_pylist()
    con.close()
    return rows


def metric_series(archive: str, name: str, rank: int = 0) -> dict[int, float]:
    rows = read_table(archive, "metrics", f"name = '{name}' AND rank = {rank}")
    return {r["step"]: r["value"] for r in rows}


def details(event: dict) -> dict:
    return json.loads(event["details_json"]) if event.get("details_json") else {}


class Square(torch.nn.Module):
    """x**2: overflows float32 to inf for |x| > ~1.8e19 while the layer before stays finite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class TinyNet(torch.nn.Module):
    """embed -> square -> head. Huge inputs make `square` the first layer with a non-finite output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.square = Square()
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.square(self.embed(x)) * 0.1)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TinyNet()


def batch(step: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 8, generator=g)
    return x, x.sum(dim=1, keepdim=True) * 0.1


class FakeNvml:
    """Stands in for the `pynvml` module at the library boundary (no GPU on the test machine)."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlEventTypeXidCriticalError = 8

    class NVMLError(Exception):
        pass

    class _Util:
        def __init__(self, gpu: int) -> None:
            self.gpu, self.memory = gpu, 10

    class _Mem:
        def __init__(self, used: int) -> None:
            self.used, self.total, self.free = used, 80 << 30, (80 << 30) - used

    class _Event:
        def __init__(self, device: object, xid: int) -> None:
            self.device, self.eventData, self.eventType = device, xid, 8

    def __init__(self, n_gpus: int = 2, *, fail_init: bool = False, unsupported: tuple[str, ...] = ()) -> None:
        self.n_gpus = n_gpus
        self.fail_init = fail_init
        self.unsupported = set(unsupported)
        self.reasons = [0x1] * n_gpus  # idle
        self.xids: list[tuple[int, int]] = []
        self.handles = [object() for _ in range(n_gpus)]
        self.shutdown_called = False

    def _check(self, what: str) -> None:
        if what in self.unsupported:
            raise self.NVMLError(f"{what}: Not Supported")

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdown_called = True

    def nvmlDeviceGetCount(self) -> int:
        return self.n_gpus

    def nvmlDeviceGetHandleByIndex(self, i: int) -> object:
        return self.handles[i]

    def nvmlDeviceGetUUID(self, h: object) -> str:
        return f"GPU-fake-{self.handles.index(h)}"

    def nvmlDeviceGetUtilizationRates(self, h: object):
        return self._Util(90 + self.handles.index(h))

    def nvmlDeviceGetMemoryInfo(self, h: object):
        return self._Mem((1 + self.handles.index(h)) << 30)

    def nvmlDeviceGetPowerUsage(self, h: object) -> int:
        self._check("power")
        return 350_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h: object) -> int:
        return 1_234_000  # mJ

    def nvmlDeviceGetTemperature(self, h: object, sensor: int) -> int:
        return 71

    def nvmlDeviceGetClockInfo(self, h: object, clock: int) -> int:
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: object) -> int:
        return self.reasons[self.handles.index(h)]

    def nvmlDeviceGetTotalEccErrors(self, h: object, err_type: int, counter: int) -> int:
        return 0 if err_type == self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else 3

    def nvmlEventSetCreate(self) -> object:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: object, types: int, event_set: object) -> None:
        return None

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int):
        if not self.xids:
            raise self.NVMLError("Timeout")
        gpu, xid = self.xids.pop(0)
        return self._Event(self.handles[gpu], xid)

    def nvmlEventSetFree(self, event_set: object) -> None:
        return None


@pytest.fixture
def fake_nvml() -> FakeNvml:
    return FakeNvml()
