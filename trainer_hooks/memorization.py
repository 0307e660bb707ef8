"""Memorization score of a causal language model (Biderman et al. 2023, "Emergent and Predictable
Memorization in Large Language Models"; LLM360's Analysis360 uses the same measure).

For each training sequence, the first `k` tokens are the prompt; the model greedily decodes `l`
tokens, which are compared with the true next `l` tokens:

- token_match: the fraction of the `l` decoded tokens equal to the true ones (mean over sequences);
- full_match: the fraction of sequences reproduced exactly ("k-extractible").

Works for any HF-style causal LM (`model(input_ids)` gives logits, or an output with `.logits`).
Decoding is batched; when the model takes a KV cache with `use_cache` (`past_key_values`, or `cache`
in recent transformers; the reference GPT too) each new token costs one position instead of a
re-forward of the whole prefix.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm


@dataclass(slots=True)
class MemorizationResult:
    k: int
    l: int  # noqa: E741 - the paper's name
    n_sequences: int
    token_match: float
    full_match: float
    per_sequence: torch.Tensor
    """Fraction of matched continuation tokens per sequence (float, shape (n_sequences,)):
    comparing it between checkpoints shows which sequences stay memorized."""


_CACHE_NAMES = ("past_key_values", "cache")  # transformers < 5.20 / newer releases


def _logits_and_cache(out: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(out, torch.Tensor):
        return out, None
    if hasattr(out, "logits"):
        return out.logits, next((getattr(out, n) for n in _CACHE_NAMES if getattr(out, n, None) is not None), None)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], out[1] if len(out) > 1 else None
    raise TypeError(f"cannot find logits in the model's output of type {type(out).__name__}")


def cache_argument(model: torch.nn.Module) -> str | None:
    """The name under which `model.forward` takes its KV cache next to `use_cache` (Hugging Face's decoding
    API: `past_key_values`, renamed `cache` in recent transformers), or None when it takes none."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if "use_cache" not in params:
        return None
    return next((n for n in _CACHE_NAMES if n in params), None)


def supports_kv_cache(model: torch.nn.Module) -> bool:
    return cache_argument(model) is not None


@torch.inference_mode()
def greedy_continuations(model: torch.nn.Module, prompts: torch.Tensor, l: int, *,  # noqa: E741
                         use_cache: bool | None = None) -> torch.Tensor:
    """The `l` tokens `model` greedily decodes after each prompt: (B, k) -> (B, l) int64.

    All prompts have the same length, so no padding or attention mask is needed."""
    if prompts.dim() != 2 or prompts.size(1) < 1:
        raise ValueError(f"prompts must be a (batch, k >= 1) tensor of token ids, got shape {tuple(prompts.shape)}")
    name = cache_argument(model)
    if use_cache and name is None:
        raise ValueError(f"{type(model).__name__}.forward takes no KV cache (past_key_values/cache and use_cache)")
    out: list[torch.Tensor] = []
    if name is not None and use_cache is not False:
        logits, past = _logits_and_cache(model(prompts, use_cache=True))
        for i in range(l):
            nxt = logits[:, -1, :].argmax(dim=-1)
            out.append(nxt)
            if i + 1 < l:
                logits, past = _logits_and_cache(model(nxt[:, None], use_cache=True, **{name: past}))
    else:
        ids = prompts
        for _ in range(l):
            logits, _ = _logits_and_cache(model(ids))
            nxt = logits[:, -1, :].argmax(dim=-1)
            out.append(nxt)
            ids = torch.cat((ids, nxt[:, None]), dim=1)
    return torch.stack(out, dim=1) if out else prompts.new_zeros((prompts.size(0), 0))


def memorization_score(model: torch.nn.Module, sequences: torch.Tensor, *, k: int = 32, l: int = 32,  # noqa: E741
                       batch_size: int = 256, use_cache: bool | None = None, device: str | torch.device | None = None,
                       progress: bool = False) -> MemorizationResult:
    """Memorization of `sequences` ((N, >= k + l) token ids, the training data) by `model`."""
    if k < 1 or l < 1:
        raise ValueError(f"k and l must be >= 1, got k={k}, l={l}")
    if sequences.dim() != 2 or sequences.size(1) < k + l:
        raise ValueError(f"sequences must be (N, >= k + l = {k + l}) token ids, got shape {tuple(sequences.shape)}")
    if sequences.size(0) == 0:
        raise ValueError("no sequences to score")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    scores = []
    try:
        starts = range(0, sequences.size(0), batch_size)
        for s in tqdm(starts, desc="memorization", unit="batch", disable=not progress, leave=False):
            batch = sequences[s:s + batch_size, :k + l].to(device)
            decoded = greedy_continuations(model, batch[:, :k], l, use_cache=use_cache)
            scores.append((decoded == batch[:, k:k + l]).float().mean(dim=1).cpu())
    finally:
        model.train(was_training)
    per_seq = torch.cat(scores)
    return MemorizationResult(k=k, l=l, n_sequences=per_seq.numel(), token_match=float(per_seq.mean()),
                              full_match=float((per_seq == 1.0).float().mean()), per_sequence=per_seq)


def sample_ids(population: int, n: int, seed: int) -> list[int]:
    """`min(n, population)` distinct indices in [0, population), the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(population, generator=g)[:min(n, population)].tolist())
