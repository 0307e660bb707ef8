"""The reference trainer's configuration: `TrainConfig`, and its command line (every field is a --flag).

`flightlog train --help` lists the flags; train.py reads the config top to bottom, as nanoGPT's
train.py reads its globals.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer_hooks.reference.data import POISON_TOKEN, DataConfig
from trainer_hooks.reference.model import GPTConfig


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Everything one training launch needs; `main(argv)` exposes every field as --flag."""

    run: str = _opt("reference", "run name in the archive (a resumed launch uses the same name)")
    archive: str | None = _opt(None, "archive URL or folder (default: $FLIGHTLOG_ARCHIVE or ./flightlog-archive)")
    observe: bool = _opt(True, "attach flightlog's hooks (--no-observe trains without recording)")
    # model
    n_layer: int = _opt(4, "transformer blocks")
    n_head: int = _opt(4, "attention heads (divisible by tp)")
    d_model: int = _opt(128, "model width")
    seq_len: int = _opt(128, "tokens per sequence")
    # data
    micro_batch: int = _opt(8, "sequences per data-parallel rank per step")
    chunk_sequences: int = _opt(64, "sequences per numbered data chunk (a multiple of micro_batch * dp)")
    num_chunks: int | None = _opt(None, "use only the first N data chunks (epochs cycle over them)")
    shuffle: bool = _opt(True, "shuffle the chunk order per epoch with the seed")
    poison_chunk: int | None = _opt(None, "corrupt this data chunk: each of its batches gives a non-finite loss")
    # optimization
    steps: int = _opt(200, "total optimizer steps (also when resuming)")
    lr: float = _opt(3e-3, "peak learning rate")
    min_lr: float = _opt(3e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _opt(20, "linear warm-up steps")
    weight_decay: float = _opt(0.1, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)")
    skip_nonfinite: bool = _opt(True, "skip the optimizer step when the gradient norm is non-finite (Megatron)")
    # parallelism and hardware
    dp: int = _opt(1, "data-parallel size")
    tp: int = _opt(1, "tensor-parallel size (1 or 2)")
    device: str = _opt("cpu", "cpu or cuda")
    seed: int = _opt(0, "seed of weights and data order")
    # checkpoints and faults
    checkpoint_every: int = _opt(0, "save a checkpoint every N steps (0: never)")
    checkpoint_dir: str = _opt("checkpoints", "where checkpoints go (Megatron layout)")
    resume_from: str | None = _opt(None, "checkpoint folder (its latest iteration) or an iter_* folder to resume")
    save_without_optimizer_at: int | None = _opt(None, "at this step save a checkpoint WITHOUT optimizer state")
    crash_at_step: int | None = _opt(None, "simulate a crash: every rank SIGKILLs itself after this step")
    log_every: int = _opt(10, "print a progress line every N steps (rank 0)")
    nan_layer_probe_every: int = _opt(0, "probe which layer goes non-finite every N steps (0: after the first NaN)")

    def __post_init__(self) -> None:
        positive = ("n_layer", "n_head", "d_model", "seq_len", "micro_batch", "chunk_sequences", "steps", "dp", "tp")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tp not in (1, 2):
            raise ValueError(f"tp must be 1 or 2 for the reference model, got {self.tp}")
        if self.n_head % self.tp:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by tp ({self.tp})")
        if self.chunk_sequences % (self.micro_batch * self.dp):
            raise ValueError(
                f"chunk_sequences ({self.chunk_sequences}) must be a multiple of micro_batch * dp "
                f"({self.micro_batch * self.dp}) so that a step never straddles two data chunks"
            )
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device: use --device cpu")
        if min(self.checkpoint_every, self.warmup_steps, self.nan_layer_probe_every) < 0 or self.log_every < 1:
            raise ValueError("checkpoint_every, warmup_steps and nan_layer_probe_every must be >= 0, log_every >= 1")
        if not (self.lr > 0 and self.min_lr >= 0):
            raise ValueError("lr must be > 0 and min_lr >= 0")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.dp

    def model_config(self) -> GPTConfig:
        return GPTConfig(
            seq_len=self.seq_len, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model,
            poison_token=POISON_TOKEN,
        )

    def data_config(self) -> DataConfig:
        return DataConfig(
            seq_len=self.seq_len, global_batch=self.global_batch, chunk_sequences=self.chunk_sequences,
            num_chunks=self.num_chunks, shuffle=self.shuffle, seed=self.seed, poison_chunk=self.poison_chunk,
        )


def _parse_optional(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def build_parser(prog: str = "flightlog train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Train the reference Megatron-style GPT with flightlog attached.")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        hint, flag = hints[f.name], "--" + f.name.replace("_", "-")
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
            continue
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        kind = next(a for a in args if a is not type(None)) if optional else hint
        parser.add_argument(flag, type=_parse_optional(kind) if optional else kind, default=f.default,
                            help=f"{f.metadata['help']} (default: {f.default})")
    return parser
