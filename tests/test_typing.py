"""Memoised functions keep their types: mypy --strict on tests/typed/uses.py
(typed calls checked with assert_type, wrong calls that must stay
reported marked with a type: ignore that --warn-unused-ignores checks)."""

from __future__ import annotations

from pathlib import Path

import mypy.api

USES = Path(__file__).parent / "typed" / "uses.py"


def test_memoised_functions_and_their_companions_keep_their_types(tmp_path: Path) -> None:
    stdout, stderr, status = mypy.api.run([
        "--strict", "--warn-unused-ignores", "--follow-imports=silent", "--no-error-summary",
        "--cache-dir", str(tmp_path), str(USES),
    ])
    assert status == 0, stdout + stderr
