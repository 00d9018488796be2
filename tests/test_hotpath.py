"""The hot path (dashboard/hotpath.py): compiled where setup.py built it (in CI, always), built from
its sources as they are, and relaying the same bytes from its Python source, which is what runs
where there is no C compiler."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import httpx
import pytest

from dashboard import hotpath
from tests.test_relay import KEY
from tests.upstream import relay_config


def test_the_hot_path_runs_compiled_where_it_was_built():
    left = hotpath.python_modules()
    if left and not os.environ.get("CI"):
        pytest.skip(f"not compiled here ({', '.join(left)}): pip install -e . with a C compiler builds them")
    assert not left, f"{left} run as Python: the install did not compile them (pip install -e . -v says why)"


@pytest.mark.parametrize("name", hotpath.MODULES)
def test_a_compiled_module_is_built_from_its_sources_as_they_are(name):
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    built = Path(spec.origin)
    if built.suffix == ".py":
        pytest.skip(f"{name} runs as Python here")
    stem = name.rsplit(".", 1)[1]
    sources = [built.with_name(f"{stem}.py"), built.with_name(f"{stem}.pxd")]
    sources = [path for path in sources if path.exists()]
    changed = [path.name for path in sources if path.stat().st_mtime > built.stat().st_mtime]
    assert not changed, f"{', '.join(changed)} changed since {built.name} was built: pip install -e . again"


def streamed(server, model: str) -> bytes:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=server.url, timeout=20) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize("scenario", ["echo", "bytewise", "crlf", "keepalive"])
def test_the_python_source_relays_what_the_compiled_hot_path_does(serve, upstream, scenario):
    config = relay_config(upstream.url, 9, extra="topics: {}")
    compiled = serve(config, env={"RELAY_TEST_KEY": KEY})
    python = serve(config, env={"RELAY_TEST_KEY": KEY, hotpath.VARIABLE: "python"})
    assert "hot path runs as Python, as DASHBOARD_HOT_PATH=python asks" in python.output(), python.output()
    if not hotpath.python_modules():
        assert "hot path compiled: dashboard.relay.forward" in compiled.output(), compiled.output()
    model = f"t-{scenario}"
    assert streamed(python, model) == streamed(compiled, model)


def test_a_hot_path_setting_not_understood_is_said_at_startup(serve):
    server = serve("topics: {}\n", env={hotpath.VARIABLE: "fast"})
    assert "DASHBOARD_HOT_PATH=fast is not understood (only `python` is): ignored" in server.output()
