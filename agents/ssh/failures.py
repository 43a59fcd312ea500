"""The failure reasons of SSH checks, over the common ones (docs/metrics.md lists every reason)."""

from agents.results import Failure, Reason


class SshFailure(Failure):
    HOST_KEY_UNKNOWN = Reason("host_key_unknown")  # the host's key is not in known_hosts (never auto-added)
    HOST_KEY_CHANGED = Reason("host_key_changed")  # the host's key differs from the known or pinned one
    COMMAND_FAILED = Reason("command_failed")  # the command exited non-zero (or the server refused to run it)
    PARSE_ERROR = Reason("parse_error")  # the command's output is not what its parser reads
