"""The README's demo command, as a user runs it: ``ich-triage demo`` over real DICOM networking on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from dicom_io.result import TriageDecision
from dicom_io.validate import dciodvfy, validators_available
from monai_app.pipeline.network import default_model_dir

pytestmark = pytest.mark.skipif(not (default_model_dir() / "model.pt").is_file(), reason="bundled model missing")


def test_demo_phantom_round_trip(tmp_path: Path) -> None:
    exe = shutil.which("ich-triage")
    assert exe, "the ich-triage console script is not installed (pip install -e .)"
    out = tmp_path / "demo"
    proc = subprocess.run([exe, "demo", "--phantom", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    report = json.loads((out / "report.json").read_text())
    # the demo phantom carries a bleed: the bundled model must call it, or the demo shows nothing
    assert report["decision"] == TriageDecision.POSITIVE.value
    assert report["probability"] >= report["threshold"]
    assert "NOT FOR DIAGNOSTIC USE" in report["disclaimer"]

    returned = [pydicom.dcmread(p) for p in sorted((out / "dicom").glob("*.dcm"))]
    scs = [d for d in returned if d.Modality == "OT"]
    srs = [d for d in returned if d.Modality == "SR"]
    assert len(srs) == 1 and len(scs) == len(report["key_slices"]) >= 1
    assert {d.StudyInstanceUID for d in returned} == {report["study_instance_uid"]}

    pngs = sorted(out.glob("secondary-capture-*.png"))
    assert len(pngs) == len(scs)
    for png in pngs:  # saved in the order they arrived: each is one of the returned Secondary Captures
        with Image.open(png) as im:
            assert im.size in {(int(sc.Columns), int(sc.Rows)) for sc in scs} and im.mode == "RGB"
    assert "POSITIVE" in proc.stdout and str(out / "report.json") in proc.stdout

    if validators_available():
        for path in sorted((out / "dicom").glob("*.dcm")):
            assert dciodvfy(path) == [], path.name
