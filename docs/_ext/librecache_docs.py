"""Sphinx directives that generate reference pages from the code itself.

- ``.. librecache-variables::`` one section per variable of
  ``librecache.variables.VARIABLES``: its meaning, type, default, an example,
  the further forms it accepts and, for each value it refuses, the exact
  error (found by calling ``CacheConfig.from_env``, so the text is the real
  message). Each section is also the target of ``:envvar:`NAME```.
- ``.. librecache-cli::`` the help of the ``librecache`` command and each
  subcommand, from its argument parser, formatted narrow enough to fit the
  page.

Everything is built as docutils nodes, not as reStructuredText, so that a
help text or an error message can contain any character.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

from librecache import CacheConfig, ConfigurationError
from librecache.cli import build_parser
from librecache.parsing import KIND_DESCRIPTIONS
from librecache.variables import VARIABLES, Variable

#: Widths, in characters, the command's help is formatted to (argparse
#: reads ``COLUMNS``): one fits the text column of a desktop browser, the
#: other a phone's (390 px: 43 characters); the stylesheet
#: (``_static/librecache.css``) shows the one that fits the window.
CLI_HELP_COLUMNS = {"wide": 72, "narrow": 42}

#: argparse lines a usage up after the program's name, however long the
#: name; below this width it starts the arguments on a line of their own,
#: which a phone needs for ``librecache clear [-h] [--env-file ENV_FILE]``.
CLI_NARROW_USAGE_COLUMNS = 30


def error_for(variable: Variable, bad: str) -> str:
    """The real message ``CacheConfig.from_env`` raises for ``bad``."""
    environ = {variable.name: bad}
    if variable.kind == "cafile":
        environ["REDIS_URI"] = "rediss://127.0.0.1:6380"
    try:
        CacheConfig.from_env(environ)
    except ConfigurationError as exc:
        return str(exc)
    raise RuntimeError(f"{variable.name}={bad!r} was accepted; its bad_values() are wrong")


def errors_for(variable: Variable) -> list[tuple[str, str]]:
    """``(value, message)`` for each value the variable refuses."""
    return [(bad, error_for(variable, bad)) for bad in variable.bad_values()]


def _literal(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def _field(name: str, *body: nodes.Element) -> nodes.field:
    return nodes.field("", nodes.field_name(name, name), nodes.field_body("", *body))


def _paragraph(*children: nodes.Node | str) -> nodes.paragraph:
    return nodes.paragraph("", "", *(nodes.Text(c) if isinstance(c, str) else c for c in children))


def _literals(texts: tuple[str, ...] | list[str]) -> nodes.paragraph:
    children: list[nodes.Node | str] = []
    for index, text in enumerate(texts):
        if index:
            children.append(", ")
        children.append(_literal(text))
    return _paragraph(*children)


def variable_section(variable: Variable) -> nodes.section:
    """The section of one variable (type, default, example, accepted forms,
    the error of each refused value)."""
    section_id = nodes.make_id(variable.name)
    section = nodes.section("", ids=[section_id], names=[variable.name.lower()], classes=["librecache-variable"])
    section += nodes.title("", "", _literal(variable.name))
    section += _paragraph(variable.help)
    fields = nodes.field_list()
    fields += _field("Type", _paragraph(KIND_DESCRIPTIONS[variable.kind]))
    default = _literal(variable.default) if variable.default is not None else nodes.Text("none")
    fields += _field("Default", _paragraph(default))
    fields += _field("Example", _paragraph(_literal(f"{variable.name}={variable.example}")))
    if variable.accepts:
        fields += _field("Also accepted", _literals(variable.accepts))
    errors = errors_for(variable)
    if errors:
        refused = nodes.bullet_list(classes=["librecache-refused"])
        for bad, message in errors:
            item = nodes.list_item()
            item += _paragraph(_literal(f"{variable.name}={bad}"), " raises")
            item += nodes.paragraph(message, message, classes=["librecache-error"])
            refused += item
        fields += _field("Refused", refused)
    else:
        fields += _field("Refused", _paragraph("nothing: any text is accepted"))
    section += fields
    return section


class VariablesDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        std = self.env.get_domain("std")
        result: list[nodes.Node] = []
        for variable in VARIABLES:
            section = variable_section(variable)
            self.state.document.note_implicit_target(section, section)
            std.note_object("envvar", variable.name, section["ids"][0], location=section)
            self.set_source_info(section)
            result.append(section)
        return result


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse formats help to ``COLUMNS`` characters."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _help_text(parser: argparse.ArgumentParser, width: int) -> str:
    with _columns(width):
        text = parser.format_help()
    if width < CLI_HELP_COLUMNS["wide"]:
        with _columns(CLI_NARROW_USAGE_COLUMNS):
            usage = parser.format_usage()
        text = usage + "\n" + text.split("\n\n", 1)[1]
    return text


def _help_blocks(parser: argparse.ArgumentParser) -> list[nodes.Node]:
    """The parser's help at each width of :data:`CLI_HELP_COLUMNS`."""
    blocks: list[nodes.Node] = []
    for name, width in CLI_HELP_COLUMNS.items():
        text = _help_text(parser, width)
        blocks.append(nodes.literal_block(text, text, language="text", classes=[f"librecache-cli-{name}"]))
    return blocks


class CliDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        parser = build_parser()
        result: list[nodes.Node] = _help_blocks(parser)
        subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        for name, sub in subcommands[0].choices.items():
            section = nodes.section(ids=[f"librecache-{name}"])
            section += nodes.title(text=f"librecache {name}")
            section.extend(_help_blocks(sub))
            result.append(section)
        return result


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("librecache-variables", VariablesDirective)
    app.add_directive("librecache-cli", CliDirective)
    return {"parallel_read_safe": True}
