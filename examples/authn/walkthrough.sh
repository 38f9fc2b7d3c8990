#!/usr/bin/env bash
# The README's login walk-through, as a script: against a running `postern serve`, create a
# database connection, enable it for an application, sign a user up, log in, and verify the
# ID token against the tenant's published key set with an independent verifier (Python's
# standard library: RSA PKCS#1 v1.5 with SHA-256 by hand).
#   POSTERN            the gateway's gRPC address (default 127.0.0.1:50051)
#   POSTERN_HTTP       the gateway's HTTP address (default 127.0.0.1:8080)
#   POSTERN_ADMIN_KEY  the admin key (default: the contents of ./postern-data/admin-key)
#   POSTERN_PUBLIC_URL the public URL postern was started with, if any (the tokens' issuer)
set -euo pipefail

addr=${POSTERN:-127.0.0.1:50051}
http=${POSTERN_HTTP:-127.0.0.1:8080}
admin=${POSTERN_ADMIN_KEY:-$(cat ./postern-data/admin-key)}
tenant=${TENANT:-contoso-shop}
step() { printf '\n== %s\n' "$*"; }
call() { grpcurl -plaintext -H "authorization: Bearer $admin" "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
jwks_file=$(mktemp)
trap 'rm -f "$jwks_file"' EXIT

step "A tenant and its application (a confidential client: note its secret)"
call -d "{\"tenant\":{\"name\":\"$tenant\"}}" "$addr" postern.tenant.v1.TenantService/CreateTenant
client=$(call -d "{\"tenant\":\"$tenant\",\"client\":{\"name\":\"Contoso Shop\",\"app_type\":\"APP_TYPE_REGULAR_WEB\",\"callbacks\":[\"https://shop.contoso.example/callback\"]}}" \
  "$addr" postern.tenant.v1.ClientService/CreateClient)
client_id=$(field "['client']['clientId']" <<<"$client")
client_secret=$(field "['client']['clientSecret']" <<<"$client")
echo "client_id $client_id"

step "A database connection (Postern keeps the users and their Argon2id hashes), enabled for the client"
call -d "{\"tenant\":\"$tenant\",\"connection\":{\"name\":\"shop-users\",\"strategy\":\"auth0\",\"database\":{\"password_policy\":\"PASSWORD_POLICY_GOOD\"}}}" \
  "$addr" postern.connections.v1.ConnectionService/CreateConnection
call -d "{\"tenant\":\"$tenant\",\"connection\":\"shop-users\",\"client_id\":\"$client_id\"}" \
  "$addr" postern.connections.v1.ConnectionService/EnableClient

# From here the application acts as itself: Signup and Login need no API key, only its own
# client id (and, for this confidential client, its secret).
app() { grpcurl -plaintext "$@"; }

step "A weak password is refused with a field violation"
app -d "{\"tenant\":\"$tenant\",\"client_id\":\"$client_id\",\"connection\":\"shop-users\",\"email\":\"alice@contoso.example\",\"password\":\"password\"}" \
  "$addr" postern.authn.v1.AuthenticationService/Signup 2>&1 | grep -E "Code|Message" || true

step "Sign up"
app -d "{\"tenant\":\"$tenant\",\"client_id\":\"$client_id\",\"connection\":\"shop-users\",\"email\":\"alice@contoso.example\",\"password\":\"Wonder-Land-42!\"}" \
  "$addr" postern.authn.v1.AuthenticationService/Signup

step "Log in"
login=$(app -d "{\"tenant\":\"$tenant\",\"client_id\":\"$client_id\",\"client_secret\":\"$client_secret\",\"connection\":\"shop-users\",\"username\":\"alice@contoso.example\",\"password\":\"Wonder-Land-42!\"}" \
  "$addr" postern.authn.v1.AuthenticationService/Login)
id_token=$(field "['idToken']" <<<"$login")
echo "id_token ${id_token:0:40}…"

step "The tenant's OpenID configuration and key set"
curl -fsS "http://$http/$tenant/.well-known/openid-configuration"; echo
curl -fsS "http://$http/$tenant/.well-known/jwks.json" > "$jwks_file"
cat "$jwks_file"; echo

step "Verify the ID token against the key set (signature, iss, aud, exp)"
ID_TOKEN=$id_token JWKS_FILE=$jwks_file ISSUER="${POSTERN_PUBLIC_URL:-http://$http}/$tenant/" AUDIENCE=$client_id python3 - <<'PY'
import base64, hashlib, json, os, time
def b64(s): return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
token = os.environ["ID_TOKEN"]
head, body, sig = token.split(".")
header, claims = json.loads(b64(head)), json.loads(b64(body))
jwk = next(k for k in json.load(open(os.environ["JWKS_FILE"]))["keys"] if k["kid"] == header["kid"])
assert header["alg"] == "RS256" == jwk["alg"], header
n, e = (int.from_bytes(b64(jwk[x]), "big") for x in ("n", "e"))
k = (n.bit_length() + 7) // 8
em = pow(int.from_bytes(b64(sig), "big"), e, n).to_bytes(k, "big")
digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(f"{head}.{body}".encode()).digest()
assert em == b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info, "bad signature"
assert claims["iss"] == os.environ["ISSUER"], claims["iss"]
assert claims["aud"] == os.environ["AUDIENCE"], claims["aud"]
assert claims["exp"] > time.time(), "expired"
print("ID token verified: sub", claims["sub"], "email", claims.get("email"), "exp in", claims["exp"] - int(time.time()), "s")
PY

step "A wrong password and an unknown user get the same answer"
for who in "alice@contoso.example:wrong-Password-1" "nobody@contoso.example:Wonder-Land-42!"; do
  app -d "{\"tenant\":\"$tenant\",\"client_id\":\"$client_id\",\"client_secret\":\"$client_secret\",\"connection\":\"shop-users\",\"username\":\"${who%%:*}\",\"password\":\"${who#*:}\"}" \
    "$addr" postern.authn.v1.AuthenticationService/Login 2>&1 | grep -E "Code|Message" || true
done

step "The tenant's users"
call -d "{\"tenant\":\"$tenant\"}" "$addr" postern.authn.v1.UserService/ListUsers
echo "login walk-through complete"
