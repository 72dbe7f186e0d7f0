"""Where the checkout is: the one place the rig, the tests and the benchmarks learn it from."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
