"""Client templates render in the sandbox: injection payloads are refused and never run."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import pytest

from fengchao_chains.prompts import PromptError, PromptRenderError, PromptTemplateError
from fengchao_chains.prompts.sandbox import RenderBudget, RenderLimits, compile_template

LIMITS = RenderLimits()


def render(source: str, **values: object) -> str:
    return compile_template(source, limits=LIMITS).render(values, RenderBudget(LIMITS))


# Payloads that reach Python internals are refused when the template is compiled, so they
# never run at all.
ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ query.__class__ }}",
    "{{ query['__class__'] }}",
    "{{ query|attr('__class__') }}",
    "{{ self.__init__ }}",
    "{{ self }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ query.format(query) }}",
    "{{ '{0.__class__}'.format(query) }}",
    "{{ range(10) }}",
    "{% for i in range(100000000) %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% call f() %}{% endcall %}",
    "{% include 'etc/passwd' %}",
    "{% import 'x' as y %}",
    "{% extends 'base' %}",
    "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "{{ query|format(1) }}",
    "{{ query|center(1000000000) }}",
    "{{ query|indent(1000000000) }}",
    "{{ query|batch(1000000000)|list }}",
    "{{ [query]|map(attribute='__class__')|list }}",
    "{{ [query]|map(attribute='x.__class__')|list }}",
    "{{ [query]|selectattr('__class__')|list }}",
    "{{ [query]|sort(attribute='__class__') }}",
    "{{ [query]|map('_fengchao_concat')|list }}",
    "{{ query|_fengchao_concat }}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_payloads_reaching_internals_are_refused_before_running(payload: str) -> None:
    with pytest.raises(PromptTemplateError) as caught:
        compile_template(payload + "{{ query }}", limits=LIMITS)
    assert caught.value.code == 445
    assert "line 1" in str(caught.value)


# Payloads that would burn memory or time are stopped by the budget while rendering, fast and
# without allocating what they ask for.
BOMBS = [
    "{{ 'x' * 1000000000 }}",
    "{{ query * 1000000000 }}",
    "{{ [query] * 1000000000 }}",
    "{{ 1000000000 * 'x' }}",
    "{{ 9 ** 999999 }}",
    "{{ 2 ** 100000 * 2 ** 100000 }}",
    "{{ '%0999999999d' % 1 }}",
    "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{{ a }}{% endfor %}{% endfor %}",
    "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "{% for a in 'x' * 199999 %}{{ 'y' * 199999 }}{% endfor %}",
    "{% set s = 'x' * 1000 %}" + "{% set s = s ~ s ~ s ~ s %}" * 12 + "{{ s }}",
    "{% set s = 'x' * 1000 %}" + "{% set s = s + s + s %}" * 15 + "{{ s }}",
    "{{ (query * 1000)|list|join(query * 100000) }}",
    "{{ (query * 1000)|replace('q', query * 100000) }}",
    "{{ (query * 1000)|replace('', query * 100000) }}",
]


@pytest.mark.parametrize("payload", BOMBS)
def test_resource_bombs_stop_quickly_without_allocating(payload: str) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(PromptRenderError) as caught:
            render(payload + "{{ query }}", query="q")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == 445
    assert elapsed < 2 * LIMITS.timeout + 1  # tracemalloc slows Python down
    assert peak < 50 * LIMITS.max_chars  # far below what the payload asks for


def test_values_are_data_never_templates() -> None:
    hostile = "{{ ''.__class__.__mro__ }}{% for i in range(9**9) %}{% endfor %}"
    assert render("问：{{ query }}", query=hostile) == f"问：{hostile}"


def test_undefined_variables_are_errors_not_blanks() -> None:
    with pytest.raises(PromptRenderError, match="'topic' is undefined"):
        render("{{ query }} {{ topic }}", query="q")


def test_ordinary_templates_still_work() -> None:
    template = (
        "{% if items %}{% for item in items %}{{ loop.index }}. {{ item.name|upper }}\n"
        "{% endfor %}{% else %}none{% endif %}{{ query|trim }} {{ n * 2 }} {{ words|join('、') }}"
        " {{ (text ~ '!')|replace('a', 'b') }} {{ missing|default('d') }}"
        " {{ items|join('/', attribute='name') }}"
    )
    out = render(
        template,
        items=[{"name": "a"}, {"name": "b"}],
        query=" q ",
        n=21,
        words=["甲", "乙"],
        text="aa",
        missing=None,
    )
    assert out == "1. A\n2. B\nq 42 甲、乙 bb! None a/b"


def test_design_card_slot_spelling_is_an_alias() -> None:
    assert render("<<system>>|<< query >>", system="s", query="q") == "s|q"


def test_size_limit_counts_the_whole_output() -> None:
    limits = RenderLimits(max_chars=1_000)
    template = compile_template("{{ query }}", limits=limits)
    assert template.render({"query": "x" * 1_000}, RenderBudget(limits)) == "x" * 1_000
    with pytest.raises(PromptRenderError, match="longer than 1000 characters"):
        template.render({"query": "x" * 1_001}, RenderBudget(limits))


def test_time_limit_stops_a_slow_render() -> None:
    limits = RenderLimits(timeout=0.05, max_iterations=10**9)
    template = compile_template(
        "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}{{ query }}", limits=limits
    )
    started = time.perf_counter()
    with pytest.raises(PromptRenderError, match=r"longer than 0\.05 s"):
        template.render({"s": "x" * 10_000, "query": "q"}, RenderBudget(limits))
    assert time.perf_counter() - started < 1


def test_template_length_is_bounded() -> None:
    with pytest.raises(PromptTemplateError, match="longer than 20000 characters"):
        compile_template("x" * 20_001 + "{{ query }}", limits=LIMITS)


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(PromptTemplateError, match=r"^line 3: "):
        compile_template("a\nb\n{% if %}{{ query }}", limits=LIMITS)


def test_every_prompt_error_is_a_parameter_error() -> None:
    assert issubclass(PromptTemplateError, PromptError)
    assert PromptRenderError.code == PromptTemplateError.code == 445


SLOT_VALUES = [
    "plain",
    "  padded on both sides \n",
    "{{ not a template }} {% if x %}",
    "<b>markup</b> & 'quotes' \"double\"",
    "多行\n中文\u2028文本\t",
    "",
    "x" * 5000,
]


@pytest.mark.parametrize("value", SLOT_VALUES)
def test_a_single_slot_renders_a_string_as_jinja_does(value: str) -> None:
    compiled = compile_template("{{ query }}", limits=LIMITS)
    assert compiled.slot == "query"
    through_jinja = dataclasses.replace(compiled, slot=None)
    assert compiled.render({"query": value}, RenderBudget(LIMITS)) == through_jinja.render(
        {"query": value}, RenderBudget(LIMITS)
    )


def test_a_single_slot_keeps_the_sandboxs_rules() -> None:
    compiled = compile_template("<< query >>", limits=LIMITS)  # the design card's spelling
    assert compiled.slot == "query"
    with pytest.raises(PromptRenderError, match="longer than"):
        compiled.render({"query": "x" * (LIMITS.max_chars + 1)}, RenderBudget(LIMITS))
    with pytest.raises(PromptRenderError):  # missing: Jinja's undefined error, as before
        compiled.render({}, RenderBudget(LIMITS))
    assert compiled.render({"query": 42}, RenderBudget(LIMITS)) == "42"  # not a string: Jinja
    budget = RenderBudget(LIMITS)
    compiled.render({"query": "abc"}, budget)
    assert budget.chars == LIMITS.max_chars - 3  # counted in the request's one budget


@pytest.mark.parametrize(
    "source", [" {{ query }}", "{{ query }}!", "{{ query|upper }}", "{{ query.x }}", "{{ a ~ b }}"]
)
def test_anything_more_than_one_slot_renders_through_jinja(source: str) -> None:
    assert compile_template(source, limits=LIMITS).slot is None
