"""The durable per-study spool: where received instances, job folders and the queue database live.

Layout under the spool root (one filesystem, so renames and hard links are atomic)::

    queue.sqlite3                       the job queue, outbox and study status (dicom_io.job_queue)
    tmp/                                temp files of writes in progress (cleared at start)
    studies/<study_uid>/<sop_uid>.dcm   every instance received, as received (Part 10, original transfer syntax)
    jobs/<job_id>/input/<sop_uid>.dcm   hard-link snapshot of the study taken when a worker starts the job
    jobs/<job_id>/output/               what the application wrote: SC(s), SR, report.json

An instance is durable before the SCP acknowledges it: written to ``tmp/``, fsynced, renamed into its study
folder, and the folder fsynced (the rename itself must survive a crash). Paths are built from UIDs only after
they are checked against the UID grammar (PS3.5 9.1), so a hostile peer cannot write outside the spool.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

LOGGER = logging.getLogger(__name__)

# PS3.5 9.1 asks for no leading zeros in components, but such UIDs occur in the wild: the check is about path safety.
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
DICOM_SUFFIX = ".dcm"


class InvalidUidError(ValueError):
    """A UID that does not follow PS3.5 9.1 (digits and dots, at most 64 characters)."""


def check_uid(uid: str, what: str = "UID") -> str:
    """Return ``uid`` stripped of padding if it is a valid DICOM UID, else raise :class:`InvalidUidError`."""
    uid = str(uid).strip().rstrip("\x00")
    if len(uid) > 64 or not _UID_RE.fullmatch(uid):
        raise InvalidUidError(f"{what} {uid[:80]!r} is not a valid DICOM UID")
    return uid


class StoreOutcome(str, Enum):
    NEW = "new"
    DUPLICATE = "duplicate"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool directory; every method is safe to call from several threads."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.tmp_dir = self.root / "tmp"
        self.studies_dir = self.root / "studies"
        self.jobs_dir = self.root / "jobs"
        for d in (self.root, self.tmp_dir, self.studies_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # partial writes of a crashed run were never acknowledged
            leftover.unlink(missing_ok=True)

    @property
    def db_path(self) -> Path:
        return self.root / "queue.sqlite3"

    # -- receiving ---------------------------------------------------------------------------------------------

    def study_dir(self, study_uid: str) -> Path:
        return self.studies_dir / check_uid(study_uid, "Study Instance UID")

    def instance_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return self.study_dir(study_uid) / (check_uid(sop_instance_uid, "SOP Instance UID") + DICOM_SUFFIX)

    def store_instance(self, study_uid: str, sop_instance_uid: str, data: bytes) -> tuple[StoreOutcome, Path]:
        """Persist one received instance (Part 10 bytes) before it is acknowledged.

        A duplicate (same SOP Instance UID in the same study) is not rewritten: the copy on disk is already
        durable. Raises ``OSError`` on any disk error (the SCP answers 0xA700) and ``InvalidUidError``.
        """
        dest = self.instance_path(study_uid, sop_instance_uid)
        if dest.exists():
            return StoreOutcome.DUPLICATE, dest
        new_dir = not dest.parent.exists()
        if new_dir:
            dest.parent.mkdir(exist_ok=True)
        self.write_atomic(dest, data)
        if new_dir and self.fsync:
            fsync_dir(self.studies_dir)
        return StoreOutcome.NEW, dest

    def write_atomic(self, dest: Path, data: bytes) -> None:
        """Write ``data`` to ``dest`` through a temp file: write, fsync, rename, fsync the folder."""
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            fsync_dir(dest.parent)

    def study_uids(self) -> list[str]:
        """Studies that have instance files in the spool."""
        return sorted(d.name for d in self.studies_dir.iterdir() if d.is_dir() and any(d.glob("*" + DICOM_SUFFIX)))

    def study_instances(self, study_uid: str) -> dict[str, Path]:
        """SOP Instance UID -> file of every instance of the study in the spool."""
        d = self.study_dir(study_uid)
        if not d.is_dir():
            return {}
        return {p.name[: -len(DICOM_SUFFIX)]: p for p in d.glob("*" + DICOM_SUFFIX)}

    # -- jobs --------------------------------------------------------------------------------------------------

    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(int(job_id))

    def job_input_dir(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "input"

    def job_output_dir(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "output"

    def prepare_job(self, job_id: int, study_uid: str) -> list[str]:
        """Snapshot the study into the job's input folder (hard links) and empty its output folder.

        Called when a worker starts (or restarts) the job, so a job interrupted by a crash starts clean and its
        half-written outputs, never sent, are dropped. Returns the SOP Instance UIDs in the snapshot.
        """
        job_dir = self.job_dir(job_id)
        if job_dir.exists():
            shutil.rmtree(job_dir)
        input_dir, output_dir = self.job_input_dir(job_id), self.job_output_dir(job_id)
        input_dir.mkdir(parents=True)
        output_dir.mkdir()
        sop_uids = []
        for sop_uid, src in sorted(self.study_instances(study_uid).items()):
            try:
                os.link(src, input_dir / src.name)
            except FileNotFoundError:  # reclaimed meanwhile by a delivered earlier version
                continue
            sop_uids.append(sop_uid)
        return sop_uids

    def finalize_outputs(self, job_id: int) -> list[Path]:
        """Make the job's output files durable (before the outbox refers to them) and list its DICOM files."""
        output_dir = self.job_output_dir(job_id)
        dicom_files = sorted(p for p in output_dir.rglob("*") if p.is_file() and p.suffix.lower() == DICOM_SUFFIX)
        if self.fsync:
            for p in output_dir.rglob("*"):
                if p.is_file():
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            for d in {p.parent for p in output_dir.rglob("*")} | {output_dir}:
                fsync_dir(d)
        return dicom_files

    def reclaim(self, job_id: int, study_uid: str, sop_uids: Iterable[str], *, keep: str, study_busy: bool) -> None:
        """Free the space of a delivered job.

        Args:
            keep: ``none`` (job folder and the study's instances in the snapshot), ``results`` (instances and
                the job's input; its output stays) or ``all`` (nothing is deleted).
            study_busy: another job of the study is pending or running: leave the study's instances for it.
        """
        if keep == "all":
            return
        if keep == "results":
            shutil.rmtree(self.job_input_dir(job_id), ignore_errors=True)
        else:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        if study_busy:
            return
        study_dir = self.study_dir(study_uid)
        for sop_uid in sop_uids:
            (study_dir / (sop_uid + DICOM_SUFFIX)).unlink(missing_ok=True)
        try:
            study_dir.rmdir()  # only if empty: instances that came meanwhile stay for their own job
        except OSError:
            pass

    def discard_instances(self, study_uid: str, sop_uids: Iterable[str]) -> None:
        """Delete re-sent copies of instances already processed and reclaimed (duplicates, nothing new)."""
        study_dir = self.study_dir(study_uid)
        for sop_uid in sop_uids:
            (study_dir / (sop_uid + DICOM_SUFFIX)).unlink(missing_ok=True)
        try:
            study_dir.rmdir()
        except OSError:
            pass
