"""`schemas/` is generated from the models; `typing-processor schemas --check` catches drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson

from processor.models import PAYLOAD_MODELS
from processor.schemas import check_schemas, write_schemas

REPO = Path(__file__).resolve().parent.parent


def test_committed_schemas_match_the_models() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "schemas", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_with_a_diff_after_a_change(tmp_path: Path) -> None:
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    target = tmp_path / "schemas" / "typing-event.schema.json"
    schema = orjson.loads(target.read_bytes())
    schema["properties"]["status"] = {"type": "string"}
    target.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "processor",
            "schemas",
            "--check",
            "--dir",
            str(tmp_path / "schemas"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "typing-event.schema.json" in result.stderr
    assert "\n-" in result.stderr
    assert "\n+" in result.stderr


def test_write_then_check_round_trips(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert {p.name for p in written} == {f"{name}.schema.json" for name in PAYLOAD_MODELS}
    assert check_schemas(tmp_path) == []
    (tmp_path / "stray.schema.json").write_text("{}")
    assert any("stray" in problem for problem in check_schemas(tmp_path))
