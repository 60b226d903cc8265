from __future__ import annotations

from collections.abc import Iterator

import pytest

from fast_sandbox import Client

from .fakeapi import Server


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server().start()
    yield s
    s.stop()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client.from_token(server.url, "token", namespace="ns", request_timeout=5)
    yield c
    c.close()
