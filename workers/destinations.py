"""Where notifications go: a webhook (`CARBONHOOK_NOTIFY_URL`, Slack's format) or e-mail through
an SMTP server (`CARBONHOOK_SMTP_URL` to `CARBONHOOK_NOTIFY_EMAIL`).

E-mail goes through the standard library's `smtplib`: one message to a few addresses needs no
more, and a multi-channel library would bring its own HTTP stack beside httpx. Each destination
sends a message (carbonhook/notices.py) and says why not when it could not; it is shown and
stored by `shown` and `key`, never by an address that may hold a secret.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from carbonhook.notices import redact


class Destination(Protocol):
    @property
    def key(self) -> str:
        """Stable and secret-free: which destinations took a notification is kept by it."""
        ...

    @property
    def shown(self) -> str: ...

    def send(self, message: dict[str, Any]) -> str | None:
        """Deliver `message`; None if it was taken, else why not (never a secret)."""
        ...


def refusal(status_code: int) -> str | None:
    """What a webhook's answer means: None when it took the message."""
    return None if 200 <= status_code < 300 else f"HTTP {status_code}"


def _key(address: str) -> str:
    return hashlib.sha256(address.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Webhook:
    """A URL that takes a JSON POST. Its path is often its key (Slack's is): masked."""

    url: str = field(repr=False)
    client: httpx.Client = field(repr=False)

    @property
    def key(self) -> str:
        return _key(self.url)

    @property
    def shown(self) -> str:
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        hidden = "/***" if parts.path.strip("/") or parts.query else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}{hidden}"

    def send(self, message: dict[str, Any]) -> str | None:
        try:
            response = self.client.post(self.url, json=message)
        except httpx.HTTPError as exc:
            return str(redact(f"{type(exc).__name__}: {exc}", (self.url,)))[:300]
        return refusal(response.status_code)


@dataclass(frozen=True)
class Email:
    """An SMTP server (`smtp://` with STARTTLS when it offers it, `smtps://` TLS from the first
    byte; user and password in the URL, `?from=` the sender) and the addresses it mails."""

    url: str = field(repr=False)
    to: tuple[str, ...]
    timeout_s: float = 10.0

    @property
    def key(self) -> str:
        return _key(f"{self.url} {','.join(self.to)}")

    @property
    def shown(self) -> str:
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port} to {', '.join(self.to)}"

    def send(self, message: dict[str, Any]) -> str | None:
        try:
            self._send(message)
        except (smtplib.SMTPException, OSError) as exc:
            return str(redact(f"{type(exc).__name__}: {exc}", (self.url,)))[:300]
        return None

    def _send(self, message: dict[str, Any]) -> None:
        parts = urlsplit(self.url)
        sender = parse_qs(parts.query).get("from", [f"carbonhook@{parts.hostname}"])[0]
        mail = EmailMessage()
        mail["Subject"] = subject_of(message)
        mail["From"] = sender
        mail["To"] = ", ".join(self.to)
        mail.set_content(str(message.get("text", "")))
        host = parts.hostname or "localhost"
        smtp: smtplib.SMTP
        if parts.scheme == "smtps":
            context = ssl.create_default_context()
            smtp = smtplib.SMTP_SSL(
                host, parts.port or 465, timeout=self.timeout_s, context=context
            )
        else:
            smtp = smtplib.SMTP(host, parts.port or 25, timeout=self.timeout_s)
        with smtp:
            if parts.scheme == "smtp":
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=ssl.create_default_context())
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(mail)


def subject_of(message: dict[str, Any]) -> str:
    """The first line of the text, cut short: mail clients show little more."""
    first = str(message.get("text", "carbonhook")).splitlines()[0] if message.get("text") else ""
    return (first or f"carbonhook: {message.get('kind')}")[:120]


def destinations_of(
    urls: Sequence[str],
    client: httpx.Client,
    *,
    smtp_url: str | None = None,
    emails: Sequence[str] = (),
    timeout_s: float = 10.0,
) -> tuple[Destination, ...]:
    """Every destination the settings name: each webhook, and e-mail when both the server
    and at least one address are set."""
    found: list[Destination] = [Webhook(url, client) for url in urls]
    if smtp_url and emails:
        found.append(Email(smtp_url, tuple(emails), timeout_s=timeout_s))
    return tuple(found)
