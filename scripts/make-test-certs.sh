#!/usr/bin/env bash
# make-test-certs.sh: make throwaway TLS material for a drover frontend or livefeed on this
# machine, with Debian's openssl, ECDSA P-256 throughout (what docs/ingest.md recommends):
#
#   scripts/make-test-certs.sh DIR [NAME ...]
#
# writes into DIR (created, mode 0700):
#   ca.pem                 the root CA devices and clients trust (-tls-ca of drover sim)
#   server.crt, server.key the server's certificate chain (leaf, then an intermediate CA) and key,
#                          for -tls-cert and -tls-key; valid for localhost, 127.0.0.1, ::1 and each
#                          NAME (the first NAME is its common name)
#   device-ca.pem, device-ca.key
#                          a CA for device certificates (-tls-client-ca of the frontend with
#                          -device-auth cert; -tls-device-ca-cert/-key of drover sim, which issues
#                          each simulated device its own)
#   tickets.key            TLS session ticket keys (-tls-ticket-key-file): one base64 key of 32
#                          random bytes, the format of the cluster key file
#
# Nothing here is committed or meant for production: the keys are made on the spot, valid for 30
# days. Run it again to replace them (a frontend reloads a replaced certificate by itself).
set -euo pipefail
dir="${1:?usage: $0 DIR [NAME ...]}"
shift
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
umask 077

days=30
key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

# Root and intermediate CAs.
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=drover test root CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
	-out ca.pem 2>/dev/null
key intermediate.key
openssl req -new -key intermediate.key -subj "/CN=drover test intermediate CA" -out intermediate.csr 2>/dev/null
openssl x509 -req -in intermediate.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
	-extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n') \
	-out intermediate.pem 2>/dev/null

# The server's leaf, for every loopback address and the names given.
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for n in "$@"; do san="$san,DNS:$n"; done
key server.key
openssl req -new -key server.key -subj "/CN=${1:-localhost}" -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA intermediate.pem -CAkey intermediate.key -CAcreateserial -days "$days" -sha256 \
	-extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' "$san") \
	-out leaf.pem 2>/dev/null
cat leaf.pem intermediate.pem >server.crt

# A CA for device certificates.
key device-ca.key
openssl req -x509 -new -key device-ca.key -sha256 -days "$days" -subj "/CN=drover test device CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
	-out device-ca.pem 2>/dev/null

# Session ticket keys.
{ echo "# drover TLS session ticket keys: the first encrypts, every one decrypts"; head -c 32 /dev/urandom | base64; } >tickets.key

rm -f ./*.csr ./*.srl leaf.pem intermediate.key
chmod 644 ca.pem server.crt device-ca.pem intermediate.pem
openssl verify -CAfile ca.pem -untrusted intermediate.pem server.crt >/dev/null
echo "make-test-certs: CA ca.pem, chain server.crt + server.key, device CA device-ca.pem + device-ca.key, ticket keys tickets.key in $(pwd)" >&2
