# A private nginx on loopback for download tests. Source after lib.sh:
#   . "$(dirname "$0")/lib-nginx.sh"
#   nginx_start            starts it; sets NGX_WWW (document root), NGX_HTTP and
#                          NGX_HTTPS (base URLs), NGX_CA (the CA that signed the
#                          server certificate), NGX_OTHER_CA (an unrelated CA),
#                          NGX_LOG (access log: "status bytes_sent auth uri")
#   hub_publish DIR ORG/REPO REV COMMIT
#                          publishes a folder as a hub repository: the tree
#                          listing (LFS sha256 for .safetensors/.gguf), the
#                          revision -> commit answer, and the files under
#                          /ORG/REPO/resolve/COMMIT/ (REV and COMMIT both work)
#
# What the server does, by location:
#   /files/...             static files with Range support (nginx's own)
#   /slow/...              the same files at 1 MB/s, to kill a client mid-download
#   /api/models/O/R/tree/REV       the listing JSON; 404 X-Error-Code: RevisionNotFound
#   /api/models/O/R/revision/REV   {"sha": COMMIT}
#   /O/R/resolve/REV/PATH  small files directly, large files (.safetensors,
#                          .gguf) by 302 to http://localhost:PORT/cdn/..., with
#                          X-Repo-Commit; 404 X-Error-Code: EntryNotFound
#   /api/models/org/gated/...  401 X-Error-Code: GatedRepo unless
#                          "Authorization: Bearer owl-test-token"
#   /cdn/...               answers 403 when a request carries Authorization (a
#                          token must never follow a redirect to a CDN)

_ngx_cert() { # dir name ca_key ca_crt
  openssl req -new -newkey rsa:2048 -nodes -keyout "$1/$2.key" -subj "/CN=localhost" \
    -out "$1/$2.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$1/$2.ext"
  openssl x509 -req -in "$1/$2.csr" -CA "$4" -CAkey "$3" -CAcreateserial -days 2 \
    -extfile "$1/$2.ext" -out "$1/$2.crt" 2>/dev/null
}

_ngx_ca() { # dir name
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$1/$2.key" -days 2 \
    -subj "/CN=owl test $2" -out "$1/$2.crt" 2>/dev/null
}

nginx_start() {
  local d="$T/nginx"
  mkdir -p "$d/www/files" "$d/logs" "$d/tmp"
  _ngx_ca "$d" ca
  _ngx_ca "$d" otherca
  _ngx_cert "$d" server "$d/ca.key" "$d/ca.crt"
  local hp sp
  hp=$(free_port)
  sp=$(free_port)
  NGX_WWW="$d/www"
  NGX_HTTP="http://127.0.0.1:$hp"
  NGX_HTTPS="https://127.0.0.1:$sp"
  NGX_CA="$d/ca.crt"
  NGX_OTHER_CA="$d/otherca.crt"
  NGX_LOG="$d/logs/access.log"
  # Started as root, nginx's workers would drop to "nobody" and could not read
  # the test's private folder: keep them as the current user.
  local user_line=""
  [ "$(id -u)" = 0 ] && user_line="user $(id -un) $(id -gn);"
  cat >"$d/nginx.conf" <<EOF
$user_line
daemon on;
pid $d/nginx.pid;
error_log $d/logs/error.log;
worker_processes 1;
events { worker_connections 256; }
http {
  log_format owl '\$status \$body_bytes_sent "\$http_authorization" \$request_uri';
  access_log $NGX_LOG owl;
  client_body_temp_path $d/tmp; proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp;
  uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
  types { application/json json; application/octet-stream safetensors gguf; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$hp;
    listen 127.0.0.1:$sp ssl;
    ssl_certificate $d/server.crt;
    ssl_certificate_key $d/server.key;
    root $d/www;

    location /files/ { }
    location /slow/ { alias $d/www/files/; limit_rate 1m; }
    location ~ ^/api/models/org/gated/ {
      if (\$http_authorization != "Bearer owl-test-token") {
        add_header X-Error-Code GatedRepo always;
        add_header X-Error-Message "Access to model org/gated is restricted" always;
        return 401;
      }
      rewrite ^/api/models/([^/]+/[^/]+)/(tree|revision)/([^/?]+)\$ /hub-api/\$1/\$2/\$3.json last;
    }
    location ~ ^/api/models/([^/]+/[^/]+)/(tree|revision)/([^/?]+)\$ {
      rewrite ^/api/models/([^/]+/[^/]+)/(tree|revision)/([^/?]+)\$ /hub-api/\$1/\$2/\$3.json last;
    }
    location /hub-api/ {
      internal;
      alias $d/hub-api/;
      default_type application/json;
      error_page 404 = @norevision;
    }
    location @norevision {
      add_header X-Error-Code RevisionNotFound always;
      add_header X-Error-Message "Invalid rev id" always;
      return 404;
    }
    location ~ ^/([^/]+/[^/]+)/resolve/([^/]+)/(.+\.(safetensors|gguf))\$ {
      if (!-f $d/hub/\$1/resolve/\$2/\$3) { return 404; }
      add_header X-Repo-Commit \$2 always;
      return 302 http://localhost:$hp/cdn/\$1/resolve/\$2/\$3;
    }
    location ~ ^/([^/]+/[^/]+)/resolve/ {
      root $d/hub;
      add_header X-Repo-Commit owl always;
      error_page 404 = @noentry;
    }
    location @noentry {
      add_header X-Error-Code EntryNotFound always;
      return 404;
    }
    location /cdn/ {
      if (\$http_authorization) { return 403; }
      alias $d/hub/;
    }
  }
}
EOF
  nginx -c "$d/nginx.conf" -p "$d" 2>"$d/logs/start.err" || {
    echo "FAIL nginx_start: $(cat "$d/logs/start.err")"
    return 1
  }
  on_exit "kill \$(cat '$d/nginx.pid')"
  # Wait until it answers.
  local i
  for i in $(seq 50); do
    curl -s -o /dev/null "$NGX_HTTP/files/" && return 0
    sleep 0.1
  done
  echo "FAIL nginx_start: nginx did not answer on $NGX_HTTP"
  return 1
}

# hub_publish DIR ORG/REPO REV COMMIT
hub_publish() {
  local src=$1 repo=$2 rev=$3 commit=$4 d="$T/nginx"
  mkdir -p "$d/hub/$repo/resolve/$commit" "$d/hub-api/$repo/tree" "$d/hub-api/$repo/revision"
  cp -r "$src/." "$d/hub/$repo/resolve/$commit/"
  # The branch name serves the same files as the commit.
  [ "$rev" != "$commit" ] && ln -sfn "$commit" "$d/hub/$repo/resolve/$rev"
  python3 - "$src" "$d/hub-api/$repo/tree" "$rev" "$commit" <<'EOF'
import hashlib, json, os, sys
src, out, rev, commit = sys.argv[1:5]
entries = []
for root, dirs, files in os.walk(src):
    dirs.sort()
    rel = os.path.relpath(root, src)
    if rel != ".":
        entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": rel})
    for f in sorted(files):
        p = os.path.join(root, f)
        path = os.path.normpath(os.path.join(rel, f))
        data = open(p, "rb").read()
        e = {"type": "file", "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
             "size": len(data), "path": path}
        if f.endswith((".safetensors", ".gguf")):
            e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                        "pointerSize": 134}
        entries.append(e)
for name in {rev, commit}:
    json.dump(entries, open(os.path.join(out, name + ".json"), "w"))
    json.dump({"id": "x", "sha": commit}, open(os.path.join(out, "..", "revision", name + ".json"), "w"))
EOF
}
