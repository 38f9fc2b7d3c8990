#!/usr/bin/env bash
# The README's grpcurl walk-through, as a script: run it against a fresh `postern serve`.
#   POSTERN            the gateway's gRPC address (default 127.0.0.1:50051)
#   POSTERN_ADMIN_KEY  the admin key (default: the contents of ./postern-data/admin-key)
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

step "What the gateway serves (reflection needs no key)"
grpcurl -plaintext "$addr" list
grpcurl -plaintext "$addr" describe postern.tenant.v1.Tenant

step "Health"
grpcurl -plaintext "$addr" grpc.health.v1.Health/Check
grpcurl -plaintext -d '{"service":"postern.tenant.v1.TenantService"}' "$addr" grpc.health.v1.Health/Check

step "Create the two Fabrikam tenants"
call "$admin" -d '{"tenant":{"name":"fabrikam-internal","display_name":"Fabrikam-Internal"}}' \
  "$addr" postern.tenant.v1.TenantService/CreateTenant
call "$admin" -d '{"tenant":{"name":"fabrikam-public","display_name":"Fabrikam-Public"}}' \
  "$addr" postern.tenant.v1.TenantService/CreateTenant

step "Register their applications (the secret is shown only now)"
call "$admin" -d '{"tenant":"fabrikam-internal","client":{"name":"Fabrikam Employee Timesheets","app_type":"APP_TYPE_REGULAR_WEB","callbacks":["https://timesheets.fabrikam.example/callback"]}}' \
  "$addr" postern.tenant.v1.ClientService/CreateClient
call "$admin" -d '{"tenant":"fabrikam-public","client":{"name":"Fabrikam Customer Portal","app_type":"APP_TYPE_SPA","callbacks":["https://portal.fabrikam.example/callback","http://localhost:3000/callback"]}}' \
  "$addr" postern.tenant.v1.ClientService/CreateClient

step "A management key for fabrikam-public"
public_key=$(call "$admin" -d '{"tenant":"fabrikam-public","api_key":{"description":"portal CI"}}' \
  "$addr" postern.tenant.v1.ApiKeyService/CreateApiKey | field "['apiKey']['key']")
echo "created a key for fabrikam-public (${public_key:0:8}…)"

step "The tenant key sees its own tenant only"
call "$public_key" -d '{}' "$addr" postern.tenant.v1.TenantService/ListTenants
call "$public_key" -d '{"tenant":"fabrikam-public"}' "$addr" postern.tenant.v1.ClientService/ListClients
expect_error PermissionDenied "$public_key" -d '{"name":"fabrikam-internal"}' "$addr" postern.tenant.v1.TenantService/GetTenant
expect_error PermissionDenied "$public_key" -d '{"tenant":"fabrikam-internal"}' "$addr" postern.tenant.v1.ClientService/ListClients

step "A bad tenant name names the field"
expect_error InvalidArgument "$admin" -d '{"tenant":{"name":"Fabrikam_Internal"}}' "$addr" postern.tenant.v1.TenantService/CreateTenant

step "No key, no answer"
expect_error Unauthenticated "" -d '{}' "$addr" postern.tenant.v1.TenantService/ListTenants

echo
echo "walk-through complete"
