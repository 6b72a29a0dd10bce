"""The durable spool: atomic writes, safe paths, job snapshots, reclaiming."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_io.spool import InvalidUidError, Spool, StoreOutcome, check_uid

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_store_is_atomic_and_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    outcome, path = spool.store_instance(STUDY, "1.2.3.4", b"DICM" * 10)
    assert outcome is StoreOutcome.NEW
    assert path == tmp_path / "studies" / STUDY / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICM" * 10
    assert len(synced) >= 3  # the file, its folder, the new study folder's parent
    assert list(spool.tmp_dir.iterdir()) == []


def test_duplicate_keeps_the_stored_copy(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store_instance(STUDY, "1.2.3.4", b"first")
    outcome, path = spool.store_instance(STUDY, "1.2.3.4", b"second")
    assert outcome is StoreOutcome.DUPLICATE and path.read_bytes() == b"first"


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        spool.store_instance(STUDY, "1.2.3.4", b"x" * 100)
    assert not (tmp_path / "studies" / STUDY / "1.2.3.4.dcm").exists()
    assert list(spool.tmp_dir.iterdir()) == []


def test_leftover_temp_files_cleared_at_start(tmp_path: Path) -> None:
    Spool(tmp_path)
    (tmp_path / "tmp" / "crashed.part").write_bytes(b"half")
    Spool(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", ["../etc", "1.2/3", "", "1.2.a", "1." * 40, "1..2", "/abs"])
def test_invalid_uids_refused(bad: str) -> None:
    with pytest.raises(InvalidUidError):
        check_uid(bad)


def test_uid_padding_stripped() -> None:
    assert check_uid("1.2.3\x00") == "1.2.3"


def test_job_snapshot_and_reclaim(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.store_instance(STUDY, f"1.2.{i}", b"x")
    sops = spool.prepare_job(7, STUDY)
    assert sops == ["1.2.0", "1.2.1", "1.2.2"]
    assert sorted(p.name for p in spool.job_input_dir(7).iterdir()) == ["1.2.0.dcm", "1.2.1.dcm", "1.2.2.dcm"]
    (spool.job_output_dir(7) / "sc.dcm").write_bytes(b"out")
    (spool.job_output_dir(7) / "report.json").write_text("{}")
    assert spool.finalize_outputs(7) == [spool.job_output_dir(7) / "sc.dcm"]
    spool.store_instance(STUDY, "1.2.9", b"late")  # came after the snapshot: stays for the next job
    spool.reclaim(7, STUDY, sops, keep="none", study_busy=False)
    assert not spool.job_dir(7).exists()
    assert list(spool.study_instances(STUDY)) == ["1.2.9"]


def test_prepare_job_restarts_clean(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store_instance(STUDY, "1.2.0", b"x")
    spool.prepare_job(1, STUDY)
    (spool.job_output_dir(1) / "half-written.dcm").write_bytes(b"partial")
    spool.prepare_job(1, STUDY)  # the job is re-run after a crash
    assert list(spool.job_output_dir(1).iterdir()) == []


@pytest.mark.parametrize(
    ("keep", "input_left", "output_left", "study_left"),
    [
        ("none", False, False, False),
        ("results", False, True, False),
        ("all", True, True, True),
    ],
)
def test_keep_policies(tmp_path: Path, keep: str, input_left: bool, output_left: bool, study_left: bool) -> None:
    spool = Spool(tmp_path)
    spool.store_instance(STUDY, "1.2.0", b"x")
    sops = spool.prepare_job(1, STUDY)
    (spool.job_output_dir(1) / "report.json").write_text("{}")
    spool.reclaim(1, STUDY, sops, keep=keep, study_busy=False)
    assert spool.job_input_dir(1).exists() is input_left
    assert (spool.job_output_dir(1) / "report.json").exists() is output_left
    assert bool(spool.study_instances(STUDY)) is study_left


def test_busy_study_keeps_its_instances(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store_instance(STUDY, "1.2.0", b"x")
    sops = spool.prepare_job(1, STUDY)
    spool.reclaim(1, STUDY, sops, keep="none", study_busy=True)
    assert list(spool.study_instances(STUDY)) == ["1.2.0"]
    assert spool.study_uids() == [STUDY]
