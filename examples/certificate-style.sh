#!/usr/bin/env bash
# The certificate style from start to token, as the provider's onboarding describes it:
# the integration manager creates an M2M user, a certificate and an IP allow-list entry; the user resets the
# initial passphrase, downloads the certificate with its thumbprint, and requests a token over mutual TLS.
#
# Run from a shell where `bankgate` is on PATH (e.g. after `scripts/run`, `source .venv/bin/activate`).
# Uses ./walkthrough (or $WALKTHROUGH_DIR) for its data and port 8443 (or $PORT).
set -euo pipefail
DIR=${WALKTHROUGH_DIR:-./walkthrough}
PORT=${PORT:-8443}
PASSWORD=${NEW_PASSWORD:-Blue-Harbour-7-Lantern}
export BANKGATE_DATA_DIR="$DIR/data"
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# --- the integration manager ---------------------------------------------------------------------------
bankgate init
USER_JSON=$(bankgate users create --name "API Testuser" --scope app_12345 --json)
USERNAME=$(echo "$USER_JSON" | field username)
PASSPHRASE=$(echo "$USER_JSON" | field initial_passphrase)      # handed to the user once
CERT_JSON=$(bankgate certs issue "$USERNAME" --out "$DIR/certs" --json)
SERIAL=$(echo "$CERT_JSON" | field serial)
echo "certificate $SERIAL, thumbprint $(echo "$CERT_JSON" | field thumbprint)"
bankgate ips allow "$USERNAME" 127.0.0.1/32
bankgate ca-cert --out "$DIR/ca.pem"

bankgate serve --tls --port "$PORT" > "$DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 50); do curl -s --cacert "$DIR/ca.pem" "https://localhost:$PORT/healthz" >/dev/null && break; sleep 0.2; done

# --- the user ------------------------------------------------------------------------------------------
# 1. reset the initial passphrase
curl -s --cacert "$DIR/ca.pem" -X POST "https://localhost:$PORT/api/v1/users/$USERNAME/password" \
  -H 'Content-Type: application/json' \
  -d "{\"passphrase\": \"$PASSPHRASE\", \"new_password\": \"$PASSWORD\"}"
echo
# 2. download the certificate that carries the thumbprint
curl -s --cacert "$DIR/ca.pem" -u "$USERNAME:$PASSWORD" -D - -o "$DIR/my-certificate.pem" \
  "https://localhost:$PORT/api/v1/users/$USERNAME/certificates/$SERIAL" | grep -i x-certificate-thumbprint
# 3. request an access token: Basic username:password over mutual TLS with that certificate
TOKEN_JSON=$(curl -s --cacert "$DIR/ca.pem" --cert "$DIR/my-certificate.pem" --key "$DIR/certs/$SERIAL.key.pem" \
  -u "$USERNAME:$PASSWORD" "https://localhost:$PORT/api/v1/authorizations/authorize")
echo "$TOKEN_JSON"
# 4. call the API with it as Bearer, over the same certificate (the token is bound to it)
ACCESS_TOKEN=$(echo "$TOKEN_JSON" | field access_token)
curl -s --cacert "$DIR/ca.pem" --cert "$DIR/my-certificate.pem" --key "$DIR/certs/$SERIAL.key.pem" \
  -H "Authorization: Bearer $ACCESS_TOKEN" "https://localhost:$PORT/api/v1/whoami"
echo
