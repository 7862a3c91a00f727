"""LangServe routes: the default model behind the instruction library, with a playground.

``/local`` serves ``默认`` (system prompt, optional ``history``, the user's ``query``) piped
into the default model, the embedded llama.cpp model unless ``FENGCHAO_DEFAULT_MODEL`` names
another, with LangServe's ``invoke``, ``batch``, ``stream``, ``stream_events`` and
``/local/playground/`` for trying it in a browser. The model is built here but loads its
weights on first use, so mounting costs nothing at start-up.
"""

from __future__ import annotations

from fastapi import FastAPI
from langserve import add_routes

from fengchao_chains.catalog import get_catalog, get_chat_model
from fengchao_chains.prompts import get_prompt_library
from fengchao_chains.settings import Settings

DEFAULT_PROMPT = "默认"


def mount(app: FastAPI, settings: Settings) -> None:
    catalog = get_catalog(settings)
    prompt = get_prompt_library(settings).chat_prompt_template(DEFAULT_PROMPT)
    model = get_chat_model(settings.default_model, catalog=catalog, settings=settings)
    add_routes(app, prompt | model, path="/local")
