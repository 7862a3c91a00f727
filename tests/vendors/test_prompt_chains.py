"""Instructions compose with every vendor's ChatModel: prompt template | model, over HTTP."""

from __future__ import annotations

from fengchao_chains.prompts import get_prompt_library
from fengchao_chains.testing.fakes._common import FakeVendor
from tests.vendors.harness import VendorHarness

QUESTION = "今天天气很好"


async def test_an_instruction_chain_reaches_the_vendor(
    harness: VendorHarness, served: tuple[FakeVendor, str]
) -> None:
    fake, url = served
    library = get_prompt_library()
    chain = library.chat_prompt_template("中译英") | harness.model(url)
    rendered = library.render(QUESTION, prompt="中译英")

    answer = await chain.ainvoke({"query": QUESTION})

    # Every fake answers "Echo: <the last user text it received>"; the instruction's user
    # message (with the question fenced in it) is what reached the vendor.
    assert rendered.user in str(answer.content)
    assert str(answer.content).startswith("Echo: ")
    assert answer.usage_metadata is not None
    sent = str(fake.last_request["body"])
    assert "资深的中译英译者" in sent  # the system description reached the vendor too
