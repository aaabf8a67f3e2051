#!/bin/sh
# Development only (the dev overlay, for Tilt's live update): runs `nextbest "$@"` from a
# writable copy of the code and restarts it on SIGHUP.
#
# The image installs the code read-only into site-packages (readOnlyRootFilesystem). At the
# first start of a pod this copies the packages libs and services into $LIVE_RELOAD_WORKSPACE
# (an emptyDir, first on PYTHONPATH); Tilt then syncs changed files there and sends SIGHUP
# to PID 1, and the process restarts on the new code in about a second: no image rebuild,
# no container restart (which would lose the synced files and make Tilt rebuild).
# SIGTERM/SIGINT are passed on: the server drains and its exit code is ours.
set -u
workspace="${LIVE_RELOAD_WORKSPACE:-/workspace}"

if [ ! -e "$workspace/.copied" ]; then
  python - "$workspace" <<'PYTHON'
import importlib.util
import shutil
import sys
from pathlib import Path

workspace = Path(sys.argv[1])
for name in ("libs", "services"):
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, name
    source = Path(list(spec.submodule_search_locations)[0])
    if source.resolve() != (workspace / name).resolve():
        shutil.copytree(
            source,
            workspace / name,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
(workspace / ".copied").touch()
PYTHON
fi

child=""
restart=0
trap 'restart=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' HUP
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT

while :; do
  restart=0
  nextbest "$@" &
  child=$!
  # A trapped signal interrupts `wait`: wait again until the child has really exited.
  while :; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=""
  if [ "$restart" = 1 ]; then
    echo "live-reload: restarting nextbest $*" >&2
    continue
  fi
  exit "$code"
done
