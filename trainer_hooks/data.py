"""A dataloader wrapper that tells the Observer which data chunk and samples each batch holds.

    loader = trainer_hooks.observe_batches(loader, obs, chunk="chunk_id", sample_ids="ids")
    for batch in loader: ...

`chunk` and `sample_ids` are each a key of a dict-like batch, an attribute name, or a
callable `batch -> value`. Left as None, common keys are tried (`data_chunk`/`chunk`/
`chunk_id` and `sample_ids`/`ids`/`index`). A batch without them still flows through.
Sample ids are not converted here (a CPU tensor stays a tensor): the Observer reads them
only when an incident needs them, so the wrapper costs a dict lookup per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

CHUNK_KEYS = ("data_chunk", "chunk", "chunk_id")
SAMPLE_ID_KEYS = ("sample_ids", "ids", "index", "indices")

Getter = str | Callable[[Any], Any] | None


def _get(batch: Any, how: Getter, defaults: tuple[str, ...]) -> Any:
    if callable(how):
        return how(batch)
    keys = (how,) if how is not None else defaults
    for k in keys:
        if isinstance(batch, dict):
            if k in batch:
                return batch[k]
        elif hasattr(batch, k):
            return getattr(batch, k)
    return None


class ObservedBatches:
    """Iterable over `loader`'s batches that calls `obs.set_batch(...)` before yielding each."""

    def __init__(self, loader: Iterable, obs: Any, *, chunk: Getter = None, sample_ids: Getter = None) -> None:
        self.loader = loader
        self.obs = obs
        self._chunk = chunk
        self._ids = sample_ids

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            try:
                chunk = _get(batch, self._chunk, CHUNK_KEYS)
                ids = _get(batch, self._ids, SAMPLE_ID_KEYS)
                if hasattr(chunk, "numel") and chunk.numel() > 1:
                    chunk = chunk.reshape(-1)[0]  # a collated per-sample chunk id: the batch's chunk
                self.obs.set_batch(chunk=chunk, sample_ids=ids)
            except Exception as exc:  # noqa: BLE001 - a telemetry problem never stops the data
                fail = getattr(self.obs, "_hook_error", None)
                if fail is not None:
                    fail("data", exc)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def observe_batches(loader: Iterable, obs: Any, *, chunk: Getter = None, sample_ids: Getter = None) -> ObservedBatches:
    return ObservedBatches(loader, obs, chunk=chunk, sample_ids=sample_ids)


class ChunkTracker:
    """Turns the chunk id of each finished step into `data_chunks` rows and `data_chunk_start` events.

    Runs on the drainer thread. A chunk seen again later (a retried "misbehaved" chunk) gets a
    second row with its own step range.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self._cur: tuple[int, int, int, int] | None = None  # chunk, first_step, last_step, tokens

    def step(self, step: int, chunk: int | None, tokens: int) -> None:
        cur = self._cur
        if cur is not None and cur[0] == chunk:
            self._cur = (cur[0], cur[1], step, cur[3] + tokens)
            return
        self.end()
        if chunk is not None:
            self._cur = (chunk, step, step, tokens)
            self.writer.event("data_chunk_start", step=step, data_chunk=chunk, message=f"data chunk {chunk} starts")

    def end(self) -> None:
        if self._cur is not None:
            chunk, first, last, tokens = self._cur
            self.writer.data_chunk(chunk, first_step=first, last_step=last, tokens=tokens or None)
            self._cur = None
