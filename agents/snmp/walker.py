"""GET of scalars and multi-column table walks over a session, with retries and an adaptive bulk size.

A table walk asks for all its columns in one request (GETBULK, or GETNEXT for v1) and follows each column
separately, so holes in one column do not disturb the others and a truncated response costs nothing but
the next request. Every request is bounded by the request timeout and by the poll's deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agents.results import Failure
from agents.snmp import ber
from agents.snmp.failures import SnmpFailure
from agents.snmp.session import RequestTimeout, Session, SnmpError

GROW_AFTER_CLEAN_POLLS = 10
MAX_GET_OIDS = 32  # scalars per GET request: many small answers are safer than one tooBig
AUTHORIZATION_ERROR = 16
_ERROR_NAMES = {3: "badValue", 4: "readOnly", 5: "genErr", 6: "noAccess", AUTHORIZATION_ERROR: "authorizationError"}


@dataclass(slots=True)
class PollStats:
    pdus_sent: int = 0
    retries: int = 0
    varbinds: int = 0


@dataclass(slots=True)
class BulkSize:
    """A device's GETBULK max-repetitions: halved on a timeout or tooBig and remembered across polls.

    After GROW_AFTER_CLEAN_POLLS polls without either it doubles again (a lost packet should not cost
    extra PDUs forever), but never back to a size the agent answered tooBig to.
    """

    configured: int
    current: int = 0
    ceiling: int = 0
    clean_polls: int = 0
    shrunk: bool = False

    def __post_init__(self) -> None:
        self.current = self.ceiling = self.configured

    def shrink(self, too_big: bool) -> int:
        if too_big:
            self.ceiling = max(1, self.current - 1)
        self.current = max(1, self.current // 2)
        self.shrunk = True
        return self.current

    def end_poll(self) -> None:
        if self.shrunk:
            self.shrunk, self.clean_polls = False, 0
            return
        self.clean_polls += 1
        if self.clean_polls >= GROW_AFTER_CLEAN_POLLS and self.current < self.ceiling:
            self.current, self.clean_polls = min(self.current * 2, self.ceiling), 0


class Walker:
    def __init__(self, session: Session, stats: PollStats, bulk: BulkSize, request_timeout: float, retries: int,
                 deadline: float) -> None:
        self._session = session
        self._stats = stats
        self._bulk = bulk
        self._request_timeout = request_timeout
        self._retries = retries
        self._deadline = deadline

    async def get(self, oids: list[bytes]) -> dict[bytes, ber.Value]:
        """Values of the objects that exist (a missing one is left out, not an error)."""
        values: dict[bytes, ber.Value] = {}
        for start in range(0, len(oids), MAX_GET_OIDS):
            values.update(await self._get(oids[start:start + MAX_GET_OIDS]))
        return values

    async def _get(self, oids: list[bytes]) -> dict[bytes, ber.Value]:
        wanted = list(oids)
        while wanted:
            response = await self._request(ber.GET, wanted)
            if response.error_status == ber.NO_SUCH_NAME:  # v1 names one missing object per answer
                del wanted[self._error_position(response, len(wanted))]
                continue
            return {vb.oid: vb.value for vb in response.varbinds if vb.tag not in ber.EXCEPTIONS}
        return {}

    async def walk(self, prefixes: list[bytes]) -> list[dict[bytes, ber.Value]]:
        """Per column, its values by index (the OID bytes after the column's prefix)."""
        results: list[dict[bytes, ber.Value]] = [{} for _ in prefixes]
        last = list(prefixes)
        active = list(range(len(prefixes)))
        while active:
            pdu = ber.GETNEXT if self._session.version == ber.VERSION_1 else ber.GETBULK
            response = await self._request(pdu, [last[column] for column in active])
            if response.error_status == ber.NO_SUCH_NAME:  # v1: that column ran off the end of the MIB view
                del active[self._error_position(response, len(active))]
                continue
            if not response.varbinds:
                raise SnmpError(Failure.PROTOCOL_ERROR, "the agent answered a walk request with no varbinds")
            active = _take(response.varbinds, active, prefixes, last, results)
        return results

    @staticmethod
    def _error_position(response: ber.Response, count: int) -> int:
        if not 1 <= response.error_index <= count:
            raise SnmpError(SnmpFailure.SNMP_NO_SUCH_NAME, f"noSuchName with error-index {response.error_index}")
        return response.error_index - 1

    async def _request(self, pdu: int, oids: list[bytes]) -> ber.Response:
        repetitions = self._bulk.current
        attempts = 0
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise SnmpError(Failure.TIMEOUT, "the poll ran out of time")
            self._stats.pdus_sent += 1
            attempts += 1
            timeout = min(self._request_timeout, remaining)
            try:
                response = await self._session.request(pdu, oids, repetitions, timeout)
            except RequestTimeout as exc:
                if attempts > self._retries or remaining <= self._request_timeout:
                    raise SnmpError(Failure.TIMEOUT, _timeout_detail(attempts, timeout, self._session.version, str(exc))) from None
                self._stats.retries += 1
                if pdu == ber.GETBULK:
                    repetitions = self._bulk.shrink(too_big=False)
                continue
            if response.error_status == ber.TOO_BIG:
                if pdu != ber.GETBULK or repetitions == 1:
                    raise SnmpError(SnmpFailure.SNMP_TOO_BIG, f"tooBig for a request of {len(oids)} varbinds")
                self._stats.retries += 1
                repetitions = self._bulk.shrink(too_big=True)
                continue
            self._stats.varbinds += len(response.varbinds)
            _raise_for_status(response)
            asked = len(oids) * (repetitions if pdu == ber.GETBULK else 1)
            if len(response.varbinds) > asked:  # RFC 3416 4.2.3: at most N + M * R; more is not an answer to us
                raise SnmpError(Failure.PROTOCOL_ERROR, f"the agent answered {len(response.varbinds)} varbinds to a request for at most {asked}")
            return response


def _take(varbinds: list[ber.Varbind], active: list[int], prefixes: list[bytes], last: list[bytes],
          results: list[dict[bytes, ber.Value]]) -> list[int]:
    """Store one response's varbinds by column; the columns still to walk."""
    width = len(active)
    finished: set[int] = set()
    exceptions = ber.EXCEPTIONS
    for position, varbind in enumerate(varbinds):
        column = active[position % width]
        if column in finished:
            continue
        prefix = prefixes[column]
        oid = varbind.oid
        if varbind.tag in exceptions or not oid.startswith(prefix):
            finished.add(column)
            continue
        index = oid[len(prefix):]
        values = results[column]
        # an agent that walks in circles or backwards: stop rather than loop until the deadline (bytes compare
        # in OID order except across sub-identifier lengths, so only a suspect pair is compared by numbers)
        if index in values or oid <= last[column] and ber.decode_subids(oid) <= ber.decode_subids(last[column]):
            raise SnmpError(Failure.PROTOCOL_ERROR, f"OID not increasing at {ber.decode_oid(oid)}")
        last[column] = oid
        values[index] = varbind.value
    return [column for column in active if column not in finished]


def _raise_for_status(response: ber.Response) -> None:
    status = response.error_status
    if status in (0, ber.NO_SUCH_NAME):
        return
    name = _ERROR_NAMES.get(status, f"error-status {status}")
    if status == AUTHORIZATION_ERROR:
        raise SnmpError(Failure.AUTH_FAILED, f"the agent answered {name}: this community or user may not read these objects")
    raise SnmpError(Failure.PROTOCOL_ERROR, f"the agent answered {name} (error-index {response.error_index})")


def _timeout_detail(attempts: int, timeout: float, version: int, note: str = "") -> str:
    if note:
        return f"no response to {attempts} request(s) of {timeout:g}s: {note}"
    hint = " (a wrong privacy passphrase is answered with silence)" if version == 3 else \
        " (a wrong community is answered with silence)"
    return f"no response to {attempts} request(s) of {timeout:g}s{hint}"
