"""Fixtures for the vendor tests: each fake vendor served on loopback for one module."""

from __future__ import annotations

from tests.vendors.harness import OPENAI, server_fixture

openai_server = server_fixture("openai")
zhipu_server = server_fixture("zhipu")
qianfan_server = server_fixture("qianfan")
anthropic_server = server_fixture("anthropic")
volcengine_server = server_fixture("volcengine")
ark_server = server_fixture("ark")
moonshot_server = server_fixture("moonshot")
sensenova_server = server_fixture("sensenova")
internlm_server = server_fixture("internlm")


openai_fake = OPENAI.fixtures(fake="openai_fake")[0]
