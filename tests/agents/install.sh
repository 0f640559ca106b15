#!/usr/bin/env bash
# Installs the three real agent clients from the npm registry, at pinned versions, into DIR
# (the test command uses target/agents), with Node 22 from the `node` package (Claude Code
# needs Node >= 22). Idempotent: does nothing when the pinned versions are already there.
# Usage: install.sh DIR
set -euo pipefail
dir=${1:?usage: install.sh DIR}
CODEX=0.171.0
CLAUDE=2.1.332
GEMINI=0.61.0
NODE=22.23.3
want="node@$NODE @openai/codex@$CODEX @anthropic-ai/claude-code@$CLAUDE @google/gemini-cli@$GEMINI"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stamp="$dir/.installed"
bin="$dir/node_modules/.bin"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
  [ -x "$bin/node" ] && [ -x "$bin/codex" ] && [ -x "$bin/claude" ] && [ -x "$bin/gemini" ]; then
  echo "agent clients already installed in $dir ($want)"
  exit 0
fi
rm -f "$stamp"
cd "$dir"
[ -f package.json ] || npm init -y >/dev/null
# Node 22 first, so the clients' install scripts (Claude Code's postinstall) run on it: npm
# puts node_modules/.bin first on PATH for lifecycle scripts.
npm install --no-audit --no-fund --loglevel=error --save-exact "node@$NODE"
PATH="$bin:$PATH" npm install --no-audit --no-fund --loglevel=error --save-exact \
  "@openai/codex@$CODEX" "@anthropic-ai/claude-code@$CLAUDE" "@google/gemini-cli@$GEMINI"
export PATH="$bin:$PATH"
echo "node $(node --version)"
echo "codex: $(codex --version 2>&1 | tail -1)"
echo "claude: $(claude --version 2>&1 | tail -1)"
echo "gemini: $(gemini --version 2>&1 | tail -1)"
echo "$want" > "$stamp"
