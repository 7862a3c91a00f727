"""Test support that ships with the package: fake vendor servers and a loopback runner.

The fakes speak each vendor's documented wire protocol over real HTTP, so the project's
tests, its benchmarks and your own tests can exercise every chat model without a network.
"""
