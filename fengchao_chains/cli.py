"""The ``fengchao`` command line.

Conventions: ``--help`` everywhere; results on stdout; errors as one ``error: ...`` line on
stderr; exit code 0 on success, 1 on a reported error, 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import errno
import json
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from fengchao_chains import __version__
from fengchao_chains.errors import FengchaoError
from fengchao_chains.logging_setup import configure_logging
from fengchao_chains.settings import Settings, load_settings

if TYPE_CHECKING:
    from fengchao_chains.db import Database

app = typer.Typer(
    help="fengchao-chains: an LLM gateway and RAG library over LangChain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output keeps whole rows (rich would otherwise wrap tables to 80 columns).
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)

T = TypeVar("T")


def guarded(action: Callable[[], T]) -> T:
    """Run ``action``; report our own errors as one line instead of a traceback."""
    try:
        return action()
    except FengchaoError as exc:
        stderr.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def settings_from(**overrides: Any) -> Settings:
    return guarded(lambda: load_settings(**{k: v for k, v in overrides.items() if v is not None}))


@contextmanager
def open_database(settings: Settings) -> Iterator[Database]:
    """The started database, closed (and an embedded server released) afterwards; the
    database's own log lines only when the log level is DEBUG."""
    from fengchao_chains.db import Database

    configure_logging("DEBUG" if settings.log_level == "DEBUG" else "WARNING")
    database = guarded(lambda: Database.start(settings))
    try:
        yield database
    finally:
        database.close()


def print_json(payload: Any) -> None:
    """``--json`` output: highlighted on a terminal, non-ASCII text as it is, and values JSON
    has no type for (dates, paths) as their text."""
    stdout.print_json(json.dumps(payload, ensure_ascii=False, default=str))


def version_callback(value: bool) -> None:
    if value:
        stdout.print(f"fengchao-chains {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """fengchao-chains command line."""


# --------------------------------------------------------------------------- serve -------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [default: 8000].")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """Start the web server (embedded database unless FENGCHAO_DATABASE_URL is set)."""
    import uvicorn

    from fengchao_chains.runtime import Runtime
    from fengchao_chains.server import create_app

    settings = settings_from(host=host, port=port, log_level=log_level)
    configure_logging(settings.log_level)
    sock = guarded(lambda: _bind(settings.host, settings.port))
    runtime = guarded(lambda: Runtime.start(settings))
    config = uvicorn.Config(
        create_app(runtime, freeze_heap=True, access_log=True),
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,  # the app's own, written after the answer (server/asgi.py)
        timeout_graceful_shutdown=10,
    )
    stderr.print(
        f"fengchao-chains {__version__} on http://{settings.host}:{sock.getsockname()[1]}"
        f" ({runtime.database.target})",
        markup=False,
    )
    server = _server_class()(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        runtime.close()  # normally done by the app's lifespan already; idempotent
        sock.close()
    if server.interrupted:
        raise typer.Exit(130)


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, remembering a Ctrl-C. uvicorn shuts down gracefully and then
        raises the signal again, but whether asyncio's runner turns that into a
        KeyboardInterrupt depends on timing (CI saw a clean exit 0); the exit code of a
        Ctrl-C must be 130 either way."""

        interrupted = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.interrupted = self.interrupted or sig == signal.SIGINT
            super().handle_exit(sig, frame)

    return Server


def _bind(host: str, port: int) -> socket.socket:
    """Bind before anything starts, so a busy port is one clear line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it (asyncio sets it only on sockets it makes
    # itself), an answer written in two parts waits out the client's delayed ACK: ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FengchaoError(
                f"{host}:{port} is already in use; stop the other server or pass --port"
            ) from None
        raise FengchaoError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


# --------------------------------------------------------------------------- models ------
@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the model catalog."""
    from fengchao_chains.catalog import get_catalog
    from fengchao_chains.llms.registry import is_available

    settings = settings_from()
    catalog = guarded(lambda: get_catalog(settings))
    available = {vendor: is_available(vendor) for vendor in {c.vendor for c in catalog.values()}}
    if as_json:
        rows = [
            card.model_dump(mode="json") | {"available": available[card.vendor]}
            for card in catalog.values()
        ]
        print_json(rows)
        return
    table = Table(title=f"{len(catalog)} models")
    for column in (
        "id",
        "owned_by",
        "channel",
        "vendor",
        "max in/out",
        "price in/out per 1k",
        "files",
        "available",
    ):
        table.add_column(column, overflow="fold")
    for card in catalog.values():
        table.add_row(
            card.id,
            card.owned_by,
            card.channel,
            card.vendor,
            f"{card.max_input_token}/{card.max_output_token}",
            f"{card.in_price:g}/{card.out_price:g} {card.unit}",
            "yes" if card.accepts_files else "",
            "yes" if available[card.vendor] else "not yet",
        )
    stdout.print(table)


# --------------------------------------------------------------------------- db ----------
@app.command()
def db(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show the database: embedded or external, versions, migrations."""
    with open_database(settings_from()) as database:
        status = guarded(database.status)
    if as_json:
        payload = {
            "mode": status.mode,
            "target": status.target,
            "schema": status.schema,
            "server_version": status.server_version,
            "pgvector_version": status.pgvector_version,
            "created_at": status.created_at.isoformat() if status.created_at else None,
            "created_by_version": status.created_by_version,
            "sharing_processes": status.sharing_processes,
            "migrations": [
                {
                    "version": m.version,
                    "name": m.name,
                    "applied_at": m.applied_at.isoformat() if m.applied_at else None,
                }
                for m in status.migrations
            ],
        }
        print_json(payload)
        return
    stdout.print(f"database:   {status.mode} — {status.target}", markup=False)
    stdout.print(f"postgresql: {status.server_version}", markup=False)
    stdout.print(f"pgvector:   {status.pgvector_version or 'not installed'}", markup=False)
    stdout.print(f"schema:     {status.schema}", markup=False)
    if status.created_at:
        created = f"{status.created_at:%Y-%m-%d %H:%M:%S %Z} by {status.created_by_version}"
        stdout.print(f"created:    {created}", markup=False)
    if status.mode == "embedded":
        stdout.print(f"processes sharing the server: {len(status.sharing_processes)}")
    pending = [m for m in status.migrations if m.applied_at is None]
    stdout.print(
        f"migrations: {len(status.migrations) - len(pending)} applied, {len(pending)} pending"
    )
    for m in status.migrations:
        when = m.applied_at.strftime("%Y-%m-%d %H:%M:%S %Z") if m.applied_at else "pending"
        stdout.print(f"  {m.version:04d}_{m.name:<30} {when}", markup=False)


# --------------------------------------------------------------------------- config ------
@app.command()
def config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show the effective settings (secrets shown only as set or unset)."""
    from pydantic import SecretStr

    from fengchao_chains.settings import CONFIG_FILE_ENV, config_file_in_use

    settings = settings_from()
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "(set)"
        elif isinstance(value, list):
            value = [str(item) for item in value]
        elif value is not None and not isinstance(value, int | float | bool):
            value = str(value)
        values[name] = value
    source = config_file_in_use()
    if as_json:
        print_json({"config_file": source and str(source), **values})
        return
    stdout.print(f"config file ({CONFIG_FILE_ENV}): {source or 'none'}", markup=False)
    for name, value in values.items():
        stdout.print(f"{name} = {value if value is not None else '(unset)'}", markup=False)


# --------------------------------------------------------------------------- prompts -----
from fengchao_chains.cli_prompts import prompts_app  # noqa: E402  (a sub-app, kept apart)

app.add_typer(prompts_app, name="prompts")

# --------------------------------------------------------------------------- kb, ingest --
from fengchao_chains.cli_ingest import ingest_command  # noqa: E402
from fengchao_chains.cli_kb import kb_app  # noqa: E402

app.command("ingest")(ingest_command)
app.add_typer(kb_app, name="kb")

# --------------------------------------------------------------------------- keys --------
from fengchao_chains.cli_keys import keys_app  # noqa: E402

app.add_typer(keys_app, name="keys")

# --------------------------------------------------------------------------- usage, limits
from fengchao_chains.cli_limits import limits_app  # noqa: E402
from fengchao_chains.cli_usage import usage_app  # noqa: E402

app.add_typer(usage_app, name="usage")
app.add_typer(limits_app, name="limits")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
