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
                        "ttl_seconds": 60, "forced_in_memory": False, "format": "pickle",
                        "declared": False}


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


# -- check, keys, clear, stats against real servers -------------------------------------


@pytest.fixture
def env_file(deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # type: ignore[no-untyped-def]
    clean_env(monkeypatch)
    path = tmp_path / ".env"
    path.write_text("".join(f"{key}={value}\n" for key, value in deployment.env.items()))
    return path


def test_check_reports_a_healthy_deployment(capsys: pytest.CaptureFixture[str], env_file: Path, deployment) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "check", "--env-file", str(env_file), "-v")
    assert code == 0, out
    assert "ok    ping" in out and "ok    authenticated as default" in out
    assert "ok    22 of 22 Redis namespaces round-trip a key" in out
    assert ("cluster: state ok on 3 masters, 3 replicas" in out) == deployment.cluster
    assert deployment.keys("*__librecache_check__*") == []


def test_check_lists_each_problem_and_fails(capsys: pytest.CaptureFixture[str], redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import ACL_PASSWORD, ACL_USER

    clean_env(monkeypatch)
    path = tmp_path / ".env"
    path.write_text(f"USE_REDIS=true\nREDIS_URI={redis_server.url}\nREDIS_USERNAME={ACL_USER}\n"
                    f"REDIS_PASSWORD={ACL_PASSWORD}\nREDIS_KEY_PREFIX=not-its-prefix\n"
                    "FORCED_IN_MEMORY_CACHE_NAMESPACES=ROLES\n")
    code, out, _ = run(capsys, "check", "--env-file", str(path))
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    # librecache's own sentence, the same whatever the server's wording (Redis: "no permissions", Valkey: "No permissions")
    sentence = "permission denied: the Redis user may not use not-its-prefix::* (the user's ACL key and channel patterns must cover them; server: "
    assert len(failures) == 21 and all(line.split(": ", 1)[1].startswith(sentence) for line in failures), failures
    assert ACL_PASSWORD not in out


def test_check_of_an_unreachable_server(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers import free_port

    clean_env(monkeypatch)
    path = tmp_path / ".env"
    path.write_text(f"USE_REDIS=true\nREDIS_URI=redis://127.0.0.1:{free_port()}\nREDIS_CONNECT_TIMEOUT=300\n")
    code, out, _ = run(capsys, "check", "--env-file", str(path))
    assert code == 1 and out.startswith("FAIL  connect:") and "Connection refused" in out


def test_keys_clear_and_stats(capsys: pytest.CaptureFixture[str], env_file: Path, deployment, make_caches) -> None:  # type: ignore[no-untyped-def]
    caches = make_caches(deployment.env)
    caches.region("TOOLS").set_multi({f"t{i}": "x" * 100 for i in range(1500)})
    caches.region("ROLES").set("admin", 1)
    prefix = deployment.env["REDIS_KEY_PREFIX"]

    code, out, err = run(capsys, "keys", "TOOLS", "--env-file", str(env_file), "--limit", "10")
    assert code == 0 and len(out.splitlines()) == 10 and "more than 10 keys" in err
    assert all(line.startswith(f"{prefix}::TOOLS:t") for line in out.splitlines())

    code, out, _ = run(capsys, "stats", "--env-file", str(env_file), "--json")
    stats = {row["namespace"]: row for row in json.loads(out)}
    assert stats["TOOLS"]["keys"] == 1500 and stats["TOOLS"]["bytes"] > 1500 * 100
    assert stats["ROLES"]["keys"] == 1 and stats["MESSAGES"]["keys"] == 0

    code, out, err = run(capsys, "clear", "TOOLS", "--env-file", str(env_file))
    assert code == 2 and "--yes" in err  # no terminal here to confirm on
    code, out, err = run(capsys, "clear", "TOOLS", "--yes", "--env-file", str(env_file))
    assert code == 0 and out.strip() == "TOOLS: 1500 keys removed" and "1,500 keys removed..." in err
    assert deployment.keys(f"{prefix}::TOOLS:*") == []
    assert caches.region("ROLES").get("admin") == 1
    code, out, _ = run(capsys, "clear", "--all", "--yes", "--env-file", str(env_file))
    assert code == 0 and "ROLES: 1 keys removed" in out and out.strip().endswith("total: 1 keys removed")


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    code, _, err = run(capsys, "keys", "NOPE")
    assert code == 2 and err.startswith("librecache: Unknown cache namespace 'NOPE'") and len(err.splitlines()) == 1
    code, _, err = run(capsys, "clear")
    assert code == 2 and "NAMESPACE, or --all" in err
    code, _, err = run(capsys, "keys", "ROLES")
    assert code == 0 and "lives in each process's memory" in err
