"""The failure reasons of SNMP polls, over the common ones (docs/metrics.md lists every reason)."""

from agents.results import Failure, Reason


class SnmpFailure(Failure):
    SNMP_UNKNOWN_USER = Reason("unknown_user")  # v3: usmStatsUnknownUserNames
    SNMP_NOT_IN_TIME_WINDOW = Reason("not_in_time_window")  # v3: usmStatsNotInTimeWindows persisted
    SNMP_TOO_BIG = Reason("too_big")  # tooBig even for a one-row request
    SNMP_NO_SUCH_NAME = Reason("no_such_name")  # v1: noSuchName for a requested object
    DECODE_ERROR = Reason("decode_error")  # a response that is not valid BER/SNMP
