"""Faults with real peers: the PACS down, the service SIGKILLed while receiving, processing and sending, a full disk.

After each, every acknowledged instance is processed and each result is in Orthanc exactly once (a re-send
carries the same UIDs).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from conftest import ORTHANC_AE, Peers, ServiceProcess, free_port, wait_for, write_study
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

pytestmark = pytest.mark.integration

TIMEOUT = 240


def delivered(service: ServiceProcess, study_uid: str) -> dict | None:  # type: ignore[type-arg]
    status = service.status(study_uid)
    return status if status and status["status"] == "delivered" else None


def assert_results_once(peers: Peers, study_uid: str) -> dict:  # type: ignore[type-arg]
    """Every output of the study's one version is in Orthanc, with no other result object."""
    status = wait_for(lambda: delivered(peers.service, study_uid), TIMEOUT, what="delivery")
    versions = [v for v in status["versions"] if v["state"] == "done"]
    assert len(versions) == 1, status
    outputs = {o["sop_instance_uid"] for o in versions[0]["outputs"]}
    in_pacs = wait_for(
        lambda: {r["SOPInstanceUID"] for r in peers.orthanc.result_instances(study_uid)} or None,
        30,
        what="results in Orthanc",
    )
    assert in_pacs == outputs
    assert len({r["SeriesInstanceUID"] for r in peers.orthanc.result_instances(study_uid)}) <= len(outputs)
    return status


def store_and_wait_until_processing(peers: Peers, tmp_path: Path) -> str:
    """Store a 16-slice study through Orthanc and return its UID once the service's job is running."""
    study_uid, files = write_study(tmp_path / "study", n_slices=16)
    peers.orthanc.storescu(files)
    wait_for(
        lambda: (s := peers.service.status(study_uid)) and s["status"] == "running",
        TIMEOUT,
        interval=0.05,
        what="the job to start",
    )
    return study_uid


def test_pacs_down_while_results_are_ready(peers: Peers, tmp_path: Path) -> None:
    study_uid, files = write_study(tmp_path / "study", n_slices=16)
    peers.orthanc.stop()
    from conftest import run_storescu

    run_storescu(files, "127.0.0.1", peers.service.port, "ICH_TRIAGE")
    wait_for(
        lambda: (
            (s := peers.service.status(study_uid))
            and s["status"] == "sending"
            and any(o["last_error"] for o in s["versions"][0]["outputs"])
        ),
        TIMEOUT,
        what="a failed delivery",
    )
    time.sleep(2)  # a few backoff rounds against the closed port
    assert 'ich_failures_total{stage="send"}' in peers.service.metrics()
    peers.orthanc.start()
    assert_results_once(peers, study_uid)


def test_sigkill_during_receive(peers: Peers, tmp_path: Path) -> None:
    """Acknowledged instances of an interrupted association are all processed after a restart."""
    study_uid, files = write_study(tmp_path / "study", n_slices=24)
    peers.service.args += ["--keep", "all"]  # keep the job's input to check what was processed
    peers.service.kill()
    peers.service.start()
    ae = AE(ae_title=ORTHANC_AE)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", peers.service.port, ae_title="ICH_TRIAGE")
    assert assoc.is_established
    acked = []
    for i, f in enumerate(files):
        if i == 10:
            peers.service.kill()  # mid-association, between two C-STOREs
        if not assoc.is_established:
            break
        rsp = assoc.send_c_store(f)
        if rsp.get("Status") != 0:
            break
        acked.append(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))
    assoc.abort()
    assert len(acked) == 10
    peers.service.start()
    status = assert_results_once(peers, study_uid)
    job_input = peers.service.spool / "jobs" / str(status["versions"][0]["job_id"]) / "input"
    processed = {p.stem for p in job_input.glob("*.dcm")}
    assert set(acked) <= processed


def test_sigkill_during_processing(peers: Peers, tmp_path: Path) -> None:
    study_uid = store_and_wait_until_processing(peers, tmp_path)
    peers.service.kill()
    peers.service.start()
    status = assert_results_once(peers, study_uid)
    assert status["versions"][0]["attempts"] == 2


def test_sigterm_finishes_or_parks_the_job(peers: Peers, tmp_path: Path) -> None:
    study_uid = store_and_wait_until_processing(peers, tmp_path)
    rc = peers.service.terminate(timeout=60)
    assert rc == 0, peers.service.log_text()[-4000:]
    assert "stopped" in peers.service.log_text()
    peers.service.start()
    assert_results_once(peers, study_uid)


def test_sigkill_during_sending(peers: Peers, tmp_path: Path) -> None:
    study_uid = store_and_wait_until_processing(peers, tmp_path)
    peers.orthanc.pause()  # SIGSTOP: the sender's association hangs
    try:
        wait_for(
            lambda: (s := peers.service.status(study_uid)) and s["status"] == "sending",
            TIMEOUT,
            what="results ready to send",
        )
        time.sleep(1.0)  # the sender is waiting on the frozen PACS
        peers.service.kill()
    finally:
        peers.orthanc.resume()
    peers.service.start()
    assert_results_once(peers, study_uid)


def _mount_tmpfs(path: Path, size: str) -> bool:
    if shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return proc.returncode == 0


def test_disk_full_answers_out_of_resources(make_service: Callable[..., ServiceProcess], tmp_path: Path) -> None:
    spool = tmp_path / "tiny"
    if not _mount_tmpfs(spool, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the handler's 0xA700 path is unit-tested")
    try:
        service = make_service(pacs=f"NOBODY@127.0.0.1:{free_port()}", spool=spool, quiet_seconds=30)
        service.start()
        _, files = write_study(tmp_path / "study", n_slices=40, size=128)  # ~33 KB each: more than 1 MB
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", service.port, ae_title="ICH_TRIAGE")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(f).Status) for f in files]
        assoc.release()
        assert statuses[0] == 0x0000
        assert 0xA700 in statuses, statuses
        assert all(s in (0x0000, 0xA700) for s in statuses)
        assert service.running() and service.echo(calling="MODALITY")
        assert 'ich_instances_received_total{outcome="disk_error"}' in service.metrics()
        service.kill()
    finally:
        subprocess.run(["umount", "-l", str(spool)], capture_output=True)
