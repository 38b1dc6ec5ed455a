"""The method listing without importing the methods (issue 15: `python -m explainers methods` in under 2 s).

The method modules register themselves when imported, and importing them imports torch (~1.5-3 s).  The listing
the CLI prints is therefore also kept as data, ``method_catalogue.json`` next to this file, written from the live
registry by ``python -m explainers methods --refresh``; tests/test_cli_startup.py checks that the file equals
what the registry gives, so a method added or changed without a refresh fails the suite instead of being listed
wrongly.
"""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).with_name("method_catalogue.json")


def registry_rows() -> list[dict[str, str]]:
    """One row per registered method, from the registry itself (imports every method module)."""
    from .registry import METHODS

    return [{"id": m.id, "family": m.family, "name": m.name, "needs": m.requirement.needs,
             "options": ", ".join(f"{o.name}={o.default!r}" for o in m.options)} for m in METHODS.values()]


def rows() -> list[dict[str, str]]:
    """The stored rows (the registry's when the file is missing or unreadable)."""
    try:
        return json.loads(PATH.read_text())
    except (OSError, ValueError):
        return registry_rows()


def refresh() -> Path:
    PATH.write_text(json.dumps(registry_rows(), indent=1) + "\n")
    return PATH


def lines(table: list[dict[str, str]]) -> list[str]:
    return [f"{r['id']:24s} {r['family']:9s} {r['name']}  [needs: {r['needs']}]  {r['options']}" for r in table]
