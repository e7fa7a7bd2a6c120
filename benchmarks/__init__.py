"""Benchmarks (run as scripts, never collected by pytest): see benchmarks/README.md."""
