"""Importers: W&B `.wandb` files, TensorBoard event files, MLflow stores, CSV/JSONL logs, Hugging Face Trainer
states, Megatron-LM stdout logs and any text log read with a regular expression -> the archive.

Each `import_*` function returns an ImportSummary (runs, points, what was skipped and why)
and raises ImportSourceError (an ArchiveError) with a message naming the file for a wrong or
damaged source. Heavy optional libraries (wandb's protobufs, tensorboard's) load on use.
"""

from importlib import import_module

from telemetry.importers._common import ImportedRun, ImportSourceError, ImportSummary, write_run

_LAZY = {
    "import_wandb": "telemetry.importers.wandb_file",
    "read_wandb_file": "telemetry.importers.wandb_file",
    "import_tensorboard": "telemetry.importers.tensorboard",
    "import_mlflow": "telemetry.importers.mlflow",
    "import_csv": "telemetry.importers.tabular",
    "import_jsonl": "telemetry.importers.tabular",
    "import_hf_trainer": "telemetry.importers.hf_trainer",
    "import_megatron": "telemetry.importers.megatron_log",
    "import_text_log": "telemetry.importers.text_log",
    "import_evals": "telemetry.importers.evals",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'telemetry.importers' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["ImportSourceError", "ImportSummary", "ImportedRun", "import_csv", "import_evals", "import_hf_trainer",
           "import_jsonl", "import_megatron", "import_mlflow", "import_tensorboard", "import_text_log", "import_wandb",
           "read_wandb_file", "write_run"]
