"""Settings of the long-running service (``ich-triage serve``), read once at the edge.

Precedence, lowest first: the defaults below, then a JSON file (``--config`` / ``ICH_CONFIG``), then the
environment (``ICH_<NAME>``), then command-line flags. The result is one frozen :class:`ServiceConfig` that is
passed down; nothing deeper reads ``os.environ``.

The JSON file uses the field names as keys, e.g.::

    {"ae_title": "ICH_TRIAGE", "port": 11112, "pacs": "ORTHANC@pacs.example.org:4242",
     "allow": ["ORTHANC@10.0.0.5", "MODALITY1"], "quiet_seconds": 20, "keep": "results"}
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

ENV_PREFIX = "ICH_"

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2 AE: 16 chars, default repertoire, no "\"


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the setting."""


class KeepPolicy(str, Enum):
    """What the spool keeps once a study's results are delivered."""

    NONE = "none"  # delete the received instances and the results
    RESULTS = "results"  # delete the received instances, keep the results (SC, SR, report.json)
    ALL = "all"  # keep everything (debugging, audits); the site reclaims space itself


def _check_ae_title(value: str, what: str) -> str:
    value = value.strip()
    if not _AE_TITLE_RE.match(value) or not value.strip():
        raise ConfigError(f"{what}: {value!r} is not a valid AE title (1-16 characters, no backslash)")
    return value


@dataclass(frozen=True)
class PacsAddress:
    """A DICOM peer: AE title, host and port (``AE@HOST:PORT``)."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "PACS AE title")
        if not self.host:
            raise ConfigError("PACS host is empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"PACS port {self.port} is out of range")

    @classmethod
    def parse(cls, text: str) -> PacsAddress:
        m = re.match(r"^\s*([^@]+)@(\[[^\]]+\]|[^:]+):(\d+)\s*$", text)
        if not m:
            raise ConfigError(f"pacs: {text!r} is not AE@HOST:PORT")
        return cls(m.group(1).strip(), m.group(2).strip("[]"), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class AllowedPeer:
    """One allowlist entry: a calling AE title, optionally bound to a host (``AE`` or ``AE@HOST``)."""

    ae_title: str
    host: str | None = None

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "allow")

    @classmethod
    def parse(cls, text: str) -> AllowedPeer:
        ae, _, host = text.strip().partition("@")
        return cls(ae.strip(), host.strip() or None)

    def matches(self, calling_ae_title: str, host: str) -> bool:
        return calling_ae_title.strip() == self.ae_title and (self.host is None or self.host == host)

    def __str__(self) -> str:
        return self.ae_title if self.host is None else f"{self.ae_title}@{self.host}"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``ich-triage serve`` needs; valid once constructed."""

    ae_title: str = "ICH_TRIAGE"
    port: int = 11112
    bind: str = "0.0.0.0"
    pacs: PacsAddress | None = None
    spool: Path = Path("/var/lib/ich-triage/spool")
    allow: tuple[AllowedPeer, ...] = ()
    """Calling AE titles (optionally with host) allowed to associate; empty = any peer (logged as a warning)."""
    quiet_seconds: float = 20.0
    """A study is complete once no association carrying it is open and none of its instances came for this long."""
    http_port: int = 8080
    """Health, metrics and status HTTP port; 0 disables the HTTP server."""
    http_bind: str = "0.0.0.0"
    model: Path | None = None
    app_config: Path | None = None
    workers: int = 1
    keep: KeepPolicy = KeepPolicy.NONE
    processor: str = "monai_app.runner:StudyRunner"
    """``module:callable`` building the study processor (called once per worker with model_path, app_config)."""
    retry_base_seconds: float = 5.0
    retry_cap_seconds: float = 600.0
    max_send_attempts: int = 20
    """Give up on an output the PACS refuses with a failure status after this many tries (transport errors retry forever)."""
    stop_grace_seconds: float = 30.0
    max_associations: int = 16
    max_pdu_bytes: int = 1024 * 1024
    """Maximum PDU length announced to peers; a longer PDU aborts its association (hostile or broken peer)."""
    network_timeout: float = 30.0
    fsync: bool = True
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "ae_title")
        for name in ("port",):
            if not 0 < getattr(self, name) < 65536:
                raise ConfigError(f"{name}: {getattr(self, name)} is out of range 1-65535")
        if not 0 <= self.http_port < 65536:
            raise ConfigError(f"http_port: {self.http_port} is out of range 0-65535")
        if self.quiet_seconds < 0:
            raise ConfigError(f"quiet_seconds must be >= 0, got {self.quiet_seconds}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if not 0 < self.retry_base_seconds <= self.retry_cap_seconds:
            raise ConfigError("retry_base_seconds must be > 0 and <= retry_cap_seconds")
        if self.max_send_attempts < 1 or self.max_associations < 1 or self.max_pdu_bytes < 16 * 1024:
            raise ConfigError("max_send_attempts, max_associations must be >= 1 and max_pdu_bytes >= 16 KiB")
        if self.processor.count(":") != 1:
            raise ConfigError(f"processor: {self.processor!r} is not module:callable")


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {text!r}")


def _parse_allow(value: Any) -> tuple[AllowedPeer, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(AllowedPeer.parse(str(v)) for v in items if str(v).strip())


def _optional_path(value: Any) -> Path | None:
    return Path(value) if value not in (None, "") else None


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "ae_title": str,
    "port": int,
    "bind": str,
    "pacs": lambda v: PacsAddress.parse(v) if v else None,
    "spool": Path,
    "allow": _parse_allow,
    "quiet_seconds": float,
    "http_port": int,
    "http_bind": str,
    "model": _optional_path,
    "app_config": _optional_path,
    "workers": int,
    "keep": lambda v: KeepPolicy(str(v).lower()),
    "processor": str,
    "retry_base_seconds": float,
    "retry_cap_seconds": float,
    "max_send_attempts": int,
    "stop_grace_seconds": float,
    "max_associations": int,
    "max_pdu_bytes": int,
    "network_timeout": float,
    "fsync": lambda v: v if isinstance(v, bool) else _parse_bool(str(v)),
    "log_level": lambda v: str(v).upper(),
}
assert set(_PARSERS) == {f.name for f in fields(ServiceConfig)}


def _apply(values: dict[str, Any], source: Mapping[str, Any], where: str) -> None:
    for key, raw in source.items():
        if key not in _PARSERS:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        try:
            values[key] = _PARSERS[key](raw)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: bad value for {key}: {raw!r} ({exc})") from exc


def load_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Build the service configuration: defaults, then the JSON file, then ``ICH_*`` variables, then flags.

    Args:
        args: parsed flags from :func:`add_config_arguments`; a flag left at ``None`` is "not given".
        environ: the process environment (pass ``os.environ``); ``None`` means none.

    Raises:
        ConfigError: unreadable file, unknown key, or an invalid value (the message names it).
    """
    environ = environ or {}
    flags = {k: v for k, v in vars(args).items() if v is not None} if args is not None else {}
    values: dict[str, Any] = {}

    config_file = flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        try:
            data = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {config_file}: expected a JSON object")
        _apply(values, data, f"config file {config_file}")

    env = {name: environ[ENV_PREFIX + name.upper()] for name in _PARSERS if ENV_PREFIX + name.upper() in environ}
    _apply(values, env, "environment")
    _apply(values, {k: v for k, v in flags.items() if k in _PARSERS}, "command line")
    try:
        return replace(ServiceConfig(), **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the service flags; each defaults to ``None`` so that file and environment values show through."""
    g = parser.add_argument_group("service settings (each also ICH_<NAME> in the environment)")
    g.add_argument("--config", help="JSON settings file (ICH_CONFIG)")
    g.add_argument("--ae-title", dest="ae_title", help="our AE title (default ICH_TRIAGE)")
    g.add_argument("--port", type=int, help="DICOM listening port (default 11112)")
    g.add_argument("--bind", help="DICOM listening address (default 0.0.0.0)")
    g.add_argument("--pacs", help="where results go: AE@HOST:PORT")
    g.add_argument("--spool", help="durable spool directory (default /var/lib/ich-triage/spool)")
    g.add_argument("--allow", help="calling AE titles allowed to associate: AE[@HOST][,AE[@HOST]...]")
    g.add_argument("--quiet-seconds", dest="quiet_seconds", type=float, help="study quiet period (default 20)")
    g.add_argument("--http-port", dest="http_port", type=int, help="health/metrics/status port (default 8080, 0 = off)")
    g.add_argument("--http-bind", dest="http_bind", help="HTTP listening address (default 0.0.0.0)")
    g.add_argument("--model", help="model artifact (default: the bundled model)")
    g.add_argument("--app-config", dest="app_config", help="application config file passed to the runner")
    g.add_argument("--workers", type=int, help="studies processed in parallel (default 1)")
    g.add_argument("--keep", choices=[k.value for k in KeepPolicy], help="what the spool keeps after delivery")
    g.add_argument("--processor", help=argparse.SUPPRESS)
    g.add_argument("--retry-base-seconds", dest="retry_base_seconds", type=float, help=argparse.SUPPRESS)
    g.add_argument("--retry-cap-seconds", dest="retry_cap_seconds", type=float, help=argparse.SUPPRESS)
    g.add_argument("--stop-grace-seconds", dest="stop_grace_seconds", type=float, help=argparse.SUPPRESS)
    g.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING (default INFO)")
