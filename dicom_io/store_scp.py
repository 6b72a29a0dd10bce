"""Storage SCP: C-ECHO and C-STORE from the PACS into the durable spool.

What is kept (PS3.4 Annex B, Storage Service Class):

* CT Image Storage and Enhanced CT Image Storage are stored as received: the Part 10 file is the peer's encoded
  data set (``event.encoded_dataset()``) with its file meta, in the transfer syntax it came in (implicit/explicit
  VR little endian, deflate, JPEG lossless, JPEG-LS, JPEG 2000, RLE). Nothing is decompressed on the association
  thread; only the header is read, for the Study Instance UID and the loop guard.
* Every other Storage SOP class a PACS may route along with a study (SR, SC, presentation states, key object
  selections, ...) is accepted and ignored: answered with success, not stored. A refusal would make the PACS
  mark the whole transfer failed and retry it forever; we offer no Storage Commitment, so success promises
  nothing beyond receipt. Each is counted (``ignored_sop_class``).
* Our own outputs (Manufacturer == PLUGIN_MANUFACTURER) are acknowledged and dropped: the loop guard, even when
  the PACS routes the whole study, results included, back to us.

An instance answered with success is on disk (temp file, fsync, rename, fsync dir) before the answer; a disk
error answers ``OUT_OF_RESOURCES`` (0xA700) so the PACS retries. A duplicate is harmless (the stored copy stays).

Peers: the calling AE title (optionally with the host) must be on the allowlist, else the association is
rejected (A-ASSOCIATE-RJ, "calling AE title not recognised"); the called AE title must be ours. TCP_NODELAY is
set on every accepted socket (pynetdicom does not), and a PDU longer than ``max_pdu_bytes`` aborts its
association instead of growing memory.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Protocol, cast

from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import StoragePresentationContexts

from dicom_io.result import PLUGIN_MANUFACTURER
from dicom_io.spool import Spool, StoreOutcome, check_uid

LOGGER = logging.getLogger(__name__)

ACSE_TIMEOUT_SECONDS = 10.0
VERIFICATION = UID("1.2.840.10008.1.1")  # Verification SOP Class (PS3.4 Annex A)

PROCESSED_SOP_CLASSES: frozenset[str] = frozenset({str(CTImageStorage), str(EnhancedCTImageStorage)})

ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    # pynetdicom accepts, per presentation context, the first of these that the peer proposes. Uncompressed
    # first (every peer can send them, as dcmtk's storescp prefers too); a peer holding compressed files proposes
    # their syntax in a context of its own and sends them as they are. Lossy last, so that a peer is never asked
    # to compress lossily: accepted only when the peer proposes nothing else (its data is lossy already).
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)


class DimseStatus(IntEnum):
    """C-STORE / C-ECHO response statuses we send (PS3.4 Table B.2-1, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class ReceiveOutcome(str, Enum):
    """What became of one C-STORE request (the ``outcome`` label of the received-instances metric)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    IGNORED_OWN_OUTPUT = "ignored_own_output"
    IGNORED_SOP_CLASS = "ignored_sop_class"
    INVALID = "invalid"
    DISK_ERROR = "disk_error"


STATUS_FOR_OUTCOME: dict[ReceiveOutcome, DimseStatus] = {
    ReceiveOutcome.STORED: DimseStatus.SUCCESS,
    ReceiveOutcome.DUPLICATE: DimseStatus.SUCCESS,
    ReceiveOutcome.IGNORED_OWN_OUTPUT: DimseStatus.SUCCESS,
    ReceiveOutcome.IGNORED_SOP_CLASS: DimseStatus.SUCCESS,
    ReceiveOutcome.INVALID: DimseStatus.CANNOT_UNDERSTAND,
    ReceiveOutcome.DISK_ERROR: DimseStatus.OUT_OF_RESOURCES,
}


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE request and what became of it."""

    association_id: int
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str | None
    transfer_syntax: str
    outcome: ReceiveOutcome
    path: Path | None = None

    @property
    def status(self) -> DimseStatus:
        return STATUS_FOR_OUTCOME[self.outcome]


class AllowRule(Protocol):
    def matches(self, calling_ae_title: str, host: str) -> bool: ...


def set_tcp_nodelay(sock: Any) -> None:
    """Disable Nagle on a pynetdicom AssociationSocket (or a plain socket): one DIMSE message, one round trip."""
    raw = getattr(sock, "socket", sock)
    if raw is not None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # already closed by the peer: nothing to tune
            LOGGER.debug("TCP_NODELAY not set: %s", exc)


def limit_pdu_length(assoc_socket: Any, max_bytes: int) -> None:
    """Replace an AssociationSocket's ``recv``: refuse reads longer than ``max_bytes``, read big ones fast.

    pynetdicom reads a PDU's announced length in one ``recv(n)``; a hostile peer announcing 4 GiB would make it
    buffer whatever it sends. Our maximum PDU length is announced at association, so a longer PDU is a protocol
    violation (PS3.8 9.3.1): it fails like a dropped connection and pynetdicom aborts the association. The read
    itself goes straight into one buffer (pynetdicom's own loop reads 4 KiB at a time).
    """

    def bounded_recv(nr_bytes: int) -> bytearray:
        if nr_bytes > max_bytes:
            raise OSError(f"peer announced a PDU of {nr_bytes} bytes (limit {max_bytes}): dropping the connection")
        sock = assoc_socket.socket
        if sock is None:
            raise OSError("connection already closed")
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            n = sock.recv_into(view[received:], nr_bytes - received)
            if n == 0:  # connection closed: return what came, as pynetdicom's recv does
                return buffer[:received]
            received += n
        return buffer

    assoc_socket.recv = bounded_recv


class StoreSCP:
    """The listening Storage SCP. Its handlers only persist; completion and processing happen elsewhere.

    Args:
        spool: where instances go.
        on_instance: called on the association thread after each C-STORE is handled (cheap: bookkeeping).
        on_association_closed: called with the association id when it is released, aborted or dropped.
        on_association_rejected: called with (calling AE title, host) for a peer not on the allowlist.
        allow: allowlist; empty accepts any calling AE title.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        ae_title: str,
        bind: str = "0.0.0.0",
        port: int = 11112,
        allow: Sequence[AllowRule] = (),
        on_instance: Callable[[ReceivedInstance], None] | None = None,
        on_association_closed: Callable[[int], None] | None = None,
        on_association_rejected: Callable[[str, str], None] | None = None,
        max_associations: int = 16,
        max_pdu_bytes: int = 1024 * 1024,
        network_timeout: float = 30.0,
    ) -> None:
        self.spool = spool
        self.ae_title = ae_title
        self.bind = bind
        self.port = port
        self.allow = tuple(allow)
        self.max_pdu_bytes = max_pdu_bytes
        self._on_instance = on_instance
        self._on_closed = on_association_closed
        self._on_rejected = on_association_rejected
        self._server: Any = None

        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = max_pdu_bytes  # announced to peers, and enforced by limit_pdu_length
        ae.maximum_associations = max_associations
        # A connection holds an association slot until its A-ASSOCIATE-RQ arrives or this runs out (pynetdicom
        # does not notice a peer that connects and hangs up): keep it short so idle sockets cannot starve peers.
        ae.acse_timeout = min(network_timeout, ACSE_TIMEOUT_SECONDS)
        ae.dimse_timeout = network_timeout
        ae.network_timeout = network_timeout
        ae.require_called_aet = True
        ae.add_supported_context(VERIFICATION)
        for ctx in StoragePresentationContexts:
            ae.add_supported_context(str(ctx.abstract_syntax), list(ACCEPTED_TRANSFER_SYNTAXES))
        self._ae = ae
        if not self.allow:
            LOGGER.warning("no allowlist configured: any calling AE title may store to %s", ae_title)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._handle_conn_open),
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_RELEASED, self._handle_closed),
            (evt.EVT_ABORTED, self._handle_closed),
            (evt.EVT_CONN_CLOSE, self._handle_closed),
        ]
        self._server = self._ae.start_server((self.bind, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        LOGGER.info("storage SCP %s listening on %s:%d", self.ae_title, self.bind, self.port)

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            for assoc in list(server.active_associations):
                assoc.abort()  # an unanswered C-STORE is re-sent by the peer; a duplicate is harmless
            LOGGER.info("storage SCP stopped")

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- handlers ----------------------------------------------------------------------------------------------

    def _handle_conn_open(self, event: evt.Event) -> None:
        sock = event.assoc.dul.socket
        set_tcp_nodelay(sock)
        if sock is not None:
            limit_pdu_length(sock, self.max_pdu_bytes + 6)

    def is_allowed(self, calling_ae_title: str, host: str) -> bool:
        return not self.allow or any(rule.matches(calling_ae_title, host) for rule in self.allow)

    def _handle_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "")).strip()
        host = assoc.requestor.address
        if not self.is_allowed(calling, host):
            LOGGER.warning("association from %r at %s rejected: calling AE title not on the allowlist", calling, host)
            if self._on_rejected is not None:
                self._on_rejected(calling, host)
            # PS3.8 7.1.1.9: rejected-permanent, service-user, calling AE title not recognised
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()  # as pynetdicom's own rejection does: lets the DUL send the A-ASSOCIATE-RJ first

    def _handle_echo(self, event: evt.Event) -> int:
        return int(DimseStatus.SUCCESS)

    def _handle_closed(self, event: evt.Event) -> None:
        # Released, aborted and connection closed all fire for one association; the callback is idempotent.
        # (No "already seen" set: ids of finished associations are reused by new ones.)
        if self._on_closed is not None:
            self._on_closed(id(event.assoc))

    def handle_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: persist the instance, then answer. Never raises."""
        received = self.receive(event)
        if self._on_instance is not None:
            try:
                self._on_instance(received)
            except Exception:  # bookkeeping must not turn a stored instance into a failure
                LOGGER.exception("instance callback failed for SOP Instance UID %s", received.sop_instance_uid)
        return int(received.status)

    def receive(self, event: evt.Event) -> ReceivedInstance:
        assoc_id = id(event.assoc)
        request = cast(C_STORE, event.request)
        sop_class = str(request.AffectedSOPClassUID)
        sop_uid = str(request.AffectedSOPInstanceUID)
        transfer_syntax = str(event.context.transfer_syntax)

        def outcome(kind: ReceiveOutcome, study_uid: str | None = None, path: Path | None = None) -> ReceivedInstance:
            return ReceivedInstance(assoc_id, sop_class, sop_uid, study_uid, transfer_syntax, kind, path)

        if sop_class not in PROCESSED_SOP_CLASSES:
            LOGGER.debug("ignoring SOP Instance UID %s of SOP class %s", sop_uid, sop_class)
            return outcome(ReceiveOutcome.IGNORED_SOP_CLASS)
        try:
            ds = event.dataset  # header only matters; pixel data stays encoded
            manufacturer = str(ds.get("Manufacturer", "") or "")
            study_uid = check_uid(str(ds.StudyInstanceUID), "Study Instance UID")
            sop_uid = check_uid(sop_uid, "SOP Instance UID")
        except Exception as exc:  # whatever a malformed data set makes pydicom raise: refuse it, keep serving
            LOGGER.warning("refusing SOP Instance UID %.64s: cannot read its header (%s)", sop_uid, exc)
            return outcome(ReceiveOutcome.INVALID)
        if manufacturer == PLUGIN_MANUFACTURER:
            LOGGER.info("loop guard: dropping our own output %s of study %s", sop_uid, study_uid)
            return outcome(ReceiveOutcome.IGNORED_OWN_OUTPUT, study_uid)
        try:
            stored, path = self.spool.store_instance(study_uid, sop_uid, event.encoded_dataset())
        except OSError as exc:
            LOGGER.error("disk error storing %s of study %s: %s (answering out of resources)", sop_uid, study_uid, exc)
            return outcome(ReceiveOutcome.DISK_ERROR, study_uid)
        kind = ReceiveOutcome.STORED if stored is StoreOutcome.NEW else ReceiveOutcome.DUPLICATE
        LOGGER.debug("%s %s of study %s (%s)", kind.value, sop_uid, study_uid, transfer_syntax)
        return outcome(kind, study_uid, path)
