#!/usr/bin/env python3
"""A loopback mail sink to try `email` connections without a mail server: Python's aiosmtpd
(`pip install aiosmtpd`) taking plain SMTP on 127.0.0.1 and printing each message it receives,
decoded (a magic link printed as sent would be cut by quoted-printable line breaks). Nothing
leaves the machine.

    mail-sink.py [PORT]

Default port 2525. Point an `email` connection at it with `smtp_host` 127.0.0.1, `smtp_port`
PORT and `smtp_tls` SMTP_TLS_NONE (the sink speaks neither TLS nor AUTH).
"""

import asyncio
import email
import email.policy
import sys

from aiosmtpd.smtp import SMTP

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 2525


class Printer:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain", "html"))
        text = body.get_content().strip() if body is not None else ""
        print(f"Mail to {', '.join(envelope.rcpt_tos)} from {envelope.mail_from}: {message['subject']}", flush=True)
        print(f"  {text}", flush=True)
        return "250 OK"


async def main():
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(Printer(), hostname="mail-sink"), host="127.0.0.1", port=PORT
    )
    print(f"Mail sink on 127.0.0.1:{PORT} (plain SMTP, no TLS, no AUTH)", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
