#!/usr/bin/env bash
# The README's passwordless walk-through, as a script: against a running `postern serve`, with
# the loopback mail sink (Python's aiosmtpd) and the Twilio-shaped SMS sink beside this script,
# both started here on free ports and stopped at the end. An `email` and an `sms` connection
# are created with grpcurl, tried with TestConnection and enabled for a single-page app; then,
# for each, a user asks for a code on the hosted login page (a cookie jar and the page's own
# forms, as a browser without JavaScript), reads it from the delivered message, types it,
# lands on the application's callback with an authorization code, and the application
# exchanges it (PKCE) for an ID token.
#   POSTERN            the gateway's gRPC address (default 127.0.0.1:50051)
#   POSTERN_HTTP       the gateway's HTTP address (default 127.0.0.1:8080)
#   POSTERN_ADMIN_KEY  the admin key (default: the contents of ./postern-data/admin-key)
# Needs grpcurl, curl and python3 with aiosmtpd (pip install aiosmtpd).
set -euo pipefail

addr=${POSTERN:-127.0.0.1:50051}
http=${POSTERN_HTTP:-127.0.0.1:8080}
admin=${POSTERN_ADMIN_KEY:-$(cat ./postern-data/admin-key)}
tenant=${TENANT:-contoso-passwordless}
here=$(cd "$(dirname "$0")" && pwd)
callback=http://localhost:3000/callback
account=AC00000000000000000000000000000000
token=sink-token
step() { printf '\n== %s\n' "$*"; }
call() { grpcurl -plaintext -H "authorization: Bearer $admin" "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step "The loopback sinks: mail-sink.py prints each mail, sms-sink.py each text message"
smtp_port=$(free_port)
sms_port=$(free_port)
python3 -u "$here/mail-sink.py" "$smtp_port" > "$work/mail.log" 2>&1 &
pids+=($!)
python3 -u "$here/sms-sink.py" "$sms_port" "$account" "$token" > "$work/sms.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  grep -q "SMS sink" "$work/sms.log" 2>/dev/null && grep -q "Mail sink" "$work/mail.log" 2>/dev/null && break
  sleep 0.1
done
echo "mail sink on 127.0.0.1:$smtp_port, SMS sink on 127.0.0.1:$sms_port"

step "A tenant and a single-page app (public: PKCE, no secret)"
call -d "{\"tenant\":{\"name\":\"$tenant\",\"display_name\":\"Contoso\"}}" "$addr" postern.tenant.v1.TenantService/CreateTenant
spa=$(call -d "{\"tenant\":\"$tenant\",\"client\":{\"name\":\"Contoso Web\",\"app_type\":\"APP_TYPE_SPA\",\"callbacks\":[\"$callback\"]}}" \
  "$addr" postern.tenant.v1.ClientService/CreateClient | field "['client']['clientId']")
echo "client_id $spa"

step "An email connection at the mail sink and an sms connection at the SMS sink, enabled for the app"
call -d "{\"tenant\":\"$tenant\",\"connection\":{\"name\":\"email\",\"strategy\":\"email\",\"email\":{\"from\":\"Contoso <no-reply@contoso.example>\",\"smtp_host\":\"127.0.0.1\",\"smtp_port\":$smtp_port,\"smtp_tls\":\"SMTP_TLS_NONE\"}}}" \
  "$addr" postern.connections.v1.ConnectionService/CreateConnection
call -d "{\"tenant\":\"$tenant\",\"connection\":{\"name\":\"sms\",\"strategy\":\"sms\",\"sms\":{\"from\":\"+15550001111\",\"provider_url\":\"http://127.0.0.1:$sms_port/2010-04-01\",\"account\":\"$account\",\"token\":\"$token\"}}}" \
  "$addr" postern.connections.v1.ConnectionService/CreateConnection
for c in email sms; do
  # Tried first: the SMTP session up to the sender, and the SMS account read with its credentials;
  # nothing is sent.
  call -d "{\"tenant\":\"$tenant\",\"connection\":\"$c\"}" "$addr" postern.authn.v1.AuthenticationService/TestConnection |
    tee "$work/test-$c.json"
  [ "$(field "['ok']" < "$work/test-$c.json")" = True ] || { echo "TestConnection of $c failed" >&2; exit 1; }
  call -d "{\"tenant\":\"$tenant\",\"connection\":\"$c\",\"client_id\":\"$spa\"}" "$addr" postern.connections.v1.ConnectionService/EnableClient
done

# The value of the hosted page's form field NAME in the passwordless form of CONNECTION
# (the page's HTML on standard input; Python's HTML parser).
form_value() {
  python3 -c '
import html.parser, sys
connection, name, forms = sys.argv[1], sys.argv[2], []
class P(html.parser.HTMLParser):
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            forms.append({"action": a.get("action", "")})
        elif tag == "input" and forms and a.get("name"):
            forms[-1][a["name"]] = a.get("value") or ""
P().feed(sys.stdin.read())
form = next(f for f in forms if f["action"].endswith("/passwordless/start") and f.get("connection") == connection)
print(form[name])' "$1" "$2"
}

# Logs RECIPIENT in through CONNECTION on the hosted page, reading the code from LOG with the
# sink's line pattern; prints the ID token's claims.
login() {
  local connection=$1 recipient=$2 log=$3 scope=$4
  local jar="$work/cookies-$connection" verifier challenge location tx page csrf code seen
  verifier=$(python3 -c "import secrets; print(secrets.token_urlsafe(48))")
  challenge=$(printf %s "$verifier" | python3 -c "import base64,hashlib,sys; print(base64.urlsafe_b64encode(hashlib.sha256(sys.stdin.buffer.read()).digest()).decode().rstrip('='))")
  location=$(curl -fsS -o /dev/null -c "$jar" -w '%{redirect_url}' \
    "http://$http/$tenant/authorize?response_type=code&client_id=$spa&redirect_uri=$callback&scope=$scope&state=st-$connection&code_challenge=$challenge&code_challenge_method=S256")
  echo "/authorize sent the browser to the hosted page: ${location%%\?*}"
  page=$(curl -fsS -b "$jar" -c "$jar" "$location")
  tx=$(form_value "$connection" tx <<<"$page")
  csrf=$(form_value "$connection" csrf <<<"$page")
  seen=$(grep -c "verification code is" "$log" || true)
  echo "asking for a code for $recipient"
  curl -fsS -o "$work/sent.html" -b "$jar" -c "$jar" "http://$http/$tenant/passwordless/start" \
    --data-urlencode "tx=$tx" --data-urlencode "csrf=$csrf" --data-urlencode "connection=$connection" \
    --data-urlencode "recipient=$recipient" --data-urlencode "send=code"
  grep -q 'autocomplete="one-time-code" inputmode="numeric"' "$work/sent.html"
  for _ in $(seq 100); do
    [ "$(grep -c "verification code is" "$log" || true)" -gt "$seen" ] && break
    sleep 0.1
  done
  grep "verification code is" "$log" | tail -1
  code=$(grep -o "verification code is [0-9]*" "$log" | tail -1 | grep -o "[0-9]*$")
  location=$(curl -fsS -o /dev/null -b "$jar" -c "$jar" -w '%{redirect_url}' "http://$http/$tenant/passwordless/verify" \
    --data-urlencode "tx=$tx" --data-urlencode "csrf=$csrf" --data-urlencode "connection=$connection" \
    --data-urlencode "recipient=$recipient" --data-urlencode "code=$code")
  echo "logged in: the browser goes to ${location%%code=*}code=…"
  case $location in "$callback?"*) ;; *) echo "not back at the application: $location" >&2; return 1 ;; esac
  local auth_code
  auth_code=$(python3 -c "import sys, urllib.parse; print(urllib.parse.parse_qs(urllib.parse.urlsplit(sys.argv[1]).query)['code'][0])" "$location")
  curl -fsS "http://$http/$tenant/oauth/token" -d grant_type=authorization_code -d "client_id=$spa" \
    -d "code=$auth_code" -d "redirect_uri=$callback" -d "code_verifier=$verifier" |
    python3 -c '
import base64, json, sys
token = json.load(sys.stdin)["id_token"]
body = token.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
print("ID token for", claims["sub"], {k: claims[k] for k in ("email", "email_verified", "phone_number", "phone_number_verified") if k in claims})'
}

step "Email: a code on the hosted page, read from the delivered mail"
login email alice@contoso.example "$work/mail.log" "openid%20profile%20email"

step "SMS: a code on the hosted page, read from the text message"
login sms +14155550123 "$work/sms.log" "openid%20phone"

echo "passwordless walk-through complete"
