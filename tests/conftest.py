import pytest

from tests.browser import browser, open_page  # noqa: F401  (real Chromium fixtures)
from tests.support import ServerFactory


@pytest.fixture
def serve(tmp_path):
    """Start `dashboard serve` with a config given as YAML text: `server = serve(yaml)`."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()
