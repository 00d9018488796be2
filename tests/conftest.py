import os

import pytest

from tests.browser import browser, open_page  # noqa: F401  (real Chromium fixtures)
from tests.support import ServerFactory


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_repository():
    """The default broker's file lands in a test's folder: a test that starts a server in the
    repository's folder (and so writes its dashboard.db) fails the run."""
    from tests.support import ROOT

    def state():
        path = ROOT / "dashboard.db"
        return path.stat().st_mtime_ns if path.exists() else None

    before = state()
    yield
    assert state() == before, "a test started a server in the repository's folder (it wrote dashboard.db)"


@pytest.fixture(autouse=True)
def in_a_folder_of_its_own(tmp_path, monkeypatch):
    """Each test runs in a folder of its own: a runtime built with the default broker writes its
    file (dashboard.db) there, never in the repository, and no two tests share one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def serve(tmp_path):
    """Start `dashboard serve` with a config given as YAML text: `server = serve(yaml)`."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def upstream():
    """An OpenAI-compatible upstream on loopback, playing the scenario its model names."""
    from tests.upstream import Upstream

    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def redis_prefix():
    """A key prefix of its own on the shared test Redis, deleted afterwards.

    Without Redis the test is skipped, except in CI (CI=true), where it fails: CI starts one.
    Name it before `serve` in a test's arguments, so that its servers stop before the cleanup.
    """
    import uuid

    from tests.support import REDIS_URL, delete_prefix, redis_answers

    if not redis_answers():
        message = f"no Redis answers at {REDIS_URL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI must provide one: see .ci/run)")
        pytest.skip(message)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(REDIS_URL, prefix)
