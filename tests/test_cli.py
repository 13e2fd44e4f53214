"""The librecache command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from librecache.cli import main
from tests.processes import ROOT


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("REDIS_", "USE_REDIS", "FORCED_IN_MEMORY", "LIBRECACHE_", "BAN_")):
            monkeypatch.delenv(name)


def test_config_without_redis_lists_every_namespace(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    code, out, _ = run(capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["redis", "off"]
    table = lines[lines.index(next(line for line in lines if line.startswith("NAMESPACE"))) + 1:]
    assert len(table) == 22
    assert table[0].split() == ["CONFIG_STORE", "memory", "-", "none"]
    assert "MESSAGES" in out and any(line.split() == ["MESSAGES", "memory", "-", "1min"] for line in table)
    assert any(line.split() == ["BANS", "memory", "-", "2h"] for line in table)


def test_config_masks_secrets_and_shows_prefix_and_backends(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env(monkeypatch)
    env_file = tmp_path / ".env"
    env_file.write_text(
        "USE_REDIS=true\nREDIS_URI=redis://user:uri-secret@127.0.0.1:6390\nREDIS_PASSWORD=env-secret\n"
        "REDIS_KEY_PREFIX=prod\nFORCED_IN_MEMORY_CACHE_NAMESPACES=ROLES\n"
    )
    code, out, _ = run(capsys, "--env-file", str(env_file), "config")
    assert code == 0
    assert "uri-secret" not in out and "env-secret" not in out
    assert "password    ***" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if (line[:1].isupper() and "::" in line) or "(forced)" in line}
    assert rows["CONFIG_STORE"] == ["CONFIG_STORE", "redis", "prod::CONFIG_STORE:", "none"]
    assert rows["ROLES"][:3] == ["ROLES", "memory", "(forced)"]
    code, out, _ = run(capsys, "--env-file", str(env_file), "config", "--json")
    data = json.loads(out)
    assert data["settings"]["password"] == "***"
    assert "env-secret" not in out and "uri-secret" not in out
    messages = {row["namespace"]: row for row in data["namespaces"]}["MESSAGES"]
    assert messages == {"namespace": "MESSAGES", "backend": "redis", "key_prefix": "prod::MESSAGES:",
                        "ttl_seconds": 60, "forced_in_memory": False}


def test_a_bad_environment_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("FORCED_IN_MEMORY_CACHE_NAMESPACES", "STATIC_CONFIG")
    code, out, err = run(capsys, "config")
    assert code == 2 and out == ""
    assert err.startswith("librecache: Invalid cache keys in FORCED_IN_MEMORY_CACHE_NAMESPACES: STATIC_CONFIG.")
    assert len(err.strip().splitlines()) == 1


def test_the_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "librecache.cli", "config", "--json"],
        cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["namespaces"]) == 22
