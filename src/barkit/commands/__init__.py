"""One module per CLI command; each defines ``main`` (or ``app`` for a group of subcommands).

Top-level imports in these modules are limited to typer and the standard library; the work
is imported inside ``main``.
"""
