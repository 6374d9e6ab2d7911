"""Benchmark harness and command line."""
