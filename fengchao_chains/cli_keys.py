"""``fengchao keys``: issue, list and revoke API keys, and make a master key.

Kept apart from ``cli.py`` (same conventions: ``error: ...`` on stderr, exit 1 on a reported
error, ``--json`` where the output is data).  A new key's secret is printed once, by
``create``; nothing can show it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fengchao_chains.gateway.keys import KeyStore

keys_app = typer.Typer(
    help="API keys (api_key/secret_key pairs): create, list, revoke; and master keys.",
    no_args_is_help=True,
)


@contextmanager
def _key_store() -> Iterator[KeyStore]:
    """The key store on the started database, closed (an embedded server released) after."""
    from fengchao_chains.cli import guarded, open_database, settings_from
    from fengchao_chains.gateway.keys import KeyStore

    settings = settings_from()
    with open_database(settings) as database:
        yield guarded(lambda: KeyStore(database, settings))


@keys_app.command("create")
def create_key(
    name: Annotated[
        str | None, typer.Option("--name", help="A note saying whose key this is.")
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key: sees every key's usage.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Issue a new api_key and secret_key; the secret is shown this once only."""
    from fengchao_chains.cli import guarded, print_json, stderr, stdout

    with _key_store() as keys:
        issued = guarded(lambda: keys.create(name, admin=admin))
    if as_json:
        print_json(
            {
                "api_key": issued.api_key,
                "secret_key": issued.secret_key,
                "name": issued.name,
                "admin": issued.admin,
                "created_at": issued.created_at.isoformat(),
            }
        )
    else:
        stdout.print(f"api_key:    {issued.api_key}", markup=False, highlight=False)
        stdout.print(f"secret_key: {issued.secret_key}", markup=False, highlight=False)
    stderr.print(
        "warning: keep the secret_key now; it is stored encrypted and cannot be shown again",
        markup=False,
    )


@keys_app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every key (never a secret), revoked ones included."""
    from rich.table import Table

    from fengchao_chains.cli import guarded, print_json, stdout

    with _key_store() as keys:
        infos = guarded(keys.list)
    if as_json:
        print_json(
            [
                {
                    "api_key": info.api_key,
                    "name": info.name,
                    "admin": info.admin,
                    "created_at": info.created_at.isoformat(),
                    "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
                }
                for info in infos
            ]
        )
        return
    table = Table(title=f"{len(infos)} keys")
    for column in ("api_key", "name", "created", "status", "admin"):
        table.add_column(column, overflow="fold")
    for info in infos:
        status = f"revoked {info.revoked_at:%Y-%m-%d %H:%M:%S}" if info.revoked_at else "active"
        created = f"{info.created_at:%Y-%m-%d %H:%M:%S}"
        table.add_row(info.api_key, info.name or "", created, status, "yes" if info.admin else "")
    stdout.print(table)


@keys_app.command("revoke")
def revoke_key(
    api_key: Annotated[str, typer.Argument(metavar="API_KEY", help="The key to revoke.")],
) -> None:
    """Revoke a key: its tokens are refused from the next request on."""
    from fengchao_chains.cli import guarded, stdout

    with _key_store() as keys:
        guarded(lambda: keys.revoke(api_key))
    stdout.print(f"revoked {api_key}", markup=False, highlight=False)


@keys_app.command("master-key")
def master_key() -> None:
    """Print a fresh master key for FENGCHAO_MASTER_KEY (keys stored under another master
    key cannot be read with it)."""
    from fengchao_chains.cli import stdout
    from fengchao_chains.gateway.keys import new_master_key

    stdout.print(new_master_key(), markup=False, highlight=False)
