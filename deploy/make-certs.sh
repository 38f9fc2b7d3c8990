#!/usr/bin/env bash
# Makes the certificates deploy/compose.yaml mounts (README "Deploying with compose"), with
# openssl, into DIR (default: tls/ beside this script):
#
#   tls-ca.pem                the CA of the public ports' certificate (give it to clients that
#                             should trust a certificate made here; a real deployment uses one
#                             from its own CA or a public one instead: replace tls.crt/tls.key)
#   tls.crt, tls.key          the gateways' public gRPC and HTTPS certificate, for the names in
#                             POSTERN_TLS_NAMES (default: localhost,127.0.0.1)
#   internal-ca.pem           the CA that issues the services' own certificates; every service
#                             requires a certificate from it of its callers (mTLS)
#   <service>.pem/.key        one per service (tenant, registry, authn, gateway), each valid for
#                             the service's name and its replicas' (tenant, tenant-1, tenant-2)
#
# The CAs' keys are not kept: run it again (all certificates change) to add a name. DIR is
# made private (0700). The key files are readable by anyone who can reach DIR (0644): compose
# bind-mounts them into containers that run as user 65532, which must read them.
set -euo pipefail
dir=${1:-"$(dirname "$0")/tls"}
names=${POSTERN_TLS_NAMES:-localhost,127.0.0.1}
days=${POSTERN_TLS_DAYS:-365}
mkdir -p "$dir"
chmod 0700 "$dir"
cd "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

san() { # comma-separated names -> subjectAltName value
  local out= n
  IFS=, read -ra list <<<"$1"
  for n in "${list[@]}"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then out+="${out:+,}IP:$n"; else out+="${out:+,}DNS:$n"; fi
  done
  printf '%s' "$out"
}

ca() { # name subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=$2" -keyout "$tmp/$1.key" -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}

leaf() { # ca out-cert out-key common-name names extended-key-usage
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$4" \
    -keyout "$3" -out "$tmp/leaf.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' \
    "$(san "$5")" "$6" >"$tmp/leaf.ext"
  openssl x509 -req -in "$tmp/leaf.csr" -CA "$1.pem" -CAkey "$tmp/$1.key" -CAcreateserial \
    -CAserial "$tmp/$1.srl" -days "$days" -extfile "$tmp/leaf.ext" -out "$2" 2>/dev/null
  chmod 0644 "$3" "$2"
}

ca tls-ca "Postern public CA (made by make-certs.sh)"
leaf tls-ca tls.crt tls.key "${names%%,*}" "$names" serverAuth
ca internal-ca "Postern internal CA (made by make-certs.sh)"
for service in tenant registry authn gateway; do
  leaf internal-ca "$service.pem" "$service.key" "$service" "$service,$service-1,$service-2" serverAuth,clientAuth
done
echo "made in $(pwd): tls-ca.pem tls.crt tls.key internal-ca.pem {tenant,registry,authn,gateway}.{pem,key} (public names: $names)"
