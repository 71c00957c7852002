"""JSON Schemas of the payloads, generated from the pydantic models into `schemas/`."""

from __future__ import annotations

import difflib
from pathlib import Path

import orjson

from processor.models import PAYLOAD_MODELS

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def render_schemas() -> dict[str, bytes]:
    """File name → schema bytes, exactly as they are written to disk."""
    rendered: dict[str, bytes] = {}
    for name, model in PAYLOAD_MODELS.items():
        schema = {"$schema": SCHEMA_DRAFT, "$id": f"{name}.schema.json"}
        schema.update(model.model_json_schema(mode="validation"))
        body = orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        rendered[f"{name}.schema.json"] = body + b"\n"
    return rendered


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in render_schemas().items():
        path = directory / name
        path.write_bytes(body)
        written.append(path)
    return written


def check_schemas(directory: Path) -> list[str]:
    """Differences between the models and `directory`, as unified-diff text; empty if none."""
    problems: list[str] = []
    expected = render_schemas()
    for name, body in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"missing {path}")
            continue
        actual = path.read_bytes()
        if actual != body:
            diff = difflib.unified_diff(
                actual.decode().splitlines(keepends=True),
                body.decode().splitlines(keepends=True),
                fromfile=f"{path} (on disk)",
                tofile=f"{path} (from models)",
            )
            problems.append("".join(diff))
    for path in sorted(directory.glob("*.schema.json")):
        if path.name not in expected:
            problems.append(f"unexpected {path} (no model generates it)")
    return problems
