"""Shared test setup: legacy Keras before TensorFlow loads, quiet TF logs, free loopback ports."""

from __future__ import annotations

import os
import socket

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def port_factory():
    """Call it for each port a test needs."""
    return free_port
