"""Docs that cannot drift: docs/config.md is what scripts/config_reference.py writes from conf/ and
the schemas."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
reference = sys.modules.setdefault("config_reference", importlib.util.module_from_spec(_spec))
if not hasattr(reference, "render"):
    _spec.loader.exec_module(reference)


def test_config_reference_is_what_the_script_writes():
    page, missing = reference.render()
    assert reference.TARGET.read_text() == page, "docs/config.md is stale: run `make docs`"
    assert f"## Keys without a comment ({len(missing)})" in page
