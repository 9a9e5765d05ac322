#!/usr/bin/env bash
# Every test greenstack has, in one command: the README's test command, and
# what .ci/run runs. Needs cargo (stable); installs what else the tests use
# (redis-server, valgrind) with apt-get when missing, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "format and lints"
cargo fmt --all -- --check
# The workspace builds `greenstack` with its `tokio` and `hyper` features
# (examples/async enables them); the runtime alone is checked without.
cargo clippy --workspace --all-targets --locked --all-features -- -D warnings
cargo clippy -p greenstack-runtime --lib --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet --all-features

step "unit, integration and doc tests (guard markers where the kernel has them)"
# tests/real_redis.rs starts its own redis-server (Debian's) on a loopback port.
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
# tests/examples.rs checks hyper_server and https_hello with curl.
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
# ... and http_hello and hyper_server under wrk.
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
# --all-features: the `tokio` (and `hyper`) integrations and their tests.
cargo test --workspace --locked --all-features

step "the stack tests again with the mprotect fallback forced"
# The same flags as above: the build is reused, not made again.
GREENSTACK_GUARD_MODE=mprotect cargo test --locked --workspace --all-features --test stack_growth --test stack_arena --test stack_faults \
    --test stack_inject --test stack_signals --test stack_signals_chain --test stack_signals_actions

step "the use-after-free scenarios under valgrind memcheck (a runtime that unwound, a panicking subscriber, an abandoned stack), and a deep recursion"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
unwind_bin=$(cargo test --locked --workspace --all-features --test rt_unwind --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
# GREENSTACK_SYSTEM_ALLOC=1: task cells on the global allocator, which
# memcheck tracks (by default they come from mimalloc's own pages).
for scenario in a_detached_result_that_panics_on_drop_does_not_unwind_the_worker \
    a_joiners_waker_that_panics_does_not_unwind_the_worker \
    a_subscriber_that_panics_in_new_span_costs_only_the_span \
    shutdown_abandons_a_destructor_still_waiting_at_the_timeout; do
    GREENSTACK_SYSTEM_ALLOC=1 GREENSTACK_UNWIND_CHILD=$scenario valgrind -q --error-exitcode=99 \
        "$unwind_bin" "$scenario" --exact --test-threads=1 --quiet
done
# A coroutine recursing past its stack's initial commit: under valgrind the
# arena commits stacks whole instead of growing them by fault.
growth_bin=$(cargo test --locked --workspace --all-features --test stack_growth --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
GREENSTACK_SYSTEM_ALLOC=1 valgrind -q --error-exitcode=99 "$growth_bin" \
    a_runtime_coroutine_recursing_past_its_initial_commit_keeps_every_frame --exact --test-threads=1 --quiet

step "benches, one pass each in test mode"
cargo test --locked --workspace --all-features --benches

step "loom models (bounded: LOOM_MAX_PREEMPTIONS=2)"
RUSTFLAGS="--cfg greenstack_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2 \
    cargo test -p greenstack-runtime --lib --release --locked --target-dir target/loom loom_

echo
echo "all tests passed"
