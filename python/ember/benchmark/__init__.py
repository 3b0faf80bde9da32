"""Benchmarks run from the `ember bench` command (serving load tests against a running server)."""
