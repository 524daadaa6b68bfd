"""A server's runtime moves what it loaded out of the cyclic collector's reach (`gc.freeze`); the test suite, which
starts hundreds of runtimes in one process, turns that off (`Runtime.freeze_heap`, set in conftest)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from bankgate.config import load_settings
from bankgate.runtime import Runtime
from bankgate.services import Services


@pytest.mark.parametrize("freeze", [True, False], ids=["server", "test-suite"])
async def test_the_runtime_freezes_the_heap_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freeze: bool
) -> None:
    settings = load_settings(data_dir=tmp_path)
    opened = await Services.open(settings, initialise=True)
    await opened.init()
    await opened.close()
    monkeypatch.setattr(Runtime, "freeze_heap", freeze)
    gc.unfreeze()
    runtime = await Runtime.start(settings, "http://127.0.0.1:1")
    try:
        assert (gc.get_freeze_count() > 0) is freeze
    finally:
        await runtime.stop()
        gc.unfreeze()
