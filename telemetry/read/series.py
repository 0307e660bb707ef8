"""Which series a reader sees first: ONE rule for the runs list's "last loss", the journey's default
charts and Compare's default metric, whatever tool named the series.

Recorded runs call their loss `loss`; W&B imports `train/loss`, TensorBoard `loss/train`, Megatron
`lm loss`, Hugging Face `loss` and `eval_loss`. The rule orders names by family: loss-like first
(training before validation), then grad norm, learning rate and throughput; everything else after,
in the order given. Series with a handful of points (artifact sizes, final scores) are not curves:
the journey lists them in a summary table instead of drawing near-empty charts.

Pure functions over names and point counts (no archive, no Streamlit); `loss_rank_sql` is the same
loss rule as a SQL expression, for queries that pick a run's loss series inside DuckDB.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Training losses, best first: a name on this list wins over any other loss-like name
TRAIN_LOSS_NAMES: tuple[str, ...] = (
    "loss", "train/loss", "train_loss", "loss/train", "training_loss", "train/lm_loss", "lm loss",
    "lm-loss-training/lm loss", "train/loss_step", "train_loss_step",
)
# Validation losses: after every training loss (the runs list's "last loss" is the training one)
VAL_LOSS_NAMES: tuple[str, ...] = (
    "val/loss", "val_loss", "loss/val", "eval/loss", "eval_loss", "validation/loss", "loss/validation",
    "valid/loss", "lm loss validation", "lm-loss-validation/lm loss validation",
)
# Other names holding "loss" are loss-like too, except loss scaling (a mixed-precision knob, not a loss)
LOSS_EXCLUDED_WORD = "scale"
VAL_MARKERS: tuple[str, ...] = ("val", "eval", "test")
GENERIC_TRAIN_LOSS_RANK = 200
GENERIC_VAL_LOSS_RANK = 300
VAL_LOSS_RANK = 100

GRAD_NORM_NAMES: tuple[str, ...] = ("grad_norm", "train/grad_norm", "grad-norm", "grad norm", "gradient_norm",
                                    "optimizer/grad_norm")
LR_NAMES: tuple[str, ...] = ("lr", "learning_rate", "train/learning_rate", "learning-rate", "learning rate",
                             "train/lr", "lr/train", "optimizer/lr")
THROUGHPUT_NAMES: tuple[str, ...] = ("tokens_per_s", "throughput", "tokens_per_second", "train/tokens_per_second",
                                     "samples_per_second", "train_samples_per_second", "throughput/tokens_per_s")

DEFAULT_CHARTS = 4  # the journey's first screen: two rows of two half-width charts
# A series drawn as a curve needs a few points at more than one step; fewer is a summary-table value
CHART_MIN_POINTS = 3


def loss_rank(name: str) -> int | None:
    """Where a name stands among loss-like series (lower first), None when it is no loss."""
    if name in TRAIN_LOSS_NAMES:
        return TRAIN_LOSS_NAMES.index(name)
    if name in VAL_LOSS_NAMES:
        return VAL_LOSS_RANK + VAL_LOSS_NAMES.index(name)
    low = name.lower()
    if "loss" not in low or LOSS_EXCLUDED_WORD in low:
        return None
    return GENERIC_VAL_LOSS_RANK if any(m in low for m in VAL_MARKERS) else GENERIC_TRAIN_LOSS_RANK


def _family_rank(name: str) -> tuple[int, int]:
    """(family, place in it): 0 loss, 1 grad norm, 2 learning rate, 3 throughput, 4 anything else."""
    rank = loss_rank(name)
    if rank is not None:
        return 0, rank
    low = name.lower()
    for family, exact, generic in (
        (1, GRAD_NORM_NAMES, ("grad_norm", "grad norm", "grad-norm", "gradient_norm")),
        (2, LR_NAMES, ("learning_rate", "learning rate", "learning-rate")),
        (3, THROUGHPUT_NAMES, ("per_s", "per second", "throughput")),
    ):
        if name in exact:
            return family, exact.index(name)
        if any(g in low for g in generic) or (family == 2 and _is_lr(low)) or (family == 3 and low.endswith("/s")):
            return family, len(exact)
    return 4, 0


def _is_lr(low: str) -> bool:
    # `lr`, `lr-Adam` (Megatron), `optimizer/lr_group0`: lr as a word of the name, not inside one
    words = low.replace("/", " ").replace("-", " ").replace("_", " ").replace(".", " ").split()
    return "lr" in words


def order_series(names: Iterable[str]) -> list[str]:
    """Names in the order a reader wants them: losses, grad norm, lr, throughput, then the rest as given."""
    names = list(dict.fromkeys(names))
    place = {n: i for i, n in enumerate(names)}
    return sorted(names, key=lambda n: (*_family_rank(n), place[n]))


def loss_name(names: Iterable[str]) -> str | None:
    """The run's loss: the best loss-like name among `names`, None when it logged none."""
    ranked = [(loss_rank(n), n) for n in names]
    found = sorted((r, n) for r, n in ranked if r is not None)
    return found[0][1] if found else None


def is_few_points(points: int, first_step: int | None = None, last_step: int | None = None) -> bool:
    """A series too small to draw: fewer than CHART_MIN_POINTS points, or all of them at one step
    (a size or a final score logged once by every rank)."""
    if points < CHART_MIN_POINTS:
        return True
    return first_step is not None and last_step is not None and first_step == last_step


def split_series(points: Mapping[str, tuple[int, int | None, int | None] | int],
                 names: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """(curves in reading order, few-point series) of `names` (default: those in `points`).

    `points`: name -> point count, or (count, first step, last step). A name missing from `points`
    counts as a curve (the caller could not count it: better an empty chart than a hidden series).
    """
    curves, few = [], []
    for name in order_series(points if names is None else names):
        info = points.get(name)
        if info is None:
            curves.append(name)
            continue
        count, first, last = (info, None, None) if isinstance(info, int) else info
        (few if is_few_points(int(count), first, last) else curves).append(name)
    return curves, few


def default_charts(curves: Iterable[str], *, limit: int = DEFAULT_CHARTS) -> list[str]:
    """The journey's charts on first view: the first `limit` curves of the reading order."""
    return order_series(curves)[:limit]


def loss_rank_sql(column: str = "name") -> str:
    """`loss_rank` as a DuckDB expression over a name column: NULL for a name that is no loss.
    (The same lists and words as the Python rule; tests/telemetry/test_series.py checks they agree.)"""
    def quoted(name: str) -> str:
        return "'" + name.replace("'", "''") + "'"

    low = f"lower({column})"
    exact = [f"WHEN {column} = {quoted(n)} THEN {i}" for i, n in enumerate(TRAIN_LOSS_NAMES)]
    exact += [f"WHEN {column} = {quoted(n)} THEN {VAL_LOSS_RANK + i}" for i, n in enumerate(VAL_LOSS_NAMES)]
    val = " OR ".join(f"contains({low}, {quoted(m)})" for m in VAL_MARKERS)
    return (f"CASE {' '.join(exact)} "
            f"WHEN NOT contains({low}, 'loss') OR contains({low}, {quoted(LOSS_EXCLUDED_WORD)}) THEN NULL "
            f"WHEN {val} THEN {GENERIC_VAL_LOSS_RANK} ELSE {GENERIC_TRAIN_LOSS_RANK} END")
