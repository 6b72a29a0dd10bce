"""Benchmark of the DICOM service with real peers (Orthanc, dcmtk); prints a table and the machine it ran on.

    python bench/bench_service.py [--runs 3] [--quiet-seconds 5] [--json out.json]

1. End-to-end latency: a 32-slice 5 mm head CT (256x256 phantom) is C-STOREd to the service; the clock runs
   from the last instance acknowledged to every result (SC + SR) stored in Orthanc (polled over REST), with the
   quiet period and without it (0 s).
2. Ingest rate: the same 200-slice 512x512 series sent by dcmtk storescu to our SCP (fsync on every instance),
   to our SCP without fsync, and to dcmtk storescp (no fsync), alternately in the same run; the ratio ours /
   storescp (target >= 0.5), and the rate of the durable write alone (the ceiling any SCP with fsync has here).
3. Memory of the service process: resident set at rest (model loaded) and peak while processing a study.

Needs Orthanc, dcmtk and the bundled model; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402

from dicom_io.result import PLUGIN_MANUFACTURER  # noqa: E402
from monai_app.machine import cpu_model  # noqa: E402
from training.phantoms import PhantomSpec, make_phantom, write_dicom_series  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk(name: str) -> str:
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            if "dcmtk" in out.lower():
                return candidate
    raise SystemExit(f"dcmtk {name} not found")


def http_json(url: str, data: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def wait(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("benchmark step timed out")


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    import pynetdicom

    orthanc = subprocess.run(
        [shutil.which("Orthanc") or "/usr/sbin/Orthanc", "--version"], capture_output=True, text=True
    ).stdout
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "orthanc": orthanc.splitlines()[0] if orthanc else "?",
        "load_average": os.getloadavg(),
    }


class Orthanc:
    def __init__(self, work: Path, plugin_port: int) -> None:
        self.dicom_port, self.http_port = free_port(), free_port()
        config = json.loads((REPO / "deploy/orthanc/orthanc.json").read_text())
        config.update(
            {
                "DicomPort": self.dicom_port,
                "HttpPort": self.http_port,
                "StorageDirectory": str(work / "orthanc"),
                "IndexDirectory": str(work / "orthanc"),
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "StableAge": 1,
                "LuaScripts": [],
                "Plugins": [],
                "DicomModalities": {"ICH_TRIAGE": {"AET": "ICH_TRIAGE", "Host": "127.0.0.1", "Port": plugin_port}},
            }
        )
        (work / "orthanc.json").write_text(json.dumps(config))
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc = subprocess.Popen(
            [shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(work / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        wait(lambda: self._up(), 60, 0.2)

    def _up(self) -> bool:
        try:
            http_json(self.url + "/system")
            return True
        except OSError:
            return False

    def result_count(self, study_uid: str) -> int:
        found = [r for r in http_json(self.url + "/tools/lookup", study_uid.encode()) if r["Type"] == "Study"]
        if not found:
            return 0
        series = http_json(f"{self.url}/studies/{found[0]['ID']}/series")
        return sum(len(s["Instances"]) for s in series if s["MainDicomTags"].get("Manufacturer") == PLUGIN_MANUFACTURER)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class ServiceProc:
    def __init__(self, work: Path, pacs_port: int, quiet: float, port: int | None = None, fsync: bool = True) -> None:
        self.port, self.http_port = port or free_port(), free_port()
        self.spool = work / f"spool-{self.port}"
        self.log = (work / f"service-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monai_app.service",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--pacs",
                f"ORTHANC@127.0.0.1:{pacs_port}",
                "--spool",
                str(self.spool),
                "--quiet-seconds",
                str(quiet),
                "--http-port",
                str(self.http_port),
                "--http-bind",
                "127.0.0.1",
                "--keep",
                "none",
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**ENV, "ICH_FSYNC": "1" if fsync else "0"},
        )
        wait(self._ready, 300, 0.2)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"service exited; see {self.log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def status(self, study_uid: str) -> dict[str, Any] | None:
        try:
            return http_json(f"http://127.0.0.1:{self.http_port}/studies/{study_uid}")  # type: ignore[no-any-return]
        except OSError:
            return None

    def rss_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def send_pynetdicom(files: list[Path], port: int) -> float:
    """C-STORE the files; returns the monotonic time the last one was acknowledged."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(str(dcmread(files[0], stop_before_pixels=True).SOPClassUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="ICH_TRIAGE")
    assert assoc.is_established
    for f in files:
        assert assoc.send_c_store(f).Status == 0
    t_ack = time.monotonic()
    assoc.release()
    return t_ack


def study(folder: Path, n: int, size: int, seed: int, bleed: str | None = "intraparenchymal") -> tuple[str, list[Path]]:
    from pydicom.uid import generate_uid

    uid = generate_uid()
    files = write_dicom_series(
        make_phantom(PhantomSpec(n_slices=n, size=size, seed=seed, bleed=bleed)), folder, study_instance_uid=uid
    )
    return uid, files


def _one_study(service: ServiceProc, orthanc: Orthanc, folder: Path, seed: int) -> tuple[float, float]:
    """Send one 32-slice study; returns (last ack -> results in Orthanc, peak RSS while processing in MiB)."""
    uid, files = study(folder, 32, 256, seed=seed)
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, service.rss_mib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        t_ack = send_pynetdicom(files, service.port)
        status = wait(lambda: (s := service.status(uid)) and s["status"] == "delivered" and s, 600)
        expected = len(status["versions"][0]["outputs"])
        wait(lambda: orthanc.result_count(uid) >= expected, 120)
        return time.monotonic() - t_ack, peak
    finally:
        stop.set()
        sampler.join()


def bench_latency(work: Path, runs: int, quiet: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for q in (quiet, 0.0):
        plugin_port = free_port()
        (work / f"lat-{q}").mkdir(parents=True)
        orthanc = Orthanc(work / f"lat-{q}", plugin_port)
        service = ServiceProc(work, orthanc.dicom_port, q, port=plugin_port)
        rest = service.rss_mib()
        times, peaks = [], []
        for i in range(runs + 1):  # the first run warms up (first inference allocates)
            latency, peak = _one_study(service, orthanc, work / f"lat-{q}-{i}", seed=i)
            peaks.append(peak)
            if i > 0:
                times.append(latency)
        out[f"quiet {q:g} s"] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "runs": len(times),
        }
        out.setdefault(
            "memory", {"rest_mib": rest, "peak_processing_mib": max(peaks), "vmhwm_mib": service.rss_mib("VmHWM")}
        )
        service.stop()
        orthanc.stop()
    return out


def fsync_floor(files: list[Path], folder: Path) -> float:
    """Instances/s of the durable write alone (temp file, fsync, rename, fsync dir), no network: the ceiling."""
    from dicom_io.spool import Spool

    spool = Spool(folder)
    blobs = [f.read_bytes() for f in files]
    t0 = time.monotonic()
    for i, blob in enumerate(blobs):
        spool.store_instance("1.2.3", f"1.2.3.{i}", blob)
    rate = len(blobs) / (time.monotonic() - t0)
    shutil.rmtree(folder, ignore_errors=True)
    return rate


def bench_ingest(work: Path, runs: int) -> dict[str, Any]:
    folder = work / "ingest"
    _, files = study(folder, 200, 512, seed=3, bleed=None)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    storescu, storescp = dcmtk("storescu"), dcmtk("storescp")

    def send(port: int) -> float:
        t0 = time.monotonic()
        subprocess.run(
            [storescu, "-aec", "ICH_TRIAGE", "127.0.0.1", str(port), *map(str, files)],
            check=True,
            env=ENV,
            capture_output=True,
        )
        return time.monotonic() - t0

    times: dict[str, list[float]] = {"ours": [], "ours_no_fsync": [], "storescp": []}
    for r in range(runs):  # alternate, so that background load affects all alike
        for name, fsync in (("ours", True), ("ours_no_fsync", False)):
            service = ServiceProc(work, free_port(), quiet=3600, fsync=fsync)  # no processing while we measure
            times[name].append(send(service.port))
            service.stop()
            shutil.rmtree(service.spool, ignore_errors=True)
        out_dir = work / f"storescp-{r}"
        out_dir.mkdir()
        port = free_port()
        scp = subprocess.Popen(
            [storescp, "-aet", "ICH_TRIAGE", "-od", str(out_dir), str(port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        times["storescp"].append(send(port))
        scp.terminate()
        scp.wait(10)
        shutil.rmtree(out_dir, ignore_errors=True)
    rates = {k: len(files) / statistics.median(v) for k, v in times.items()}
    return {
        "instances": len(files),
        "megabytes": round(size_mb, 1),
        "runs": runs,
        "ours_instances_per_s": rates["ours"],
        "ours_no_fsync_instances_per_s": rates["ours_no_fsync"],
        "storescp_instances_per_s": rates["storescp"],
        "ratio": rates["ours"] / rates["storescp"],
        "ratio_no_fsync": rates["ours_no_fsync"] / rates["storescp"],
        "durable_write_only_instances_per_s": fsync_floor(files, work / "floor"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ich-bench-"))
    try:
        results = {
            "machine": machine(),
            "latency": bench_latency(work, args.runs, args.quiet_seconds),
            "ingest": bench_ingest(work, args.runs),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m, lat, ing = results["machine"], results["latency"], results["ingest"]
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}, "
        f"pynetdicom {m['pynetdicom']}, {m['orthanc']}, load average at start {m['load_average']}"
    )
    print("\n| measure | value |\n| --- | --- |")
    for key, v in lat.items():
        if key.startswith("quiet"):
            print(
                f"| end-to-end latency, 32 x 5 mm slices, {key} (last ack -> results in Orthanc) | "
                f"{v['median_s']:.2f} s median ({v['min_s']:.2f}-{v['max_s']:.2f}, {v['runs']} runs) |"
            )
    n = f"{ing['instances']} x 512x512, {ing['megabytes']} MB"
    print(f"| ingest, our SCP with fsync per instance ({n}) | {ing['ours_instances_per_s']:.0f} instances/s |")
    print(f"| ingest, our SCP without fsync, same series | {ing['ours_no_fsync_instances_per_s']:.0f} instances/s |")
    print(f"| ingest, dcmtk storescp (no fsync), same series | {ing['storescp_instances_per_s']:.0f} instances/s |")
    print(f"| ingest ratio ours (fsync) / storescp (target >= 0.5) | {ing['ratio']:.2f} |")
    print(f"| ingest ratio ours (no fsync) / storescp | {ing['ratio_no_fsync']:.2f} |")
    print(
        f"| durable write alone (tmp, fsync, rename, fsync dir; no network): the ceiling with fsync | "
        f"{ing['durable_write_only_instances_per_s']:.0f} instances/s |"
    )
    mem = lat["memory"]
    print(f"| service memory at rest (model loaded) | {mem['rest_mib']:.0f} MiB |")
    print(
        f"| service memory while processing (peak RSS sampled / VmHWM) | {mem['peak_processing_mib']:.0f} / {mem['vmhwm_mib']:.0f} MiB |"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
