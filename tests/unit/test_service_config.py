"""Service settings: defaults, then the JSON file, then ICH_* variables, then flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from monai_app.service_config import (
    AllowedPeer,
    ConfigError,
    KeepPolicy,
    PacsAddress,
    ServiceConfig,
    add_config_arguments,
    load_config,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_the_contract() -> None:
    c = load_config(parse(), {})
    assert (c.ae_title, c.port, c.bind, c.quiet_seconds, c.http_port, c.workers) == (
        "ICH_TRIAGE",
        11112,
        "0.0.0.0",
        20.0,
        8080,
        1,
    )
    assert (
        c.spool == Path("/var/lib/ich-triage/spool") and c.keep is KeepPolicy.NONE and c.pacs is None and c.allow == ()
    )


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "ich.json"
    f.write_text(
        json.dumps(
            {"ae_title": "FROM_FILE", "port": 1000, "quiet_seconds": 5, "allow": ["A", "B@10.0.0.1"], "keep": "results"}
        )
    )
    env = {"ICH_CONFIG": str(f), "ICH_PORT": "2000", "ICH_QUIET_SECONDS": "7"}
    c = load_config(parse("--quiet-seconds", "9"), env)
    assert c.ae_title == "FROM_FILE"  # file
    assert c.port == 2000  # env over file
    assert c.quiet_seconds == 9.0  # flag over env
    assert c.allow == (AllowedPeer("A"), AllowedPeer("B", "10.0.0.1"))
    assert c.keep is KeepPolicy.RESULTS
    assert load_config(parse("--config", str(f)), {}).port == 1000


def test_all_contract_flags_and_env() -> None:
    args = parse(
        "--ae-title",
        "PLUGIN",
        "--port",
        "104",
        "--bind",
        "127.0.0.1",
        "--pacs",
        "ORTHANC@pacs.local:4242",
        "--spool",
        "/tmp/s",
        "--allow",
        "ORTHANC,CT1@10.1.1.1",
        "--quiet-seconds",
        "1.5",
        "--http-port",
        "0",
        "--model",
        "/m",
        "--workers",
        "2",
        "--keep",
        "all",
    )
    c = load_config(args, {})
    assert c.pacs == PacsAddress("ORTHANC", "pacs.local", 4242)
    assert c.http_port == 0 and c.workers == 2 and c.keep is KeepPolicy.ALL and c.model == Path("/m")
    env = {
        "ICH_AE_TITLE": "E",
        "ICH_PACS": "P@h:1",
        "ICH_ALLOW": "X",
        "ICH_SPOOL": "/s",
        "ICH_HTTP_PORT": "81",
        "ICH_MODEL": "/mm",
        "ICH_WORKERS": "3",
        "ICH_KEEP": "RESULTS",
        "ICH_BIND": "::1",
    }
    c = load_config(parse(), env)
    assert (c.ae_title, str(c.pacs), c.allow, c.spool, c.http_port, c.workers, c.keep, c.bind) == (
        "E",
        "P@h:1",
        (AllowedPeer("X"),),
        Path("/s"),
        81,
        3,
        KeepPolicy.RESULTS,
        "::1",
    )


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        ServiceConfig().port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ICH_PORT": "70000"}, "port"),
        ({"ICH_PORT": "abc"}, "port"),
        ({"ICH_PACS": "nohost"}, "AE@HOST:PORT"),
        ({"ICH_AE_TITLE": "WAY_TOO_LONG_AE_TITLE"}, "AE title"),
        ({"ICH_QUIET_SECONDS": "-1"}, "quiet_seconds"),
        ({"ICH_WORKERS": "0"}, "workers"),
        ({"ICH_KEEP": "some"}, "keep"),
        ({"ICH_ALLOW": "BAD\\AE"}, "allow"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(parse(), env)


def test_unknown_file_key_and_unreadable_file(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text('{"ae_titel": "X"}')
    with pytest.raises(ConfigError, match="ae_titel"):
        load_config(parse("--config", str(f)), {})
    with pytest.raises(ConfigError, match="config file"):
        load_config(parse("--config", str(tmp_path / "missing.json")), {})


def test_allowed_peer_matching() -> None:
    assert AllowedPeer.parse("ORTHANC").matches("ORTHANC ", "10.0.0.9")
    assert AllowedPeer.parse("ORTHANC@10.0.0.5").matches("ORTHANC", "10.0.0.5")
    assert not AllowedPeer.parse("ORTHANC@10.0.0.5").matches("ORTHANC", "10.0.0.9")
    assert not AllowedPeer.parse("ORTHANC").matches("OTHER", "10.0.0.5")
