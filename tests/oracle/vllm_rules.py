"""The checks vLLM makes when it loads a PEFT LoRA adapter for a Llama-family model
(`vllm serve BASE --enable-lora --lora-modules NAME=DIR --max-lora-rank N`), applied to an
adapter folder. vLLM itself needs a GPU and torch >= 2, so its rules are restated here, each
with the place it comes from:

  vLLM 0.6.6.post1 (the wheel's vllm/lora/peft_helper.py PEFTHelper.from_dict and
    _validate_features; vllm/lora/models.py LoRAModel.from_local_checkpoint and
    from_lora_tensors; vllm/lora/utils.py parse_fine_tuned_lora_name; vllm/lora/lora.py
    LoRALayerWeights (scaling alpha / r); vllm/lora/worker_manager.py _load_adapter (expected
    modules, rank <= max_lora_rank); vllm/config.py LoRAConfig (max_lora_rank one of 8 ... 256);
    vllm/model_executor/models/llama.py LlamaForCausalLM.supported_lora_modules and
    packed_modules_mapping).
  vLLM's later source (peft_helper.py at commit e745baf: rsLoRA accepted with scaling
    alpha / sqrt(r), validate_legal: rank <= max_lora_rank, bias only with --enable-lora-bias;
    vllm/config/lora.py MaxLoRARanks: 1, 8, 16, 32, 64, 128, 256, 320, 512).

  vllm_rules.py ADAPTER_DIR BASE_DIR
      BASE_DIR holds the base's config.json (the shapes). Prints one JSON object, a verdict per
      release: {"0.6.6.post1": {"ok", "errors", "scaling", "max_lora_rank"}, "later": {...}};
      exit status 0 when every release accepts the adapter, 1 otherwise.
"""
import json
import math
import struct
import sys

# worker_manager._load_adapter expands supported_lora_modules through packed_modules_mapping.
LLAMA_SUPPORTED = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens", "lm_head"]
LLAMA_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
EXPECTED = sorted({p for m in LLAMA_SUPPORTED for p in LLAMA_PACKED.get(m, [m])})

RELEASES = {
    "0.6.6.post1": {"max_ranks": (8, 16, 32, 64, 128, 256), "rslora": False},
    "later": {"max_ranks": (1, 8, 16, 32, 64, 128, 256, 320, 512), "rslora": True},
}


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def module_shapes(cfg):
    """The [out, in] of each projection vLLM puts a LoRA on, as the model's config gives them."""
    hidden = cfg["hidden_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    return {"self_attn.q_proj": (heads * hd, hidden), "self_attn.k_proj": (kv * hd, hidden),
            "self_attn.v_proj": (kv * hd, hidden), "self_attn.o_proj": (hidden, heads * hd),
            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter)}


def parse_name(key):
    """parse_fine_tuned_lora_name's reading of a key: (module, is_lora_a) or an error."""
    parts = key.split(".")
    if len(parts) >= 4 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[2:-2]), parts[-2] == "lora_A"
    raise ValueError(f"{key} is unsupported LoRA weight")


def check_common(adapter, base_cfg):
    """Errors every release reports the same way, and the adapter's rank and alpha."""
    errors = []
    cfg = json.load(open(adapter + "/adapter_config.json"))
    missing = {"r", "lora_alpha", "target_modules"} - set(cfg)
    if missing:
        return [f"Missing required configuration fields: {missing}"], cfg
    if not isinstance(cfg["r"], int) or isinstance(cfg["r"], bool) or cfg["r"] < 1:
        errors.append(f"r must be a positive integer, not {cfg['r']!r}")
    if not isinstance(cfg["lora_alpha"], (int, float)) or isinstance(cfg["lora_alpha"], bool):
        errors.append(f"lora_alpha must be a number, not {cfg['lora_alpha']!r}")
    if cfg.get("modules_to_save"):
        errors.append("vLLM only supports modules_to_save being None.")
    if cfg.get("use_dora"):
        errors.append("vLLM does not yet support DoRA.")
    if cfg.get("bias", "none") != "none":
        errors.append("Adapter bias cannot be used without bias_enabled.")
    if cfg.get("peft_type", "LORA") != "LORA":
        errors.append(f"peft_type {cfg['peft_type']} is not LORA")
    targets = cfg["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)

    shapes = module_shapes(base_cfg)
    layers = base_cfg["num_hidden_layers"]
    # vLLM finds each LoRA by the name of the model's module: a name the model does not have
    # is loaded and never applied, so the names must be exactly the model's.
    known = {f"model.layers.{i}.{m}": s for i in range(layers) for m, s in shapes.items()}
    header = safetensors_header(adapter + "/adapter_model.safetensors")
    mods = {}
    for key, t in header.items():
        if not key.startswith("base_model.model."):
            errors.append(f"{key}: not under base_model.model.")
            continue
        try:
            module, is_a = parse_name(key)
        except ValueError as e:
            errors.append(str(e))
            continue
        if module.split(".")[-1] not in EXPECTED:
            errors.append(f"expected target modules in {EXPECTED} but received {module}")
            continue
        if module not in known:
            errors.append(f"{module}: the model has no such module")
            continue
        if module.split(".")[-1] not in targets:
            errors.append(f"{module}: not in target_modules {targets}")
        if t["dtype"] not in ("F32", "F16", "BF16"):
            errors.append(f"{key}: dtype {t['dtype']}")
        mods.setdefault(module, {})["A" if is_a else "B"] = tuple(t["shape"])
    if not mods:
        errors.append("no LoRA tensors")
    r = cfg["r"]
    for module, ab in sorted(mods.items()):
        out, inp = known[module]
        if ab.get("A") != (r, inp) or ab.get("B") != (out, r):
            errors.append(f"{module}: lora_A {ab.get('A')} and lora_B {ab.get('B')}, "
                          f"not ({r}, {inp}) and ({out}, {r})")
    return errors, cfg


def main():
    adapter, base = sys.argv[1], sys.argv[2]
    base_cfg = json.load(open(base + "/config.json"))
    common, cfg = check_common(adapter, base_cfg)
    out, ok = {}, True
    for rel, rules in RELEASES.items():
        errors = list(common)
        verdict = {"scaling": None, "max_lora_rank": None}
        if "r" in cfg and "lora_alpha" in cfg and isinstance(cfg["r"], int) and cfg["r"] > 0:
            r, alpha = cfg["r"], float(cfg["lora_alpha"])
            if cfg.get("use_rslora"):
                if rules["rslora"]:
                    verdict["scaling"] = alpha / math.sqrt(r)
                else:
                    errors.append("vLLM does not yet support RSLoRA.")
            else:
                verdict["scaling"] = alpha / r
            fits = [m for m in rules["max_ranks"] if m >= r]
            if fits:
                verdict["max_lora_rank"] = fits[0]
            else:
                errors.append(f"LoRA rank {r} is greater than max_lora_rank {rules['max_ranks'][-1]}.")
        verdict["errors"] = errors
        verdict["ok"] = not errors
        ok = ok and not errors
        out[rel] = verdict
    print(json.dumps(out, sort_keys=True))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
