"""Benchmarks of credit-exporter against the product targets (see benchmarks/README.md)."""
