"""The series-ordering rule (telemetry/read/series.py): what the runs list, the journey and Compare
show first, for runs recorded by flightlog and for imports whose tools name their series differently."""

from __future__ import annotations

import duckdb
import pytest

from telemetry.read import series

WANDB = ["_runtime", "artifact/code (bytes)", "artifact/model (bytes)", "final/eval time ms", "train/grad_norm",
         "train/learning_rate", "train/loss", "train/tokens_per_second", "val/loss"]
TENSORBOARD = ["accuracy/train", "learning_rate", "loss/train", "loss/val"]
MEGATRON = ["grad-norm", "iteration-time", "lm loss", "lm loss validation", "loss-scale", "lr-Adam"]
HUGGINGFACE = ["epoch", "eval_loss", "eval_runtime", "grad_norm", "learning_rate", "loss", "train_samples_per_second"]


@pytest.mark.parametrize(("names", "first_four"), [
    (WANDB, ["train/loss", "val/loss", "train/grad_norm", "train/learning_rate"]),
    (TENSORBOARD, ["loss/train", "loss/val", "learning_rate", "accuracy/train"]),
    (MEGATRON, ["lm loss", "lm loss validation", "grad-norm", "lr-Adam"]),
    (HUGGINGFACE, ["loss", "eval_loss", "grad_norm", "learning_rate"]),
    (["tokens_per_s", "step_time_s", "lr", "grad_norm", "loss", "tokens_seen"],
     ["loss", "grad_norm", "lr", "tokens_per_s"]),
], ids=["wandb", "tensorboard", "megatron", "huggingface", "flightlog"])
def test_losses_come_first_then_grad_norm_learning_rate_and_throughput(names, first_four):
    assert series.default_charts(names) == first_four


def test_names_outside_every_family_keep_their_given_order_after_the_families():
    ordered = series.order_series(["zeta", "alpha", "loss", "mfu"])
    assert ordered == ["loss", "zeta", "alpha", "mfu"]


@pytest.mark.parametrize(("names", "loss"), [
    (WANDB, "train/loss"), (TENSORBOARD, "loss/train"), (MEGATRON, "lm loss"), (HUGGINGFACE, "loss"),
    (["eval_loss", "val/loss"], "val/loss"),  # validation only: still the run's loss
    (["loss_scale", "lr", "loss-scale"], None),  # loss scaling is not a loss
    (["my_custom_loss", "val_custom_loss"], "my_custom_loss"),
])
def test_the_runs_loss_is_the_best_loss_like_name(names, loss):
    assert series.loss_name(names) == loss


def test_series_with_a_few_points_or_a_single_step_are_summary_values_not_curves():
    points = {"train/loss": (500, 0, 499), "artifact/model (bytes)": 1, "final/eval time ms": (1, 500, 500),
              "eval/acc": (16, 100, 100), "val/loss": (5, 100, 500), "lr": 2}
    curves, few = series.split_series(points)
    assert curves == ["train/loss", "val/loss"]
    assert sorted(few) == ["artifact/model (bytes)", "eval/acc", "final/eval time ms", "lr"]


def test_a_name_that_could_not_be_counted_is_still_drawn():
    curves, few = series.split_series({"loss": 100}, names=["loss", "grad_norm"])
    assert curves == ["loss", "grad_norm"] and few == []


def test_the_sql_loss_rule_agrees_with_the_python_rule():
    names = sorted({*WANDB, *TENSORBOARD, *MEGATRON, *HUGGINGFACE, "Loss", "train/LOSS_scale", "it's a loss",
                    "test/loss", "lm-loss-training/lm loss", *series.TRAIN_LOSS_NAMES, *series.VAL_LOSS_NAMES})
    con = duckdb.connect()
    con.execute("CREATE TABLE t (name VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?)", [(n,) for n in names])
    got = dict(con.execute(f"SELECT name, {series.loss_rank_sql('name')} FROM t").fetchall())
    assert got == {n: series.loss_rank(n) for n in names}
