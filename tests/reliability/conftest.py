"""Fixtures for the reliability suite: a process stack per test, the test Kubernetes API server.

The stages themselves live in epp/bench/reliability/ so `make bench-reliability` runs the same
code for longer; these tests run short versions and assert issue 13's bounds.
"""

from __future__ import annotations

import pytest

from epp.bench.reliability.stack import Stack
from tests.support.kubeapi import KubeApiServer


@pytest.fixture
def stack(tmp_path):
    st = Stack(tmp_path)
    yield st
    logs = st.logs(15)
    st.close()
    print(logs)  # shown for a failing test


@pytest.fixture
def kubeapi():
    server = KubeApiServer().start()
    yield server
    server.close()
