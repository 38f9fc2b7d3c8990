#!/usr/bin/env python3
"""A tiny browser for fabrikam.sh (Python's standard library only): it follows a login from
an application's /authorize URL to the application's callback, as a person in a browser
would, and prints the query the application receives there as one JSON object.

    browse.py AUTHORIZE_URL CALLBACK LOGIN

- Redirects are followed with one cookie jar (Postern's binding cookie, the upstream's
  session), until one goes to CALLBACK (the application, which is never fetched).
- A page with a form: a form with a `login` field (the stand-in upstream's own login page,
  oidc-provider's development interactions) is filled with LOGIN and a password (the
  stand-in takes any); any other form (its consent page, a form_post page) is submitted as
  it is, as its button would.
- Exits non-zero, saying where, when a page has no way forward.
"""

import html.parser
import http.cookiejar
import json
import sys
import urllib.error
import urllib.parse
import urllib.request


class Forms(html.parser.HTMLParser):
    """The forms of a page: action, method and the fields with their values."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action") or "", "method": (a.get("method") or "get").lower(), "fields": []})
        elif tag in ("input", "button") and self.forms and a.get("name"):
            if tag == "button" or a.get("type") != "submit":
                self.forms[-1]["fields"].append([a["name"], a.get("value") or ""])


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    url, callback, login = sys.argv[1:]
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect())
    data = None
    for _ in range(16):
        request = urllib.request.Request(url, data=data)
        try:
            answer = opener.open(request, timeout=30)
            status, headers, body = answer.status, answer.headers, answer.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, e.headers, e.read().decode("utf-8", "replace")
        data = None
        if 300 <= status < 400:
            url = urllib.parse.urljoin(url, headers["Location"])
            if url.startswith(callback):
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
                print(json.dumps(query))
                return
            continue
        parser = Forms()
        parser.feed(body)
        if status != 200 or not parser.forms:
            sys.exit(f"browse.py: stuck at {url}: HTTP {status}\n{body[:2000]}")
        form = parser.forms[0]
        fields = form["fields"]
        for f in fields:
            if f[0] == "login":
                f[1] = login
            elif f[0] == "password":
                f[1] = "any password"
        action = urllib.parse.urljoin(url, form["action"] or url)
        encoded = urllib.parse.urlencode([(k, v) for k, v in fields])
        if action.startswith(callback):
            sys.exit(f"browse.py: the page posts to the application itself ({action}); not handled")
        if form["method"] == "post":
            url, data = action, encoded.encode()
        else:
            url = f"{action}?{encoded}"
    sys.exit("browse.py: too many steps, the login never reached the application")


if __name__ == "__main__":
    main()
