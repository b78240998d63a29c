"""Benchmarks of the model and engine."""
