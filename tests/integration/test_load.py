"""Four studies sent at once, on four associations: all processed and returned to the PACS."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import Peers, peer_env, require_dcmtk, wait_for, write_study

pytestmark = pytest.mark.integration


def test_four_studies_at_once(peers: Peers, tmp_path: Path) -> None:
    storescu = require_dcmtk("storescu")
    studies = [
        write_study(tmp_path / f"s{i}", n_slices=16, size=128, seed=i, bleed=None if i % 2 else "subdural")
        for i in range(4)
    ]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                storescu,
                "-aet",
                "STORESCU",
                "-aec",
                "ICH_TRIAGE",
                "127.0.0.1",
                str(peers.service.port),
                *map(str, files),
            ],
            env=peer_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _, files in studies
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()

    for study_uid, _ in studies:
        status = wait_for(
            lambda uid=study_uid: (s := peers.service.status(uid)) and s["status"] == "delivered" and s,
            600,
            what=f"study {study_uid} delivered",
        )
        outputs = {o["sop_instance_uid"] for o in status["versions"][0]["outputs"]}
        assert status["versions"][0]["instances"] == 16
        assert {r["SOPInstanceUID"] for r in peers.orthanc.result_instances(study_uid)} == outputs
    print(f"4 studies processed and returned in {time.monotonic() - t0:.1f} s")
    metrics = peers.service.metrics()
    assert 'ich_instances_received_total{outcome="stored"} 64.0' in metrics
    assert "ich_study_latency_seconds_count 4.0" in metrics
