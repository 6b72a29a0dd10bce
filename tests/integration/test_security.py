"""Hostile and broken peers: the service rejects or drops them and keeps serving everyone else."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from conftest import ServiceProcess, run_storescu, wait_for, write_study
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

pytestmark = pytest.mark.integration


@pytest.fixture
def service(idle_service: ServiceProcess) -> ServiceProcess:
    return idle_service


def associate(port: int, calling: str = "MODALITY", contexts: tuple[str, ...] = (Verification,)):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    for c in contexts:
        ae.add_requested_context(c)
    return ae.associate("127.0.0.1", port, ae_title="ICH_TRIAGE")


def assert_still_serving(service: ServiceProcess) -> None:
    assert service.running(), f"service died; log:\n{service.log_text()[-3000:]}"
    assert service.echo(calling="MODALITY")


def test_unlisted_calling_ae_rejected(service: ServiceProcess, tmp_path: Path) -> None:
    assert associate(service.port, "INTRUDER").is_rejected
    assert associate(service.port, "FARAWAY").is_rejected  # on the list, but only from another host
    bound = associate(service.port, "BOUND")
    assert bound.is_established
    bound.release()
    study_uid, files = write_study(tmp_path / "s", n_slices=2, size=32)
    proc = run_storescu(files, "127.0.0.1", service.port, "ICH_TRIAGE", calling="INTRUDER", check=False)
    assert proc.returncode != 0
    assert not (service.spool / "studies" / study_uid).exists()
    assert_still_serving(service)


def test_garbage_bytes(service: ServiceProcess) -> None:
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 64, b"\x01"):
        with socket.create_connection(("127.0.0.1", service.port), timeout=1) as s:
            s.sendall(payload)
            try:
                s.recv(1024)
            except (TimeoutError, ConnectionResetError):
                pass
    assert_still_serving(service)


def test_oversized_pdus(service: ServiceProcess) -> None:
    # an A-ASSOCIATE-RQ announcing 1 GiB
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as s:
        s.sendall(struct.pack(">BBL", 0x01, 0, 1 << 30))
        with pytest.raises((BrokenPipeError, ConnectionResetError, TimeoutError, OSError)):
            for _ in range(64):  # 64 MiB at most: the service must drop us long before
                s.sendall(b"\0" * (1 << 20))
    # inside an association: a P-DATA-TF announcing 64 MiB, far above the maximum PDU length we announced
    assoc = associate(service.port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    with pytest.raises((BrokenPipeError, ConnectionResetError, TimeoutError, OSError)):
        raw.sendall(struct.pack(">BBL", 0x04, 0, 64 << 20))
        for _ in range(64):
            raw.sendall(b"\0" * (1 << 20))
    assert_still_serving(service)


def test_abort_mid_transfer(service: ServiceProcess) -> None:
    studies_before = set((service.spool / "studies").iterdir())
    assoc = associate(service.port, contexts=(CTImageStorage,))
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    context_id = assoc.accepted_contexts[0].context_id
    # a P-DATA-TF with the first fragment of a command (not the last one), then an A-ABORT
    fragment = b"\x00" * 40
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, 0x01) + fragment  # command, not last
    raw.sendall(struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv)
    raw.sendall(struct.pack(">BBL", 0x07, 0, 4) + b"\x00\x00\x00\x00")
    time.sleep(0.5)
    assoc.abort()
    assert_still_serving(service)
    assert set((service.spool / "studies").iterdir()) == studies_before


def test_connection_flood_does_not_lock_out_peers(service: ServiceProcess) -> None:
    """More silent connections than association slots: the slots come back within the ACSE timeout (10 s)."""
    socks = [socket.create_connection(("127.0.0.1", service.port), timeout=5) for _ in range(24)]
    for s in socks:
        s.close()
    wait_for(lambda: service.echo(calling="MODALITY"), 20, interval=1.0, what="echo after a connection flood")
    assert_still_serving(service)
