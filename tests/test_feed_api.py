"""Built-in feeds are written against the public API only (dashboard, dashboard.http, dashboard.ai
and self.context), so each one is an example a user's feed can copy."""

import ast
from pathlib import Path

from tests.support import ROOT

PUBLIC = {"dashboard", "dashboard.http", "dashboard.ai", "dashboard.errors", "dashboard.events"}


def test_built_in_feeds_import_only_the_public_api():
    for path in sorted(Path(ROOT, "feeds").glob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dashboard"):
                assert node.module in PUBLIC, f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("dashboard."), f"{path.name} imports {alias.name}"
        assert "app.state" not in source, f"{path.name} reaches into the app's state"
