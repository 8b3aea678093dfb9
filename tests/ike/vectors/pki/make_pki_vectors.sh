#!/bin/sh
# Independent oracle for tests/ike/pubkey_auth_test.cpp, made with the openssl CLI (OpenSSL 3.0, Debian 12):
# an ECDSA P-256 CA, an RSA 2048 and an ECDSA P-256 end-entity certificate (100 years, so the test does not
# expire), signatures over octets.bin with `openssl dgst -sign`, and the SHA-1 of the CA's
# SubjectPublicKeyInfo (the CERTREQ hash, RFC 7296 §3.7). The private keys stay in a temporary directory
# and are deleted; the test embeds the outputs written here.
# Subjects use string_mask = default (PrintableString where possible), as strongSwan encodes a text DN.
set -eu
out=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
cat > req.cnf <<'CNF'
[req]
distinguished_name = dn
string_mask = default
[dn]
CNF
printf 'espresso pubkey_auth oracle: RealMessage | Nonce | prf(SK_p, RestOfID)\n' > "$out/octets.bin"

openssl req -config req.cnf -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
    -subj "/O=Espresso oracle/CN=Oracle CA" -keyout ca.key -out "$out/oracle_ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for kind in rsa ec; do
    if [ $kind = rsa ]; then newkey="-newkey rsa:2048"; else newkey="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1"; fi
    printf 'subjectAltName=IP:198.51.100.1,DNS:hq.example.net\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n' > ext
    # shellcheck disable=SC2086
    openssl req -config req.cnf -new $newkey -nodes \
        -subj "/C=CH/O=Espresso/OU=VPN gateways/CN=hq.example.net/emailAddress=vpn@example.net" \
        -keyout $kind.key -out $kind.csr
    openssl x509 -req -in $kind.csr -CA "$out/oracle_ca.pem" -CAkey ca.key -set_serial $( [ $kind = rsa ] && echo 0x0a || echo 0x0e ) -days 36500 \
        -extfile ext -out "$out/oracle_$kind.pem"
    openssl dgst -sha256 -sign $kind.key -out "$out/oracle_$kind.sha256.sig" "$out/octets.bin"
    openssl x509 -in "$out/oracle_$kind.pem" -noout -subject -nameopt RFC2253 > "$out/oracle_$kind.subject.txt"
done
openssl x509 -in "$out/oracle_ca.pem" -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha1 -r \
    | cut -d' ' -f1 > "$out/oracle_ca.spki.sha1"
