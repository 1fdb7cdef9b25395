"""`pytest bench --benchmark-only`: make sure the benchmarks are not collected without pytest-benchmark."""

import pytest

pytest.importorskip("pytest_benchmark")
