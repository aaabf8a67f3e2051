"""The Tiltfile loads and describes the development loop we document (no Tilt needed).

Tilt's language is Starlark, a Python dialect: the harness first checks that the Tiltfile
uses only what Starlark has (no imports, classes, f-strings, ``while``, ``try``...), then
executes it as Python with stubs of Tilt's built-ins that keep Tilt's parameter names
(a wrong keyword fails as it would in Tilt) and record every call. The tests then check
what was recorded against the repository and the rendered dev overlay.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.deploy.manifests import (
    GRPC_PORT,
    ROOT,
    Doc,
    container,
    deployments,
    mounted_volumes,
    render,
)
from tools.launch import MESH_TARGETS

TILTFILE = ROOT / "Tiltfile"
MIGRATE = "nextbest-migrate"

# Python syntax that Starlark (go.starlark.net, as Tilt configures it) does not have.
_NOT_STARLARK: dict[type[ast.AST], str] = {
    ast.Import: "import",
    ast.ImportFrom: "import",
    ast.ClassDef: "class",
    ast.While: "while",
    ast.Try: "try",
    ast.With: "with",
    ast.Raise: "raise",
    ast.Assert: "assert",
    ast.Delete: "del",
    ast.Global: "global",
    ast.Nonlocal: "nonlocal",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Await: "await",
    ast.AsyncFunctionDef: "async",
    ast.JoinedStr: "f-string",
    ast.NamedExpr: ":=",
    ast.Set: "set literal",
    ast.SetComp: "set comprehension",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.Starred: "*unpacking outside a call",
}


def starlark_problems(source: str) -> list[str]:
    """Constructs of ``source`` that Tilt's Starlark would reject."""
    problems = []
    tree = ast.parse(source)
    calls_star = {
        id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call) for arg in node.args
    }
    for node in ast.walk(tree):
        name = _NOT_STARLARK.get(type(node))
        if name == "*unpacking outside a call" and id(node) in calls_star:
            continue
        if name is not None:
            problems.append(f"line {getattr(node, 'lineno', '?')}: {name}")
        if isinstance(node, ast.Compare) and len(node.ops) > 1:
            problems.append(f"line {node.lineno}: chained comparison")
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            problems.append(f"line {node.lineno}: decorator")
    return problems


# --------------------------------------------------------------------------- Tilt stubs


@dataclass(frozen=True)
class Step:
    """A live_update step: sync(local, remote), run(cmd), fall_back_on(files)."""

    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Blob:
    """What kustomize() returns: the directory it renders."""

    kustomize_dir: str


@dataclass(frozen=True)
class PortForward:
    local_port: int
    container_port: int | None
    name: str | None


@dataclass
class Recorder:
    """Tilt's built-ins, recording what the Tiltfile asks for."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [arguments for called, arguments in self.calls if called == name]

    def builtins(self) -> dict[str, Any]:
        record = self.calls.append

        def docker_build(
            ref: str,
            context: str,
            build_args: dict[str, str] | None = None,
            dockerfile: str = "Dockerfile",
            dockerfile_contents: str = "",
            live_update: list[Step] | None = None,
            match_in_env_vars: bool = False,
            ignore: list[str] | None = None,
            only: list[str] | None = None,
            entrypoint: list[str] | None = None,
            target: str = "",
            ssh: str = "",
            network: str = "",
            secret: str = "",
            extra_tag: str = "",
            container_args: list[str] | None = None,
            cache_from: list[str] | None = None,
            pull: bool = False,
            platform: str = "",
        ) -> None:
            record(("docker_build", dict(locals())))

        def sync(local_path: str, remote_path: str) -> Step:
            return Step("sync", (local_path, remote_path))

        def run(cmd: str, trigger: list[str] | None = None, echo_off: bool = False) -> Step:
            return Step("run", (cmd, tuple(trigger or ())))

        def fall_back_on(files: str | list[str]) -> Step:
            return Step("fall_back_on", tuple([files] if isinstance(files, str) else files))

        def kustomize(
            pathToDir: str,
            kustomize_bin: str | None = None,
            flags: list[str] | None = None,
        ) -> Blob:
            return Blob(pathToDir)

        def k8s_yaml(yaml: Any, allow_duplicates: bool = False) -> None:
            record(("k8s_yaml", {"yaml": yaml}))

        def k8s_resource(
            workload: str = "",
            new_name: str = "",
            port_forwards: Any = None,
            extra_pod_selectors: Any = None,
            trigger_mode: str | None = None,
            resource_deps: list[str] | None = None,
            objects: list[str] | None = None,
            auto_init: bool = True,
            pod_readiness: str = "",
            links: Any = None,
            labels: Any = None,
            discovery_strategy: str = "",
        ) -> None:
            record(("k8s_resource", dict(locals())))

        def port_forward(
            local_port: int,
            container_port: int | None = None,
            name: str | None = None,
            link_path: str | None = None,
            host: str | None = None,
        ) -> PortForward:
            return PortForward(local_port, container_port, name)

        def local_resource(name: str, cmd: str = "", **kwargs: Any) -> None:
            record(("local_resource", {"name": name, "cmd": cmd, **kwargs}))

        def load(path: str, *symbols: str, **aliases: str) -> None:
            raise AssertionError(f"load({path!r}): extensions need a network; not used here")

        def local(command: Any, **kwargs: Any) -> None:
            raise AssertionError(f"local({command!r}) runs at every load: keep the Tiltfile pure")

        def fail(message: str) -> None:
            raise AssertionError(f"fail(): {message}")

        recorded: dict[str, Callable[..., Any]] = {
            "docker_build": docker_build,
            "sync": sync,
            "run": run,
            "fall_back_on": fall_back_on,
            "kustomize": kustomize,
            "k8s_yaml": k8s_yaml,
            "k8s_resource": k8s_resource,
            "port_forward": port_forward,
            "local_resource": local_resource,
            "load": load,
            "local": local,
            "fail": fail,
        }
        return {
            **recorded,
            "TRIGGER_MODE_AUTO": "auto",
            "TRIGGER_MODE_MANUAL": "manual",
            "print": lambda *args: None,
        }


def load_tiltfile(source: str) -> Recorder:
    """Execute ``source`` as Tilt would, with the stubs; fails on non-Starlark syntax."""
    problems = starlark_problems(source)
    assert not problems, f"not Starlark: {problems}"
    recorder = Recorder()
    exec(
        compile(source, str(TILTFILE), "exec"),
        {"__builtins__": _SAFE_BUILTINS, **recorder.builtins()},
    )
    return recorder


# The Python built-ins Starlark also has (nothing else is reachable from the Tiltfile).
_SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        "len", "range", "str", "int", "bool", "list", "dict", "tuple", "sorted", "enumerate",
        "zip", "min", "max", "any", "all", "reversed", "hasattr", "getattr", "type", "repr",
        "abs", "float", "True", "False", "None",
    )
}  # fmt: skip


# --------------------------------------------------------------------------- the checks


def check_tiltfile(recorder: Recorder, dev: list[Doc]) -> None:
    """What `tilt up` does with this Tiltfile matches the repository and the dev overlay."""
    builds = recorder.of("docker_build")
    assert len(builds) == 1, "one image for every target"
    build = builds[0]
    images = {
        container(doc)["image"]
        for doc in deployments(dev).values()
        if doc["metadata"]["name"] in MESH_TARGETS
    }
    assert images == {build["ref"]}, f"Tilt builds {build['ref']!r}, the dev overlay runs {images}"
    context = ROOT / build["context"]
    assert context.is_dir()
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file(), dockerfile
    declared = set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), re.MULTILINE))
    assert set(build["build_args"] or {}) <= declared, "build args the Dockerfile declares"

    steps: list[Step] = build["live_update"] or []
    assert steps, "live update"
    syncs = [step for step in steps if step.kind == "sync"]
    fallbacks = [path for step in steps if step.kind == "fall_back_on" for path in step.args]
    kinds = [step.kind for step in steps]
    assert kinds == sorted(kinds, key=lambda kind: kind != "fall_back_on"), (
        "fall_back_on steps come first (Tilt requires it)"
    )
    for path in fallbacks:
        assert (ROOT / path).exists(), f"fall_back_on {path}: no such path"
    synced = {local: remote for local, remote in (step.args for step in syncs)}
    assert set(synced) >= {"libs", "services"}, "the Python sources are live-updated"
    for local in synced:
        assert (context / local).is_dir(), f"sync {local}: no such directory"
    assert steps[-1] == Step("run", ("kill -HUP 1", ())), "the process restarts after a sync"
    # The remote paths are where the dev overlay runs the code from: a writable volume
    # that is first on PYTHONPATH (live-reload.sh copies the installed packages there).
    for name, doc in deployments(dev).items():
        if name not in MESH_TARGETS:
            continue
        item = container(doc)
        env = {entry["name"]: entry.get("value") for entry in item.get("env", [])}
        workspace = env.get("PYTHONPATH", "").split(":")[0]
        assert workspace, f"{name}: no PYTHONPATH for the live-updated code"
        volume = mounted_volumes(doc, item).get(workspace)
        assert volume is not None and "emptyDir" in volume, f"{name}: {workspace} not writable"
        for local, remote in synced.items():
            assert remote == f"{workspace}/{local}", (local, remote)

    applied = recorder.of("k8s_yaml")
    assert [item["yaml"] for item in applied] == [Blob("deploy/kubernetes/overlays/dev")]
    assert (ROOT / "deploy/kubernetes/overlays/dev/kustomization.yaml").is_file()

    resources = {item["workload"]: item for item in recorder.of("k8s_resource")}
    workloads = {
        doc["metadata"]["name"]
        for doc in dev
        if doc["kind"] in ("Deployment", "StatefulSet", "Job")
    }
    assert set(resources) <= workloads, f"unknown workloads: {set(resources) - workloads}"
    names = {(doc["kind"].lower(), doc["metadata"]["name"]) for doc in dev}
    assert MIGRATE in resources, "the migration Job is a resource"
    for target in MESH_TARGETS:
        resource = resources.get(target)
        assert resource is not None, f"{target} is not its own resource"
        assert MIGRATE in (resource["resource_deps"] or []), f"{target} starts before migrations"
        assert resource["labels"], target
        for selector in resource["objects"] or []:
            object_name, _, kind = selector.partition(":")
            assert (kind.lower(), object_name) in names, f"{target}: no object {selector}"
    migrate_deps = resources[MIGRATE]["resource_deps"] or []
    assert all(dep in resources for dep in migrate_deps)
    forwards = [
        forward
        for forward in resources["orchestrator"]["port_forwards"] or []
        if isinstance(forward, PortForward)
    ]
    assert any(
        forward.local_port == GRPC_PORT and forward.container_port in (None, GRPC_PORT)
        for forward in forwards
    ), "the orchestrator is forwarded to localhost:50051 (grpcurl)"
    for target in MESH_TARGETS:
        if target != "orchestrator":
            assert not resources[target]["port_forwards"], f"{target} is internal"


@pytest.fixture(scope="module")
def dev() -> list[Doc]:
    return render("overlays/dev")


def test_tiltfile_is_starlark() -> None:
    assert starlark_problems(TILTFILE.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    ['x = f"{1}"', "import os", "while True:\n    pass", "x = {1, 2}", "y = 1 if x is None else 2"],
)
def test_non_starlark_is_refused(snippet: str) -> None:
    assert starlark_problems(snippet)


def test_tiltfile_loads_and_matches_the_dev_overlay(dev: list[Doc]) -> None:
    check_tiltfile(load_tiltfile(TILTFILE.read_text()), dev)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # The orchestrator is no longer forwarded.
        ('port_forward(50051, 50051, name="grpc', 'port_forward(50052, 50051, name="grpc'),
        # Targets no longer wait for the migrations.
        ('resource_deps=["nextbest-migrate"]', "resource_deps=[]"),
        # A path that does not exist.
        ('sync("libs", "/workspace/libs")', 'sync("lib", "/workspace/lib")'),
        # The code synced somewhere the pods do not run it from.
        ('sync("services", "/workspace/services")', 'sync("services", "/app/services")'),
        # A Dockerfile that is not there.
        ('dockerfile="deploy/Dockerfile"', 'dockerfile="Dockerfile"'),
        # A target missing from the loop.
        ('"scoring", "arbitration"', '"arbitration"'),
        # A misspelt keyword (Tilt would refuse it too).
        ("resource_deps=", "resource_dep="),
    ],
)
def test_checks_catch_a_broken_tiltfile(dev: list[Doc], old: str, new: str) -> None:
    source = TILTFILE.read_text()
    assert old in source
    with pytest.raises((AssertionError, TypeError)):
        check_tiltfile(load_tiltfile(source.replace(old, new)), dev)
