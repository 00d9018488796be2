import pytest

from tests.support import ServerFactory


@pytest.fixture
def serve(tmp_path):
    """Start `dashboard serve` with a config given as YAML text: `server = serve(yaml)`."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()
