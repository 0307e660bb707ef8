"""The write path: one Writer per rank (hot path, flush thread, staging, spool)."""
