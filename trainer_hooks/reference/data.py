"""A deterministic byte-level token stream cut into numbered chunks, sharded over data-parallel ranks.

The corpus is generated from a small fixed grammar (synthetic English about flights), so it
ships as code, not as a file, and is the same on every machine. Sequences are consecutive
windows of `seq_len + 1` bytes; sample id `i` is window `i`. Chunk `c` holds samples
`[c * chunk_sequences, (c + 1) * chunk_sequences)`, like the numbered data chunks of LLM360's
Amber. The chunk order is shuffled per epoch with the seed; batches never straddle chunks.

`poison_chunk=C` corrupts the DATA of chunk C: every sequence of it carries `POISON_TOKEN`, a
byte clean text never contains and whose embedding row the reference model treats as corrupt.
So chunk C produces a non-finite loss whatever the seed or order, and nothing else does.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
from dataclasses import dataclass

import torch

POISON_TOKEN = 255  # never produced by the (ASCII) corpus below

# -----------------------------------------------------------------------------
# The corpus

_SUBJECTS = [
    "the pilot", "the first officer", "a mechanic", "the tower", "the dispatcher", "our crew",
    "the navigator", "a passenger", "the captain", "the ground team", "the weather desk", "the engineer",
]
_VERBS = [
    "checks", "records", "reports", "logs", "reviews", "repairs", "confirms", "measures", "signals",
    "watches", "adjusts", "inspects",
]
_OBJECTS = [
    "the fuel gauge", "the flight plan", "the left engine", "the altimeter", "the cargo door",
    "the landing gear", "the wind speed", "the radio", "the checklist", "the cabin pressure",
    "the runway lights", "the black box",
]
_TAILS = [
    "before dawn", "after landing", "at cruising altitude", "during the climb", "in heavy rain",
    "on the night shift", "near the coast", "above the clouds", "at gate seven", "twice an hour",
]
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Quito", "Dakar", "Perth", "Hanoi", "Reno"]


@functools.lru_cache(maxsize=4)
def corpus_text(n_bytes: int = 1 << 19, seed: int = 1234) -> str:
    """Synthetic text of at least `n_bytes` bytes; the same for the same arguments on any machine."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        if rng.random() < 0.25:
            n = rng.randrange(10, 999)
            s = (f"Flight {n} from {rng.choice(_CITIES)} to {rng.choice(_CITIES)} lands at "
                 f"{rng.randrange(1, 24)}:{rng.randrange(0, 60):02d}.")
        else:
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
            s = s[0].upper() + s[1:]
        s += "\n" if rng.random() < 0.2 else " "
        parts.append(s)
        size += len(s)
    return "".join(parts)


def corpus_tokens(n_bytes: int = 1 << 19) -> torch.Tensor:
    """The corpus as byte tokens (int64, vocabulary 256)."""
    return torch.frombuffer(bytearray(corpus_text(n_bytes).encode("ascii")), dtype=torch.uint8).long()


# -----------------------------------------------------------------------------
# Config and batches


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """How the token stream is cut, ordered and sharded."""

    seq_len: int = 128
    """Tokens per training sequence (each sample is seq_len + 1 bytes: inputs and shifted targets)."""
    global_batch: int = 16
    """Sequences per optimizer step over all data-parallel ranks."""
    chunk_sequences: int = 64
    """Sequences per numbered data chunk; a multiple of global_batch, so no batch straddles two chunks."""
    num_chunks: int | None = None
    """Use only the first N chunks of the corpus (epochs cycle over them); None: every whole chunk."""
    shuffle: bool = True
    """Shuffle the chunk order each epoch with `seed`."""
    seed: int = 0
    poison_chunk: int | None = None
    """Chunk id whose every sequence carries POISON_TOKEN (a misbehaving chunk)."""
    corpus_bytes: int = 1 << 19

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.global_batch < 1 or self.chunk_sequences < 1:
            raise ValueError("DataConfig: seq_len must be >= 2, global_batch and chunk_sequences >= 1")
        if self.chunk_sequences % self.global_batch:
            raise ValueError(
                f"DataConfig.chunk_sequences ({self.chunk_sequences}) must be a multiple of global_batch "
                f"({self.global_batch}) so that every batch belongs to exactly one chunk"
            )
        if self.num_chunks is not None and self.num_chunks < 1:
            raise ValueError("DataConfig.num_chunks must be >= 1 or None")


@dataclass(slots=True)
class Batch:
    """One data-parallel rank's share of the batch of one optimizer step."""

    step: int
    chunk: int
    epoch: int
    sample_ids: list[int]  # this rank's samples
    global_sample_ids: list[int]  # the whole step's samples, all ranks
    inputs: torch.Tensor  # (micro_batch, seq_len) int64
    targets: torch.Tensor  # (micro_batch, seq_len) int64

    @property
    def tokens(self) -> int:
        return self.inputs.numel()


class TokenStream:
    """Deterministic batches: `batch(step, dp_rank, dp_size)` depends only on the config and the step.

    The data position of a run is therefore just its step, which is what a checkpoint stores."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.tokens = corpus_tokens(cfg.corpus_bytes)
        windows = (self.tokens.numel() - 1) // cfg.seq_len
        available = windows // cfg.chunk_sequences
        if available < 1:
            raise ValueError(
                f"the corpus ({self.tokens.numel()} bytes) holds no whole chunk of {cfg.chunk_sequences} "
                f"sequences of {cfg.seq_len} tokens: lower chunk_sequences or seq_len, or raise corpus_bytes"
            )
        if cfg.num_chunks is not None and cfg.num_chunks > available:
            raise ValueError(f"DataConfig.num_chunks={cfg.num_chunks} but the corpus holds only {available} chunks")
        self.num_chunks = cfg.num_chunks or available
        if cfg.poison_chunk is not None and not 0 <= cfg.poison_chunk < self.num_chunks:
            raise ValueError(f"poison_chunk={cfg.poison_chunk} is not a chunk id in [0, {self.num_chunks})")
        self.steps_per_chunk = cfg.chunk_sequences // cfg.global_batch

    def reseeded(self, seed: int) -> TokenStream:
        """The same chunks in another seed's order (shares the corpus: cheap to try many seeds)."""
        other = copy.copy(self)
        other.cfg = dataclasses.replace(self.cfg, seed=seed)
        return other

    def chunk_order(self, epoch: int) -> list[int]:
        if not self.cfg.shuffle:
            return list(range(self.num_chunks))
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_chunks, generator=g).tolist()

    def chunk_at(self, step: int) -> tuple[int, int]:
        """(chunk id, epoch) read at `step`."""
        position = step // self.steps_per_chunk
        epoch = position // self.num_chunks
        return self.chunk_order(epoch)[position % self.num_chunks], epoch

    def first_step_of_chunk(self, chunk: int, epoch: int = 0) -> int:
        """The first step that reads `chunk` in `epoch`."""
        position = epoch * self.num_chunks + self.chunk_order(epoch).index(chunk)
        return position * self.steps_per_chunk

    def sample(self, sample_id: int) -> torch.Tensor:
        """Sample `sample_id` as seq_len + 1 tokens, poisoned if it belongs to the poison chunk."""
        L = self.cfg.seq_len
        seq = self.tokens[sample_id * L : sample_id * L + L + 1].clone()
        if sample_id // self.cfg.chunk_sequences == self.cfg.poison_chunk:
            seq[(sample_id * 7919) % L] = POISON_TOKEN  # a fixed input position per sample
        return seq

    def batch(self, step: int, dp_rank: int = 0, dp_size: int = 1) -> Batch:
        cfg = self.cfg
        if cfg.global_batch % dp_size:
            raise ValueError(f"global_batch ({cfg.global_batch}) must be divisible by the data-parallel size "
                             f"({dp_size})")
        chunk, epoch = self.chunk_at(step)
        first = chunk * cfg.chunk_sequences + (step % self.steps_per_chunk) * cfg.global_batch
        global_ids = list(range(first, first + cfg.global_batch))
        micro = cfg.global_batch // dp_size
        ids = global_ids[dp_rank * micro : (dp_rank + 1) * micro]
        seqs = torch.stack([self.sample(i) for i in ids])
        return Batch(step, chunk, epoch, ids, global_ids, seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous())
