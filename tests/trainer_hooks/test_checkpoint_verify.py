"""`flightlog checkpoints verify`: real checkpoint files (torch.save), recorded with the real audit and
Writer, then damaged on disk; each planted problem must be flagged, and a clean checkpoint must pass."""

from __future__ import annotations

import json
import os

import pytest
import torch

from app.cli import main as cli
from telemetry.maintain.checkpoint_files import verify_checkpoints
from trainer_hooks.checkpoint_audit import audit_file
from trainer_hooks.checkpoint_contents import verify_run_checkpoints

RUN = "ckpt-run"
TOKENS_PER_STEP = 1000


def _codes(report) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for c in report.checkpoints:
        out.setdefault(c.step, set()).update(p.split(":", 1)[0] for p in c.problems)
    return out


def _state(model, opt, step: int, *, with_optimizer: bool = True, dtype=None) -> dict:
    weights = {k: (v.to(dtype) if dtype is not None else v).clone() for k, v in model.state_dict().items()}
    state = {"iteration": step, "tokens_seen": step * TOKENS_PER_STEP, "model": weights}
    if with_optimizer:
        state["optimizer"] = opt.state_dict()
    return state


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A run with 11 recorded checkpoints; all but steps 10 and 110 get a problem, on disk or in the record."""
    from telemetry import Writer

    tmp = tmp_path_factory.mktemp("ckpts")
    root, files = str(tmp / "archive"), tmp / "files"
    files.mkdir()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()  # the optimizer has state (exp_avg, exp_avg_sq)
    paths: dict[int, str] = {}
    with Writer(root, RUN) as w:
        for step in range(10, 120, 10):
            if step != 80:  # 70 and 80: the same weights (training did not move between them)
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.01 * step)
            path = str(files / f"step{step}.pt")
            torch.save(_state(model, opt, step, with_optimizer=step != 40,
                              dtype=torch.bfloat16 if step == 100 else None), path)
            a = audit_file(path)
            tokens = 999 if step == 60 else step * TOKENS_PER_STEP  # 60: the record's tokens do not fit the step
            w.checkpoint(step=step, tokens_seen=tokens, uri=path, bytes=a.bytes, sha256=a.sha256,
                         has_optimizer_state=a.has_optimizer_state, weights_dtypes=a.weights_dtypes,
                         optimizer_dtypes=a.optimizer_dtypes, problems=a.problems)
            paths[step] = path
    # damage on disk, after the save-time audit
    with open(paths[20], "ab") as fh:
        fh.write(b"\0" * 4096)                                          # 20: size (and hash) changed
    other = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    torch.save(_state(other, opt, 30), paths[30])                      # 30: same size, other bytes
    torch.save(_state(model, opt, 50, dtype=torch.bfloat16), paths[50])  # 50: rewritten in bf16
    os.remove(paths[90])                                               # 90: gone
    return {"root": root, "paths": paths}


@pytest.fixture(scope="module")
def full_report(planted):
    return verify_run_checkpoints(planted["root"], RUN)


def test_a_clean_checkpoint_passes(full_report):
    codes = _codes(full_report)
    assert codes[10] == set() and codes[110] == set()
    assert full_report.contents_checked and not full_report.ok


@pytest.mark.parametrize("step, code", [
    (20, "size_mismatch"), (30, "hash_mismatch"), (40, "missing_optimizer_state"), (50, "weights_dtype_changed"),
    (60, "tokens_per_step_mismatch"), (60, "tokens_mismatch"), (70, "identical_weights"), (80, "identical_weights"),
    (90, "missing_file"), (100, "weights_dtype_differs"),
])
def test_each_planted_problem_is_flagged(full_report, step, code):
    assert code in _codes(full_report)[step], full_report.problems


def test_a_same_size_rewrite_is_a_hash_mismatch_only(full_report, planted):
    assert "size_mismatch" not in _codes(full_report)[30]
    assert "identical_weights" not in _codes(full_report)[60]  # different weights at every other step


def test_files_only_check_needs_no_contents(planted):
    report = verify_checkpoints(planted["root"], RUN)
    codes = _codes(report)
    assert "size_mismatch" in codes[20] and "hash_mismatch" in codes[30] and "missing_file" in codes[90]
    assert "tokens_per_step_mismatch" in codes[60]
    assert "missing_optimizer_state" not in codes[40] and not report.contents_checked


def test_cli_lists_problems_and_exits_1(planted, capsys):
    assert cli(["checkpoints", "verify", RUN, "--archive", planted["root"], "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "11 checked (files and contents), 9 with problems" in out
    assert "missing_file: the checkpoint file is gone" in out
    assert cli(["checkpoints", "verify", RUN, "--archive", planted["root"], "--format", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert [c["step"] for c in body["checkpoints"] if c["ok"]] == [10, 110]


def test_cli_unknown_run_is_one_line(planted, capsys):
    assert cli(["checkpoints", "verify", "no-such-run", "--archive", planted["root"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flightlog: error:") and "no-such-run" in err and "\n" not in err


def test_without_torch_verify_checks_files_and_says_so_and_memorization_says_what_to_install(planted, capsys,
                                                                                          monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert cli(["checkpoints", "verify", RUN, "--archive", planted["root"], "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "only sizes, hashes and tokens are checked" in captured.err
    assert "files only (sizes, hashes, tokens)" in captured.out and "missing_optimizer_state" not in captured.out
    assert cli(["memorization", "--run", RUN, "--archive", planted["root"]]) == 2
    assert "needs torch: pip install 'flightlog[train]'" in capsys.readouterr().err
