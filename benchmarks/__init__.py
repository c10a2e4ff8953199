"""Benchmarks of pina-tff (results are committed in benchmarks/results.md)."""
