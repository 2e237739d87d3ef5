"""Fault-injection scenarios (issue: faults on the cluster path): every test here is marked ``faults``."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
