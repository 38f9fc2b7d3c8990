#!/usr/bin/env bash
# The seed's multi-tenant example, set up with grpcurl alone against a fresh `postern serve`:
#   fabrikam-internal: client "Fabrikam Employee Timesheets"; connections Active Directory
#                      (`ad`) and Google Apps (`google-apps`), both enabled for it.
#   fabrikam-public:   client "Fabrikam Customer Portal"; connections Google Apps, Google
#                      (`google-oauth2`), Facebook and LinkedIn, all enabled for it.
# Then it checks what each client may log in with, that each tenant's key sees only its own
# connections, that secrets never come back, and that a bad option names its field.
# With a directory (FABRIKAM_AD_URL set; the test kit's throwaway slapd is one), the `ad`
# connection points at it, is tried with TestConnection, and an employee logs in to the
# Timesheets application with it, while the Customer Portal cannot use it.
# With the loopback stand-ins (FABRIKAM_STANDINS=1), the social and Google connections point
# at npm's oidc-provider on loopback instead of the real providers (which are not reachable
# from a test machine, and would need real app registrations): a customer logs in to the
# Customer Portal through Google, Facebook and LinkedIn, an employee to Timesheets through
# Google Apps (the stand-in's account carries Google's `hd` claim), a personal Google account
# is refused by Google Apps, and the portal cannot use the internal tenant's connections.
# The logins go through Postern's HTTP endpoints as a browser does (examples/fabrikam/browse.py,
# Python's standard library) and end with the application's code exchanged for an ID token.
#   Needs: node (18 or later) and `npm ci` run once in tests/node (the stand-in is
#   tests/node/upstream.mjs: oidc-provider for Google, Google Apps and LinkedIn, which are
#   OpenID Connect providers, configured with its issuer; its Graph API stand-in `/graph/me`
#   for Facebook, whose OAuth 2.0 code exchange goes to oidc-provider too), curl, python3.
#   From a checkout:  (cd tests/node && npm ci)
#                     postern serve --data-dir /tmp/fabrikam &        # prints the admin key
#                     FABRIKAM_STANDINS=1 POSTERN_ADMIN_KEY=psta_… examples/fabrikam/fabrikam.sh
#   POSTERN            the gateway's gRPC address (default 127.0.0.1:50051)
#   POSTERN_HTTP       Postern's HTTP address, for the logins (default 127.0.0.1:8080)
#   POSTERN_ADMIN_KEY  the admin key (default: the contents of ./postern-data/admin-key)
#   FABRIKAM_STANDINS  1: start the stand-ins and log in through them (default: off)
#   FABRIKAM_AD_URL, FABRIKAM_AD_CA_FILE, FABRIKAM_AD_BIND_DN, FABRIKAM_AD_BIND_PASSWORD,
#   FABRIKAM_AD_BASE_DN, FABRIKAM_AD_USER, FABRIKAM_AD_PASSWORD   the directory (optional)
set -euo pipefail

addr=${POSTERN:-127.0.0.1:50051}
http=${POSTERN_HTTP:-127.0.0.1:8080}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
admin=${POSTERN_ADMIN_KEY:-$(cat ./postern-data/admin-key)}
step() { printf '\n== %s\n' "$*"; }
call() { local key=$1; shift; grpcurl -plaintext -H "authorization: Bearer $key" "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
expect_error() { # expect_error CODE key args...: the call must fail with CODE
  local code=$1; shift
  local out
  if out=$(call "$@" 2>&1); then echo "expected $code, the call succeeded: $out" >&2; exit 1; fi
  grep -q "Code: $code" <<<"$out" || { echo "expected $code, got: $out" >&2; exit 1; }
  echo "$out"
}
# expect_names JSON NAME...: the answer's connections are exactly these names, in order.
expect_names() {
  local json=$1; shift
  local got
  got=$(python3 -c "import json,sys; print(' '.join(c['name'] for c in json.loads(sys.argv[1]).get('connections', [])))" "$json")
  [[ "$got" == "$*" ]] || { echo "expected connections [$*], got [$got]" >&2; exit 1; }
  echo "connections: $got"
}
svc=postern.connections.v1.ConnectionService

# The walk-through of the README creates the same two tenants: refuse to run over them.
for t in fabrikam-internal fabrikam-public; do
  if call "$admin" -d '{"name":"'$t'"}' "$addr" postern.tenant.v1.TenantService/GetTenant >/dev/null 2>&1; then
    echo "tenant $t exists already: run this against a fresh postern serve (e.g. --data-dir /tmp/fabrikam)," >&2
    echo "or delete it first: grpcurl ... -d '{\"name\":\"$t\"}' $addr postern.tenant.v1.TenantService/DeleteTenant" >&2
    exit 1
  fi
done

step "The registry's contract (reflection needs no key)"
grpcurl -plaintext "$addr" describe $svc
grpcurl -plaintext -d '{"service":"'$svc'"}' "$addr" grpc.health.v1.Health/Check

step "The two tenants and their applications"
call "$admin" -d '{"tenant":{"name":"fabrikam-internal","display_name":"Fabrikam-Internal"}}' \
  "$addr" postern.tenant.v1.TenantService/CreateTenant
call "$admin" -d '{"tenant":{"name":"fabrikam-public","display_name":"Fabrikam-Public"}}' \
  "$addr" postern.tenant.v1.TenantService/CreateTenant
timesheets_json=$(call "$admin" -d '{"tenant":"fabrikam-internal","client":{"name":"Fabrikam Employee Timesheets","app_type":"APP_TYPE_REGULAR_WEB","callbacks":["https://timesheets.fabrikam.example/callback"]}}' \
  "$addr" postern.tenant.v1.ClientService/CreateClient)
timesheets=$(field "['client']['clientId']" <<<"$timesheets_json")
timesheets_secret=$(field "['client']['clientSecret']" <<<"$timesheets_json")
portal=$(call "$admin" -d '{"tenant":"fabrikam-public","client":{"name":"Fabrikam Customer Portal","app_type":"APP_TYPE_SPA","callbacks":["https://portal.fabrikam.example/callback"]}}' \
  "$addr" postern.tenant.v1.ClientService/CreateClient | field "['client']['clientId']")
echo "Fabrikam Employee Timesheets: $timesheets"
echo "Fabrikam Customer Portal:     $portal"

# The Google, Facebook and LinkedIn connections: at the real providers, or at the stand-in.
internal_google_apps='{"domain":"fabrikam.example","client_id":"internal-google-client","client_secret":"internal-google-secret"}'
google='{"client_id":"fabrikam-google-app","client_secret":"google-app-secret"}'
facebook='{"client_id":"fabrikam-fb-app","client_secret":"facebook-app-secret","scopes":["email","public_profile"]}'
linkedin='{"client_id":"fabrikam-li-app","client_secret":"linkedin-app-secret"}'
if [[ -n "${FABRIKAM_STANDINS:-}" ]]; then
  step "The loopback stand-ins: npm oidc-provider (tests/node/upstream.mjs) for Google, Facebook and LinkedIn"
  nodedir="$here/../../tests/node"
  [[ -d "$nodedir/node_modules/oidc-provider" ]] || {
    echo "the stand-ins need oidc-provider: run (cd tests/node && npm ci) in the checkout first" >&2; exit 1; }
  # The stand-in runs until its standard input ends: the coprocess's pipe, which closes when
  # this script exits, however it exits. It prints {"issuer": …} once it listens.
  coproc UPSTREAM { cd "$nodedir" && exec node upstream.mjs 2>/dev/null; }
  read -r -t 60 ready <&"${UPSTREAM[0]}" || { echo "the stand-in did not start (node upstream.mjs in $nodedir)" >&2; exit 1; }
  iss=$(field "['issuer']" <<<"$ready")
  echo "stand-in issuer: $iss"
  # register METHOD TENANT: a client of the stand-in whose callback is TENANT's at Postern; prints its id and secret.
  register() {
    curl -sSf -X POST -H 'content-type: application/json' "$iss/reg" -d '{"redirect_uris":["http://'"$http"'/'"$2"'/login/callback"],
        "response_types":["code"],"grant_types":["authorization_code"],"token_endpoint_auth_method":"'"$1"'"}' |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["client_id"], d["client_secret"])'
  }
  read -r id secret < <(register client_secret_basic fabrikam-internal)
  internal_google_apps='{"domain":"fabrikam.example","client_id":"'$id'","client_secret":"'$secret'","issuer":"'$iss'"}'
  read -r id secret < <(register client_secret_basic fabrikam-public)
  google='{"client_id":"'$id'","client_secret":"'$secret'","issuer":"'$iss'"}'
  read -r id secret < <(register client_secret_basic fabrikam-public)
  linkedin='{"client_id":"'$id'","client_secret":"'$secret'","issuer":"'$iss'"}'
  # Facebook takes the secret in the body; its Graph API `me` is the stand-in's /graph/me.
  read -r id secret < <(register client_secret_post fabrikam-public)
  facebook='{"client_id":"'$id'","client_secret":"'$secret'","scopes":["email","public_profile"],
      "authorization_endpoint":"'$iss'/auth","token_endpoint":"'$iss'/token","userinfo_endpoint":"'$iss'/graph/me"}'
fi

step "fabrikam-internal: Active Directory and Google Apps"
if [[ -n "${FABRIKAM_AD_URL:-}" ]]; then
  ad_options=$(python3 -c 'import json,os; print(json.dumps({"url": os.environ["FABRIKAM_AD_URL"],
      "bind_dn": os.environ["FABRIKAM_AD_BIND_DN"], "bind_password": os.environ["FABRIKAM_AD_BIND_PASSWORD"],
      "base_dn": os.environ["FABRIKAM_AD_BASE_DN"], "ca_certificates": open(os.environ["FABRIKAM_AD_CA_FILE"]).read()}))')
else
  ad_options='{"url":"ldaps://dc1.corp.fabrikam.example","bind_dn":"CN=postern,OU=Service,DC=corp,DC=fabrikam,DC=example",
            "bind_password":"ad-bind-password","base_dn":"OU=People,DC=corp,DC=fabrikam,DC=example"}'
fi
call "$admin" -d '{"tenant":"fabrikam-internal","connection":{
    "name":"fabrikam-ad","display_name":"Fabrikam AD","strategy":"ad",
    "domain_aliases":["corp.fabrikam.example"],
    "ldap":'"$ad_options"'}}' \
  "$addr" $svc/CreateConnection
call "$admin" -d '{"tenant":"fabrikam-internal","connection":{
    "name":"fabrikam-google-apps","display_name":"Fabrikam Google Workspace","strategy":"google-apps",
    "google_apps":'"$internal_google_apps"'}}' \
  "$addr" $svc/CreateConnection

step "fabrikam-public: Google Apps, Google, Facebook and LinkedIn"
call "$admin" -d '{"tenant":"fabrikam-public","connection":{
    "name":"fabrikam-google-apps","strategy":"google-apps","show_as_button":true,
    "google_apps":{"domain":"fabrikam-partners.example","client_id":"public-google-client","client_secret":"public-google-secret"}}}' \
  "$addr" $svc/CreateConnection
call "$admin" -d '{"tenant":"fabrikam-public","connection":{"name":"google","display_name":"Google","strategy":"google-oauth2",
    "show_as_button":true,"oauth2":'"$google"'}}' \
  "$addr" $svc/CreateConnection
call "$admin" -d '{"tenant":"fabrikam-public","connection":{"name":"facebook","strategy":"facebook","show_as_button":true,
    "oauth2":'"$facebook"'}}' \
  "$addr" $svc/CreateConnection
call "$admin" -d '{"tenant":"fabrikam-public","connection":{"name":"linkedin","strategy":"linkedin","show_as_button":true,
    "oauth2":'"$linkedin"'}}' \
  "$addr" $svc/CreateConnection

step "Enable each connection for its tenant's application (enabling twice is fine)"
for c in fabrikam-ad fabrikam-google-apps fabrikam-ad; do
  call "$admin" -d '{"tenant":"fabrikam-internal","connection":"'$c'","client_id":"'$timesheets'"}' "$addr" $svc/EnableClient
done
for c in fabrikam-google-apps google facebook linkedin; do
  call "$admin" -d '{"tenant":"fabrikam-public","connection":"'$c'","client_id":"'$portal'"}' "$addr" $svc/EnableClient
done

step "What each application may log in with"
out=$(call "$admin" -d '{"tenant":"fabrikam-internal","client_id":"'$timesheets'"}' "$addr" $svc/ListClientConnections)
expect_names "$out" fabrikam-ad fabrikam-google-apps
out=$(call "$admin" -d '{"tenant":"fabrikam-public","client_id":"'$portal'"}' "$addr" $svc/ListClientConnections)
expect_names "$out" fabrikam-google-apps facebook google linkedin

step "Home realm discovery: an employee's email finds Active Directory"
call "$admin" -d '{"tenant":"fabrikam-internal","client_id":"'$timesheets'","email":"alice@corp.fabrikam.example"}' \
  "$addr" $svc/DiscoverConnection | field "['connection']['name']"

step "Secrets are write-only: reads say they are set, never what they are"
out=$(call "$admin" -d '{"tenant":"fabrikam-internal","connection":"fabrikam-ad"}' "$addr" $svc/GetConnection)
echo "$out"
grep -q '"bindPasswordSet": true' <<<"$out" || { echo "bind_password_set should be true" >&2; exit 1; }
if grep -q 'ad-bind-password' <<<"$out"; then echo "a read returned a secret" >&2; exit 1; fi

step "Each tenant's key sees its own connections only"
public_key=$(call "$admin" -d '{"tenant":"fabrikam-public","api_key":{"description":"portal CI"}}' \
  "$addr" postern.tenant.v1.ApiKeyService/CreateApiKey | field "['apiKey']['key']")
out=$(call "$public_key" -d '{"tenant":"fabrikam-public"}' "$addr" $svc/ListConnections)
expect_names "$out" fabrikam-google-apps facebook google linkedin
expect_error PermissionDenied "$public_key" -d '{"tenant":"fabrikam-internal"}' "$addr" $svc/ListConnections
expect_error PermissionDenied "$public_key" -d '{"tenant":"fabrikam-internal","connection":"fabrikam-ad"}' "$addr" $svc/GetConnection

step "A bad option gets a field violation"
expect_error InvalidArgument "$admin" -d '{"tenant":"fabrikam-internal","connection":{"name":"bad-ldap","strategy":"ldap",
    "ldap":{"url":"http://dc1.corp.fabrikam.example","bind_dn":"CN=x","bind_password":"p","base_dn":"DC=x"}}}' \
  "$addr" $svc/CreateConnection | grep connection.options.ldap.url

step "Secrets come back to Postern's authenticator only: ResolveConnection is internal"
expect_error PermissionDenied "$admin" -d '{"tenant":"fabrikam-internal","client_id":"'$timesheets'","connection":"fabrikam-ad"}' \
  "$addr" $svc/ResolveConnection

if [[ -n "${FABRIKAM_AD_URL:-}" ]]; then
  step "Try the directory before anyone logs in: each step of TestConnection"
  out=$(call "$admin" -d '{"tenant":"fabrikam-internal","connection":"fabrikam-ad"}' "$addr" postern.authn.v1.AuthenticationService/TestConnection)
  echo "$out"
  [[ $(field "['ok']" <<<"$out") == True ]] || { echo "TestConnection found a problem" >&2; exit 1; }
  if grep -q "$FABRIKAM_AD_BIND_PASSWORD" <<<"$out"; then echo "TestConnection showed a secret" >&2; exit 1; fi

  step "An employee logs in to Fabrikam Employee Timesheets with Active Directory (no API key)"
  out=$(grpcurl -plaintext -d '{"tenant":"fabrikam-internal","client_id":"'$timesheets'","client_secret":"'$timesheets_secret'",
      "connection":"fabrikam-ad","username":"'$FABRIKAM_AD_USER'","password":"'$FABRIKAM_AD_PASSWORD'"}' \
      "$addr" postern.authn.v1.AuthenticationService/Login)
  user_id=$(field "['user']['userId']" <<<"$out")
  echo "logged in: $user_id"
  [[ $user_id == ad\|fabrikam-ad\|* ]] || { echo "expected an ad|fabrikam-ad|<objectGUID> user id" >&2; exit 1; }
  expect_error Unauthenticated "$admin" -d '{"tenant":"fabrikam-internal","client_id":"'$timesheets'","client_secret":"'$timesheets_secret'",
      "connection":"fabrikam-ad","username":"'$FABRIKAM_AD_USER'","password":"not-the-password"}' \
      "$addr" postern.authn.v1.AuthenticationService/Login

  step "The Customer Portal cannot use Fabrikam's Active Directory"
  expect_error NotFound "$admin" -d '{"tenant":"fabrikam-public","client_id":"'$portal'",
      "connection":"fabrikam-ad","username":"'$FABRIKAM_AD_USER'","password":"'$FABRIKAM_AD_PASSWORD'"}' \
      "$addr" postern.authn.v1.AuthenticationService/Login
fi

if [[ -n "${FABRIKAM_STANDINS:-}" ]]; then
  # login TENANT CLIENT_ID CLIENT_SECRET CALLBACK CONNECTION LOGIN: a browser's login through
  # CONNECTION (with PKCE; the secret empty for the single-page portal), then the code's
  # exchange at the token endpoint. Prints the ID token's claims, or the error the
  # application received, as JSON.
  login() {
    local tenant=$1 client=$2 secret=$3 callback=$4 connection=$5 who=$6
    local verifier challenge url answer code
    verifier=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
    challenge=$(python3 -c 'import base64,hashlib,sys
print(base64.urlsafe_b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).rstrip(b"=").decode())' "$verifier")
    url=$(python3 -c 'import sys,urllib.parse as u; b,t,c,cb,conn,ch=sys.argv[1:]
print(f"http://{b}/{t}/authorize?" + u.urlencode({"client_id": c, "redirect_uri": cb, "response_type": "code",
  "scope": "openid profile email", "state": "fabrikam-state", "nonce": "fabrikam-nonce", "connection": conn,
  "code_challenge": ch, "code_challenge_method": "S256"}))' "$http" "$tenant" "$client" "$callback" "$connection" "$challenge")
    answer=$(python3 "$here/browse.py" "$url" "$callback" "$who")
    [[ $(field ".get('state')" <<<"$answer") == fabrikam-state ]] || { echo "the state did not come back: $answer" >&2; exit 1; }
    code=$(field ".get('code', '')" <<<"$answer")
    if [[ -z $code ]]; then echo "$answer"; return; fi
    curl -sSf -X POST "http://$http/$tenant/oauth/token" -d grant_type=authorization_code --data-urlencode "client_id=$client" \
        ${secret:+--data-urlencode "client_secret=$secret"} --data-urlencode "code=$code" \
        --data-urlencode "redirect_uri=$callback" --data-urlencode "code_verifier=$verifier" |
      python3 -c 'import base64,json,sys; t=json.load(sys.stdin)["id_token"].split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)))))'
  }
  # expect_user CLAIMS PATTERN: the ID token names a user of that form.
  expect_user() {
    local sub
    sub=$(field ".get('sub', '')" <<<"$1")
    [[ $sub == $2 ]] || { echo "expected a user $2, got: $1" >&2; exit 1; }
    echo "logged in: $sub ($(field ".get('email', '')" <<<"$1"))"
  }
  portal_cb=https://portal.fabrikam.example/callback
  timesheets_cb=https://timesheets.fabrikam.example/callback

  step "A customer logs in to the Customer Portal through Google, Facebook and LinkedIn (the stand-ins)"
  expect_user "$(login fabrikam-public "$portal" "" $portal_cb google dana)" 'google-oauth2|dana'
  expect_user "$(login fabrikam-public "$portal" "" $portal_cb facebook dana)" 'facebook|+([0-9])'
  expect_user "$(login fabrikam-public "$portal" "" $portal_cb linkedin dana)" 'linkedin|dana'

  step "An employee logs in to Fabrikam Employee Timesheets through Google Apps (hd=fabrikam.example)"
  curl -sSf -X POST -H 'content-type: application/json' "$iss/__test/account" \
    -d '{"id":"erin","claims":{"hd":"fabrikam.example","name":"Erin Employee"}}' >/dev/null
  expect_user "$(login fabrikam-internal "$timesheets" "$timesheets_secret" $timesheets_cb fabrikam-google-apps erin)" 'google-apps|erin'

  step "A personal Google account (no hd claim) is refused by Google Apps, at the application"
  out=$(login fabrikam-internal "$timesheets" "$timesheets_secret" $timesheets_cb fabrikam-google-apps mallory)
  echo "$out"
  [[ $(field ".get('error')" <<<"$out") == access_denied ]] || { echo "expected access_denied" >&2; exit 1; }
  grep -q 'hd claim' <<<"$out" || { echo "expected the reason (no hd claim)" >&2; exit 1; }

  step "The Customer Portal cannot use the internal tenant's connections"
  # fabrikam-public's page, asked for the internal tenant's Active Directory by name, offers
  # nothing to log in with; fabrikam-internal does not know the portal at all.
  page=$(curl -sS -L -c /dev/null "http://$http/fabrikam-public/authorize?client_id=$portal&response_type=code&redirect_uri=$portal_cb&scope=openid&state=s&code_challenge=$(python3 -c 'print("c"*43)')&code_challenge_method=S256&connection=fabrikam-ad")
  grep -q 'has no way to log in' <<<"$page" || { echo "expected a page without a way to log in: $page" >&2; exit 1; }
  if grep -q 'data-connection="fabrikam-ad"' <<<"$page"; then echo "the portal's page offers fabrikam-ad" >&2; exit 1; fi
  echo "fabrikam-public's page for connection=fabrikam-ad: no way to log in"
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://$http/fabrikam-internal/authorize?client_id=$portal&response_type=code&redirect_uri=$portal_cb&connection=fabrikam-google-apps")
  echo "fabrikam-internal/authorize with the portal's client id: HTTP $status"
  [[ $status == 400 ]] || { echo "expected 400" >&2; exit 1; }
fi

echo
echo "fabrikam scenario complete"
