#!/usr/bin/env bash
# The official MCP Inspector CLI (a real external client) against `custody mcp`:
# lists the tools and calls two of them. Usage: inspector.sh CUSTODY NODE_BIN_DIR
set -uo pipefail
custody=$(realpath "$1"); export PATH="$2:$PATH"
tmp=$(mktemp -d); export CUSTODY_HOME=$tmp/home CUSTODY_RUNTIME_DIR=$tmp/run
unset XDG_DATA_HOME XDG_RUNTIME_DIR
pass=0; fail=0
check() { if [ "$2" = 0 ]; then pass=$((pass+1)); echo "ok   $1"; else fail=$((fail+1)); echo "FAIL $1"; fi; }
cleanup() {
  "$custody" lock >/dev/null 2>&1
  pid=$("$custody" status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("pid") or "")' 2>/dev/null)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
secret="inspector-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf 'inspector pass\n135790\n' | "$custody" init --passphrase-stdin --pin-stdin --insecure-fast-kdf >/dev/null
printf 'inspector pass\n' | "$custody" unlock --passphrase-stdin >/dev/null
printf '135790\n' | "$custody" env create insp -d "inspector test" --pin-stdin >/dev/null
printf '135790\n%s' "$secret" | "$custody" set insp TOKEN --pin-stdin >/dev/null
cat > "$CUSTODY_HOME/policy.toml" <<TOML
[[clients."*".preapproved]]
argv = ["sh", "-c", "echo \$TOKEN"]
environments = ["insp"]
expires = "2099-01-01T00:00:00Z"
TOML
printf '135790\n' | "$custody" policy apply "$CUSTODY_HOME/policy.toml" --pin-stdin >/dev/null
insp() { mcp-inspector --cli -e CUSTODY_HOME="$CUSTODY_HOME" -e CUSTODY_RUNTIME_DIR="$CUSTODY_RUNTIME_DIR" "$custody" mcp "$@" 2>&1; }
out=$(insp --method tools/list)
echo "$out" | grep -q '"list_environments"' && echo "$out" | grep -q '"run"'; check "inspector tools/list lists the tools" $?
out=$(insp --method tools/call --tool-name list_environments)
echo "$out" | grep -q 'TOKEN' && ! echo "$out" | grep -q "$secret"; check "inspector tools/call list_environments: names, no value" $?
out=$(insp --method tools/call --tool-name run --tool-arg 'environments=["insp"]' --tool-arg 'command=["sh","-c","echo $TOKEN"]' --tool-arg "cwd=$tmp")
echo "$out" | grep -q 'masked:TOKEN' && ! echo "$out" | grep -q "$secret"; check "inspector tools/call run: masked output" $?
[ $fail = 0 ] || echo "$out" | head -20
echo "mcp-inspector: $pass passed, $fail failed"
[ $fail = 0 ]
