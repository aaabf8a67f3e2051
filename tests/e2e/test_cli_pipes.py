"""A command whose output is piped into a reader that stops early (`nextbest decide | head`)
ends quietly, as command-line tools do, not in a BrokenPipeError traceback."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.config import Settings, Target
from tests.demo_hub import serve_demo
from tests.e2e.harness import NEXTBEST

pytestmark = pytest.mark.slow


@pytest.fixture
async def address(tmp_path: Path, demo_model_bytes: bytes) -> AsyncIterator[str]:
    settings = Settings(target=Target.ALL, host="127.0.0.1", port=0, data_dir=tmp_path)
    built = await serve_demo(settings, demo_model_bytes)
    try:
        yield f"127.0.0.1:{built.port}"
    finally:
        await built.server.stop(0)
        await built.close()


async def run_into_a_closed_pipe(*args: str) -> tuple[int, str]:
    """Run ``nextbest args`` with its stdout a pipe whose reader has already gone; the
    server keeps answering meanwhile (this event loop is not blocked)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        process = await asyncio.create_subprocess_exec(
            *NEXTBEST, *args, stdout=writer, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(writer)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.mark.parametrize(
    "command",
    [
        ["decide", "--id", "cookie_id=pipe-test", "--channel", "web", "--explain"],
        ["catalog", "show"],
    ],
    ids=lambda command: command[0],
)
async def test_a_closed_stdout_ends_the_command_quietly(address: str, command: list[str]) -> None:
    code, stderr = await run_into_a_closed_pipe(*command, "--address", address)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    # The exit status of a writer whose reader went away, as `yes | head` gives.
    assert code == 128 + signal.SIGPIPE, stderr
