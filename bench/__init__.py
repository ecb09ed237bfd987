"""Benchmarks: each prints a table and writes JSON to bench/results/ with a reference measured in the same run."""
