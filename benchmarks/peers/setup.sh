#!/usr/bin/env bash
# Create the separate "peers" virtualenv that benchmarks/vs_optimum.py runs optimum-onnx in.
#
# optimum-onnx 0.1.0 needs transformers < 4.58, while edgecap's own venv runs transformers 5.x, so the peer
# lives in its own venv. Usage:
#
#     bash benchmarks/peers/setup.sh [VENV_DIR]        # default: <repo>/.venv-peers (or $EDGECAP_PEERS_VENV)
#
# Idempotent: a venv that already has the pinned versions is left alone (a marker file records the pins).
# Quiet: pip's output goes to VENV_DIR/setup.log, shown only on failure. Exits non-zero on any failure.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv_dir="${1:-${EDGECAP_PEERS_VENV:-$repo_dir/.venv-peers}}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

# torch first and pinned: it resolves to the local CPU wheel. A bare "torch" requirement (e.g. pulled in by
# optimum) could otherwise fetch a multi-GB CUDA build from PyPI.
torch_pin="torch==2.13.0"
# The versions PERF.md measured: optimum-onnx 0.1.0 with a transformers it supports (>=4.36,<4.58).
peer_pins=(
    "optimum-onnx==0.1.0"
    "transformers==4.57.*"
    "onnxruntime==1.32.*"
    "onnx"
    "pillow"
    "numpy<2.5"
)
marker_text="$torch_pin ${peer_pins[*]}"
marker="$venv_dir/.edgecap-peers"

if [[ -f "$marker" && "$(cat "$marker")" == "$marker_text" && -x "$venv_dir/bin/python" ]]; then
    if "$venv_dir/bin/python" -c "import optimum.onnxruntime, transformers, torch, onnxruntime" 2>/dev/null; then
        echo "peers venv up to date: $venv_dir"
        exit 0
    fi
fi

log="$(mktemp -t edgecap-peers-setup.XXXXXX.log)"
fail() {
    echo "setup.sh: $* failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
}

echo "creating peers venv in $venv_dir (log: $log)"
"$python_bin" -m venv "$venv_dir" >>"$log" 2>&1 || fail "python -m venv"
pip=("$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check)
# The torch wheel from local wheels only (pip's find-links; its dependencies come with the next step), so a
# missing CPU wheel fails here instead of pulling the CUDA build. EDGECAP_TORCH_INDEX_URL may name a CPU-only
# torch index to use instead.
if [[ -n "${EDGECAP_TORCH_INDEX_URL:-}" ]]; then
    "${pip[@]}" --index-url "$EDGECAP_TORCH_INDEX_URL" "$torch_pin" >>"$log" 2>&1 || fail "pip install $torch_pin"
else
    "${pip[@]}" --no-index --no-deps "$torch_pin" >>"$log" 2>&1 \
        || fail "pip install --no-index $torch_pin (no local CPU wheel? set EDGECAP_TORCH_INDEX_URL to a CPU" \
                "torch index)"
fi
# Repeating the torch pin keeps torch where it is while its and optimum's dependencies resolve.
"${pip[@]}" "$torch_pin" "${peer_pins[@]}" >>"$log" 2>&1 || fail "pip install ${peer_pins[*]}"

"$venv_dir/bin/python" - >>"$log" 2>&1 <<'EOF' || fail "import check"
import onnxruntime, optimum.onnxruntime, torch, transformers
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print("ok", torch.__version__, transformers.__version__, onnxruntime.__version__)
EOF

echo "$marker_text" >"$marker"
cp "$log" "$venv_dir/setup.log"
rm -f "$log"
versions="$("$venv_dir/bin/python" -c 'import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ("optimum-onnx", "optimum", "transformers", "torch", "onnxruntime")))')"
echo "peers venv ready: $venv_dir ($versions)"
