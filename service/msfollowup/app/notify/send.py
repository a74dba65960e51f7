"""The two ways out: a signed JSON webhook (httpx) and e-mail over SMTP with STARTTLS (smtplib).

Errors become SendError with a message naming the destination and the problem, never the payload
(it may hold patient data for destinations that include it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

import httpx

from msfollowup.site.notify_config import NotifyDestination
from msfollowup.app.notify.events import subject, text_body

SIGNATURE_HEADER = "X-Msfollowup-Signature"


class SendError(Exception):
    """A notification that did not arrive; retried with backoff."""


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (stable key order: a receiver may re-serialise)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_webhook(dest: NotifyDestination, payload: dict[str, Any], delivery_id: int) -> None:
    assert dest.url and dest.secret
    body = body_bytes(payload)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(dest.secret, body),
        "X-Msfollowup-Event": str(payload.get("event", "")),
        "X-Msfollowup-Delivery": str(delivery_id),  # the same id on a retry: receivers may de-duplicate
        "User-Agent": "msfollowup-notify",
    }
    try:
        rsp = httpx.post(dest.url, content=body, headers=headers, timeout=dest.timeout_seconds,
                         follow_redirects=False)
    except httpx.TimeoutException:
        raise SendError(f"{dest.key}: no answer within {dest.timeout_seconds:g} s") from None
    except httpx.HTTPError as exc:
        raise SendError(f"{dest.key}: {type(exc).__name__}: {exc}") from None
    if not 200 <= rsp.status_code < 300:
        raise SendError(f"{dest.key}: HTTP {rsp.status_code}")


def send_email(dest: NotifyDestination, payload: dict[str, Any]) -> None:
    assert dest.smtp_host and dest.from_
    msg = EmailMessage()
    msg["Subject"] = subject(payload)
    msg["From"] = dest.from_
    msg["To"] = ", ".join(dest.to)
    msg.set_content(text_body(payload))
    try:
        with smtplib.SMTP(dest.smtp_host, dest.smtp_port, timeout=dest.timeout_seconds) as smtp:
            smtp.ehlo()
            if dest.starttls:
                ctx = ssl.create_default_context(cafile=str(dest.ca_file) if dest.ca_file else None)
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if dest.username:
                smtp.login(dest.username, dest.password or "")
            smtp.send_message(msg)
    except smtplib.SMTPAuthenticationError as exc:
        raise SendError(f"{dest.key}: SMTP authentication refused ({exc.smtp_code})") from None
    except smtplib.SMTPNotSupportedError:
        raise SendError(f"{dest.key}: the SMTP server does not offer STARTTLS") from None
    except smtplib.SMTPResponseException as exc:
        raise SendError(f"{dest.key}: SMTP {exc.smtp_code}") from None
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        raise SendError(f"{dest.key}: {type(exc).__name__}: {exc}") from None


def send(dest: NotifyDestination, payload: dict[str, Any], delivery_id: int) -> None:
    if dest.kind == "webhook":
        send_webhook(dest, payload, delivery_id)
    else:
        send_email(dest, payload)
