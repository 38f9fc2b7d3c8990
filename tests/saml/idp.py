#!/usr/bin/env python3
"""The SAML 2.0 identity provider of Postern's tests: pysaml2 (signing through xmlsec1) on a
free loopback port, started once per test binary by postern-testkit's `saml` module.

It prints one JSON line when ready: {"url": ..., "entity_id": ..., "certificate": PEM,
"other_certificate": PEM} ("other" is a second key pair that no connection trusts). It exits
when its standard input closes (the test binary ended, however it ended), unless run by hand
with --keep-running (the README's walk-through: --port 8088 --cert-out idp.crt, then
`curl -d "$(jq -n --arg m "$(curl -s <SP metadata URL>)" '{metadata: $m}')" :8088/control/sp`).

  GET  /metadata             the IdP's metadata
  GET  /metadata/<name>      the IdP's metadata as published under <name>: signed for by the
                             key that /control/metadata last set for <name> ("idp" until then),
                             with the Cache-Control it set (none until then); how a test rolls
                             the IdP's signing key over for the connections reading <name>
  GET  /sso/redirect         an HTTP-Redirect AuthnRequest -> an auto-submitting form that
                             posts the SAMLResponse (and RelayState) to the SP's ACS
  POST /sso/post             the same for an HTTP-POST AuthnRequest
  GET  /slo/redirect         an HTTP-Redirect LogoutRequest (recorded; its signature checked
                             when signed) -> a redirect with the LogoutResponse (and RelayState)
                             to the SP metadata's SingleLogoutService
  GET  /control/logouts      the LogoutRequests received: [{"sp", "name_id", "name_id_format",
                             "session_index": [...], "signed", "destination"}]
  POST /control/sp           JSON {"metadata": SP metadata XML, "mode": {...}}: registers an SP
                             (known by its entityID) and how its responses are made
  POST /control/metadata     JSON {"name": ..., "key": idp | other, "cache_control": ...}: what
                             GET /metadata/<name> publishes from now on
  POST /control/mint         JSON {"sp": entity id, "in_response_to": id, "acs": URL, "mode": {...}}:
                             {"response": base64 SAMLResponse} without any request (an
                             unsolicited one without in_response_to; to the SP's first ACS
                             unless "acs" names another)

A mode (every key optional): sign = both | response | assertion | none (default assertion);
key = idp | other (default idp); lifetime_seconds (default 300); audience (default the SP's
entity id); in_response_to (overrides the request's); nameid; attrs ({name: [values]});
assertion_id (a fixed assertion ID); wrap = sibling | inside (XML signature wrapping: an
unsigned assertion for "mallory" beside the signed one, or around it); sha1 (sign with
RSA-SHA1 and SHA-1 digests instead of RSA-SHA256); encrypt ({"content": aes128-gcm |
aes256-gcm | aes128-cbc | aes256-cbc, "transport": rsa-oaep-mgf1p | rsa-oaep, "to": sp |
other}: the assertion encrypted by xmlsec1 to the SP metadata's encryption certificate, or
to the "other" certificate; signing happens before encryption for the assertion and after
it for the response, as pysaml2 does).
"""
import base64
import json
import os
import re
import sys
import tempfile
import threading
import traceback
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import saml2.assertion
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, s_utils
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_EMAILADDRESS, NameID, Audience, AudienceRestriction
from saml2.server import Server
from saml2.sigver import RSACrypto, verify_redirect_signature
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1, SIG_RSA_SHA256
import saml2.entity
import saml2.sigver

LOCK = threading.Lock()
SPS = {}  # entity id -> {"metadata": xml, "mode": {...}}
PUBLISHED = {}  # metadata name -> {"key": idp | other, "cache_control": header value or None}
LOGOUTS = []  # the LogoutRequests received: {"sp", "name_id", "session_index", "signed"}
OVERRIDE = {"assertion_id": None, "audience": None, "msg_enc": None, "key_enc": None}
CONTENT_ENCRYPTION = {
    "aes128-gcm": "http://www.w3.org/2009/xmlenc11#aes128-gcm",
    "aes256-gcm": "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    "aes128-cbc": "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
    "aes256-cbc": "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
}
KEY_TRANSPORT = {
    "rsa-oaep-mgf1p": "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
    "rsa-oaep": "http://www.w3.org/2009/xmlenc11#rsa-oaep",
}

DEFAULT_ATTRS = {
    "mail": ["alice@fabrikam.example"],
    "displayName": ["Alice Example"],
    "givenName": ["Alice"],
    "sn": ["Example"],
    "groups": ["timesheets-users", "engineering"],
}

# Fixed assertion ids and foreign audiences, by patching the two pysaml2 factories that make them.
_assertion_factory = s_utils.assertion_factory


def _patched_assertion_factory(**kwargs):
    a = _assertion_factory(**kwargs)
    if OVERRIDE["assertion_id"]:
        a.id = OVERRIDE["assertion_id"]
    return a


saml2.assertion.assertion_factory = _patched_assertion_factory
_conditions = saml2.assertion.Policy.conditions


def _patched_conditions(self, sp_entity_id):
    c = _conditions(self, sp_entity_id)
    if OVERRIDE["audience"]:
        c.audience_restriction = [AudienceRestriction(audience=[Audience(text=OVERRIDE["audience"])])]
    return c


saml2.assertion.Policy.conditions = _patched_conditions
# The encryption algorithms of the mode (pysaml2 encrypts with Triple DES unless told).
_pre_encryption_part = saml2.entity.pre_encryption_part


def _patched_pre_encryption_part(**kwargs):
    if OVERRIDE["msg_enc"]:
        kwargs["msg_enc"] = OVERRIDE["msg_enc"]
    if OVERRIDE["key_enc"]:
        kwargs["key_enc"] = KEY_TRANSPORT["rsa-oaep-mgf1p"]  # see _patched_encrypt_assertion
    return _pre_encryption_part(**kwargs)


saml2.entity.pre_encryption_part = _patched_pre_encryption_part
# ... and xmlsec1's session key to match (pysaml2 always asks for des-192).
_encrypt_assertion = saml2.sigver.SecurityContext.encrypt_assertion


def _patched_encrypt_assertion(self, statement, enc_key, template, key_type="des-192", node_xpath=None):
    if OVERRIDE["msg_enc"]:
        key_type = "aes-256" if "aes256" in OVERRIDE["msg_enc"] else "aes-128"
    xml = _encrypt_assertion(self, statement, enc_key, template, key_type, node_xpath)
    if OVERRIDE["key_enc"] == KEY_TRANSPORT["rsa-oaep"]:
        # xmlsec1 1.2 knows only the 2001 name of RSA-OAEP. XML Encryption 1.1's rsa-oaep
        # with its defaults (SHA-1 digest, MGF1 with SHA-1) is the same computation, so the
        # key wrapped as rsa-oaep-mgf1p is relabelled (before the response is signed).
        xml = xml.replace(KEY_TRANSPORT["rsa-oaep-mgf1p"], KEY_TRANSPORT["rsa-oaep"])
    return xml


saml2.sigver.SecurityContext.encrypt_assertion = _patched_encrypt_assertion


def key_pair(directory, name, cn):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = os.path.join(directory, name + ".key"), os.path.join(directory, name + ".crt")
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


class Idp:
    def __init__(self, base, keys):
        self.base = base
        self.keys = keys  # name -> (key file, cert file)

    def server(self, key="idp", lifetime=300):
        key_file, cert_file = self.keys[key]
        with LOCK:
            mds = [sp["metadata"] for sp in SPS.values()]
        conf = IdPConfig()
        conf.load({
            "entityid": self.base + "/metadata", "key_file": key_file, "cert_file": cert_file,
            "metadata": {"inline": mds} if mds else {},
            "service": {"idp": {
                "endpoints": {"single_sign_on_service": [(self.base + "/sso/redirect", BINDING_HTTP_REDIRECT),
                                                         (self.base + "/sso/post", BINDING_HTTP_POST)],
                              "single_logout_service": [(self.base + "/slo/redirect", BINDING_HTTP_REDIRECT)]},
                "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
                "policy": {"default": {"lifetime": {"seconds": lifetime}, "attribute_restrictions": None,
                                       "name_form": NAME_FORMAT_URI}}}},
        })
        return Server(config=conf), conf

    def response(self, sp_entity, acs, in_response_to, mode):
        mode = mode or {}
        idp, _ = self.server(mode.get("key", "idp"), int(mode.get("lifetime_seconds", 300)))
        attrs = mode.get("attrs") or DEFAULT_ATTRS
        nameid = mode.get("nameid") or attrs.get("mail", ["alice@fabrikam.example"])[0]
        sign = mode.get("sign", "assertion")
        sha1 = bool(mode.get("sha1"))
        encrypt = mode.get("encrypt")  # {} encrypts with the defaults
        encryption = {}
        if encrypt is not None:
            encryption["encrypt_assertion"] = True
            if encrypt.get("to") == "other":
                with open(self.keys["other"][1]) as f:
                    encryption["encrypt_cert_assertion"] = f.read()
        with LOCK:  # the overrides are process-wide
            OVERRIDE["assertion_id"] = mode.get("assertion_id")
            OVERRIDE["audience"] = mode.get("audience")
            if encrypt is not None:
                OVERRIDE["msg_enc"] = CONTENT_ENCRYPTION[encrypt.get("content", "aes128-gcm")]
                OVERRIDE["key_enc"] = KEY_TRANSPORT[encrypt.get("transport", "rsa-oaep-mgf1p")]
            try:
                xml = str(idp.create_authn_response(
                    identity=attrs, in_response_to=mode.get("in_response_to", in_response_to), destination=acs,
                    sp_entity_id=sp_entity, userid=nameid,
                    name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=nameid),
                    authn={"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:Password"},
                    sign_response=sign in ("both", "response"), sign_assertion=sign in ("both", "assertion"),
                    sign_alg=SIG_RSA_SHA1 if sha1 else SIG_RSA_SHA256,
                    digest_alg=DIGEST_SHA1 if sha1 else DIGEST_SHA256, **encryption))
            finally:
                for k in OVERRIDE:
                    OVERRIDE[k] = None
        wrap = mode.get("wrap")
        if wrap:
            xml = wrapped(xml, wrap)
        return xml


ASSERTION = re.compile(r"<(?P<p>[A-Za-z0-9_]+):Assertion\b.*?</(?P=p):Assertion>", re.S)
SIGNATURE = re.compile(r"<(?P<p>[A-Za-z0-9_]+):Signature\b.*?</(?P=p):Signature>", re.S)


def wrapped(xml, how):
    """XML signature wrapping: the signed assertion kept byte for byte (its signature still
    verifies), and an unsigned assertion about mallory beside it or around it."""
    m = ASSERTION.search(xml)
    if not m:
        raise ValueError("no assertion to wrap")
    signed = m.group(0)
    evil = SIGNATURE.sub("", signed, count=1)
    evil = re.sub(r"(NameID\b[^>]*>)[^<]*(<)", r"\1mallory@fabrikam.example\2", evil, count=1)
    evil = re.sub(r"alice@fabrikam\.example", "mallory@fabrikam.example", evil)
    if how == "sibling":
        evil = re.sub(r'\bID="[^"]*"', 'ID="_evil"', evil, count=1)
        return xml[: m.start()] + evil + signed + xml[m.end():]
    if how == "inside":
        # The evil assertion takes the signed one's place (and its ID) and carries it inside.
        p = m.group("p")
        close = "</%s:Assertion>" % p
        evil = evil[: -len(close)] + signed + close
        return xml[: m.start()] + evil + xml[m.end():]
    raise ValueError("unknown wrap %r" % how)


def entity_of(metadata):
    m = re.search(r'entityID="([^"]+)"', metadata)
    if not m:
        raise ValueError("the SP metadata names no entityID")
    return m.group(1)


def acs_of(metadata):
    m = re.search(r'<[^>]*AssertionConsumerService\b[^>]*Location="([^"]+)"', metadata)
    if not m:
        raise ValueError("the SP metadata names no AssertionConsumerService")
    return m.group(1).replace("&amp;", "&")


def main():
    import argparse
    ap = argparse.ArgumentParser(description="Postern's loopback SAML IdP (see the module's doc)")
    ap.add_argument("--port", type=int, default=0, help="the port (default: a free one)")
    ap.add_argument("--cert-out", help="also write the IdP's signing certificate (PEM) to this file")
    ap.add_argument("--keep-running", action="store_true", help="do not exit when standard input closes")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="postern-saml-idp-")
    keys = {"idp": key_pair(tmp, "idp", "Fabrikam test IdP"), "other": key_pair(tmp, "other", "Someone else")}
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), BaseHTTPRequestHandler)
    base = "http://127.0.0.1:%d" % srv.server_address[1]
    idp = Idp(base, keys)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body, ctype="text/html; charset=utf-8"):
            b = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

        def _json(self, code, obj):
            self._send(code, json.dumps(obj), "application/json")

        def _sso(self, q, binding):
            if "SAMLRequest" not in q:
                return self._send(400, "missing SAMLRequest", "text/plain")
            try:
                server, _ = idp.server()
                msg = server.parse_authn_request(q["SAMLRequest"], binding).message
                sp = msg.issuer.text
                with LOCK:
                    entry = SPS.get(sp)
                if entry is None:
                    return self._send(400, "unknown SP %r" % sp, "text/plain")
                if binding == BINDING_HTTP_REDIRECT and "Signature" in q:
                    # A redirect's signature, against the certificates of the SP's metadata.
                    certs = [c for _, c in server.metadata.certs(sp, "spsso", "signing")]
                    crypto = RSACrypto(None)
                    if not any(verify_redirect_signature(dict(q), crypto, cert=c) for c in certs):
                        return self._send(400, "the request's signature does not verify", "text/plain")
                    q["signed"] = "yes"
                if binding == BINDING_HTTP_POST and msg.signature is not None:
                    # parse_authn_request checked the enveloped signature against the
                    # certificates of the SP's metadata (a bad one raised).
                    q["signed"] = "yes"
                if entry["mode"].get("require_signed_request") and q.get("signed") != "yes":
                    return self._send(400, "this SP must sign its requests", "text/plain")
                acs = server.response_args(msg, [BINDING_HTTP_POST])["destination"]
                xml = idp.response(sp, acs, msg.id, entry["mode"])
                http = server.apply_binding(BINDING_HTTP_POST, xml, acs, q.get("RelayState", ""), response=True)
            except Exception as e:  # the test reads the page
                traceback.print_exc()
                return self._send(400, "bad AuthnRequest: %r" % e, "text/plain")
            self._send(200, http["data"])

        def _slo(self, q):
            """An SP's LogoutRequest by HTTP-Redirect: recorded (its signature checked when it
            has one), then a LogoutResponse by HTTP-Redirect to the SP metadata's single
            logout service, with the RelayState."""
            if "SAMLRequest" not in q:
                return self._send(400, "missing SAMLRequest", "text/plain")
            try:
                server, _ = idp.server()
                req = server.parse_logout_request(q["SAMLRequest"], BINDING_HTTP_REDIRECT)
                msg = req.message
                sp = msg.issuer.text
                signed = False
                if "Signature" in q:
                    certs = [c for _, c in server.metadata.certs(sp, "spsso", "signing")]
                    if not any(verify_redirect_signature(dict(q), RSACrypto(None), cert=c) for c in certs):
                        return self._send(400, "the request's signature does not verify", "text/plain")
                    signed = True
                with LOCK:
                    LOGOUTS.append({"sp": sp, "name_id": msg.name_id.text if msg.name_id is not None else None,
                                    "name_id_format": msg.name_id.format if msg.name_id is not None else None,
                                    "session_index": [i.text for i in (msg.session_index or [])],
                                    "signed": signed, "destination": msg.destination})
                response = server.create_logout_response(msg, [BINDING_HTTP_REDIRECT])
                destination = server.metadata.single_logout_service(sp, BINDING_HTTP_REDIRECT, "spsso")[0]["location"]
                http = server.apply_binding(BINDING_HTTP_REDIRECT, str(response), destination,
                                            q.get("RelayState", ""), response=True)
            except Exception as e:  # the test reads the page
                traceback.print_exc()
                return self._send(400, "bad LogoutRequest: %r" % e, "text/plain")
            location = dict(http["headers"])["Location"]
            self.send_response(303)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            u = urllib.parse.urlparse(self.path)
            q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
            if u.path == "/slo/redirect":
                return self._slo(q)
            if u.path == "/control/logouts":
                with LOCK:
                    return self._json(200, list(LOGOUTS))
            if u.path == "/metadata":
                _, conf = idp.server()
                return self._send(200, str(entity_descriptor(conf)), "application/samlmetadata+xml")
            if u.path.startswith("/metadata/"):
                with LOCK:
                    published = dict(PUBLISHED.get(u.path[len("/metadata/"):]) or {})
                _, conf = idp.server(published.get("key") or "idp")
                body = str(entity_descriptor(conf)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/samlmetadata+xml")
                self.send_header("Content-Length", str(len(body)))
                if published.get("cache_control"):
                    self.send_header("Cache-Control", published["cache_control"])
                self.end_headers()
                return self.wfile.write(body)
            if u.path == "/sso/redirect":
                return self._sso(q, BINDING_HTTP_REDIRECT)
            self._send(404, "not found", "text/plain")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            try:
                if self.path == "/sso/post":
                    q = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
                    return self._sso(q, BINDING_HTTP_POST)
                if self.path == "/control/sp":
                    j = json.loads(body)
                    md = j["metadata"]
                    with LOCK:
                        SPS[entity_of(md)] = {"metadata": md, "mode": j.get("mode") or {}}
                    return self._json(200, {"entity_id": entity_of(md)})
                if self.path == "/control/metadata":
                    j = json.loads(body)
                    if j.get("key", "idp") not in idp.keys:
                        return self._json(400, {"error": "key must be idp or other"})
                    with LOCK:
                        PUBLISHED[j["name"]] = {"key": j.get("key", "idp"), "cache_control": j.get("cache_control")}
                    return self._json(200, {})
                if self.path == "/control/mint":
                    j = json.loads(body)
                    with LOCK:
                        entry = SPS[j["sp"]]
                    mode = dict(entry["mode"])
                    mode.update(j.get("mode") or {})
                    acs = j.get("acs") or acs_of(entry["metadata"])
                    xml = idp.response(j["sp"], acs, j.get("in_response_to") or None, mode)
                    return self._json(200, {"response": base64.b64encode(xml.encode()).decode(), "xml": xml})
            except Exception as e:
                traceback.print_exc()
                return self._json(400, {"error": repr(e)})
            self._send(404, "not found", "text/plain")

    def lifeline():
        sys.stdin.read()
        os._exit(0)

    srv.RequestHandlerClass = H
    if not args.keep_running:
        threading.Thread(target=lifeline, daemon=True).start()
    with open(keys["idp"][1]) as f:
        cert = f.read()
    if args.cert_out:
        with open(args.cert_out, "w") as f:
            f.write(cert)
    with open(keys["other"][1]) as f:
        other = f.read()
    print(json.dumps({"url": base, "entity_id": base + "/metadata", "certificate": cert, "other_certificate": other}),
          flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
