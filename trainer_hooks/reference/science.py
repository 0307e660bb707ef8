"""Checkpoint science for runs of the reference trainer: held-out perplexity and memorization per checkpoint.

Each recorded checkpoint of a run (the archive's `checkpoints` table gives its file) is loaded
into the reference GPT; its held-out perplexity becomes an `evals` row (benchmark `heldout_ppl`)
and its memorization of sequences sampled from given data chunks becomes `memorization` rows
(trainer_hooks.memorization). Rows replace earlier ones of the same key, so measuring again never
duplicates. Used by `flightlog memorization` and by the demo after training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm import tqdm

from telemetry import Archive
from telemetry.importers.evals import KEY as EVAL_KEY
from telemetry.importers.rows import replace_rows
from trainer_hooks.memorization import memorization_score, sample_ids
from trainer_hooks.reference.data import TokenStream, corpus_text
from trainer_hooks.reference.model import GPT
from trainer_hooks.reference.train import TrainConfig

HELDOUT_BENCHMARK = "heldout_ppl"
_HELDOUT_SEED = 4321  # a different draw of the same grammar: sentences the run never trained on
_COLUMN_PARALLEL = ("wq", "wk", "wv", "w_gate", "w_up")
_ROW_PARALLEL = ("wo", "w_down")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the reference model (message says why and what to do)."""


@dataclass(slots=True)
class ScienceReport:
    run_id: str = ""
    checkpoints: list[int] = field(default_factory=list)
    memorization_rows: int = 0
    eval_rows: int = 0
    problems: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)  # memorization rows, for printing


# -- loading ----------------------------------------------------------------------------------------

def _load(uri: str) -> dict:
    try:
        if "://" in uri and not uri.startswith("file://"):
            with fsspec.open(uri, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
        return torch.load(uri.removeprefix("file://"), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {uri} is missing") from None
    except Exception as exc:  # noqa: BLE001 - unreadable or not a torch checkpoint
        raise CheckpointError(f"cannot load checkpoint {uri}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _merge_tp(shards: list[dict]) -> dict:
    """Megatron TP shards -> one TP=1 state dict (column-parallel weights join on rows, row-parallel on columns)."""
    merged = {}
    for name, t in shards[0].items():
        part = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
        if part in _COLUMN_PARALLEL:
            merged[name] = torch.cat([s[name] for s in shards], dim=0)
        elif part in _ROW_PARALLEL:
            merged[name] = torch.cat([s[name] for s in shards], dim=1)
        else:
            merged[name] = t
    return merged


def load_model(uri: str) -> tuple[GPT, TrainConfig, dict]:
    """The reference GPT (TP=1, CPU, eval mode) of a checkpoint file, its TrainConfig and raw state."""
    state = _load(uri)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{uri} is not a checkpoint of the reference trainer (no 'model'/'config' entries)")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in known} | {"device": "cpu"})
    weights = state["model"]
    if cfg.tp > 1:
        base = uri.replace("mp_rank_00", "mp_rank_{:02d}")
        if "mp_rank_00" not in uri:
            raise CheckpointError(f"{uri} is one tensor-parallel shard of {cfg.tp}: pass its mp_rank_00 file")
        weights = _merge_tp([weights] + [_load(base.format(r))["model"] for r in range(1, cfg.tp)])
    model = GPT(dataclasses.replace(cfg, tp=1).model_config())
    model.load_state_dict(weights)
    return model.eval(), cfg, state


# -- measures ---------------------------------------------------------------------------------------

def heldout_sequences(seq_len: int, n: int = 32) -> torch.Tensor:
    """(n, seq_len + 1) byte tokens of held-out text (same grammar, another draw)."""
    raw = corpus_text(n * (seq_len + 1) + 1, seed=_HELDOUT_SEED).encode("ascii")
    tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    return tokens[: n * (seq_len + 1)].view(n, seq_len + 1)


@torch.inference_mode()
def heldout_perplexity(model: GPT, seqs: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """(perplexity, its stderr) of next-token prediction on `seqs`; stderr by the delta method over sequences."""
    losses = []
    for s in range(0, seqs.size(0), batch_size):
        b = seqs[s:s + batch_size]
        logits = model(b[:, :-1])
        per_tok = F.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten(), reduction="none")
        losses.append(per_tok.view(b.size(0), -1).mean(dim=1))
    per_seq = torch.cat(losses).double()
    mean = float(per_seq.mean())
    sem = float(per_seq.std() / math.sqrt(per_seq.numel())) if per_seq.numel() > 1 else float("nan")
    ppl = math.exp(mean) if mean < 700 else math.inf
    return ppl, ppl * sem


def chunk_sequences(data: TokenStream, chunk: int, n: int, seed: int) -> torch.Tensor:
    """Up to `n` training sequences (seq_len + 1 tokens each) of data chunk `chunk`, sampled with `seed`."""
    if not 0 <= chunk < data.num_chunks:
        raise CheckpointError(f"data chunk {chunk} does not exist: the run's chunks are 0..{data.num_chunks - 1}")
    per_chunk = data.cfg.chunk_sequences
    ids = [chunk * per_chunk + i for i in sample_ids(per_chunk, n, seed * 1_000_003 + chunk)]
    return torch.stack([data.sample(i) for i in ids])


def spread_chunks(cfg: TrainConfig, *, seen: int = 5, unseen: int = 2) -> list[int]:
    """Chunks read at evenly spread points of the run, plus chunks it never read (a chance baseline);
    the corrupted chunk is left out (its embeddings are non-finite by design)."""
    data = TokenStream(cfg.data_config())
    read = [data.chunk_at(step)[0] for step in range(cfg.steps)]
    picked = list(dict.fromkeys(read[int((i + 0.5) * len(read) / seen)] for i in range(seen)))
    never = [c for c in range(data.num_chunks) if c not in set(read)][:unseen]
    return [c for c in picked + never if c != cfg.poison_chunk]


# -- a run ------------------------------------------------------------------------------------------

def recorded_checkpoints(archive_url: str, run: str, storage_options: dict | None = None) -> tuple[str, list[dict]]:
    """(run_id, [{step, tokens_seen, uri}]) of the run's checkpoints; the latest attempt's row per step."""
    archive = Archive(archive_url, storage_options=storage_options)
    try:
        run_id = archive.resolve_run(run)
        rows = archive.sql("""
            SELECT step, arg_max(tokens_seen, attempt) AS tokens_seen, arg_max(uri, attempt) AS uri
            FROM checkpoints WHERE run_id = ? AND uri IS NOT NULL GROUP BY step ORDER BY step""",
                           [run_id]).to_pylist()
    finally:
        archive.close()
    return run_id, rows


def measure_run(archive_url: str, run: str, *, chunks: list[int] | None = None, steps: list[int] | None = None,
                k: int = 32, l: int = 32, n: int = 1000, seed: int = 0, heldout: bool = True,  # noqa: E741
                batch_size: int = 256, progress: bool = True, storage_options: dict | None = None) -> ScienceReport:
    """Memorization (and held-out perplexity) of the run's checkpoints at `steps` (default: all),
    written to the archive. `chunks` default: spread_chunks() of the run's config."""
    report = ScienceReport()
    report.run_id, ckpts = recorded_checkpoints(archive_url, run, storage_options)
    if not ckpts:
        raise CheckpointError(f"run {run!r} has no recorded checkpoints with a file: nothing to measure")
    if steps is not None:
        known = {c["step"] for c in ckpts}
        missing = [s for s in steps if s not in known]
        if missing:
            raise CheckpointError(f"run {run!r} has no checkpoint at step(s) {missing}; its checkpoints are at "
                                  f"steps {sorted(known)}")
        ckpts = [c for c in ckpts if c["step"] in set(steps)]
    mem_rows, eval_rows = [], []
    for c in tqdm(ckpts, desc="checkpoints", unit="ckpt", disable=not progress, leave=False):
        try:
            model, cfg, _ = load_model(c["uri"])
        except CheckpointError as exc:
            report.problems.append(f"step {c['step']}: {exc}")
            continue
        if k + l > cfg.seq_len + 1:
            raise CheckpointError(f"k + l = {k + l} tokens do not fit in the run's sequences of {cfg.seq_len + 1}: "
                                  f"lower --k/--l (e.g. --k {cfg.seq_len // 2} --l {cfg.seq_len // 2})")
        data = TokenStream(cfg.data_config())
        for chunk in (chunks if chunks is not None else spread_chunks(cfg)):
            r = memorization_score(model, chunk_sequences(data, chunk, n, seed), k=k, l=l, batch_size=batch_size)
            mem_rows.append({"step": c["step"], "data_chunk": chunk, "k": k, "l": l, "n_sequences": r.n_sequences,
                             "token_match": r.token_match, "full_match": r.full_match})
        if heldout:
            ppl, err = heldout_perplexity(model, heldout_sequences(cfg.seq_len))
            eval_rows.append({"step": c["step"], "benchmark": HELDOUT_BENCHMARK, "metric": "perplexity",
                              "value": ppl, "stderr": err, "n_shot": 0, "harness": "flightlog-reference",
                              "source": "held-out synthetic text (seed 4321)", "tokens_seen": c["tokens_seen"]})
        report.checkpoints.append(c["step"])
    if mem_rows:
        replace_rows(archive_url, "memorization", report.run_id, pa.Table.from_pylist(mem_rows),
                     ["step", "data_chunk", "k", "l"], storage_options=storage_options)
    if eval_rows:
        replace_rows(archive_url, "evals", report.run_id, pa.Table.from_pylist(eval_rows), EVAL_KEY,
                     storage_options=storage_options)
    report.memorization_rows, report.eval_rows, report.results = len(mem_rows), len(eval_rows), mem_rows
    return report
