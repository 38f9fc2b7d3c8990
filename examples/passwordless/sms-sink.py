#!/usr/bin/env python3
"""A loopback stand-in for Twilio's Messages API, to try `sms` connections without a carrier
(Python's standard library only). It takes what Postern sends, prints each text message,
and answers as Twilio does; nothing leaves the machine.

    sms-sink.py [PORT] [ACCOUNT] [TOKEN]

Defaults: port 8025, account AC00000000000000000000000000000000, token sink-token. Point an
`sms` connection at it with `provider_url` http://127.0.0.1:PORT/2010-04-01 and the same
`account` and `token`. It checks what Twilio checks: the path
`/2010-04-01/Accounts/<account>/Messages.json`, HTTP Basic authentication with the account
and token (401 otherwise), and the form fields `To`, `From` and `Body` (400 without them).
It also answers `GET /2010-04-01/Accounts/<account>.json` (the account, which Postern's
TestConnection reads to try the credentials) with the same checks.
"""

import base64
import datetime
import http.server
import json
import sys
import urllib.parse
import uuid

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8025
ACCOUNT = sys.argv[2] if len(sys.argv) > 2 else "AC" + "0" * 32
TOKEN = sys.argv[3] if len(sys.argv) > 3 else "sink-token"


class Sink(http.server.BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authenticated(self):
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def do_GET(self):
        if self.path != f"/2010-04-01/Accounts/{ACCOUNT}.json":
            return self.answer(404, {"code": 20404, "message": f"The requested resource {self.path} was not found"})
        if not self.authenticated():
            return self.answer(401, {"code": 20003, "message": "Authenticate"})
        self.answer(200, {"sid": ACCOUNT, "friendly_name": "SMS sink", "status": "active", "type": "Full"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode("utf-8", "replace")))
        if self.path != f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json":
            return self.answer(404, {"code": 20404, "message": f"The requested resource {self.path} was not found"})
        if not self.authenticated():
            return self.answer(401, {"code": 20003, "message": "Authenticate"})
        missing = [f for f in ("To", "From", "Body") if not form.get(f)]
        if missing:
            return self.answer(400, {"code": 21604, "message": f"A '{missing[0]}' parameter is required."})
        print(f"SMS to {form['To']} from {form['From']}: {form['Body']}", flush=True)
        self.answer(201, {
            "sid": "SM" + uuid.uuid4().hex,
            "account_sid": ACCOUNT,
            "to": form["To"],
            "from": form["From"],
            "body": form["Body"],
            "status": "queued",
            "date_created": datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000"),
        })

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print(f"Twilio-shaped SMS sink on http://127.0.0.1:{PORT}/2010-04-01 (account {ACCOUNT}, token {TOKEN})", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Sink).serve_forever()
