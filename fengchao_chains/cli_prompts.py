"""``fengchao prompts``: list, show, render and check the instruction library.

Kept apart from ``cli.py`` so the main command stays short; imports are lazy so ``--help``
stays fast.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fengchao_chains.prompts import PromptLibrary

prompts_app = typer.Typer(
    help="The instruction library: list, show, render and check prompts.",
    no_args_is_help=True,
)


def _library() -> PromptLibrary:
    from fengchao_chains.cli import guarded, settings_from
    from fengchao_chains.prompts import get_prompt_library

    settings = settings_from()
    return guarded(lambda: get_prompt_library(settings))


@prompts_app.command("list")
def list_prompts(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every instruction: id, description and extra variables."""
    from rich.table import Table

    from fengchao_chains.cli import print_json, stdout

    library = _library()
    if as_json:
        print_json(library.cards())
        return
    table = Table(title=f"{len(library)} prompts")
    for column in ("id", "description", "variables"):
        table.add_column(column, overflow="fold")
    for instruction in library.values():
        variables = ", ".join(
            name if v.required else f"{name}={json.dumps(v.default, ensure_ascii=False)}"
            for name, v in instruction.variables.items()
        )
        table.add_row(instruction.id, instruction.description, variables)
    stdout.print(table)


@prompts_app.command("show")
def show_prompt(
    prompt_id: Annotated[str, typer.Argument(metavar="ID", help="An instruction id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the prompt card as JSON.")] = False,
) -> None:
    """Show one instruction: its file, variables and the system, prefix and prompt parts."""
    from fengchao_chains.cli import print_json, stderr, stdout

    library = _library()
    if prompt_id not in library:
        stderr.print(f"error: {library.unknown(prompt_id)}", markup=False)
        raise typer.Exit(1)
    instruction = library[prompt_id]
    if as_json:
        print_json(instruction.card() | {"file": str(instruction.path)})
        return
    lines = [
        f"id:          {instruction.id}",
        f"description: {instruction.description}",
        f"file:        {instruction.path}",
    ]
    for name, v in instruction.variables.items():
        default = json.dumps(v.default, ensure_ascii=False)
        need = "required" if v.required else f"default {default}"
        lines.append(f"variable:    {name} ({need}): {v.description}")
    for title, text in (
        ("system", instruction.system),
        ("prefix", instruction.prefix_source),
        ("prompt", instruction.prompt_source),
    ):
        lines += ["", f"--- {title} ---", text]
    stdout.print("\n".join(lines), markup=False, highlight=False)


def _parse_var(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise typer.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="--var")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


@prompts_app.command("render")
def render_prompt(
    prompt: Annotated[
        str, typer.Argument(metavar="ID", help="An instruction id, or a custom template.")
    ],
    query: Annotated[str, typer.Option("--query", "-q", help="The question (the query slot).")],
    system: Annotated[
        str | None, typer.Option(help="Replace the default system description.")
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option(help="NAME=VALUE for an extra variable (VALUE may be JSON); repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the messages as JSON.")] = False,
) -> None:
    """Render the messages a request with this prompt would send to the model."""
    from fengchao_chains.cli import guarded, print_json, stdout

    fill = dict(_parse_var(item) for item in var or [])
    library = _library()
    rendered = guarded(
        lambda: library.render(query, prompt=prompt, system=system, prompt_fill=fill)
    )
    if as_json:
        print_json({"system": rendered.system, "user": rendered.user})
        return
    stdout.print(
        f"--- system ---\n{rendered.system}\n\n--- user ---\n{rendered.user}",
        markup=False,
        highlight=False,
    )


@prompts_app.command("check")
def check_prompts() -> None:
    """Load and check every prompt file (packaged and FENGCHAO_PROMPT_DIRS); exit 1 on errors."""
    from fengchao_chains.cli import stdout

    library = _library()
    places = ", ".join(str(d) for d in library.directories)
    stdout.print(f"{len(library)} prompts OK ({places})", markup=False, highlight=False)
