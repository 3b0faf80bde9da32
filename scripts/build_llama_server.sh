#!/usr/bin/env bash
# Builds llama.cpp's own OpenAI-compatible server, `llama-server`, from the llama.cpp sources
# vendored in the llama-cpp-python 0.3.36 sdist (the same llama.cpp the tests compare against),
# and caches it as .cache/llama-server/bin/llama-server. A prerequisite of bench/serve.py, not
# of the tests: `bash scripts/build_llama_server.sh` (about 10 minutes on 2 cores the first time).
#
# Flags: Release, GGML_NATIVE (this CPU's instruction sets, as scripts/test.sh builds the library)
# without AMX (its matmuls segfault on Sapphire Rapids in this llama.cpp), static libraries, no web UI (no download of prebuilt assets), no OpenSSL (loopback HTTP only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=0.3.36
SDIST=.cache/sdist/llama_cpp_python-$VERSION.tar.gz
CACHE=$ROOT/.cache/llama-server
BINARY=$CACHE/bin/llama-server
PY=${PYTHON:-$ROOT/.venv/bin/python}

if [[ -x $BINARY ]]; then
    echo "llama-server (llama-cpp-python $VERSION's llama.cpp) is cached: $BINARY"
    exit 0
fi

if [[ ! -f $SDIST ]]; then
    mkdir -p .cache/sdist
    "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d .cache/sdist
fi

CMAKE=$(command -v cmake || true)
if [[ -z $CMAKE ]]; then
    # Pinned in requirements/bench.txt; installs a cmake binary into the venv.
    "$PY" -m pip install --disable-pip-version-check "$(grep -E '^cmake==' requirements/bench.txt)"
    CMAKE=$(dirname "$PY")/cmake
fi
echo "cmake: $("$CMAKE" --version | head -n 1)"

rm -rf "$CACHE/src" "$CACHE/build"
mkdir -p "$CACHE/src"
echo "extracting vendor/llama.cpp from $SDIST"
tar -xzf "$SDIST" -C "$CACHE/src" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"

"$CMAKE" -S "$CACHE/src" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
"$CMAKE" --build "$CACHE/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

mkdir -p "$CACHE/bin"
cp "$CACHE/build/bin/llama-server" "$BINARY.partial"
mv "$BINARY.partial" "$BINARY"
"$BINARY" --version 2>&1 | head -n 3
echo "built $BINARY"
