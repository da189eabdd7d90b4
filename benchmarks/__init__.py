"""Benchmarks: scripts that print measured figures (never run as tests)."""
