"""sd_notify(3) without libsystemd: readiness, watchdog and status messages to systemd.

systemd passes the address of a unix datagram socket in $NOTIFY_SOCKET (a path, or an abstract name
written with a leading '@'); each message is one datagram of newline-separated KEY=VALUE lines. Outside
systemd the variable is unset and every call is a no-op, so the service code never has to ask.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the socket named at construction; `enabled` is False outside systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _socket_address(address) if address else None
        # systemd kills the service when no WATCHDOG=1 arrives within WATCHDOG_USEC; pinging at half
        # the interval (what sd_watchdog_enabled(3) recommends) leaves room for one late wake-up.
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec and self.address else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one message; False (and a debug line) when it could not be delivered, never an exception:
        a notification that systemd did not get must not take the DICOM node down."""
        if self.address is None or not lines:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode("utf-8"), self.address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc.strerror)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.watchdog_interval is not None and self.send("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace (Linux)
    if value.startswith("/"):
        return value
    # vsock: and other transports are for VMs; a relative path would depend on our cwd.
    log.warning("NOTIFY_SOCKET %r is not supported (need an absolute path or @abstract name); not notifying", value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID, when set, must be our pid)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = env.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec if usec > 0 else None
