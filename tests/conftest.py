"""Shared fixtures. Per-package fixtures live in each tests/<package>/conftest.py."""

import os

# Tests never write to a user's default archive or phone home.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
