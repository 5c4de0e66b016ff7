#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz (cargo-fuzz, libFuzzer; the entry points are in
# src/fuzzing.rs) for FUZZ_SECONDS each (default 12), starting from the inputs kept in
# tests/fuzz/regressions/TARGET/ and a corpus kept in target/fuzz-corpus/TARGET/. A
# crash, a panic or an input slower than 10 s fails the run; libFuzzer writes that
# input to tests/fuzz/artifacts/TARGET/, and once fixed it belongs in regressions/
# (which `cargo test --lib fuzzing` replays). Installs cargo-fuzz if it is missing.
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP lets cargo-fuzz pass libFuzzer's
# instrumentation flags. Rust code is memory-safe, so the targets run without a
# sanitizer and with debug assertions (overflow checks) on.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-12}
if ! command -v cargo-fuzz >/dev/null; then
    echo "installing cargo-fuzz" >&2
    cargo install --quiet --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
flags=(--fuzz-dir tests/fuzz --sanitizer none --debug-assertions)
cargo fuzz build "${flags[@]}"
for target in $(cargo fuzz list --fuzz-dir tests/fuzz); do
    corpus=target/fuzz-corpus/$target
    log=target/fuzz-corpus/$target.log
    mkdir -p "$corpus"
    if ! cargo fuzz run "${flags[@]}" "$target" "$corpus" "tests/fuzz/regressions/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
        cat "$log"
        echo "fuzz target $target failed (the input is in tests/fuzz/artifacts/$target/)"
        exit 1
    fi
    echo "fuzz target $target: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${seconds} s, no crash"
done
