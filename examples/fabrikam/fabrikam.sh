#!/usr/bin/env bash
# The seed's multi-tenant example, set up with grpcurl alone against a fresh `postern serve`:
#   fabrikam-internal: client "Fabrikam Employee Timesheets"; connections Active Directory
#                      (`ad`) and Google Apps (`google-apps`), both enabled for it.
#   fabrikam-public:   client "Fabrikam Customer Portal"; connections Google Apps, Facebook
#                      and LinkedIn, all enabled for it.
# Then it checks what each client may log in with, that each tenant's key sees only its own
# connections, that secrets never come back, and that a bad option names its field.
# With a directory (FABRIKAM_AD_URL set; the test kit's throwaway slapd is one), the `ad`
# connection points at it, is tried with TestConnection, and an employee logs in to the
# Timesheets application with it, while the Customer Portal cannot use it.
#   POSTERN            the gateway's gRPC address (default 127.0.0.1:50051)
#   POSTERN_ADMIN_KEY  the admin key (default: the contents of ./postern-data/admin-key)
#   FABRIKAM_AD_URL, FABRIKAM_AD_CA_FILE, FABRIKAM_AD_BIND_DN, FABRIKAM_AD_BIND_PASSWORD,
#   FABRIKAM_AD_BASE_DN, FABRIKAM_AD_USER, FABRIKAM_AD_PASSWORD   the directory (optional)
set -euo pipefail

addr=${POSTERN:-127.0.0.1:50051}
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
    "google_apps":{"domain":"fabrikam.example","client_id":"internal-google-client","client_secret":"internal-google-secret"}}}' \
  "$addr" $svc/CreateConnection

step "fabrikam-public: Google Apps, Facebook and LinkedIn"
call "$admin" -d '{"tenant":"fabrikam-public","connection":{
    "name":"fabrikam-google-apps","strategy":"google-apps","show_as_button":true,
    "google_apps":{"domain":"fabrikam-partners.example","client_id":"public-google-client","client_secret":"public-google-secret"}}}' \
  "$addr" $svc/CreateConnection
call "$admin" -d '{"tenant":"fabrikam-public","connection":{"name":"facebook","strategy":"facebook","show_as_button":true,
    "oauth2":{"client_id":"fabrikam-fb-app","client_secret":"facebook-app-secret","scopes":["email","public_profile"]}}}' \
  "$addr" $svc/CreateConnection
call "$admin" -d '{"tenant":"fabrikam-public","connection":{"name":"linkedin","strategy":"linkedin","show_as_button":true,
    "oauth2":{"client_id":"fabrikam-li-app","client_secret":"linkedin-app-secret"}}}' \
  "$addr" $svc/CreateConnection

step "Enable each connection for its tenant's application (enabling twice is fine)"
for c in fabrikam-ad fabrikam-google-apps fabrikam-ad; do
  call "$admin" -d '{"tenant":"fabrikam-internal","connection":"'$c'","client_id":"'$timesheets'"}' "$addr" $svc/EnableClient
done
for c in fabrikam-google-apps facebook linkedin; do
  call "$admin" -d '{"tenant":"fabrikam-public","connection":"'$c'","client_id":"'$portal'"}' "$addr" $svc/EnableClient
done

step "What each application may log in with"
out=$(call "$admin" -d '{"tenant":"fabrikam-internal","client_id":"'$timesheets'"}' "$addr" $svc/ListClientConnections)
expect_names "$out" fabrikam-ad fabrikam-google-apps
out=$(call "$admin" -d '{"tenant":"fabrikam-public","client_id":"'$portal'"}' "$addr" $svc/ListClientConnections)
expect_names "$out" fabrikam-google-apps facebook linkedin

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
expect_names "$out" fabrikam-google-apps facebook linkedin
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

echo
echo "fabrikam scenario complete"
