"""Sphinx directives that generate reference tables from the code itself.

- ``.. librecache-variables::`` every variable of ``librecache.config.VARIABLES``
  with its kind, default, an example and the error a bad value raises (found
  by calling ``CacheConfig.from_env``, so the text is the real message).
- ``.. librecache-cli::`` the help of the ``librecache`` command and each
  subcommand, from its argument parser.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from librecache import CacheConfig, ConfigurationError
from librecache.cli import build_parser
from librecache.config import KIND_DESCRIPTIONS, VARIABLES, Variable


def error_for(variable: Variable, bad: str) -> str:
    """The real message ``CacheConfig.from_env`` raises for ``bad``."""
    environ = {variable.name: bad}
    if variable.kind == "cafile":
        environ["REDIS_URI"] = "rediss://127.0.0.1:6380"
    try:
        CacheConfig.from_env(environ)
    except ConfigurationError as exc:
        return f"``{variable.name}={bad}``: " + str(exc).replace("***", "\\*\\*\\*")  # a masked secret
    raise RuntimeError(f"{variable.name}={bad!r} was accepted; its bad_values() are wrong")


def errors_for(variable: Variable) -> list[str]:
    """One line per value the variable refuses."""
    return [error_for(variable, bad) for bad in variable.bad_values()] or ["(any text is accepted)"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class VariablesDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[Any]:
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 18 14 10 16 42",
            "",
            "   * - variable",
            "     - type",
            "     - default",
            "     - example",
            "     - meaning, and the error a bad value raises",
        ]
        for variable in VARIABLES:
            default = f"``{variable.default}``" if variable.default is not None else "(none)"
            lines += [
                f"   * - ``{variable.name}``",
                f"     - {_cell(KIND_DESCRIPTIONS[variable.kind])}",
                f"     - {default}",
                f"     - ``{variable.example}``",
                f"     - {_cell(variable.help)}",
            ]
            if variable.accepts:
                lines += ["", "       Also accepted: " + ", ".join(f"``{form}``" for form in variable.accepts)]
            for error in errors_for(variable):
                lines += ["", f"       {_cell(error)}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="librecache-variables"), self.content_offset, container)
        return container.children


class CliDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[Any]:
        parser = build_parser()
        result: list[Any] = [nodes.literal_block(text=parser.format_help())]
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        for name, sub in actions[0].choices.items():  # type: ignore[attr-defined]
            section = nodes.section(ids=[f"librecache-{name}"])
            section += nodes.title(text=f"librecache {name}")
            section += nodes.literal_block(text=sub.format_help())
            result.append(section)
        return result


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("librecache-variables", VariablesDirective)
    app.add_directive("librecache-cli", CliDirective)
    return {"parallel_read_safe": True}
