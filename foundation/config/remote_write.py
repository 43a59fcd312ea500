"""The remote_write sender's config section: the agent's `push:` and the collector's `remote_write:` share it."""

from __future__ import annotations

from urllib.parse import urlsplit

from foundation.config.base import Strict as _Strict
from foundation.config.types import Duration, FilePath, SecretFile, SecretRef

MIN_PUSH_QUEUE_BYTES = 1 << 20


class PushTls(_Strict):
    """How the agent checks the collector (and, for mTLS, shows itself)."""

    ca_file: FilePath | None = None  # CA bundle the collector's certificate must chain to (default: system CAs)
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    server_name: str | None = None  # name to verify instead of the URL's host
    insecure_skip_verify: bool = False


class PushQueue(_Strict):
    """The on-disk queue samples wait in until the collector acknowledged them (see docs/push.md)."""

    directory: str
    max_bytes: int = 256 << 20
    max_age: Duration = Duration(86400)
    fsync_interval: Duration = Duration(1)


class PushConfig(_Strict):
    """`push:` remote_write every probe result to the collector, through a durable queue."""

    url: str  # e.g. https://collector.example:9856/api/v1/write
    queue: PushQueue
    bearer_token: SecretRef | None = None
    bearer_token_file: SecretFile | None = None
    tls: PushTls = PushTls()
    interval: Duration = Duration(5)  # how long samples may wait to be sent together
    self_metrics_interval: Duration = Duration(15)  # the agent's own and host metrics, pushed this often
    batch_max_samples: int = 2000
    timeout: Duration = Duration(10)  # one request, connect to response
    min_backoff: Duration = Duration(1)
    max_backoff: Duration = Duration(60)

    def validate(self) -> None:
        """Raise ValueError("key: message"); nested keys are dotted."""
        url = urlsplit(self.url)
        try:
            _ = url.port  # urlsplit checks the port only when asked
        except ValueError:
            raise ValueError(f"url: invalid port in {self.url!r}") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"url: expected http(s)://HOST[:PORT]/PATH, got {self.url!r}")
        if url.username is not None or url.password is not None:
            raise ValueError("url: no credentials in the URL (it is logged); use bearer_token or bearer_token_file")
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("bearer_token: use only one of bearer_token and bearer_token_file")
        if url.scheme == "http" and self.tls != PushTls():
            raise ValueError("tls: TLS settings need an https:// url")
        if (self.tls.cert_file is None) != (self.tls.key_file is None):
            raise ValueError("tls.cert_file: cert_file and key_file are set together")
        durations = {
            "interval": self.interval, "timeout": self.timeout, "min_backoff": self.min_backoff,
            "self_metrics_interval": self.self_metrics_interval,
            "queue.max_age": self.queue.max_age, "queue.fsync_interval": self.queue.fsync_interval,
        }
        for key, seconds in durations.items():
            if seconds <= 0:
                raise ValueError(f"{key}: must be greater than 0")
        if self.max_backoff < self.min_backoff:
            raise ValueError("max_backoff: must not be shorter than min_backoff")
        if self.batch_max_samples < 1:
            raise ValueError("batch_max_samples: must be at least 1")
        if self.queue.max_bytes < MIN_PUSH_QUEUE_BYTES:
            raise ValueError(f"queue.max_bytes: must be at least {MIN_PUSH_QUEUE_BYTES} (1 MiB)")
