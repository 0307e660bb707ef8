"""What every path shares: file system access, the staged and Parquet encodings, liveness, errors.
Imports data_schema only."""
