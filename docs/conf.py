"""Sphinx configuration. Build: ``sphinx-build -W -b html docs docs/_build/html``;
test the examples: ``sphinx-build -W -b doctest docs docs/_build/doctest``
(starts real Redis servers on 127.0.0.1 for the examples, and stops them)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import librecache  # noqa: E402

project = "librecache"
author = "the librecache developers"
copyright = "2026, the librecache developers"
release = librecache.__version__
extensions = [
    "sphinx.ext.autodoc", "sphinx.ext.doctest", "sphinx.ext.graphviz", "sphinx.ext.intersphinx",
    "sphinx_copybutton", "librecache_docs",
]
exclude_patterns = ["_build"]

# furo: light and dark modes (following the reader's system, with a toggle),
# and a layout that collapses its sidebars on narrow screens
html_theme = "furo"
html_title = f"librecache {release}"
html_static_path = ["_static"]
html_css_files = ["librecache.css"]
html_js_files = ["librecache.js"]

# copy buttons copy runnable code: the prompts (">>> ", "... ", a bare "..."
# and "$ ") are stripped, and the output lines of an example left out
copybutton_prompt_text = r">>> |\.\.\. |\.\.\.$|\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# the diagrams: Debian's graphviz ``dot`` at build time, SVG that scales down
graphviz_output_format = "svg"
graphviz_dot_args = ["-Gfontname=Helvetica,Arial,sans-serif", "-Nfontname=Helvetica,Arial,sans-serif",
                     "-Efontname=Helvetica,Arial,sans-serif"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
intersphinx_mapping: dict[str, Any] = {}
suppress_warnings = ["ref.python"]

doctest_global_setup = """
import os
import warnings
import librecache
# starlette's test client announces a future move to httpx2; not ours to act on
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
DOCS = {key[5:].lower(): value for key, value in os.environ.items() if key.startswith("DOCS_")}
"""

_farm: Any = None


def _start_servers(app: Any) -> None:
    """Real servers for the examples: a single server, a 6-node cluster, a
    TLS server with a CA made for the build, and a master with a replica
    and three sentinels."""
    global _farm
    if app.builder.name != "doctest":
        return
    from tests.certs import TestCA
    from tests.servers import RedisSentinelFarm, ServerFarm

    _farm = ServerFarm()
    ca = TestCA(_farm.root / "ca")
    cert, key = ca.issue("docs-tls", dns=("localhost",), ips=("127.0.0.1",))
    single = _farm.server(config_lines=("user librechat on >s3cr!t ~prod::* &prod::* +@all",))
    tls = _farm.server(tls=(cert, key, ca.path))
    cluster = _farm.cluster()
    sentinel = RedisSentinelFarm(_farm.root)
    _farm.servers.extend(sentinel.servers)
    sentinel.start()
    os.environ.update(
        DOCS_SINGLE=single.url, DOCS_CLUSTER=cluster.uri(3), DOCS_TLS=tls.url, DOCS_CA=str(ca.path),
        DOCS_CLUSTER_SEED=cluster.uri(1), DOCS_SENTINELS=sentinel.uri(),
        DOCS_SENTINEL_MASTER=f"127.0.0.1:{sentinel.master.port}",
    )


def _stop_servers(app: Any, exception: Any) -> None:
    if _farm is not None:
        _farm.stop()


def setup(app: Any) -> None:
    app.connect("builder-inited", _start_servers)
    app.connect("build-finished", _stop_servers)

import doctest as _doctest  # noqa: E402

# Compare exception messages too (Sphinx ignores them by default). Runs of
# blanks and line breaks compare equal, so that long outputs and messages can
# be wrapped to fit the page.
doctest_default_flags = _doctest.ELLIPSIS | _doctest.DONT_ACCEPT_TRUE_FOR_1 | _doctest.NORMALIZE_WHITESPACE
