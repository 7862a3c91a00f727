"""``fengchao limits``: set, show and clear against real PostgreSQL, with usage counted by a
real limiter; in-process (typer's runner) except where the installed script's streams and
exit codes matter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest

from fengchao_chains.db import Database
from fengchao_chains.gateway.keys import KeyStore
from fengchao_chains.gateway.limit_types import Budget, KeyLimits
from fengchao_chains.gateway.limits import Limiter
from fengchao_chains.settings import Settings
from tests.processes import ok, settings_env
from tests.processes import run_cli as run_installed
from tests.processes import run_cli_in_process as run_cli


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return settings_env(settings)


@pytest.fixture
def started(settings: Settings) -> Iterator[Database]:
    database = Database.start(settings)
    yield database
    database.close()


@pytest.fixture
def key(started: Database, settings: Settings) -> str:
    return KeyStore(started, settings).create("alice").api_key


@pytest.fixture
def limiter(started: Database, settings: Settings) -> Limiter:
    """A limiter on the same schema, to check what the commands stored."""
    return Limiter(started, settings)


def test_set_changes_only_the_options_given(env: dict[str, str], key: str) -> None:
    first = ok(run_cli("limits", "set", key, "--rpm", "60", "--budget", "2.5", env=env))
    assert first.stdout.splitlines() == [
        f"{key}: 60 requests/min, tokens unlimited, budget 2.5 CNY per month",
        "(running servers apply it within 5 s)",
    ]
    second = ok(
        run_cli(
            "limits", "set", key, "--tpm", "1000", "--unit", "usd", "--period", "DAY", "--json",
            env=env,
        )
    )  # fmt: skip
    assert json.loads(second.stdout) == {
        "api_key": key,
        "rpm": 60,
        "tpm": 1000,
        "budget": {"amount": 2.5, "unit": "USD", "period": "day"},
    }
    third = ok(run_cli("limits", "set", key, "--rpm", "unlimited", "--budget", "none", env=env))
    assert third.stdout.startswith(f"{key}: requests unlimited, 1000 tokens/min, no budget")


async def test_show_reports_limits_and_the_usage_of_this_minute(
    env: dict[str, str], key: str, started: Database, settings: Settings
) -> None:
    other = KeyStore(started, settings).create().api_key
    ok(run_cli("limits", "set", key, "--rpm", "5", "--tpm", "900", "--budget", "1", env=env))
    limiter = Limiter(started, settings)
    await started.open_async_pool()
    try:
        for _ in range(2):
            await limiter.aadmit(
                key, prompt_tokens=40, max_tokens=60, cost_ceiling=0.125, unit="CNY"
            )
    finally:
        await started.close_async_pool()

    shown = json.loads(ok(run_cli("limits", "show", key, "--json", env=env)).stdout)
    assert len(shown) == 1
    row = shown[0]
    assert (row["source"], row["rpm"], row["tpm"]) == ("own", 5, 900)
    assert row["budget"] == {"amount": 1.0, "unit": "CNY", "period": "month"}
    assert (row["requests"], row["tokens"], row["spent"]) == (2, 200, 0.25)

    everyone = json.loads(ok(run_cli("limits", "show", "--json", env=env)).stdout)
    assert [(r["api_key"], r["source"]) for r in everyone] == [(key, "own"), (other, "default")]
    defaults = env | {"FENGCHAO_DEFAULT_RPM": "30"}
    table = ok(run_cli("limits", "show", env=defaults)).stdout
    assert "2 keys, minute from" in table
    assert "2/5" in table and "200/900" in table and "0.25 of 1 CNY per month" in table
    assert "0/30" in table and "default" in table


def test_clear_gives_the_key_back_to_the_defaults(
    env: dict[str, str], key: str, started: Database, settings: Settings
) -> None:
    ok(run_cli("limits", "set", key, "--rpm", "7", env=env))
    defaults = env | {"FENGCHAO_DEFAULT_TPM": "5000"}
    cleared = ok(run_cli("limits", "clear", key, env=defaults))
    assert cleared.stdout.strip() == (
        f"{key}: cleared; the defaults apply (requests unlimited, 5000 tokens/min, no budget)"
    )
    again = ok(run_cli("limits", "clear", key, env=defaults))
    assert again.stdout.strip() == (
        f"{key} had no limits of its own (requests unlimited, 5000 tokens/min, no budget)"
    )
    assert Limiter(started, settings).status(key).own is False


def test_a_new_row_starts_from_the_defaults(
    env: dict[str, str], key: str, started: Database, settings: Settings
) -> None:
    defaults = env | {"FENGCHAO_DEFAULT_RPM": "30", "FENGCHAO_DEFAULT_TPM": "4000"}
    ok(run_cli("limits", "set", key, "--budget", "3", "--unit", "USD", env=defaults))
    status = Limiter(started, settings).status(key)
    assert status.own
    assert status.limits == KeyLimits(30, 4000, Budget(Decimal(3), "USD", "month"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "pass at least one of --rpm, --tpm, --budget, --unit, --period"),
        (("--rpm", "0"), "must be 1 or more (or 'unlimited')"),
        (("--tpm", "lots"), "'lots' is not a whole number or 'unlimited'"),
        (("--budget", "-1"), "must be an amount of 0 or more"),
        (("--budget", "ten"), "'ten' is not an amount or 'none'"),
        (("--budget", "1", "--unit", "EUR"), "must be one of CNY, USD"),
        (("--budget", "1", "--period", "week"), "must be one of total, day, month"),
    ],
)
def test_bad_values_are_usage_errors_and_store_nothing(
    env: dict[str, str], key: str, limiter: Limiter, args: tuple[str, ...], message: str
) -> None:
    result = run_cli("limits", "set", key, *args, env=env)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split()).replace("│", "")
    assert limiter.status(key).own is False


def test_unknown_keys_and_impossible_changes_are_one_error_line(
    env: dict[str, str], key: str
) -> None:
    for args in (("set", "fc-nope", "--rpm", "1"), ("clear", "fc-nope"), ("show", "fc-nope")):
        result = run_cli("limits", *args, env=env)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            "error: unknown API key 'fc-nope' (`fengchao keys list` shows the keys)\n"
        )
    unit_only = run_cli("limits", "set", key, "--unit", "USD", env=env)
    assert (unit_only.returncode, unit_only.stdout) == (1, "")
    assert unit_only.stderr == "error: --unit and --period need a budget (--budget AMOUNT)\n"


def test_the_installed_command(env: dict[str, str], key: str) -> None:
    result = run_installed("limits", "set", key, "--rpm", "9", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rpm"] == 9
    unknown = run_installed("limits", "show", "fc-nope", env=env)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.startswith("error: unknown API key 'fc-nope'")
    assert "Traceback" not in unknown.stderr
