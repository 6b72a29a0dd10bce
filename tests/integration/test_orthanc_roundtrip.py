"""The whole loop with a real PACS: dcmtk storescu -> Orthanc -> route.lua -> the service -> Orthanc.

A study stored into Orthanc ends up, with no other action, with the plugin's SC and SR in the same study, each
valid per dciodvfy; the results coming back do not start another round (loop guard).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from conftest import PLUGIN_MANUFACTURER, ROUTE_LUA, Peers, wait_for, write_study

pytestmark = pytest.mark.integration


def test_manufacturer_constant_in_sync() -> None:
    from dicom_io.result import PLUGIN_MANUFACTURER as actual

    assert actual == PLUGIN_MANUFACTURER
    assert f"'{actual}'" in ROUTE_LUA.read_text()


def test_study_stored_in_orthanc_gets_sc_and_sr_back(peers: Peers, tmp_path: Path, real_runner: bool) -> None:
    study_uid, files = write_study(tmp_path / "study", n_slices=16, size=128, bleed="intraparenchymal")
    peers.orthanc.storescu(files)
    t0 = time.monotonic()

    results = wait_for(lambda: peers.orthanc.result_instances(study_uid), 180, what="results in Orthanc")
    status = wait_for(
        lambda: (s := peers.service.status(study_uid)) and s["status"] == "delivered" and s,
        60,
        what="the study to be delivered",
    )
    results = peers.orthanc.result_instances(study_uid)
    print(f"round trip {time.monotonic() - t0:.1f} s, decision {status['decision']}")
    sent = {o["sop_instance_uid"] for o in status["versions"][0]["outputs"]}
    assert {r["SOPInstanceUID"] for r in results} == sent  # every output, once, in the same study
    assert len(status["versions"]) == 1
    # the source series is still there, untouched, beside the results
    assert any(s["MainDicomTags"].get("Modality") == "CT" for s in peers.orthanc.series(study_uid))

    # loop guard: the results made the study stable again, but nothing was routed back for processing
    wait_for(
        lambda: re.search(r"nothing new to route \(\d+ result series\)", peers.orthanc.log.read_text()),
        30,
        what="Orthanc's second OnStableStudy",
    )
    time.sleep(1.5)
    status = peers.service.status(study_uid)
    assert status is not None and len(status["versions"]) == 1
    metrics = peers.service.metrics()
    assert 'ich_instances_received_total{outcome="duplicate"} 0.0' in metrics
    assert 'ich_instances_received_total{outcome="stored"} 16.0' in metrics

    if not real_runner:
        pytest.skip("the fake processor's SC is not a full IOD: dciodvfy runs with the real StudyRunner only")
    classes = {r["SOPClassUID"] for r in results}
    assert "1.2.840.10008.5.1.4.1.1.7" in classes or any(c.startswith("1.2.840.10008.5.1.4.1.1.7.") for c in classes)
    assert any(c.startswith("1.2.840.10008.5.1.4.1.1.88.") for c in classes), f"no SR among {classes}"
    from dicom_io.validate import dciodvfy

    for r in results:
        path = tmp_path / f"{r['SOPInstanceUID']}.dcm"
        path.write_bytes(peers.orthanc.download(f"/instances/{r['ID']}/file"))
        errors = dciodvfy(path)
        assert errors == [], f"dciodvfy errors in {r['SOPClassUID']}: {errors}"
