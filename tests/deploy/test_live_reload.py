"""The dev overlay's live-reload wrapper does what the Tiltfile relies on.

`tilt up` syncs changed sources into /workspace and runs `kill -HUP 1`; the wrapper
(PID 1 in the pod) must then restart `nextbest` on the new code, and on SIGTERM pass the
signal on and exit with the server's code. Here the wrapper runs the real `nextbest` (the
one of this virtualenv) exactly with the variables of the dev overlay's patch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import KUSTOMIZE_DIR
from tools.launch import free_port, wait_serving

pytestmark = pytest.mark.slow

WRAPPER = KUSTOMIZE_DIR / "overlays" / "dev" / "live-reload.sh"
MARKER = "live-reload test: new code"


def _default_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


async def _wait_for(log: Path, text: str, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s * 10)):
        if text in _text(log):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in {log}:\n{_text(log)[-3000:]}")


async def test_sighup_restarts_on_the_synced_code_and_sigterm_drains(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    port = free_port()
    env = {
        **os.environ,
        # As the dev overlay's live-reload.yaml sets them.
        "PYTHONPATH": str(workspace),
        "LIVE_RELOAD_WORKSPACE": str(workspace),
        # `nextbest` and `python` of this virtualenv, as /opt/venv/bin in the image.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NEXTBEST_HOST": "127.0.0.1",
        "NEXTBEST_PORT": str(port),
        "NEXTBEST_DATA_DIR": str(tmp_path / "data"),
        "NEXTBEST_SHUTDOWN_GRACE_S": "1",
        "NEXTBEST_LOG_FORMAT": "json",
    }
    log = tmp_path / "wrapper.log"
    with log.open("wb") as sink:
        wrapper = subprocess.Popen(
            ["sh", str(WRAPPER), "serve", "--target", "identity"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            # As PID 1 of a container starts: SIGHUP not ignored. A test run under `nohup`
            # hands its ignored SIGHUP down, and a shell cannot trap a signal that was
            # ignored on entry (POSIX), so the wrapper would never restart.
            preexec_fn=_default_sighup,
        )
    try:
        await wait_serving(f"127.0.0.1:{port}", timeout_s=60)
        # The installed packages were copied into the workspace, which is first on the path.
        assert (workspace / ".copied").exists()
        cli = workspace / "services" / "cli.py"
        assert cli.is_file() and (workspace / "libs" / "config.py").is_file()
        # What Tilt's sync does: new code in the workspace; then `kill -HUP 1`.
        cli.write_text(cli.read_text() + f"\nprint({MARKER!r}, file=sys.stderr, flush=True)\n")
        wrapper.send_signal(signal.SIGHUP)
        await _wait_for(log, "live-reload: restarting nextbest serve --target identity")
        await _wait_for(log, MARKER)
        await wait_serving(f"127.0.0.1:{port}", timeout_s=60)
        assert wrapper.poll() is None, "the wrapper (PID 1 in the pod) stays up"
        # The kubelet's SIGTERM: passed on, the server drains, its exit code is the pod's.
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()


async def test_a_crash_is_not_hidden(tmp_path: Path) -> None:
    """A server that exits on its own ends the wrapper with its code: Kubernetes restarts
    the container and shows the crash."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "LIVE_RELOAD_WORKSPACE": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NEXTBEST_PORT": "not-a-port",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        ["sh", str(WRAPPER), "serve", "--target", "identity"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr  # nextbest: invalid configuration
    assert "NEXTBEST_PORT" in result.stderr
