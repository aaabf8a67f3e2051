"""One embedded hub for the whole fuzz package (starting one costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.harness import FuzzHub


@pytest.fixture(scope="session")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzHub]:
    hub = FuzzHub(tmp_path_factory.mktemp("fuzz-hub"))
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
