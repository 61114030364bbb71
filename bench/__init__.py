"""Benchmarks of carbonhook: run them with bench/run."""
