"""Benchmarks against qemu-ga, run side by side: ``python -m bench.NAME`` from the repository root."""
