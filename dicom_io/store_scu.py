"""Storage SCU: send result files (SC, SR) to the PACS with C-STORE, as they are on disk.

One association per batch. Each file is sent in its own transfer syntax, so nothing is re-encoded. TCP_NODELAY is set on the socket (pynetdicom does not). The caller decides on retries:
:func:`send_files` reports, per file, whether the PACS took it, refused it for good, or may take it later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt

from dicom_io.store_scp import set_tcp_nodelay

LOGGER = logging.getLogger(__name__)


class SendError(Exception):
    """The PACS could not be reached or would not associate; nothing in the batch was sent."""


class Delivery(str, Enum):
    SENT = "sent"  # success or warning status: the PACS has it
    RETRY = "retry"  # out of resources, no answer, association lost: try again later
    REFUSED = "refused"  # a failure status that will not change by itself (bad object, unsupported class)


@dataclass(frozen=True)
class SendResult:
    path: Path
    delivery: Delivery
    status: int | None
    detail: str = ""


def classify_status(status: int | None) -> Delivery:
    """PS3.4 Table B.2-1 / PS3.7 C: 0x0000 success, 0x0001/0xB0xx warnings, 0xA7xx out of resources."""
    if status is None:
        return Delivery.RETRY
    if status == 0x0000 or status == 0x0001 or (status & 0xF000) == 0xB000 or status == 0x0107:
        return Delivery.SENT
    if (status & 0xFF00) == 0xA700 or status in (0x0213, 0xA701, 0xA702):
        return Delivery.RETRY
    return Delivery.REFUSED


def _on_conn_open(event: evt.Event) -> None:
    set_tcp_nodelay(event.assoc.dul.socket)


def send_files(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str,
    timeout: float = 30.0,
) -> list[SendResult]:
    """C-STORE each file, in order, over one association.

    Raises:
        SendError: connection refused or timed out, association rejected or aborted before any answer.
    """
    metas = []
    for p in paths:
        meta = read_file_meta_info(p)
        metas.append((Path(p), str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    # One presentation context per (SOP class, transfer syntax) of the files: the PACS then accepts each file's own
    # syntax (files are sent as they are; an acceptor given several syntaxes in one context picks its favourite).
    for sop_class, ts in sorted({(sop_class, ts) for _, sop_class, ts in metas}):
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate(host, port, ae_title=called_ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _on_conn_open)])
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        raise SendError(f"association with {called_ae_title}@{host}:{port} failed ({why})")
    results: list[SendResult] = []
    try:
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        for path, sop_class, ts in metas:
            if not assoc.is_established:
                results.append(SendResult(path, Delivery.RETRY, None, "association lost"))
                continue
            if (sop_class, ts) not in accepted:
                results.append(
                    SendResult(path, Delivery.REFUSED, None, f"PACS accepts no context for {sop_class} in {ts}")
                )
                continue
            rsp = assoc.send_c_store(path)
            status = int(rsp.Status) if "Status" in rsp else None
            delivery = classify_status(status)
            detail = "" if status is not None else "no response (timeout or association lost)"
            results.append(SendResult(path, delivery, status, detail))
            LOGGER.debug("C-STORE %s -> %s (status %s)", path.name, delivery.value, status)
    finally:
        if assoc.is_established:
            assoc.release()
    return results
