"""The read path: catalog of live files, DuckDB views, queries, curves, live view, SQL sandbox."""
