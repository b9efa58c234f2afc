#!/usr/bin/env bash
# Registry benchmark: pull a large file from a loopback nginx and compare owl's
# rate (download + SHA-256 + store) with `curl -o` followed by `sha256sum` on
# the same file, and with the machine's raw SHA-256 rate.
# Usage: scripts/bench-registry.sh [SIZE_MB]   (default 2048)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OWL="$PWD/$BUILD/owl"
size_mb=${1:-2048}
work=$(mktemp -d "${TMPDIR:-/tmp}/owl-bench-registry-XXXXXX")
pidfile="$work/nginx.pid"
cleanup() {
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
mkdir -p "$work/www" "$work/logs" "$work/tmp"
echo "writing a ${size_mb} MiB file of random bytes..."
head -c $((size_mb * 1024 * 1024)) /dev/urandom >"$work/www/big.safetensors.raw"
# A valid safetensors file, so that owl accepts it as a model file: one U8
# tensor covering the random bytes.
python3 - "$work/www/big.safetensors.raw" "$work/www/big.safetensors" <<'EOF'
import json, os, struct, sys
n = os.path.getsize(sys.argv[1])
h = json.dumps({"blob": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(sys.argv[2], "wb") as out, open(sys.argv[1], "rb") as src:
    out.write(struct.pack("<Q", len(h)) + h)
    while True:
        b = src.read(1 << 24)
        if not b:
            break
        out.write(b)
os.remove(sys.argv[1])
EOF
user_line=""
[ "$(id -u)" = 0 ] && user_line="user $(id -un) $(id -gn);"
cat >"$work/nginx.conf" <<EOF
$user_line
daemon on;
pid $pidfile;
error_log $work/logs/error.log;
worker_processes 1;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp;
  fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  sendfile on;
  server { listen 127.0.0.1:$port; root $work/www; }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null || nginx -c "$work/nginx.conf" -p "$work"
url="http://127.0.0.1:$port/big.safetensors"
bytes=$(stat -c %s "$work/www/big.safetensors")
mb=$(python3 -c "print($bytes / 1e6)")
rate() { python3 -c "print(f'{$mb / $1:8.1f}')"; }

# The file is in the page cache after writing; every contender reads it hot.
t0=$(date +%s.%N); sha256sum "$work/www/big.safetensors" >/dev/null; t1=$(date +%s.%N)
t_sha=$(python3 -c "print($t1 - $t0)")
t0=$(date +%s.%N); openssl dgst -sha256 "$work/www/big.safetensors" >/dev/null; t1=$(date +%s.%N)
t_ossl=$(python3 -c "print($t1 - $t0)")
t0=$(date +%s.%N); curl -s -o "$work/curl.out" "$url"; sha256sum "$work/curl.out" >/dev/null; t1=$(date +%s.%N)
t_curl=$(python3 -c "print($t1 - $t0)")
rm -f "$work/curl.out"
t0=$(date +%s.%N); "$OWL" --home "$work/home" --quiet pull "$url" --name big >/dev/null; t1=$(date +%s.%N)
t_owl=$(python3 -c "print($t1 - $t0)")

echo
echo "registry benchmark: ${mb} MB over loopback HTTP (nginx), $(nproc) cores"
printf '%-40s %8s MB/s  (%.2f s)\n' "sha256sum of the file (raw hash rate)" "$(rate "$t_sha")" "$t_sha"
printf '%-40s %8s MB/s  (%.2f s)\n' "openssl dgst -sha256 (OpenSSL's rate)" "$(rate "$t_ossl")" "$t_ossl"
printf '%-40s %8s MB/s  (%.2f s)\n' "curl -o, then sha256sum" "$(rate "$t_curl")" "$t_curl"
printf '%-40s %8s MB/s  (%.2f s)\n' "owl pull (download+hash+store)" "$(rate "$t_owl")" "$t_owl"
python3 -c "
r = $t_curl / $t_owl
print(f'owl pull is {r:.2f}x the speed of curl + sha256sum', '(target >= 1.0: met)' if r >= 1.0 else '(target >= 1.0: NOT met)')"
