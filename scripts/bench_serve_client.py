"""Load generator for scripts/bench-serve.sh: N concurrent clients, each
sending R streaming completions in turn to an OpenAI-compatible server
(owl's, or llama.cpp's llama-server); prints one JSON line with aggregate
generated tokens/s, p50/p99 time to first token and mean inter-token latency.
Uses http.client alone so that the client costs little CPU next to the server.
Usage: bench_serve_client.py HOST:PORT MODEL CLIENTS REQUESTS MAX_TOKENS"""
import http.client
import json
import statistics
import sys
import threading
import time

host, model = sys.argv[1], sys.argv[2]
clients, reqs, max_tokens = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
WORDS = "owl river stone light garden quiet morning paper window travel".split()


def prompt(k, r):
    # Distinct per request, so that the prefix cache does not flatter the figures.
    words = [WORDS[(k * 7 + r * 3 + i * i) % len(WORDS)] for i in range(48)]
    return f"Request {k}.{r}: " + " ".join(words)


def one(k, r, out):
    c = http.client.HTTPConnection(host, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt(k, r), "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                       "ignore_eos": True})
    t0 = time.time()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = c.getresponse()
    first = last = None
    tokens = 0
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1024)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            d = json.loads(ev[6:])
            now = time.time()
            if d.get("choices"):
                if first is None:
                    first = now
                last = now
            if d.get("usage"):
                tokens = d["usage"]["completion_tokens"]
    c.close()
    if resp.status != 200 or first is None:
        out.append(None)
        return
    out.append((first - t0, (last - first) / max(tokens - 1, 1), tokens))


def client(k, out):
    for r in range(reqs):
        one(k, r, out)


out = []
threads = [threading.Thread(target=client, args=(k, out)) for k in range(clients)]
t0 = time.time()
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.time() - t0
ok = [x for x in out if x]
ttft = sorted(x[0] for x in ok)
pct = lambda p: ttft[min(len(ttft) - 1, int(p * len(ttft)))] if ttft else float("nan")
print(json.dumps({"clients": clients, "requests": len(out), "failed": len(out) - len(ok),
                  "generated_tokens": sum(x[2] for x in ok),
                  "tokens_per_s": round(sum(x[2] for x in ok) / wall, 1),
                  "ttft_p50_s": round(pct(0.50), 3), "ttft_p99_s": round(pct(0.99), 3),
                  "itl_mean_ms": round(1000 * statistics.mean(x[1] for x in ok), 1) if ok else None,
                  "wall_s": round(wall, 2)}))
