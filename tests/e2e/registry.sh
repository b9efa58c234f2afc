#!/usr/bin/env bash
# The registry on local sources: folders, archives, hostile archives, pickle,
# versions and dedup, tags, show/list, rm/gc, verify, export/import.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
"$FX" --out "$T/m" --seed 3 --preset tiny --shards 2 --license apache-2.0 >/dev/null
"$FX" --out "$T/m2" --seed 4 --preset tiny --license mit >/dev/null
json() { printf '%s' "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
nblobs() { find "$OWL_HOME/blobs" -type f | wc -l; }

# --- folder pull, versions, dedup --------------------------------------------
owl pull "$T/m" --name tiny --tag stable
expect_rc pull_folder 0
expect_contains pull_names_version "$OUT" "registered tiny@1"
expect_contains pull_summarises_config "$OUT" "LlamaForCausalLM"
blobs1=$(nblobs)
owl pull "$T/m" --name tiny --json
expect_rc pull_again 0
expect_eq second_pull_is_version_2 "$(json 'd["version"]')" "2"
expect_eq identical_files_stored_once "$(json 'd["new_bytes"]')" "0"
expect_eq blob_count_unchanged "$(nblobs)" "$blobs1"

owl list --json
expect_eq list_has_two_versions "$(json 'len(d)')" "2"
expect_eq list_shows_tag "$(json 'd[0]["tags"]')" "['stable']"

owl show tiny:stable --json
expect_rc show_by_tag 0
expect_eq show_tag_resolves_v1 "$(json 'd["version"]')" "1"
expect_eq show_lists_files "$(json 'len(d["files"])')" "8"
expect_eq show_config_arch "$(json 'd["config"]["architecture"]')" "LlamaForCausalLM"
want=$(sha256sum "$T/m/config.json" | cut -d' ' -f1)
expect_eq show_digest_matches_sha256sum "$(json '[f["sha256"] for f in d["files"] if f["path"]=="config.json"][0]')" "$want"

owl show tiny@9
expect_rc show_missing_version_fails 1
expect_contains show_missing_version_lists "$ERR" "versions: 1, 2"
owl show nosuch
expect_contains show_unknown_model "$ERR" "no model named 'nosuch'"

# --- tags ----------------------------------------------------------------------
owl tag tiny@2 stable
expect_rc tag_move 0
owl tag --history tiny --json
expect_eq tag_history_records_move "$(json '[(h["from"],h["to"]) for h in d]')" "[(None, 1), (1, 2)]"
owl tag tiny@2 'bad tag'
expect_rc tag_invalid_name 2

# --- rm and gc -------------------------------------------------------------------
owl pull "$T/m2" --name other
owl rm other
expect_rc rm_needs_version 2
owl rm tiny@2
expect_rc rm_refused_while_tagged 3
expect_contains rm_names_tag "$ERR" "tag"
owl rm other@1
expect_rc rm_version 0
owl gc --json
expect_rc gc 0
if [ "$(json 'd["blobs_removed"]')" -ge 1 ] && [ "$(json 'd["bytes_freed"]')" -gt 0 ]; then
  pass gc_frees_unreferenced_blobs
else
  fail gc_frees_unreferenced_blobs "$OUT"
fi
expect_eq gc_keeps_referenced "$(nblobs)" "$blobs1"

# --- verify -------------------------------------------------------------------------
owl verify
expect_rc verify_clean 0
blob=$(find "$OWL_HOME/blobs" -type f -size +100k | head -1)
chmod u+w "$blob"
printf '\xff' | dd of="$blob" bs=1 seek=200 conv=notrunc 2>/dev/null
owl verify tiny@1
expect_rc verify_finds_flipped_byte 4
expect_contains verify_names_file "$ERR" "corrupt"
owl export tiny@1 "$T/corrupt.tar"
expect_rc export_refuses_corrupt_blob 4
[ ! -e "$T/corrupt.tar" ] && pass export_leaves_no_file || fail export_leaves_no_file "file exists"

# --- archives -----------------------------------------------------------------------
tar -C "$T" -czf "$T/m2.tar.gz" m2
tar -C "$T/m2" --zstd -cf "$T/m2.tar.zst" .
(cd "$T/m2" && python3 -c 'import zipfile,os,sys
z=zipfile.ZipFile(sys.argv[1],"w")
for f in sorted(os.listdir(".")): z.write(f)
z.close()' "$T/m2.zip")
for a in m2.tar.gz m2.tar.zst m2.zip; do
  owl pull "$T/$a" --name arch --json
  expect_rc "pull_archive_${a//./_}" 0
  expect_eq "archive_${a//./_}_is_hf" "$(json 'd["format"]')" "hf"
done
owl list arch --json
expect_eq archives_identical_content_dedup "$(json 'len(set(v["bytes"] for v in d))')" "1"

hostile() { # name, python that writes the tar
  python3 - "$T/$1.tar" "$T/m2/config.json" <<EOF
import tarfile, sys, io
t = tarfile.open(sys.argv[1], "w")
t.add(sys.argv[2], arcname="config.json")
$2
t.close()
EOF
}
hostile abs 'i=tarfile.TarInfo("/etc/owl-evil"); i.size=3; t.addfile(i, io.BytesIO(b"bad"))'
hostile dotdot 'i=tarfile.TarInfo("../../evil"); i.size=3; t.addfile(i, io.BytesIO(b"bad"))'
hostile symlink 'i=tarfile.TarInfo("model.safetensors"); i.type=tarfile.SYMTYPE; i.linkname="/etc/passwd"; t.addfile(i)'
hostile hardlink 'i=tarfile.TarInfo("x.safetensors"); i.type=tarfile.LNKTYPE; i.linkname="../../etc/passwd"; t.addfile(i)'
before=$(nblobs)
for h in abs dotdot symlink hardlink; do
  owl pull "$T/$h.tar" --name hostile
  expect_rc "hostile_${h}_refused" 4
  expect_contains "hostile_${h}_says_nothing_stored" "$ERR" "nothing was stored"
done
expect_eq hostile_archives_store_no_blob "$(nblobs)" "$before"
owl show hostile
expect_rc hostile_registers_no_model 1
[ -z "$(ls -A "$OWL_HOME/tmp" | grep stage- || true)" ] && pass hostile_leaves_no_staging || fail hostile_leaves_no_staging "$(ls "$OWL_HOME/tmp")"
[ ! -e /etc/owl-evil ] && [ ! -e "$T/../evil" ] && pass hostile_wrote_nothing_outside || fail hostile_wrote_nothing_outside "file escaped"

# --- unsafe content ---------------------------------------------------------------------
mkdir -p "$T/pickle"
cp "$T/m2/config.json" "$T/pickle/"
printf 'not really a pickle' >"$T/pickle/pytorch_model.bin"
owl pull "$T/pickle"
expect_rc pickle_refused 3
expect_contains pickle_reason "$ERR" "arbitrary code"
mkdir -p "$T/badst"
cp "$T/m2/config.json" "$T/badst/"
python3 - "$T/badst/model.safetensors" <<'EOF'
import json, struct, sys
h = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 16)
EOF
owl pull "$T/badst"
expect_rc bad_safetensors_refused 4
expect_contains bad_safetensors_reason "$ERR" "model.safetensors"
mkdir -p "$T/empty"
owl pull "$T/empty"
expect_rc empty_folder_refused 2
owl pull "$T/m2/config.json"
expect_rc config_alone_refused 2
expect_contains no_weights_reason "$ERR" "no model weights"
owl pull "$T/m2" --name 'bad name!'
expect_rc invalid_name_refused 2
owl pull "$T/nope"
expect_rc missing_source 2

# --- local file with --sha256 -------------------------------------------------------------
"$FX" --out "$T/g" --seed 5 --preset tiny --gguf Q8_0 --gguf-only >/dev/null
gg=$(ls "$T"/g/*.gguf | head -1)
owl pull "$gg" --name gg --sha256 0000000000000000000000000000000000000000000000000000000000000000
expect_rc sha256_mismatch_exit_4 4
expect_contains sha256_mismatch_names_both "$ERR" "expected 0000"
good=$(sha256sum "$gg" | cut -d' ' -f1)
owl pull "$gg" --name gg --sha256 "$good" --json
expect_rc sha256_match 0
expect_eq gguf_format "$(json 'd["format"]')" "gguf"

# --- export / import round trip on a fresh home -------------------------------------------------
owl pull "$T/m" --name rt
owl export rt@1 "$T/rt.tar.zst"
expect_rc export 0
OWL_HOME="$T/home2" owl import "$T/rt.tar.zst" --tag stable --json
expect_rc import_fresh_home 0
OWL_HOME="$T/home2" owl show rt:stable --json
expect_rc import_registered 0
expect_eq import_keeps_source "$(json 'd["source"]')" "$T/m"
OWL_HOME="$T/home2" owl verify
expect_rc import_verifies 0
# A bundle with a changed byte in a file is refused, nothing registered.
mkdir -p "$T/tamper" && tar -C "$T/tamper" --zstd -xf "$T/rt.tar.zst"
printf 'x' >>"$T/tamper/files/config.json"
tar -C "$T/tamper" -cf "$T/tampered.tar" manifest.json files
OWL_HOME="$T/home3" owl import "$T/tampered.tar"
expect_rc import_tampered_exit_4 4
expect_contains import_tampered_names_file "$ERR" "config.json"
OWL_HOME="$T/home3" owl list --json
expect_eq import_tampered_registers_nothing "$(json 'len(d)')" "0"
# A bundle with an extra file the manifest does not list is refused.
cp "$T/m2/tokenizer.json" "$T/tamper/files/extra.json"
tar -C "$T/tamper" -cf "$T/extra.tar" manifest.json files
OWL_HOME="$T/home3" owl import "$T/extra.tar"
expect_rc import_extra_file_refused 4

# --- signed bundles ---------------------------------------------------------------------------
openssl genpkey -algorithm ed25519 -out "$T/key.pem" 2>/dev/null
openssl pkey -in "$T/key.pem" -pubout -out "$T/key.pub" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$T/other.pem" 2>/dev/null
openssl pkey -in "$T/other.pem" -pubout -out "$T/other.pub" 2>/dev/null
owl export rt@1 "$T/signed.tar" --sign "$T/key.pem"
expect_rc export_signed 0
OWL_HOME="$T/home4" owl import "$T/signed.tar" --trust "$T/key.pub" --json
expect_rc import_signed_trusted 0
expect_eq import_signature_verified "$(json 'd["signature"]')" "verified"
OWL_HOME="$T/home4" owl import "$T/signed.tar" --trust "$T/other.pub"
expect_rc import_wrong_key_refused 4
expect_contains import_wrong_key_reason "$ERR" "does not verify"
OWL_HOME="$T/home4" owl import "$T/rt.tar.zst" --trust "$T/key.pub"
expect_rc import_unsigned_refused_with_trust 4
# Editing the manifest of a signed bundle breaks the signature.
mkdir -p "$T/sig" && tar -C "$T/sig" -xf "$T/signed.tar"
sed -i 's/"rt"/"rx"/' "$T/sig/manifest.json"
tar -C "$T/sig" -cf "$T/resigned.tar" manifest.json manifest.sig files
OWL_HOME="$T/home4" owl import "$T/resigned.tar" --trust "$T/key.pub"
expect_rc import_edited_manifest_refused 4
OWL_HOME="$T/home4" owl list --json
expect_eq signed_imports_registered_once "$(json 'len(d)')" "1"

# --- GGUF: parsed in full at pull, summarised in show ---------------------------------------------
owl show gg --json
expect_eq gguf_summary_arch "$(json 'd["config"]["architecture"]')" "llama"
expect_eq gguf_summary_dtype "$(json 'd["config"]["dtype"]')" "q8_0"
head -c 3000 "$gg" >"$T/trunc.gguf"
owl pull "$T/trunc.gguf" --name trunc
expect_rc truncated_gguf_refused 4
expect_contains truncated_gguf_reason "$ERR" "trunc.gguf"
