#!/usr/bin/env bash
# owl's GGUF dequantisation against the gguf package's, block for block, for
# every type the engine reads, including the K-quants most published GGUFs
# use (random blocks with sane scales: the layouts are what is tested).
. "$(dirname "$0")/lib.sh"

PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>/dev/null) || { fail gguf_pyenv "scripts/pyenv.sh failed"; exit 1; }
for type in F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q6_K; do
  "$PY" - "$type" "$T/$type.bin" "$T/$type.ref.json" <<'PYEOF'
import json, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
name, out, ref = sys.argv[1:4]
t = T[name]
block, nbytes = gguf.GGML_QUANT_SIZES[t]
rs = np.random.RandomState(7)
nblocks = 8 if block > 1 else 64
raw = rs.randint(0, 256, size=nblocks * nbytes, dtype=np.uint8)
def half(v):
    return np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)
for b in range(nblocks):
    base = b * nbytes
    if name in ("Q8_0", "Q4_0"):
        raw[base:base + 2] = half(0.01 * (b + 1))
    elif name == "Q4_1":
        raw[base:base + 2] = half(0.02); raw[base + 2:base + 4] = half(-0.1 * b)
    elif name == "Q4_K":
        raw[base:base + 2] = half(0.003 * (b + 1)); raw[base + 2:base + 4] = half(0.001 * (b + 1))
    elif name == "Q6_K":
        raw[base + 208:base + 210] = half(0.002 * (b + 1))
if name == "F16":
    raw = np.frombuffer(rs.randn(nblocks).astype(np.float16).tobytes(), dtype=np.uint8).copy()
if name == "BF16":
    f = rs.randn(nblocks).astype(np.float32).view(np.uint32) >> 16
    raw = np.frombuffer(f.astype(np.uint16).tobytes(), dtype=np.uint8).copy()
raw.tofile(out)
d = gguf.quants.dequantize(raw.reshape(1, -1), t).reshape(-1)
json.dump([float(v) for v in d], open(ref, "w"))
PYEOF
  "$OWL_BUILD/owl-dequant" "$type" "$T/$type.bin" >"$T/$type.owl.json" 2>"$T/err" || { fail "dequant_$type" "$(cat "$T/err")"; continue; }
  python3 - "$T/$type.owl.json" "$T/$type.ref.json" <<'PYEOF' && pass "dequant_$type" || fail "dequant_$type" "differs from the gguf package"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
ok = len(a) == len(b) and all(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a, b))
if not ok:
    bad = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if abs(x - y) > 1e-6 * max(1.0, abs(y))][:5]
    print(len(a), len(b), bad, file=sys.stderr)
sys.exit(0 if ok else 1)
PYEOF
done
