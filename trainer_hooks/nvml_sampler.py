"""GPU and host telemetry sampled on a daemon thread, never on the training thread.

Every `interval_s` each sampled GPU gives `gpu.util`, `gpu.mem_used_bytes`, `gpu.power_w`,
`gpu.energy_j`, `gpu.temp_c`, `gpu.sm_clock_mhz` and `gpu.clock_event_reasons`; every
`ecc_interval_s` `gpu.ecc_errors` (uncorrected, volatile) and `gpu.ecc_corrected_errors`.
Critical XID errors (nvmlEventSet) become `gpu_xid` events and changes of the clock-event
(throttle) reasons become `gpu_throttle` events. A query a GPU does not support is skipped
for that GPU from then on. Host rows: `cpu.util` and `host.mem_used_bytes` (psutil).

The NVML module is injectable (tests pass a fake). Without NVML (not installed, or its init
fails) the sampler logs one line "GPU sampler off: ..." and samples only the host.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

_log = logging.getLogger("flightlog.hooks")

# Reasons that mean "slower than it could be" (idle, app-clock settings and display are not incidents).
THROTTLE_REASONS = {
    0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
}
_XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError


def _handle_key(handle: Any) -> int:
    """NVML hands back a new pointer object per call: compare the address it holds."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or 0
    except Exception:  # noqa: BLE001 - not a ctypes pointer (a test's fake handle)
        return id(handle)


def decode_reasons(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


class NvmlSampler:
    """Samples GPUs (NVML) and the host (psutil) into `writer.system` rows and events."""

    def __init__(self, writer: Any, *, nvml: Any = None, gpu_indices: Sequence[int] | None = None,
                 gpu_uuids: Sequence[str] | None = None,
                 interval_s: float = 2.0, ecc_interval_s: float = 30.0, host_metrics: bool = True,
                 step_fn: Any = None, on_error: Any = None) -> None:
        if interval_s <= 0 or ecc_interval_s <= 0:
            raise ValueError("interval_s and ecc_interval_s must be > 0 seconds")
        self.writer = writer
        self.interval_s = interval_s
        self.ecc_interval_s = ecc_interval_s
        self._nvml = nvml
        self._gpu_indices = gpu_indices
        self._gpu_uuids = set(gpu_uuids) if gpu_uuids else None  # only these GPUs (this rank's own)
        self._host_metrics = host_metrics
        self._step_fn = step_fn or (lambda: None)
        self._on_error = on_error
        self._gpus: list[tuple[int, Any, str | None]] = []  # (index, handle, uuid), cached
        self._unsupported: set[tuple[int, str]] = set()
        self._reasons: dict[int, int] = {}
        self._events = None
        self._psutil = None
        self._last_ecc = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.gpu_enabled = False

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> NvmlSampler:
        self.gpu_enabled = self._init_nvml()
        if self._host_metrics:
            try:
                import psutil  # noqa: PLC0415 - optional at import time

                psutil.cpu_percent(None)  # the first call only primes the counter
                self._psutil = psutil
            except Exception as exc:  # noqa: BLE001 - no psutil (or a broken one): host metrics off, said once
                _log.info("flightlog: host metrics off (psutil: %s)", exc if str(exc) else type(exc).__name__)
                self._psutil = None
        if self.gpu_enabled or self._psutil is not None:
            self._thread = threading.Thread(target=self._run, name="flightlog-nvml", daemon=True)
            self._thread.start()
        return self

    def _init_nvml(self) -> bool:
        try:
            if self._nvml is None:
                import pynvml  # noqa: PLC0415 - optional dependency (nvidia-ml-py)

                self._nvml = pynvml
            nv = self._nvml
            nv.nvmlInit()
            indices = range(nv.nvmlDeviceGetCount()) if self._gpu_indices is None else self._gpu_indices
            found = []
            for i in indices:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = self._call(i, "uuid", nv.nvmlDeviceGetUUID, h)
                found.append((i, h, uuid.decode() if isinstance(uuid, bytes) else uuid))
            self._gpus = [g for g in found if self._gpu_uuids is None or g[2] in self._gpu_uuids]
            if not self._gpus and found:
                _log.warning("GPU sampler: this rank's GPU %s is not among NVML's; sampling all %d GPUs",
                             sorted(self._gpu_uuids or ()), len(found))
                self._gpus = found
        except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError, a driver mismatch: all mean "off"
            _log.warning("GPU sampler off: %s", exc if str(exc) else type(exc).__name__)
            self._gpus = []
            return False
        self._init_xid()
        return bool(self._gpus)

    def _init_xid(self) -> None:
        nv = self._nvml
        try:
            self._events = nv.nvmlEventSetCreate()
            for i, h, _ in self._gpus:
                try:
                    nv.nvmlDeviceRegisterEvents(h, getattr(nv, "nvmlEventTypeXidCriticalError", _XID_EVENT),
                                                self._events)
                except Exception:  # noqa: BLE001 - not supported on this GPU (or without root)
                    self._unsupported.add((i, "xid"))
        except Exception:  # noqa: BLE001 - no event sets on this driver: Xid events stay off, sampling goes on
            self._events = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling and release NVML. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.gpu_enabled:
            self.gpu_enabled = False
            for fn, arg in (("nvmlEventSetFree", self._events), ("nvmlShutdown", None)):
                try:
                    if fn == "nvmlShutdown":
                        self._nvml.nvmlShutdown()
                    elif arg is not None:
                        getattr(self._nvml, fn)(arg)
                except Exception:  # noqa: BLE001 - releasing at stop: a failure leaks nothing the process keeps
                    pass

    # ---- sampling thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # noqa: BLE001 - a sampler problem never stops training
                if self._on_error is not None:
                    self._on_error("nvml_sampler", exc)
            self._stop.wait(self.interval_s)

    def _call(self, index: int, what: str, fn: Any, *args: Any) -> Any:
        """One NVML query; an unsupported one is remembered and not asked again."""
        if (index, what) in self._unsupported:
            return None
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends
            self._unsupported.add((index, what))
            return None

    def sample_once(self) -> None:
        now = time.time()
        w = self.writer
        if self.gpu_enabled:
            nv = self._nvml
            ecc_due = now - self._last_ecc >= self.ecc_interval_s
            for i, h, uuid in self._gpus:
                def put(name: str, value: Any, i: int = i, uuid: str | None = uuid) -> None:
                    if value is not None:
                        w.system(name, float(value), gpu_index=i, gpu_uuid=uuid, wall_time=now)

                util = self._call(i, "util", nv.nvmlDeviceGetUtilizationRates, h)
                put("gpu.util", None if util is None else util.gpu)
                mem = self._call(i, "mem", nv.nvmlDeviceGetMemoryInfo, h)
                put("gpu.mem_used_bytes", None if mem is None else mem.used)
                power = self._call(i, "power", nv.nvmlDeviceGetPowerUsage, h)
                put("gpu.power_w", None if power is None else power / 1000.0)  # mW
                energy = self._call(i, "energy", nv.nvmlDeviceGetTotalEnergyConsumption, h)
                put("gpu.energy_j", None if energy is None else energy / 1000.0)  # mJ
                put("gpu.temp_c", self._call(i, "temp", nv.nvmlDeviceGetTemperature, h,
                                             getattr(nv, "NVML_TEMPERATURE_GPU", 0)))
                put("gpu.sm_clock_mhz", self._call(i, "sm_clock", nv.nvmlDeviceGetClockInfo, h,
                                                   getattr(nv, "NVML_CLOCK_SM", 1)))
                reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                    nv.nvmlDeviceGetCurrentClocksThrottleReasons
                reasons = self._call(i, "reasons", reasons_fn, h)
                put("gpu.clock_event_reasons", reasons)
                if reasons is not None:
                    self._throttle_change(i, uuid, int(reasons), now)
                if ecc_due:
                    for name, kind in (("gpu.ecc_errors", 1), ("gpu.ecc_corrected_errors", 0)):
                        err_type = getattr(nv, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED" if kind else
                                           "NVML_MEMORY_ERROR_TYPE_CORRECTED", kind)
                        put(name, self._call(i, name, nv.nvmlDeviceGetTotalEccErrors, h, err_type,
                                             getattr(nv, "NVML_VOLATILE_ECC", 0)))
            if ecc_due:
                self._last_ecc = now
            self._poll_xid(now)
        if self._psutil is not None:
            w.system("cpu.util", float(self._psutil.cpu_percent(None)), wall_time=now)
            w.system("host.mem_used_bytes", float(self._psutil.virtual_memory().used), wall_time=now)

    def _throttle_change(self, index: int, uuid: str | None, mask: int, now: float) -> None:
        interesting = mask & sum(THROTTLE_REASONS)
        before = self._reasons.get(index, 0)
        self._reasons[index] = interesting
        if interesting == before:
            return
        names = decode_reasons(interesting)
        self.writer.event(
            "gpu_throttle", step=self._step_fn(), severity="warning" if names else "info", wall_time=now,
            message=f"GPU {index} clocks limited by: {', '.join(names)}" if names else f"GPU {index} throttling ended",
            details={"gpu_index": index, "gpu_uuid": uuid, "reasons": names, "mask": mask,
                     "previous": decode_reasons(before)})

    def _poll_xid(self, now: float) -> None:
        if self._events is None:
            return
        nv = self._nvml
        wait = getattr(nv, "nvmlEventSetWait_v2", None) or nv.nvmlEventSetWait
        by_handle = {_handle_key(h): (i, uuid) for i, h, uuid in self._gpus}
        for _ in range(64):  # bounded: a storm of XIDs must not pin this thread
            try:
                data = wait(self._events, 0)
            except Exception:  # noqa: BLE001 - NVML_ERROR_TIMEOUT: nothing pending
                return
            i, uuid = by_handle.get(_handle_key(getattr(data, "device", None)), (None, None))
            xid = int(getattr(data, "eventData", -1))
            self.writer.event("gpu_xid", step=self._step_fn(), severity="critical", wall_time=now,
                              message=f"GPU {i if i is not None else '?'} reported XID {xid}",
                              details={"xid": xid, "gpu_index": i, "gpu_uuid": uuid})
