"""The webhook transport of the outbox: one signed JSON POST per alert, retried with backoff until it is accepted.

Signature: ``X-Edgecap-Timestamp`` (Unix seconds) and ``X-Edgecap-Signature: sha256=HEX``, where HEX is the
HMAC-SHA256 of ``TIMESTAMP.BODY`` under the webhook's secret. A receiver recomputes it (``verify``) and refuses
old timestamps, so a captured request cannot be replayed later.

A 2xx answer confirms the message. A 4xx other than 408 and 429 will not change on retry: the message is dropped
with an error line. Anything else (no answer, 5xx, timeout) is retried after 1, 2, 4 ... 60 s, in order: later
alerts wait in the outbox behind the first undelivered one.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
import urllib.error
import urllib.request

from .._log import logger
from .outbox import Pending
from .settings import WebhookSettings

SIGNATURE_HEADER = "X-Edgecap-Signature"
TIMESTAMP_HEADER = "X-Edgecap-Timestamp"
_BACKOFF_MAX_S = 60.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: float = 300.0,
           now: float | None = None) -> bool:
    """True when ``signature`` is ``body``'s signature at ``timestamp`` and the timestamp is recent."""
    try:
        age = abs((time.time() if now is None else now) - float(timestamp))
    except ValueError:
        return False
    return age <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookTransport:
    """POSTs outbox rows one at a time (in order), with backoff between failed attempts.

    Args:
        settings: the ``[[webhook]]`` table.
        backoff_s: first delay after a failed attempt (doubles up to 60 s).
    """

    def __init__(self, settings: WebhookSettings, *, backoff_s: float = 1.0):
        self.settings = settings
        self._backoff_s = backoff_s
        self._row: Pending | None = None
        self._delay = 0.0
        self._next_try = 0.0
        self.attempts = 0

    def room(self) -> int:
        return 0 if self._row is not None else 1

    def submit(self, rows: list[Pending]) -> None:
        assert self._row is None and len(rows) == 1
        self._row, self._delay, self._next_try = rows[0], 0.0, 0.0

    def take_confirmed(self, timeout: float) -> list[int]:
        row = self._row
        if row is None:
            time.sleep(timeout)
            return []
        wait = self._next_try - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max(timeout, 0.05)))
            return []
        if self._post(row.payload.encode("utf-8")):
            self._row = None
            return [row.id]
        self._delay = min(_BACKOFF_MAX_S, max(self._backoff_s, 2 * self._delay))
        self._next_try = time.monotonic() + self._delay * random.uniform(0.75, 1.0)
        return []

    def _post(self, body: bytes) -> bool:
        """One attempt; True when the message is done with (accepted, or refused for good)."""
        self.attempts += 1
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp, "User-Agent": "edgecap"}
        if self.settings.secret:
            headers[SIGNATURE_HEADER] = sign(self.settings.secret, stamp, body)
        request = urllib.request.Request(self.settings.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                response.read(1024)
            return True
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                logger.error("webhook %s refused an alert with HTTP %d; dropped it (fix the receiver or the url)",
                             self.settings.name, exc.code)
                return True
            reason = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            reason = str(getattr(exc, "reason", exc))
        logger.warning("webhook %s: delivery failed (%s); retrying", self.settings.name, reason)
        return False

    def close(self, timeout: float) -> None:
        self._row = None
