#!/usr/bin/env python3
"""A real SMTP server for the passwordless tests: aiosmtpd (PyPI), an implementation
independent of the lettre client Postern sends with, listening on free loopback ports in
each transport mode an `email` connection can use.

    server.py CERT KEY

CERT and KEY are PEM files: a certificate for 127.0.0.1 (made by the test, signed by its
throwaway CA) and its key. The listeners:

- `plain`: no TLS, no authentication (a local relay reached with `SMTP_TLS_NONE`);
- `opportunistic`: offers STARTTLS, takes mail without authentication (a credential-less
  relay reached with `SMTP_TLS_OPPORTUNISTIC`);
- `starttls`: requires STARTTLS before anything else, then AUTH (port 587 style, reached
  with `SMTP_TLS_STARTTLS`);
- `implicit`: TLS from the first byte, then AUTH (SMTPS, port 465 style, reached with
  `SMTP_TLS_IMPLICIT`).

The authenticated listeners take the user `mailer` with the password `smtp-secret`.

Prints one JSON line, {"ports": {listener: port, ...}}, once every listener is up; then one
JSON line per event: {"event": "auth", "listener", "user", "ok"} for each AUTH, and
{"event": "mail", "listener", "tls", "login", "from", "to", "subject", "text", "html"} for
each message accepted, with `tls` whether the session was encrypted, `login` the user it
authenticated as (null for none) and the parts decoded. Exits when its standard input
closes (the test binary that started it ended).
"""

import asyncio
import email
import email.policy
import json
import os
import ssl
import sys
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USER, PASSWORD = b"mailer", b"smtp-secret"
lock = threading.Lock()


def emit(event):
    with lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def parts(content):
    """The subject, and the plain text and HTML parts of a message, decoded."""
    message = email.message_from_bytes(content, policy=email.policy.default)
    text = html = ""
    for part in message.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() == "text/plain" and not text:
            text = part.get_content()
        elif part.get_content_type() == "text/html" and not html:
            html = part.get_content()
    return str(message.get("subject", "")), text, html


class Handler:
    def __init__(self, listener):
        self.listener = listener

    async def handle_DATA(self, server, session, envelope):
        encrypted = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        data = session.auth_data if session.authenticated else None
        login = data.login.decode(errors="replace") if isinstance(data, LoginPassword) else None
        subject, text, html = parts(envelope.original_content or envelope.content)
        emit({
            "event": "mail",
            "listener": self.listener,
            "tls": encrypted,
            "login": login,
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": subject,
            "text": text,
            "html": html,
        })
        return "250 OK"


def authenticator(listener):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER and auth_data.password == PASSWORD
        user = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else None
        emit({"event": "auth", "listener": listener, "user": user, "ok": ok})
        # `handled=False`: aiosmtpd answers a refusal itself (535).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return check


async def main(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    listeners = {
        "plain": ({}, None),
        "opportunistic": ({"tls_context": context}, None),
        "starttls": (
            {
                "tls_context": context,
                "require_starttls": True,
                "auth_required": True,
                "authenticator": authenticator("starttls"),
            },
            None,
        ),
        # TLS from the first byte: the session is encrypted before AUTH, which aiosmtpd's
        # `auth_require_tls` (it knows only STARTTLS) cannot see.
        "implicit": (
            {"auth_required": True, "auth_require_tls": False, "authenticator": authenticator("implicit")},
            context,
        ),
    }
    ports = {}
    for name, (kwargs, wrap) in listeners.items():
        server = await loop.create_server(
            lambda name=name, kwargs=kwargs: SMTP(Handler(name), hostname="sink.test", **kwargs),
            host="127.0.0.1",
            port=0,
            ssl=wrap,
        )
        ports[name] = server.sockets[0].getsockname()[1]
    emit({"ports": ports})
    # Until the test binary's end closes the pipe.
    await loop.run_in_executor(None, sys.stdin.read)
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
