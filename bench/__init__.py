"""Benchmarks: scripts printing a table and writing JSON to bench/results/, with a same-run reference."""
