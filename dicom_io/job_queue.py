"""Durable job queue, outbox and per-study status (SQLite in the spool), and the quiet-period detector.

A study becomes a job once it is complete: every association that carried its instances is closed and no
instance came for the quiet period (:class:`QuietPeriodTracker`; a PACS may use several associations, and DICOM
has no "end of study" message). Jobs and the outbox live in ``queue.sqlite3`` (WAL, ``synchronous=FULL``), so a
job survives a crash at any point:

* ``pending`` -> ``running`` (a worker claimed it) -> ``done`` (outputs listed in the outbox) or ``failed``;
  a job found ``running`` at start-up was interrupted and goes back to ``pending``.
* Outbox items are ``pending`` until the PACS acknowledges them (``sent``); a refused item is retried with
  exponential backoff with jitter and a cap, and ``failed`` after the configured number of refusals.

Re-processing policy: instances with a new SOP Instance UID that arrive once a study has a job start a new job
(version + 1) over every instance of the study still in the spool. Its results are a new SC/SR series (the
application mints new UIDs), so the PACS keeps the earlier version beside the new one; ``/studies/<uid>`` shows
every version. A re-sent copy of an instance already processed (same SOP Instance UID) changes nothing.
Re-sending an outbox item after a crash sends the same file, so the PACS sees the same UIDs (no duplicates).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class OutboxState(str, Enum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    version: int
    state: JobState
    attempts: int
    created_at: float
    last_instance_at: float | None


@dataclass(frozen=True)
class OutboxItem:
    id: int
    job_id: int
    study_uid: str
    path: Path
    sop_instance_uid: str
    attempts: int


@dataclass(frozen=True)
class OutputFile:
    """One result file of a job to deliver."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str = ""


def backoff_delay(attempts: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempts`` (1-based): full-range jitter over ``min(cap, base * 2**(n-1))``.

    The jitter keeps several plugins (or many items) from retrying in lockstep; the lower half is kept so that
    a retry never comes right away.
    """
    ceiling = min(cap, base * (2.0 ** max(0, attempts - 1)))
    return ceiling * (0.5 + 0.5 * rng())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    delivered_at REAL,
    reclaimed INTEGER NOT NULL DEFAULT 0,
    last_instance_at REAL,
    n_instances INTEGER,
    decision TEXT,
    result_json TEXT,
    error TEXT,
    UNIQUE (study_uid, version)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);
CREATE TABLE IF NOT EXISTS job_instances (
    job_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS job_instances_study ON job_instances (study_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);
"""


class JobQueue:
    """The durable queue. One SQLite connection guarded by a lock: every operation is a short transaction."""

    def __init__(self, db_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.db_path = Path(db_path)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    # -- jobs --------------------------------------------------------------------------------------------------

    def recover(self) -> int:
        """At start-up: jobs left ``running`` by a crash or a stop go back to ``pending``. Returns how many."""
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state=? WHERE state=?", (JobState.PENDING, JobState.RUNNING)).rowcount

    def has_open_job(self, study_uid: str) -> bool:
        """True if the study has a pending job (which will snapshot every instance when it starts)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE study_uid=? AND state=? LIMIT 1", (study_uid, JobState.PENDING)
            ).fetchone()
        return row is not None

    def study_busy(self, study_uid: str, *, except_job: int | None = None) -> bool:
        """True if the study has a pending or running job other than ``except_job``."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE study_uid=? AND state IN (?, ?) AND id != ? LIMIT 1",
                (study_uid, JobState.PENDING, JobState.RUNNING, -1 if except_job is None else except_job),
            ).fetchone()
        return row is not None

    def processed_instances(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of the study that some job has taken (its snapshot)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT sop_instance_uid FROM job_instances WHERE study_uid=?", (study_uid,)
            ).fetchall()
        return {r[0] for r in rows}

    def create_job(self, study_uid: str, *, last_instance_at: float | None = None) -> Job | None:
        """Queue a new version of the study's job, unless one is already pending (it will see every instance)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM jobs WHERE study_uid=? AND state=?", (study_uid, JobState.PENDING)).fetchone():
                return None
            version = db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM jobs WHERE study_uid=?", (study_uid,)
            ).fetchone()[0]
            now = self._clock()
            cur = db.execute(
                "INSERT INTO jobs (study_uid, version, state, created_at, last_instance_at) VALUES (?, ?, ?, ?, ?)",
                (study_uid, version, JobState.PENDING, now, last_instance_at),
            )
            return Job(int(cur.lastrowid or 0), study_uid, version, JobState.PENDING, 0, now, last_instance_at)

    def claim_job(self) -> Job | None:
        """Take the oldest pending job (FIFO) and mark it running."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id LIMIT 1", (JobState.PENDING,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state=?, attempts=attempts+1, started_at=?, error=NULL WHERE id=?",
                (JobState.RUNNING, self._clock(), row["id"]),
            )
            return Job(
                row["id"],
                row["study_uid"],
                row["version"],
                JobState.RUNNING,
                row["attempts"] + 1,
                row["created_at"],
                row["last_instance_at"],
            )

    def record_snapshot(self, job_id: int, study_uid: str, sop_uids: Iterable[str]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM job_instances WHERE job_id=?", (job_id,))
            db.executemany(
                "INSERT INTO job_instances (job_id, study_uid, sop_instance_uid) VALUES (?, ?, ?)",
                [(job_id, study_uid, uid) for uid in sop_uids],
            )
            db.execute(
                "UPDATE jobs SET n_instances=(SELECT COUNT(*) FROM job_instances WHERE job_id=?) WHERE id=?",
                (job_id, job_id),
            )

    def job_instances(self, job_id: int) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT sop_instance_uid FROM job_instances WHERE job_id=?", (job_id,)).fetchall()
        return [r[0] for r in rows]

    def finish_job(self, job_id: int, *, decision: str, result_json: str, outputs: Iterable[OutputFile]) -> None:
        """Mark the job done and put its outputs in the outbox, in one transaction."""
        now = self._clock()
        items = list(outputs)
        with self._tx() as db:
            row = db.execute("SELECT study_uid, state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] != JobState.RUNNING:
                raise RuntimeError(f"job {job_id} is not running (parked or unknown); its outputs are dropped")
            db.execute(
                "UPDATE jobs SET state=?, finished_at=?, decision=?, result_json=?, delivered_at=? WHERE id=?",
                (JobState.DONE, now, decision, result_json, None if items else now, job_id),
            )
            db.executemany(
                "INSERT INTO outbox (job_id, study_uid, path, sop_instance_uid, sop_class_uid, state, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job_id,
                        row["study_uid"],
                        str(o.path),
                        o.sop_instance_uid,
                        o.sop_class_uid,
                        OutboxState.PENDING,
                        now,
                    )
                    for o in items
                ],
            )

    def retry_or_fail_job(self, job_id: int, error: str, *, max_attempts: int) -> JobState:
        """A processing error (not bad input: the app reports that as NOT_ANALYZED): retry, then give up."""
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
            state = JobState.FAILED if row is None or row["attempts"] >= max_attempts else JobState.PENDING
            db.execute(
                "UPDATE jobs SET state=?, error=?, finished_at=? WHERE id=?",
                (state, error[:2000], self._clock() if state is JobState.FAILED else None, job_id),
            )
        return state

    def park_job(self, job_id: int) -> None:
        """Stop: a running job goes back to pending, to be re-run from scratch after restart."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=? WHERE id=? AND state=?", (JobState.PENDING, job_id, JobState.RUNNING))

    # -- outbox ------------------------------------------------------------------------------------------------

    def due_outbox(self, now: float | None = None, limit: int = 64) -> list[OutboxItem]:
        """Pending outbox items whose next attempt is due, grouped by job (oldest job first)."""
        now = self._clock() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job_id, study_uid, path, sop_instance_uid, attempts FROM outbox"
                " WHERE state=? AND next_attempt_at<=? ORDER BY job_id, id LIMIT ?",
                (OutboxState.PENDING, now, limit),
            ).fetchall()
        return [OutboxItem(r[0], r[1], r[2], Path(r[3]), r[4], r[5]) for r in rows]

    def next_outbox_due(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state=?", (OutboxState.PENDING,)
            ).fetchone()
        return None if row is None else row[0]

    def mark_sent(self, item_ids: Iterable[int]) -> list[int]:
        """Mark items delivered. Returns the jobs that became fully delivered by this call."""
        ids = list(item_ids)
        if not ids:
            return []
        now = self._clock()
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET state=?, sent_at=?, attempts=attempts+1, last_error=NULL WHERE id=?",
                [(OutboxState.SENT, now, i) for i in ids],
            )
            marks = ",".join("?" * len(ids))
            jobs = [r[0] for r in db.execute(f"SELECT DISTINCT job_id FROM outbox WHERE id IN ({marks})", ids)]
            delivered = []
            for job_id in jobs:
                left = db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE job_id=? AND state!=?", (job_id, OutboxState.SENT)
                ).fetchone()[0]
                if left == 0:
                    db.execute("UPDATE jobs SET delivered_at=? WHERE id=? AND delivered_at IS NULL", (now, job_id))
                    delivered.append(job_id)
        return delivered

    def mark_retry(self, item_id: int, error: str, *, delay: float, count_attempt: bool = True) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts=attempts+?, last_error=?, next_attempt_at=? WHERE id=?",
                (1 if count_attempt else 0, error[:500], self._clock() + delay, item_id),
            )

    def defer_all(self, delay: float, error: str) -> None:
        """The PACS is unreachable: push every due item back together (one backoff, no per-item storm)."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET last_error=?, next_attempt_at=? WHERE state=? AND next_attempt_at<?",
                (error[:500], now + delay, OutboxState.PENDING, now + delay),
            )

    def mark_failed(self, item_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state=?, attempts=attempts+1, last_error=? WHERE id=?",
                (OutboxState.FAILED, error[:500], item_id),
            )

    def delivered_unreclaimed(self) -> list[tuple[int, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, study_uid FROM jobs WHERE state=? AND delivered_at IS NOT NULL AND reclaimed=0",
                (JobState.DONE,),
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def mark_reclaimed(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET reclaimed=1 WHERE id=?", (job_id,))

    def job_timing(self, job_id: int) -> tuple[float | None, float | None]:
        """(last instance received, delivered) wall times of a job."""
        with self._lock:
            row = self._db.execute("SELECT last_instance_at, delivered_at FROM jobs WHERE id=?", (job_id,)).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    # -- status ------------------------------------------------------------------------------------------------

    def depth(self) -> dict[str, int]:
        """Counts for the queue-depth gauges: pending/running jobs, pending/failed outbox items."""
        with self._lock:
            jobs = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            outbox = dict(self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        return {
            "jobs_pending": jobs.get(JobState.PENDING.value, 0),
            "jobs_running": jobs.get(JobState.RUNNING.value, 0),
            "jobs_failed": jobs.get(JobState.FAILED.value, 0),
            "outbox_pending": outbox.get(OutboxState.PENDING.value, 0),
            "outbox_failed": outbox.get(OutboxState.FAILED.value, 0),
        }

    def study_status(self, study_uid: str) -> dict[str, Any] | None:
        """JSON-ready status of every job version of a study, newest first; ``None`` if unknown."""
        with self._lock:
            jobs = self._db.execute(
                "SELECT * FROM jobs WHERE study_uid=? ORDER BY version DESC", (study_uid,)
            ).fetchall()
            if not jobs:
                return None
            versions = []
            for j in jobs:
                items = self._db.execute(
                    "SELECT sop_instance_uid, sop_class_uid, state, attempts, last_error, sent_at FROM outbox"
                    " WHERE job_id=? ORDER BY id",
                    (j["id"],),
                ).fetchall()
                result = json.loads(j["result_json"]) if j["result_json"] else None
                versions.append(
                    {
                        "job_id": j["id"],
                        "version": j["version"],
                        "state": j["state"],
                        "attempts": j["attempts"],
                        "created_at": j["created_at"],
                        "started_at": j["started_at"],
                        "finished_at": j["finished_at"],
                        "delivered_at": j["delivered_at"],
                        "last_instance_at": j["last_instance_at"],
                        "instances": j["n_instances"],
                        "decision": j["decision"],
                        "probability": None if result is None else result.get("probability"),
                        "reason": None if result is None else result.get("reason"),
                        "error": j["error"],
                        "outputs": [dict(i) for i in items],
                    }
                )
        latest = versions[0]
        if latest["state"] == JobState.DONE and latest["delivered_at"] is not None:
            status = "delivered"
        elif latest["state"] == JobState.DONE:
            status = "sending"
        else:
            status = latest["state"]
        return {"study_instance_uid": study_uid, "status": status, "decision": latest["decision"], "versions": versions}

    def result_json(self, job_id: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT result_json FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else row[0]


class _Transaction:
    """``with`` block = one IMMEDIATE transaction under the queue's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()


@dataclass
class _StudyActivity:
    quiet_since: float
    """Monotonic time of the last instance or of the last association closing, whichever is later."""
    last_instance_wall: float
    open_associations: set[int] = field(default_factory=set)


class QuietPeriodTracker:
    """Decides when a study is complete: no association carrying it is open, and it has been quiet long enough.

    The quiet period runs from the later of the last instance and the release of the last association that
    carried the study. In memory only: the spool on disk is the truth, and at start-up every study with files
    is re-armed (:meth:`arm`), so a crash between an acknowledgement and the job's creation loses nothing.
    """

    def __init__(
        self,
        quiet_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.quiet_seconds = quiet_seconds
        self._clock, self._wall = clock, wall_clock
        self._lock = threading.Lock()
        self._studies: dict[str, _StudyActivity] = {}

    def instance_received(self, study_uid: str, association_id: int) -> None:
        with self._lock:
            activity = self._studies.get(study_uid)
            if activity is None:
                activity = self._studies[study_uid] = _StudyActivity(self._clock(), self._wall())
            activity.quiet_since, activity.last_instance_wall = self._clock(), self._wall()
            activity.open_associations.add(association_id)

    def association_closed(self, association_id: int) -> None:
        """Released, aborted or dropped: the same for completion (a PACS re-sends what it lost)."""
        with self._lock:
            now = self._clock()
            for activity in self._studies.values():
                if association_id in activity.open_associations:
                    activity.open_associations.discard(association_id)
                    activity.quiet_since = now

    def arm(self, study_uid: str) -> None:
        """Treat the study as just received, with no open association (start-up recovery)."""
        with self._lock:
            if study_uid not in self._studies:
                self._studies[study_uid] = _StudyActivity(self._clock(), self._wall())

    def pop_due(self) -> list[tuple[str, float]]:
        """Studies complete now, with the wall time of their last instance; they are forgotten here."""
        now = self._clock()
        due = []
        with self._lock:
            for study_uid, activity in list(self._studies.items()):
                if not activity.open_associations and now - activity.quiet_since >= self.quiet_seconds:
                    due.append((study_uid, activity.last_instance_wall))
                    del self._studies[study_uid]
        return due

    def receiving(self, study_uid: str) -> bool:
        with self._lock:
            return study_uid in self._studies

    def __len__(self) -> int:
        with self._lock:
            return len(self._studies)
