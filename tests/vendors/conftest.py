"""Fixtures for the vendor tests: each fake vendor served on loopback for one module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes._common import FakeVendor
from tests.vendors.harness import HARNESSES, OPENAI, VendorHarness, server_fixture

openai_server = server_fixture("openai")
zhipu_server = server_fixture("zhipu")
qianfan_server = server_fixture("qianfan")
anthropic_server = server_fixture("anthropic")
volcengine_server = server_fixture("volcengine")
ark_server = server_fixture("ark")
moonshot_server = server_fixture("moonshot")
sensenova_server = server_fixture("sensenova")
internlm_server = server_fixture("internlm")
tgi_server = server_fixture("tgi")


openai_fake = OPENAI.fixtures(fake="openai_fake")[0]


@pytest.fixture(params=HARNESSES, ids=str)
def harness(request: pytest.FixtureRequest) -> VendorHarness:
    """Each vendor's harness in turn (tests that hold for every vendor)."""
    param: VendorHarness = request.param
    return param


@pytest.fixture
def served(
    harness: VendorHarness, request: pytest.FixtureRequest
) -> Iterator[tuple[FakeVendor, str]]:
    """The harness's fake, served for the module, fresh for the test."""
    fake, url = request.getfixturevalue(f"{harness.server}_server")
    with harness.fresh(fake):
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeVendor, str]) -> FakeVendor:
    """The fake of :func:`served` (modules about one vendor define their own)."""
    return served[0]


@pytest.fixture
def url(served: tuple[FakeVendor, str]) -> str:
    """The URL of :func:`served`."""
    return served[1]
