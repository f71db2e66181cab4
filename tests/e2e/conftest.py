from collections.abc import Iterator

import pytest

from tests.e2e.sdk import close_all


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    close_all()
