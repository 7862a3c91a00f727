"""The fengchao-chains web app, for ``uvicorn server:app`` from a source checkout.

``fengchao serve`` is the usual way to run it (it reports configuration problems as one line
before the web server starts); both build the same app with
:func:`fengchao_chains.server.create_app`.
"""

from fengchao_chains.server import create_app

app = create_app(freeze_heap=True)
