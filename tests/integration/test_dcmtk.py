"""dcmtk's echoscu and storescu against the service, in every transfer syntax a PACS may send.

Files are sent as they are (no re-encoding by storescu) and must land in the spool as received.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import ServiceProcess, peer_env, require_dcmtk, run_storescu, wait_for, write_study
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def service(idle_service: ServiceProcess) -> ServiceProcess:
    return idle_service


def echoscu(port: int, calling: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_dcmtk("echoscu"), "-aet", calling, "-aec", "ICH_TRIAGE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=peer_env(),
        timeout=60,
    )


def test_echoscu(service: ServiceProcess) -> None:
    assert echoscu(service.port, "ECHOSCU").returncode == 0
    before = rejected_count(service)
    rejected = echoscu(service.port, "INTRUDER")
    assert rejected.returncode != 0 and "reject" in (rejected.stdout + rejected.stderr).lower()
    assert rejected_count(service) == before + 1


def rejected_count(service: ServiceProcess) -> float:
    line = next(x for x in service.metrics().splitlines() if x.startswith("ich_associations_rejected_total "))
    return float(line.split()[1])


SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
]


# storescu proposes one family of transfer syntaxes; with the file's own, it sends the file as it is
STORESCU_PROPOSE = {
    ImplicitVRLittleEndian: ["-xi"],
    DeflatedExplicitVRLittleEndian: ["-xd"],
    RLELossless: ["-xr"],
    JPEGLSLossless: ["-xt"],
    JPEG2000Lossless: ["-xv"],
    JPEGLosslessSV1: ["-xs"],
}


@pytest.mark.parametrize("syntax", SYNTAXES, ids=[pydicom.uid.UID(s).name for s in SYNTAXES])
def test_storescu_sends_as_is(service: ServiceProcess, tmp_path: Path, syntax: str) -> None:
    from training.phantoms import available_transfer_syntaxes

    if syntax not in available_transfer_syntaxes():
        pytest.skip(f"no encoder for {syntax} here")
    study_uid, files = write_study(tmp_path / "study", n_slices=4, size=64, transfer_syntax=syntax)
    extra = STORESCU_PROPOSE.get(syntax, [])
    run_storescu(files, "127.0.0.1", service.port, "ICH_TRIAGE", *extra)
    stored = sorted((service.spool / "studies" / study_uid).glob("*.dcm"))
    assert len(stored) == 4
    for path in stored:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.pixel_array.shape == (64, 64)
    wait_for(
        lambda: (s := service.status(study_uid)) and s["versions"] and s["versions"][0]["state"] == "done",
        120,
        what="the study to be processed",
    )


@pytest.mark.parametrize(
    ("tool", "syntax"), [("dcmcjpeg", JPEGLosslessSV1), ("dcmcjpls", JPEGLSLossless), ("dcmcrle", RLELossless)]
)
def test_storescu_with_dcmtk_compressed_files(service: ServiceProcess, tmp_path: Path, tool: str, syntax: str) -> None:
    compress = require_dcmtk(tool)
    study_uid, files = write_study(tmp_path / "study", n_slices=3, size=64)
    compressed = []
    for f in files:
        out = tmp_path / f"{tool}-{f.name}"
        subprocess.run([compress, str(f), str(out)], check=True, capture_output=True, timeout=60)
        compressed.append(out)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID == syntax
    run_storescu(compressed, "127.0.0.1", service.port, "ICH_TRIAGE", *STORESCU_PROPOSE[syntax])
    stored = sorted((service.spool / "studies" / study_uid).glob("*.dcm"))
    assert [pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in stored] == [syntax] * 3
