"""The long-running service (``ich-triage serve``): SCP -> spool -> quiet period -> queue -> workers -> outbox -> SCU.

Threads, each with one job:

* the Storage SCP (pynetdicom's association threads) only persists instances and notes their arrival;
* the scheduler turns studies that have gone quiet into jobs in the durable queue;
* each worker loads the processor (the model) once, then runs it on one study at a time, never on an
  association thread, and puts the outputs in the outbox in the same transaction that marks the job done;
* the sender delivers the outbox to the PACS, backing off (exponential, jitter, cap) when the PACS is down;
* a small HTTP server answers ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and ``/studies/<uid>``.

SIGTERM (or SIGINT): the SCP stops listening, a running job gets ``stop_grace_seconds`` to finish, else it is
parked (back to pending, re-run from scratch at the next start); unsent outputs stay in the outbox. A SIGKILL
leaves the same state on disk: at start every job found running goes back to pending and every study with
instances in the spool is re-armed, so every acknowledged instance is processed and every result delivered.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydicom.filereader import read_file_meta_info

from dicom_io.job_queue import Job, JobQueue, JobState, OutboxItem, OutputFile, QuietPeriodTracker, backoff_delay
from dicom_io.result import StudyResult
from dicom_io.spool import InvalidUidError, Spool, check_uid
from dicom_io.store_scp import ReceivedInstance, ReceiveOutcome, StoreSCP
from dicom_io.store_scu import Delivery, SendError, send_files
from monai_app.service_config import ConfigError, ServiceConfig, add_config_arguments, load_config

LOGGER = logging.getLogger("monai_app.service")  # not "__main__" under python -m

MAX_JOB_ATTEMPTS = 3
"""A job whose processor raises (a bug or an infrastructure failure, not bad input) is retried this often."""
SEND_BATCH = 32


class Processor(Protocol):
    """What a worker runs on one complete study: reads DICOM from ``input_dir``, writes outputs to ``output_dir``."""

    def __call__(self, input_dir: Path, output_dir: Path) -> StudyResult: ...


def processor_from_config(config: ServiceConfig) -> Callable[[], Processor]:
    """Factory building the configured processor (``module:callable``, default ``monai_app.runner:StudyRunner``).

    The callable gets ``model_path`` and ``app_config`` (an ``AppConfig`` read from the settings' file); it returns an object with ``run(input_dir, output_dir)``
    (the StudyRunner) or a plain callable. Called once per worker: the model is loaded once, not per study.
    """
    module_name, _, attr = config.processor.partition(":")

    def build() -> Processor:
        target = getattr(importlib.import_module(module_name), attr)
        app_config = None
        if config.app_config is not None:
            from monai_app.app_config import AppConfig

            app_config = AppConfig.from_file(config.app_config)
        built = target(model_path=config.model, app_config=app_config)
        run = getattr(built, "run", None)
        return run if callable(run) else built  # type: ignore[no-any-return]

    return build


class _QueueCollector:
    """Queue-depth gauges read from the database at scrape time."""

    def __init__(self, depth: Callable[[], dict[str, int]], receiving: Callable[[], int]) -> None:
        self._depth, self._receiving = depth, receiving

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = self._depth()
        jobs = GaugeMetricFamily("ich_queue_depth", "Jobs in the queue by state", labels=["state"])
        for state in ("pending", "running", "failed"):
            jobs.add_metric([state], depth[f"jobs_{state}"])
        yield jobs
        outbox = GaugeMetricFamily("ich_outbox_depth", "Result objects in the outbox by state", labels=["state"])
        for state in ("pending", "failed"):
            outbox.add_metric([state], depth[f"outbox_{state}"])
        yield outbox
        yield GaugeMetricFamily(
            "ich_studies_receiving", "Studies waiting for their quiet period", value=self._receiving()
        )


class ServiceMetrics:
    """Prometheus metrics of one service instance (own registry, so several can live in one test process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.instances = Counter("ich_instances_received", "C-STORE requests by outcome", ["outcome"], registry=r)
        self.associations_rejected = Counter(
            "ich_associations_rejected", "Associations rejected (calling AE not allowed)", registry=r
        )
        self.studies = Counter("ich_studies_processed", "Studies processed, by decision", ["decision"], registry=r)
        self.failures = Counter("ich_failures", "Failures by stage (receive, process, send)", ["stage"], registry=r)
        self.outputs_sent = Counter("ich_outputs_sent", "Result objects stored in the PACS", registry=r)
        self.processing_seconds = Histogram(
            "ich_processing_seconds",
            "Time the application takes on one study",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.latency_seconds = Histogram(
            "ich_study_latency_seconds",
            "Last instance received to every result stored in the PACS",
            buckets=(1, 2, 5, 10, 20, 30, 45, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        for outcome in ReceiveOutcome:
            self.instances.labels(outcome.value)
        for stage in ("receive", "process", "send"):
            self.failures.labels(stage)


@dataclass
class _WorkerState:
    name: str
    ready: bool = False
    job: Job | None = None
    thread: threading.Thread | None = None


class Service:
    """The whole service in one process; ``start()`` returns once it listens, ``stop()`` shuts it down cleanly."""

    def __init__(self, config: ServiceConfig, processor_factory: Callable[[], Processor] | None = None) -> None:
        self.config = config
        self._processor_factory = processor_factory or processor_from_config(config)
        self.spool = Spool(config.spool, fsync=config.fsync)
        self.queue = JobQueue(self.spool.db_path)
        self.tracker = QuietPeriodTracker(config.quiet_seconds)
        self.metrics = ServiceMetrics()
        self.metrics.registry.register(_QueueCollector(self.queue.depth, lambda: len(self.tracker)))
        self.scp = StoreSCP(
            spool=self.spool,
            ae_title=config.ae_title,
            bind=config.bind,
            port=config.port,
            allow=config.allow,
            on_instance=self._on_instance,
            on_association_closed=self.tracker.association_closed,
            on_association_rejected=lambda ae, host: self.metrics.associations_rejected.inc(),
            max_associations=config.max_associations,
            max_pdu_bytes=config.max_pdu_bytes,
            network_timeout=config.network_timeout,
        )
        self._stopping = threading.Event()
        self._job_ready = threading.Condition()
        self._outbox_ready = threading.Event()
        self._workers: list[_WorkerState] = []
        self._threads: list[threading.Thread] = []
        self._http: ThreadingHTTPServer | None = None
        self._pacs_failures = 0
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def dicom_port(self) -> int:
        return self.scp.port

    @property
    def http_port(self) -> int | None:
        return None if self._http is None else self._http.server_address[1]

    def start(self) -> None:
        recovered = self.queue.recover()
        studies = self.spool.study_uids()
        for study_uid in studies:
            self.tracker.arm(study_uid)
        LOGGER.info(
            "spool %s: %d interrupted job(s) back to pending, %d stud(y/ies) re-armed, queue %s",
            self.spool.root,
            recovered,
            len(studies),
            self.queue.depth(),
        )
        for job_id, study_uid in self.queue.delivered_unreclaimed():
            self._reclaim(job_id, study_uid)
        if self.config.pacs is None:
            LOGGER.warning("no PACS configured (--pacs): results stay in the outbox")
        self.scp.start()
        self._spawn("scheduler", self._scheduler_loop)
        self._spawn("sender", self._sender_loop)
        for i in range(self.config.workers):
            state = _WorkerState(f"worker-{i}")
            state.thread = threading.Thread(target=self._worker_loop, args=(state,), name=state.name, daemon=True)
            self._workers.append(state)
            state.thread.start()
        if self.config.http_port:
            self._http = _make_http_server(self, self.config.http_bind, self.config.http_port)
            self._spawn("http", self._http.serve_forever)
            LOGGER.info("HTTP (health, metrics, status) on %s:%d", self.config.http_bind, self.http_port)
        self._started = True

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def ready(self) -> bool:
        """Listening and every worker has its processor (model) loaded."""
        return self._started and self.scp.running and all(w.ready for w in self._workers)

    def healthy(self) -> bool:
        return self._started and not self._stopping.is_set() and all(t.is_alive() for t in self._threads)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return True
            time.sleep(0.05)
        return self.ready()

    def stop(self, grace: float | None = None) -> None:
        """Stop receiving, let the running job finish within ``grace`` seconds or park it, stop sending."""
        grace = self.config.stop_grace_seconds if grace is None else grace
        LOGGER.info("stopping (grace %.0f s)", grace)
        self._stopping.set()
        self.scp.stop()
        with self._job_ready:
            self._job_ready.notify_all()
        self._outbox_ready.set()
        deadline = time.monotonic() + grace
        for w in self._workers:
            assert w.thread is not None
            w.thread.join(max(0.0, deadline - time.monotonic()))
            job = w.job
            if w.thread.is_alive() and job is not None:
                LOGGER.warning(
                    "parking job %d (study %s): it did not finish within the grace period", job.id, job.study_uid
                )
                self.queue.park_job(job.id)
        for t in self._threads:
            if t.name != "http":
                t.join(max(1.0, deadline - time.monotonic()))
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if all(not t.is_alive() for t in self._threads) and all(
            w.thread is None or not w.thread.is_alive() for w in self._workers
        ):
            self.queue.close()
        LOGGER.info("stopped")

    # -- receiving ---------------------------------------------------------------------------------------------

    def _on_instance(self, received: ReceivedInstance) -> None:
        self.metrics.instances.labels(received.outcome.value).inc()
        if received.outcome is ReceiveOutcome.DISK_ERROR:
            self.metrics.failures.labels("receive").inc()
        elif received.outcome in (ReceiveOutcome.STORED, ReceiveOutcome.DUPLICATE) and received.study_uid:
            self.tracker.instance_received(received.study_uid, received.association_id)

    def _scheduler_loop(self) -> None:
        tick = min(0.25, max(0.02, self.config.quiet_seconds / 4))
        while not self._stopping.wait(tick):
            for study_uid, last_instance_at in self.tracker.pop_due():
                try:
                    self._study_complete(study_uid, last_instance_at)
                except Exception:  # keep scheduling other studies; this one is re-armed at restart
                    LOGGER.exception("could not queue study %s", study_uid)

    def _study_complete(self, study_uid: str, last_instance_at: float) -> None:
        on_disk = set(self.spool.study_instances(study_uid))
        new = on_disk - self.queue.processed_instances(study_uid)
        if not new:
            LOGGER.info("study %s: only re-sent copies of processed instances, nothing to do", study_uid)
            if self.config.keep.value != "all" and not self.queue.study_busy(study_uid):
                self.spool.discard_instances(study_uid, on_disk)
            return
        job = self.queue.create_job(study_uid, last_instance_at=last_instance_at)
        if job is None:
            LOGGER.info("study %s: %d new instance(s) join its pending job", study_uid, len(new))
            return
        LOGGER.info(
            "study %s complete: job %d (version %d), %d new instance(s)", study_uid, job.id, job.version, len(new)
        )
        with self._job_ready:
            self._job_ready.notify()

    # -- processing --------------------------------------------------------------------------------------------

    def _worker_loop(self, state: _WorkerState) -> None:
        processor: Processor | None = None
        while processor is None and not self._stopping.is_set():
            try:
                t0 = time.monotonic()
                processor = self._processor_factory()
                LOGGER.info("%s: processor loaded in %.1f s", threading.current_thread().name, time.monotonic() - t0)
            except Exception:
                LOGGER.exception("cannot load the processor (model); retrying in 30 s, jobs wait in the queue")
                self.metrics.failures.labels("process").inc()
                self._stopping.wait(30)
        state.ready = processor is not None
        while processor is not None and not self._stopping.is_set():
            job = self.queue.claim_job()
            if job is None:
                with self._job_ready:
                    self._job_ready.wait(1.0)
                continue
            state.job = job
            try:
                self._run_job(job, processor)
            except Exception:
                LOGGER.exception("job %d (study %s): internal error", job.id, job.study_uid)
            finally:
                state.job = None

    def _run_job(self, job: Job, processor: Processor) -> None:
        sop_uids = self.spool.prepare_job(job.id, job.study_uid)
        self.queue.record_snapshot(job.id, job.study_uid, sop_uids)
        LOGGER.info(
            "job %d: study %s version %d, %d instance(s), attempt %d",
            job.id,
            job.study_uid,
            job.version,
            len(sop_uids),
            job.attempts,
        )
        t0 = time.monotonic()
        try:
            result = processor(self.spool.job_input_dir(job.id), self.spool.job_output_dir(job.id))
        except Exception as exc:
            self.metrics.failures.labels("process").inc()
            state = self.queue.retry_or_fail_job(job.id, f"{type(exc).__name__}: {exc}", max_attempts=MAX_JOB_ATTEMPTS)
            LOGGER.exception("job %d (study %s) failed (%s)", job.id, job.study_uid, state.value)
            return
        elapsed = time.monotonic() - t0
        self.metrics.processing_seconds.observe(elapsed)
        outputs = []
        for path in self.spool.finalize_outputs(job.id):
            meta = read_file_meta_info(path)
            outputs.append(OutputFile(path, str(meta.MediaStorageSOPInstanceUID), str(meta.MediaStorageSOPClassUID)))
        decision = getattr(result.decision, "value", str(result.decision))
        try:
            self.queue.finish_job(job.id, decision=decision, result_json=result.to_json(), outputs=outputs)
        except RuntimeError as exc:  # parked by stop() meanwhile: it runs again after restart
            LOGGER.warning("job %d: %s", job.id, exc)
            return
        self.metrics.studies.labels(decision).inc()
        LOGGER.info(
            "job %d: study %s %s in %.1f s, %d object(s) to send",
            job.id,
            job.study_uid,
            decision,
            elapsed,
            len(outputs),
        )
        if outputs:
            self._outbox_ready.set()
        else:
            LOGGER.warning("job %d: the application wrote no DICOM output", job.id)
            self._reclaim(job.id, job.study_uid)

    # -- sending -----------------------------------------------------------------------------------------------

    def _sender_loop(self) -> None:
        while not self._stopping.is_set():
            self._outbox_ready.clear()
            sent_any = self._send_due() if self.config.pacs is not None else False
            if sent_any:
                continue
            next_due = self.queue.next_outbox_due()
            wait = 1.0 if next_due is None else min(1.0, max(0.0, next_due - time.time()))
            self._outbox_ready.wait(wait if wait > 0 else 0.05)

    def _send_due(self) -> bool:
        """Send due items, one association per job. Returns whether anything was attempted."""
        items = self.queue.due_outbox(limit=SEND_BATCH)
        if not items:
            return False
        by_job: dict[int, list[OutboxItem]] = {}
        for item in items:
            by_job.setdefault(item.job_id, []).append(item)
        for job_items in by_job.values():
            if self._stopping.is_set() or not self._send_batch(job_items):
                break
        return True

    def _send_batch(self, items: list[OutboxItem]) -> bool:
        """Send one job's due items; ``False`` if the PACS is unreachable (everything was deferred)."""
        pacs = self.config.pacs
        assert pacs is not None
        cfg = self.config
        try:
            results = send_files(
                [i.path for i in items],
                host=pacs.host,
                port=pacs.port,
                called_ae_title=pacs.ae_title,
                calling_ae_title=cfg.ae_title,
                timeout=cfg.network_timeout,
            )
        except (SendError, OSError) as exc:
            self._pacs_failures += 1
            delay = backoff_delay(self._pacs_failures, cfg.retry_base_seconds, cfg.retry_cap_seconds)
            LOGGER.warning("PACS %s unreachable (%s); next try in %.1f s", pacs, exc, delay)
            self.metrics.failures.labels("send").inc()
            self.queue.defer_all(delay, str(exc))  # one backoff for the PACS, not one retry per item
            return False
        self._pacs_failures = 0
        sent = []
        for item, res in zip(items, results, strict=True):
            if res.delivery is Delivery.SENT:
                sent.append(item.id)
                continue
            self.metrics.failures.labels("send").inc()
            detail = f"status 0x{res.status:04X}" if res.status is not None else res.detail
            attempts = item.attempts + 1
            if res.delivery is Delivery.REFUSED and attempts >= cfg.max_send_attempts:
                LOGGER.error(
                    "giving up on %s of study %s after %d refusals (%s)",
                    item.sop_instance_uid,
                    item.study_uid,
                    attempts,
                    detail,
                )
                self.queue.mark_failed(item.id, detail)
            else:
                delay = backoff_delay(attempts, cfg.retry_base_seconds, cfg.retry_cap_seconds)
                LOGGER.warning(
                    "PACS did not take %s of study %s (%s); retry in %.1f s",
                    item.sop_instance_uid,
                    item.study_uid,
                    detail,
                    delay,
                )
                self.queue.mark_retry(item.id, detail, delay=delay)
        self.metrics.outputs_sent.inc(len(sent))
        for job_id in self.queue.mark_sent(sent):
            last_instance_at, delivered_at = self.queue.job_timing(job_id)
            if last_instance_at is not None and delivered_at is not None:
                self.metrics.latency_seconds.observe(max(0.0, delivered_at - last_instance_at))
            study_uid = items[0].study_uid
            LOGGER.info("job %d: every result of study %s is in the PACS", job_id, study_uid)
            self._reclaim(job_id, study_uid)
        return True

    def _reclaim(self, job_id: int, study_uid: str) -> None:
        self.spool.reclaim(
            job_id,
            study_uid,
            self.queue.job_instances(job_id),
            keep=self.config.keep.value,
            study_busy=self.queue.study_busy(study_uid, except_job=job_id),
        )
        self.queue.mark_reclaimed(job_id)

    # -- status ------------------------------------------------------------------------------------------------

    def study_status(self, study_uid: str) -> dict[str, Any] | None:
        status = self.queue.study_status(study_uid)
        receiving = self.tracker.receiving(study_uid)
        if status is None:
            return {"study_instance_uid": study_uid, "status": "receiving", "versions": []} if receiving else None
        status["receiving"] = receiving
        return status

    def report(self, study_uid: str) -> dict[str, Any] | None:
        """The latest finished result of a study (``report.json`` content), if any."""
        status = self.queue.study_status(study_uid)
        for version in (status or {}).get("versions", []):
            if version["state"] == JobState.DONE.value:
                text = self.queue.result_json(version["job_id"])
                return json.loads(text) if text else None
        return None


def _make_http_server(service: Service, bind: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ich-triage"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = urlparse(self.path).path.rstrip("/")
            if path == "/healthz":
                ok = service.healthy()
                self._json(
                    HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, {"status": "ok" if ok else "unhealthy"}
                )
            elif path == "/readyz":
                ok = service.ready()
                self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ok})
            elif path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST)
            elif path.startswith("/studies/"):
                try:
                    study_uid = check_uid(path[len("/studies/") :], "Study Instance UID")
                except InvalidUidError as exc:
                    self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                    return
                status = service.study_status(study_uid)
                if status is None:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"unknown study {study_uid}"})
                else:
                    self._json(HTTPStatus.OK, status)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def _json(self, code: HTTPStatus, body: Any) -> None:
            self._send(code, json.dumps(body, indent=1).encode(), "application/json")

        def _send(self, code: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            LOGGER.debug("http: " + format, *args)

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ich-triage serve`` (each also an ``ICH_*`` variable and a key of the JSON settings file)."""
    add_config_arguments(parser)


def run_service(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code (2 for a configuration error)."""
    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        LOGGER.error("configuration error: %s", exc)  # logging's last-resort handler shows it on stderr
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=config.log_level,
            format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        )
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        LOGGER.info("signal %d received", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = Service(config)
    try:
        service.start()
    except OSError as exc:
        LOGGER.error("cannot start: %s", exc)
        return 1
    LOGGER.info("ich-triage service %s ready to receive on %s:%d", config.ae_title, config.bind, service.dicom_port)
    while not stop.wait(1.0):
        pass
    service.stop()
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m monai_app.service", description="ICH triage DICOM service")
    add_arguments(_parser)
    sys.exit(run_service(_parser.parse_args()))
