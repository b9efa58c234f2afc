#!/usr/bin/env python3
"""A misbehaving HTTP server on loopback for tests/e2e/pull_hostile.sh: a hub
whose listing names paths outside the data home, slow and trickling servers,
connections dropped mid-file, and files that change between two requests.

Usage: hostile_server.py PORT ROOT LOG

ROOT/files/NAME          GET /files/NAME: ETag (strong, from the content),
                         Last-Modified, Range and If-Range as RFC 9110 says
  /slow/NAME             the same at 1 MiB/s
  /trickle/NAME          the same at 2 bytes/s
  /change/NAME           the first request sends half of files/NAME and drops
                         the connection; every later request serves
                         files/NAME.new instead (another ETag)
  /noval/NAME            like /change, without ETag or Last-Modified
  /naive/NAME            like /change, but If-Range is ignored: a Range gets
                         the new file's bytes (with the new ETag) all the same
ROOT/hub/ORG/REPO.json   GET /api/models/ORG/REPO/tree/REV: that listing, with
                         X-Repo-Commit; /api/models/ORG/REPO/revision/REV
ROOT/hub/ORG/REPO/PATH   GET /ORG/REPO/resolve/REV/PATH (at 2 MiB/s when ORG is
                         "slow")
anything else            200 "owned\\n": what a hostile hub answers for any
                         path a client is tricked into asking for

LOG gets one line per request: "METHOD PATH range=R if-range=I status".
"""
import email.utils
import hashlib
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, ROOT, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]
COMMIT = "c0ffee0123456789abcdef0123456789abcdef01"
lock = threading.Lock()
first_seen = set()  # /change, /noval and /naive names whose first request has been dropped


def log(line):
    with lock, open(LOG, "a") as f:
        f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def note(self, status):
        log("%s %s range=%s if-range=%s %d" % (self.command, self.path,
                                               self.headers.get("Range", "-"),
                                               self.headers.get("If-Range", "-"), status))

    def send_body(self, data, status=200, headers=(), rate=0, drop_at=None):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.note(status)
        if self.command == "HEAD":
            return
        end = len(data) if drop_at is None else drop_at
        chunk = 2 if rate == 2 else 16384
        try:
            for off in range(0, end, chunk):
                self.wfile.write(data[off:min(off + chunk, end)])
                self.wfile.flush()
                if rate:
                    time.sleep(chunk / rate)
            if drop_at is not None:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def serve_file(self, path, rate=0, validators=True, drop_half=False, honour_if_range=True):
        data = open(path, "rb").read()
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:20]
        lm = email.utils.formatdate(os.stat(path).st_mtime, usegmt=True)
        headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
        if validators:
            headers += [("ETag", etag), ("Last-Modified", lm)]
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and honour_if_range and if_range is not None and (not validators or if_range not in (etag, lm)):
            rng = None  # the file changed since the client's copy: all of it, as it is now
        if rng and rng.startswith("bytes=") and not drop_half:
            start_s, _, end_s = rng[6:].partition("-")
            start = int(start_s)
            end = int(end_s) if end_s else len(data) - 1
            if start >= len(data):
                return self.send_body(b"", 416, [("Content-Range", "bytes */%d" % len(data))])
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, len(data))))
            return self.send_body(data[start:end + 1], 206, headers, rate)
        return self.send_body(data, 200, headers, rate,
                              drop_at=len(data) // 2 if drop_half else None)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
        files = os.path.join(ROOT, "files")
        if len(parts) == 2 and parts[0] in ("files", "slow", "trickle", "change", "noval", "naive"):
            kind, name = parts
            path = os.path.join(files, name)
            if "/" in name or not os.path.isfile(path):
                return self.send_body(b"not found\n", 404)
            if kind in ("change", "noval", "naive"):
                with lock:
                    first = name not in first_seen
                    first_seen.add(name)
                if not first:
                    path += ".new"
                return self.serve_file(path, validators=kind != "noval", drop_half=first,
                                       honour_if_range=kind != "naive")
            rate = {"files": 0, "slow": 1 << 20, "trickle": 2}[kind]
            return self.serve_file(path, rate=rate)
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] in ("tree", "revision"):
            listing = os.path.join(ROOT, "hub", parts[2], parts[3] + ".json")
            if not os.path.isfile(listing):
                return self.send_body(b"{}", 404, [("X-Error-Code", "RepoNotFound")])
            if parts[4] == "revision":
                body = ('{"sha": "%s"}' % COMMIT).encode()
            else:
                body = open(listing, "rb").read()
            return self.send_body(body, 200, [("Content-Type", "application/json"),
                                              ("X-Repo-Commit", COMMIT)])
        if len(parts) >= 5 and parts[2] == "resolve":
            base = os.path.realpath(os.path.join(ROOT, "hub", parts[0], parts[1]))
            path = os.path.realpath(os.path.join(base, *parts[4:]))
            if path.startswith(base + "/") and os.path.isfile(path):
                return self.serve_file(path, rate=(2 << 20) if parts[0] == "slow" else 0)
        self.send_body(b"owned\n", 200, [("Content-Type", "application/octet-stream")])


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("127.0.0.1", PORT), Handler).serve_forever()
