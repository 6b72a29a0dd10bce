"""Durable queue, outbox, backoff and the quiet-period detector."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_io.job_queue import JobQueue, JobState, OutputFile, QuietPeriodTracker, backoff_delay

STUDY = "1.2.826.0.1.3680043.8.498.1"


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    q = JobQueue(tmp_path / "queue.sqlite3")
    yield q
    q.close()


def finish(queue: JobQueue, job_id: int, tmp_path: Path, n: int = 2) -> None:
    outputs = [OutputFile(tmp_path / f"o{i}.dcm", f"9.9.{job_id}.{i}") for i in range(n)]
    queue.finish_job(job_id, decision="NEGATIVE", result_json='{"probability": 0.1}', outputs=outputs)


def test_job_lifecycle_and_outbox(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.create_job(STUDY, last_instance_at=5.0)
    assert job is not None and job.version == 1
    assert queue.create_job(STUDY) is None  # one pending job per study: it will take every instance
    claimed = queue.claim_job()
    assert claimed is not None and claimed.id == job.id and claimed.state is JobState.RUNNING
    queue.record_snapshot(job.id, STUDY, ["1.1", "1.2"])
    assert queue.processed_instances(STUDY) == {"1.1", "1.2"}
    finish(queue, job.id, tmp_path)
    items = queue.due_outbox()
    assert [i.sop_instance_uid for i in items] == [f"9.9.{job.id}.0", f"9.9.{job.id}.1"]
    assert queue.mark_sent([items[0].id]) == []
    assert queue.mark_sent([items[1].id]) == [job.id]  # fully delivered now
    status = queue.study_status(STUDY)
    assert status is not None and status["status"] == "delivered" and status["decision"] == "NEGATIVE"
    assert status["versions"][0]["instances"] == 2


def test_new_version_while_running(queue: JobQueue) -> None:
    queue.create_job(STUDY)
    queue.claim_job()
    second = queue.create_job(STUDY)
    assert second is not None and second.version == 2


def test_state_survives_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite3"
    q = JobQueue(db)
    q.create_job(STUDY)
    q.claim_job()
    del q  # no close: a SIGKILL
    q2 = JobQueue(db)
    assert q2.recover() == 1
    job = q2.claim_job()
    assert job is not None and job.attempts == 2
    q2.close()


def test_outputs_of_a_parked_job_are_refused(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.create_job(STUDY)
    assert job is not None
    queue.claim_job()
    queue.park_job(job.id)
    with pytest.raises(RuntimeError):
        finish(queue, job.id, tmp_path)
    assert queue.due_outbox() == []


def test_processing_errors_retry_then_fail(queue: JobQueue) -> None:
    job = queue.create_job(STUDY)
    assert job is not None
    for expected in (JobState.PENDING, JobState.PENDING, JobState.FAILED):
        queue.claim_job()
        assert queue.retry_or_fail_job(job.id, "boom", max_attempts=3) is expected
    assert queue.study_status(STUDY)["status"] == "failed"  # type: ignore[index]


def test_retry_and_defer(tmp_path: Path) -> None:
    clock = Clock()
    queue = JobQueue(tmp_path / "q.sqlite3", clock=clock)
    job = queue.create_job(STUDY)
    assert job is not None
    queue.claim_job()
    finish(queue, job.id, tmp_path, n=3)
    items = queue.due_outbox()
    queue.mark_retry(items[0].id, "out of resources", delay=10)
    assert len(queue.due_outbox()) == 2
    queue.defer_all(30, "PACS down")  # every due item waits together
    assert queue.due_outbox() == []
    clock.t += 11
    assert [i.id for i in queue.due_outbox()] == []  # deferred to +30
    clock.t += 20
    assert len(queue.due_outbox()) == 3
    queue.mark_failed(items[0].id, "refused")
    assert queue.depth()["outbox_failed"] == 1
    queue.close()


def test_backoff_grows_with_jitter_and_cap() -> None:
    lows = [backoff_delay(n, 2.0, 60.0, rng=lambda: 0.0) for n in range(1, 10)]
    highs = [backoff_delay(n, 2.0, 60.0, rng=lambda: 1.0) for n in range(1, 10)]
    assert highs[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0] and max(highs) == 60.0
    assert all(lo == hi / 2 for lo, hi in zip(lows, highs, strict=True))


def test_quiet_period_waits_for_release_and_silence() -> None:
    clock = Clock(0.0)
    tracker = QuietPeriodTracker(5.0, clock=clock, wall_clock=clock)
    tracker.instance_received(STUDY, association_id=1)
    tracker.instance_received(STUDY, association_id=2)  # the PACS uses two associations
    clock.t = 100.0
    assert tracker.pop_due() == []  # still open
    tracker.association_closed(1)
    assert tracker.pop_due() == []
    tracker.association_closed(2)
    clock.t = 104.0
    assert tracker.pop_due() == []  # released, but not quiet long enough yet
    clock.t = 105.0
    assert tracker.pop_due() == [(STUDY, 0.0)]
    assert tracker.pop_due() == [] and not tracker.receiving(STUDY)


def test_quiet_period_restarts_with_each_instance() -> None:
    clock = Clock(0.0)
    tracker = QuietPeriodTracker(5.0, clock=clock, wall_clock=clock)
    tracker.instance_received(STUDY, 1)
    tracker.association_closed(1)
    clock.t = 4.0
    tracker.instance_received(STUDY, 2)
    tracker.association_closed(2)
    clock.t = 8.0
    assert tracker.pop_due() == []
    clock.t = 9.0
    assert [s for s, _ in tracker.pop_due()] == [STUDY]


def test_arm_recovers_studies_at_start() -> None:
    clock = Clock(0.0)
    tracker = QuietPeriodTracker(1.0, clock=clock, wall_clock=clock)
    tracker.arm(STUDY)
    clock.t = 1.0
    assert [s for s, _ in tracker.pop_due()] == [STUDY]
