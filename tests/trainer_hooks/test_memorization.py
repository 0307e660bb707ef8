"""Memorization score (Biderman et al.): exact on a hand-computed case, 1.0 on sequences a tiny model was
trained to memorize, chance on random ones; KV-cache decoding equals re-forward decoding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trainer_hooks.memorization import greedy_continuations, memorization_score, sample_ids, supports_kv_cache
from trainer_hooks.reference.model import GPT, GPTConfig

V = 10


class NextTokenModel(torch.nn.Module):
    """A bigram 'LM' whose greedy choice after token t is (t + 1) mod V: predictions are hand-computable."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.nn.functional.one_hot((torch.arange(V) + 1) % V, V).float())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]


class CachedNextTokenModel(NextTokenModel):
    """The same LM behind Hugging Face's decoding API (output object, past_key_values, use_cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, input_ids: torch.Tensor, past_key_values=None, use_cache: bool = False):
        self.calls.append(input_ids.size(1))
        past = 0 if past_key_values is None else past_key_values
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=past + input_ids.size(1))


SEQS = torch.tensor([
    [0, 1, 2, 3, 4, 5],   # continuation 2,3,4,5 predicted exactly          -> 4/4
    [0, 1, 2, 9, 4, 5],   # predicted 2,3,4,5 against 2,9,4,5                -> 3/4
    [5, 5, 5, 5, 5, 5],   # predicted 6,7,8,9 against 5,5,5,5                -> 0/4
])


@pytest.mark.parametrize("model_cls", [NextTokenModel, CachedNextTokenModel])
def test_hand_computed_case_matches_exactly(model_cls):
    model = model_cls()
    r = memorization_score(model, SEQS, k=2, l=4, batch_size=2)
    assert r.n_sequences == 3
    assert r.per_sequence.tolist() == [1.0, 0.75, 0.0]
    assert r.token_match == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert r.full_match == pytest.approx(1 / 3)


def test_cached_decoding_feeds_one_token_per_step_after_the_prompt():
    model = CachedNextTokenModel()
    assert supports_kv_cache(model) and not supports_kv_cache(NextTokenModel())
    out = greedy_continuations(model, SEQS[:, :2], 4)
    assert out.tolist() == [[2, 3, 4, 5], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert model.calls == [2, 1, 1, 1]  # the prompt once, then one new token per forward


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="k \\+ l"):
        memorization_score(NextTokenModel(), SEQS, k=4, l=4)
    with pytest.raises(ValueError, match="k and l must be >= 1"):
        memorization_score(NextTokenModel(), SEQS, k=0, l=4)


def test_sample_ids_are_seeded_distinct_and_capped():
    a = sample_ids(100, 10, seed=3)
    assert a == sample_ids(100, 10, seed=3) and len(set(a)) == 10 and a != sample_ids(100, 10, seed=4)
    assert sample_ids(5, 1000, seed=0) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def memorizer() -> tuple[GPT, torch.Tensor]:
    """The reference GPT trained on 4 random sequences until it reproduces them."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, seq_len=32, n_layer=2, n_head=2, d_model=64, poison_token=None))
    data = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(300):  # about 50 steps reach the loss below
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    return model, data


def test_memorized_sequences_score_one_and_random_ones_near_chance(memorizer):
    model, data = memorizer
    r = memorization_score(model, data, k=16, l=16)
    assert (r.token_match, r.full_match) == (1.0, 1.0)
    random = torch.randint(0, 256, (64, 33), generator=torch.Generator().manual_seed(2))
    chance = memorization_score(model, random, k=16, l=16)
    assert chance.full_match == 0.0
    assert chance.token_match < 0.05  # chance is 1/256; a memorizer has nothing to go on
    assert model.training  # the caller's mode is restored


def test_kv_cache_decoding_of_the_reference_model_equals_re_forward(memorizer):
    model, data = memorizer
    assert supports_kv_cache(model)
    prompts = torch.cat([data, torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(5))])[:, :10]
    model.eval()
    fast = greedy_continuations(model, prompts, 20, use_cache=True)
    slow = greedy_continuations(model, prompts, 20, use_cache=False)
    model.train()
    assert torch.equal(fast, slow)
    assert torch.equal(fast[:4], data[:, 10:30])


def test_a_hugging_face_causal_lm_decodes_the_same_with_and_without_its_kv_cache():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg).eval()  # built from a config: nothing is downloaded
    assert supports_kv_cache(model)
    seqs = torch.randint(0, 64, (6, 20), generator=torch.Generator().manual_seed(1))
    widths: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, args, kwargs: widths.append((args[0] if args else kwargs["input_ids"]).size(1)), with_kwargs=True)
    fast = greedy_continuations(model, seqs[:, :8], 12)
    hook.remove()
    assert widths == [8] + [1] * 11  # the cache was used: one new token per forward after the prompt
    slow = greedy_continuations(model, seqs[:, :8], 12, use_cache=False)
    assert torch.equal(fast, slow)
    r = memorization_score(model, torch.cat([seqs[:, :8], fast], dim=1), k=8, l=12)
    assert (r.token_match, r.full_match) == (1.0, 1.0)  # its own greedy continuations are "memorized"
