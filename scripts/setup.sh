#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: system packages, the venv, the package, and
# KenLM's lmplz/build_binary compiled from the PyPI kenlm source package into a cache, and the
# libsais suffix sorter.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
KENLM_CACHE=${CURATE_KENLM_CACHE:-$HOME/.cache/curate/kenlm}
APT_PACKAGES="g++ cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev"

step() { printf '\n== %s\n' "$*"; }

missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  step "apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi

# llama-cpp-python has no CPU wheel on PyPI: compile it once (niced, it takes minutes) into a
# cache that the install below finds. Not with -march=native: these machines advertise AMX, which
# the sandbox traps (SIGILL in ggml's AMX matmul), so the build names a portable x86-64 feature set.
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_FLAVOUR=avx2
LLAMA_CPP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
WHEELS=${CURATE_WHEELS:-$HOME/.cache/curate/wheels/$LLAMA_CPP_FLAVOUR}
if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl >/dev/null 2>&1; then
  step "compiling llama-cpp-python $LLAMA_CPP_VERSION ($LLAMA_CPP_FLAVOUR) into $WHEELS (about 13 minutes on 2 cores, once)"
  CMAKE_ARGS="$LLAMA_CPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) nice -n 19 "$VENV/bin/pip" wheel -q --no-cache-dir \
    --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$WHEELS"
fi

stamp="$VENV/.curate-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "pip install -e .[dev]"
  "$VENV/bin/pip" install -q --find-links "$WHEELS" -e ".[dev]"
  touch "$stamp"
fi
# A venv that holds another build of llama-cpp-python (an earlier flavour) gets this one.
llama_marker="$VENV/.llama-cpp-$LLAMA_CPP_VERSION-$LLAMA_CPP_FLAVOUR"
if [ ! -f "$llama_marker" ]; then
  step "installing llama-cpp-python $LLAMA_CPP_VERSION ($LLAMA_CPP_FLAVOUR)"
  "$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl
  touch "$llama_marker"
fi

# The sources of the PyPI kenlm package (the version the venv's kenlm module is), unpacked in $1;
# prints their folder.
KENLM_SDIST_SHA256=c4628bb9fb63c8a6f9240035b8b037385cfc404cb72e933cf48878291edac1e8
kenlm_source() {  # `&&`: errexit does not reach into $(...)
  "$VENV/bin/pip" download -q --no-deps --no-binary kenlm kenlm==0.3.0 -d "$1" &&
    echo "$KENLM_SDIST_SHA256  $1/kenlm-0.3.0.tar.gz" | sha256sum -c --quiet >&2 &&
    tar -xzf "$1/kenlm-0.3.0.tar.gz" -C "$1" &&
    echo "$1/kenlm-0.3.0"
}
if [ ! -x "$KENLM_CACHE/bin/lmplz" ] || [ ! -x "$KENLM_CACHE/bin/build_binary" ]; then
  step "building lmplz and build_binary into $KENLM_CACHE (about 2 minutes)"
  work=$(mktemp -d)
  src=$(kenlm_source "$work")
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  make -C "$work/build" -j"$(nproc)" lmplz build_binary >/dev/null
  mkdir -p "$KENLM_CACHE/bin"
  cp "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$KENLM_CACHE/bin/"
  rm -rf "$work"
fi
# The libsais suffix sorter (indexes/sort_shard.c) against libsais.h as the bzip3 source package
# on PyPI ships it; the library is named by the source's hash (see indexes/suffix_array.py).
LIBSAIS_CACHE=$HOME/.cache/curate/libsais
BZIP3_SDIST_SHA256=1c49413d2c1de7290f46774786372036dd05ec7675886aa451aa1362effbf4cb
sort_shard_lib="$LIBSAIS_CACHE/sort_shard-$(sha256sum indexes/sort_shard.c | cut -c1-12).so"
if [ ! -f "$sort_shard_lib" ]; then
  step "compiling indexes/sort_shard.c with libsais into $LIBSAIS_CACHE"
  if [ ! -f "$LIBSAIS_CACHE/include/libsais.h" ]; then
    work=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps --no-binary bzip3 bzip3==0.1.4 -d "$work"
    echo "$BZIP3_SDIST_SHA256  $work/bzip3-0.1.4.tar.gz" | sha256sum -c --quiet
    mkdir -p "$LIBSAIS_CACHE/include"
    tar -xzf "$work/bzip3-0.1.4.tar.gz" -C "$LIBSAIS_CACHE/include" --strip-components=3 bzip3-0.1.4/dep/include/libsais.h bzip3-0.1.4/dep/include/common.h
    rm -rf "$work"
  fi
  rm -f "$LIBSAIS_CACHE"/sort_shard-*.so  # builds of earlier sources
  gcc -O2 -fopenmp -shared -fPIC -I"$LIBSAIS_CACHE/include" indexes/sort_shard.c -o "$sort_shard_lib.tmp"
  mv "$sort_shard_lib.tmp" "$sort_shard_lib"
fi
# curate/kenlm_ids.cc (KenLM scoring of lines of vocabulary ids, see curate/kenlm_ids.py) compiled
# with KenLM's library sources as the kenlm module's setup.py lists them and its flags, into a
# library named by the shim's hash; only the shim's symbols are exported, so it sits beside the
# kenlm module in one process.
KENLM_IDS_CACHE=$HOME/.cache/curate/kenlm_ids
kenlm_ids_lib="$KENLM_IDS_CACHE/kenlm_ids-$(sha256sum curate/kenlm_ids.cc | cut -c1-12).so"
if [ ! -f "$kenlm_ids_lib" ]; then
  step "compiling curate/kenlm_ids.cc with KenLM into $KENLM_IDS_CACHE (about a minute)"
  work=$(mktemp -d)
  src=$(kenlm_source "$work")
  flags="-O3 -DNDEBUG -DKENLM_MAX_ORDER=6 -DHAVE_ZLIB -DHAVE_BZLIB -DHAVE_XZLIB -DHAVE_CLOCKGETTIME -std=c++11 -fPIC -fvisibility=hidden"
  (cd "$src" && ls util/*.cc util/double-conversion/*.cc lm/*.cc | grep -v -e 'main\.cc$' -e 'test\.cc$' |
    xargs -P"$(nproc)" -I{} sh -c "g++ $flags -w -I. -c {} -o \"$work/\$(echo {} | tr / _).o\"")
  mkdir -p "$KENLM_IDS_CACHE"
  rm -f "$KENLM_IDS_CACHE"/kenlm_ids-*.so  # builds of earlier sources
  g++ $flags -shared -I"$src" curate/kenlm_ids.cc "$work"/*.o -lz -lbz2 -llzma -o "$kenlm_ids_lib.tmp"
  mv "$kenlm_ids_lib.tmp" "$kenlm_ids_lib"
  rm -rf "$work"
fi
# The index's search loops compiled ahead of time (numba pycc), so a one-shot query loads no numba;
# skipped when this source's build exists (see indexes/compile_loops.py).
"$VENV/bin/python" -m indexes.compile_loops
echo "setup done: $VENV, lmplz in $KENLM_CACHE/bin, $sort_shard_lib, $kenlm_ids_lib"
