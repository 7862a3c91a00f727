"""Fixtures for the vendor tests: each fake vendor served on loopback for one module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread


@pytest.fixture(scope="module")
def openai_server() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def openai_fake(openai_server: tuple[FakeOpenAI, str]) -> Iterator[FakeOpenAI]:
    fake, _ = openai_server
    fake.clear_faults()
    fake.requests.clear()
    yield fake
    fake.clear_faults()
