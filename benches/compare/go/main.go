// Go's side of the comparison harness: the same workloads as the greenstack
// program, written with goroutines, channels, sync and net. One workload per
// run, chosen on the command line; one RESULT line out.
//
// Usage: bench WORKLOAD key=value ... (workers=, n=, budget_ms=, depth=,
// trips=, cold=); workers sets GOMAXPROCS.
//
// Every workload runs in main's goroutine, the spawner of an ordinary Go
// program, so the "from main" workloads of issue 19 (spawn_join_main,
// deep_stack_main, deep_stack_run) differ from spawn_join and deep_stack
// only in their timing (cold=1: the first pass alone) and, for
// deep_stack_run, in that each goroutine ends as soon as it is down.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var args = map[string]string{}

func arg(key string, def uint64) uint64 {
	v, ok := args[key]
	if !ok {
		return def
	}
	n, err := strconv.ParseUint(strings.ReplaceAll(v, "_", ""), 10, 64)
	if err != nil {
		panic(fmt.Sprintf("parameter %s=%s is not an integer", key, v))
	}
	return n
}

func report(workload string, fields ...string) {
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	line := "RESULT peer=go workload=" + workload
	for _, k := range keys {
		line += " " + k + "=" + args[k]
	}
	hasPeak := false
	for i := 0; i+1 < len(fields); i += 2 {
		line += " " + fields[i] + "=" + fields[i+1]
		hasPeak = hasPeak || fields[i] == "peak_rss_kib"
	}
	if !hasPeak {
		line += " peak_rss_kib=" + strconv.FormatUint(statusKiB("VmHWM:"), 10)
	}
	fmt.Println(line)
}

// statusKiB reads a field of /proc/self/status in KiB.
func statusKiB(key string) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			f := strings.Fields(l)
			if len(f) >= 2 {
				n, _ := strconv.ParseUint(f[1], 10, 64)
				return n
			}
		}
	}
	return 0
}

func rssPteKiB() uint64 { return statusKiB("VmRSS:") + statusKiB("VmPTE:") }

func mapsLines() int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\n")
}

// measure runs once as a warm-up, then until budget of timed iterations
// have passed (at least one, at most 1,000); returns ns/op and iterations.
func measure(budgetMs uint64, once func() (time.Duration, uint64)) (float64, uint64) {
	once()
	budget := time.Duration(budgetMs) * time.Millisecond
	var total time.Duration
	var ops, iters uint64
	for iters == 0 || (total < budget && iters < 1000) {
		t, n := once()
		total += t
		ops += n
		iters++
	}
	return float64(total.Nanoseconds()) / float64(ops), iters
}

// measureOrCold is measure, or with cold the first pass alone, timed, with
// no warm-up before it (what a fresh process sees).
func measureOrCold(cold bool, budgetMs uint64, once func() (time.Duration, uint64)) (float64, uint64) {
	if cold {
		t, n := once()
		return float64(t.Nanoseconds()) / float64(n), 1
	}
	return measure(budgetMs, once)
}

var sink uint64

// spawnJoin: n tiny goroutines each storing its index, joined.
func spawnJoin(n uint64) (time.Duration, uint64) {
	start := time.Now()
	results := make([]uint64, n)
	var wg sync.WaitGroup
	wg.Add(int(n))
	for i := uint64(0); i < n; i++ {
		go func(i uint64) {
			results[i] = i
			wg.Done()
		}(i)
	}
	wg.Wait()
	var sum uint64
	for _, v := range results {
		sum += v
	}
	t := time.Since(start)
	if sum != n*(n-1)/2 {
		panic("bad sum")
	}
	return t, n
}

// yieldPingpong: two goroutines each calling runtime.Gosched n times.
func yieldPingpong(n uint64) (time.Duration, uint64) {
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(2)
	for k := 0; k < 2; k++ {
		go func() {
			for i := uint64(0); i < n; i++ {
				runtime.Gosched()
				sink = i
			}
			wg.Done()
		}()
	}
	wg.Wait()
	return time.Since(start), 2 * n
}

// channelPingpong: a token bounced through two unbuffered channels.
func channelPingpong(rounds uint64) (time.Duration, uint64) {
	toB := make(chan uint64)
	toA := make(chan uint64)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		for v := range toB {
			toA <- v + 1
		}
		close(done)
	}()
	var v uint64
	for i := uint64(0); i < rounds; i++ {
		toB <- v
		v = <-toA
	}
	close(toB)
	<-done
	t := time.Since(start)
	if v != rounds {
		panic("bad count")
	}
	return t, 2 * rounds
}

// selectPingpong: a token bounced rounds times between two goroutines, the
// receiving side selecting: A sends it on one of two unbuffered channels,
// alternately, and B waits for it with a select over both (the other
// stays idle), then replies on a third, which A receives from plainly.
// One op is one round trip.
func selectPingpong(rounds uint64) (time.Duration, uint64) {
	toB1 := make(chan uint64)
	toB2 := make(chan uint64)
	toA := make(chan uint64)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var v uint64
			var ok bool
			select {
			case v, ok = <-toB1:
			case v, ok = <-toB2:
			}
			if !ok { // A closed its channels: done
				return
			}
			toA <- v + 1
		}
	}()
	var v uint64
	for i := uint64(0); i < rounds; i++ {
		if i%2 == 0 {
			toB1 <- v
		} else {
			toB2 <- v
		}
		v = <-toA
	}
	close(toB1)
	close(toB2)
	<-done
	t := time.Since(start)
	if v != rounds {
		panic("bad count")
	}
	return t, rounds
}

// timeoutPingpong: channelPingpong with every receive, on both sides, a
// select against time.After(timeout), a new timer per receive (the idiom;
// since Go 1.23 an unfired, unreferenced timer needs no Stop), which the
// reply always beats (the harness gives 1 s). One op is one round trip.
func timeoutPingpong(rounds uint64, timeout time.Duration) (time.Duration, uint64) {
	recv := func(ch chan uint64) (uint64, bool) {
		select {
		case v, ok := <-ch:
			return v, ok
		case <-time.After(timeout):
			panic(fmt.Sprintf("a receive timed out after %v", timeout))
		}
	}
	toB := make(chan uint64)
	toA := make(chan uint64)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			v, ok := recv(toB)
			if !ok {
				return
			}
			toA <- v + 1
		}
	}()
	var v uint64
	for i := uint64(0); i < rounds; i++ {
		toB <- v
		v, _ = recv(toA)
	}
	close(toB)
	<-done
	t := time.Since(start)
	if v != rounds {
		panic("bad count")
	}
	return t, rounds
}

// fib: fib(n-1) in a new goroutine, fib(n-2) inline.
func fib(n uint64) uint64 {
	if n < 2 {
		return n
	}
	left := make(chan uint64, 1)
	go func() { left <- fib(n - 1) }()
	right := fib(n - 2)
	return <-left + right
}

func fibPlain(n uint64) uint64 {
	a, b := uint64(0), uint64(1)
	for i := uint64(0); i < n; i++ {
		a, b = b, a+b
	}
	return a
}

func fanoutFib(n uint64) (time.Duration, uint64) {
	start := time.Now()
	v := fib(n)
	t := time.Since(start)
	if v != fibPlain(n) {
		panic("bad fib")
	}
	return t, fibPlain(n+1) - 1
}

//go:noinline
func touch(local *[1024]byte, depth uint64) {
	local[(depth*7)%1024] = byte(depth)
}

// recurse: one frame with a live 1 KiB local, used after the recursive
// call; with a barrier (arrived + release), the deepest frame waits at it;
// without (nil), the goroutine unwinds and ends as soon as it is down.
func recurse(depth uint64, arrived *sync.WaitGroup, release chan struct{}) uint64 {
	var local [1024]byte
	touch(&local, depth)
	if depth == 0 {
		if arrived != nil {
			arrived.Done()
			<-release
		}
		return uint64(local[0])
	}
	below := recurse(depth-1, arrived, release)
	return below + uint64(local[(depth*7)%1024])
}

func deepStack(n, depth uint64) time.Duration {
	start := time.Now()
	var arrived, done sync.WaitGroup
	release := make(chan struct{})
	arrived.Add(int(n))
	done.Add(int(n))
	results := make([]uint64, n)
	for i := uint64(0); i < n; i++ {
		go func(i uint64) {
			results[i] = recurse(depth, &arrived, release)
			done.Done()
		}(i)
	}
	arrived.Wait()
	close(release)
	done.Wait()
	for _, v := range results {
		sink += v
	}
	return time.Since(start)
}

// deepStackRun: spawn-then-run: n goroutines each recursing depth frames
// of 1 KiB and ending as soon as it is down, then all joined.
func deepStackRun(n, depth uint64) time.Duration {
	start := time.Now()
	var done sync.WaitGroup
	done.Add(int(n))
	results := make([]uint64, n)
	for i := uint64(0); i < n; i++ {
		go func(i uint64) {
			results[i] = recurse(depth, nil, nil)
			done.Done()
		}(i)
	}
	done.Wait()
	for _, v := range results {
		sink += v
	}
	return time.Since(start)
}

// parked: n goroutines each blocked on its own channel; returns VmRSS +
// VmPTE (KiB) and the mapping count while all are parked.
func parked(n uint64) (uint64, int) {
	var ready, done sync.WaitGroup
	ready.Add(int(n))
	done.Add(int(n))
	chans := make([]chan uint64, n)
	results := make([]uint64, n)
	for i := uint64(0); i < n; i++ {
		ch := make(chan uint64)
		chans[i] = ch
		go func(i uint64) {
			ready.Done()
			results[i] = <-ch + i
			done.Done()
		}(i)
	}
	ready.Wait()
	time.Sleep(50 * time.Millisecond)
	kib := rssPteKiB()
	maps := mapsLines()
	for _, ch := range chans {
		ch <- 1
	}
	done.Wait()
	var sum uint64
	for _, v := range results {
		sum += v
	}
	if sum != n*(n-1)/2+n {
		panic("bad sum")
	}
	return kib, maps
}

func raiseNofile() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// echoServer: one goroutine per connection.
func echoServer() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				continue
			}
			go func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						if err != io.EOF && err != io.ErrUnexpectedEOF {
							fmt.Fprintln(os.Stderr, "echo server: read failed:", err)
						}
						return
					}
					if _, err := c.Write(buf); err != nil {
						fmt.Fprintln(os.Stderr, "echo server: write failed:", err)
						return
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

func tcpEcho(conns, trips, budgetMs uint64) (float64, uint64) {
	raiseNofile()
	addr := echoServer()
	streams := make([]net.Conn, conns)
	for i := range streams {
		c, err := net.Dial("tcp", addr) // TCP_NODELAY is Go's default
		if err != nil {
			panic(err)
		}
		// One exchange before the next connect (untimed set-up).
		buf := make([]byte, 64)
		if _, err := c.Write(buf); err != nil {
			panic(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			panic(err)
		}
		streams[i] = c
	}
	return measure(budgetMs, func() (time.Duration, uint64) {
		start := time.Now()
		var wg sync.WaitGroup
		wg.Add(len(streams))
		for i, c := range streams {
			go func(i int, c net.Conn) {
				defer wg.Done()
				msg := make([]byte, 64)
				for k := range msg {
					msg[k] = byte(i)
				}
				buf := make([]byte, 64)
				for t := uint64(0); t < trips; t++ {
					if _, err := c.Write(msg); err != nil {
						panic(err)
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						panic(err)
					}
					if buf[0] != byte(i) || buf[63] != byte(i) {
						panic("bad echo")
					}
				}
			}(i, c)
		}
		wg.Wait()
		return time.Since(start), conns * trips
	})
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench WORKLOAD [key=value ...]")
		os.Exit(2)
	}
	workload := os.Args[1]
	for _, a := range os.Args[2:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "bad argument %q: expected key=value\n", a)
			os.Exit(2)
		}
		args[k] = v
	}
	runtime.GOMAXPROCS(int(arg("workers", 2)))
	n := arg("n", 1000)
	budget := arg("budget_ms", 500)
	switch workload {
	case "deep_stack":
		t := deepStack(n, arg("depth", 256))
		report(workload, "ms", fmt.Sprintf("%.2f", float64(t.Nanoseconds())/1e6),
			"peak_rss_kib", strconv.FormatUint(statusKiB("VmHWM:"), 10))
	case "parked":
		base := rssPteKiB()
		baseMaps := mapsLines()
		kib, maps := parked(n)
		var per float64
		if kib > base {
			per = float64(kib-base) / float64(n)
		}
		report(workload, "status", "ok", "kib_per_task", fmt.Sprintf("%.3f", per),
			"maps_lines", strconv.Itoa(maps), "base_maps_lines", strconv.Itoa(baseMaps),
			"base_kib", strconv.FormatUint(base, 10))
	case "spawn_join_main":
		ns, iters := measureOrCold(arg("cold", 0) != 0, budget, func() (time.Duration, uint64) { return spawnJoin(n) })
		report(workload, "ns_per_op", fmt.Sprintf("%.2f", ns), "iters", strconv.FormatUint(iters, 10))
	case "deep_stack_main", "deep_stack_run":
		depth := arg("depth", 256)
		ns, iters := measureOrCold(arg("cold", 0) != 0, budget, func() (time.Duration, uint64) {
			if workload == "deep_stack_main" {
				return deepStack(n, depth), 1
			}
			return deepStackRun(n, depth), 1
		})
		report(workload, "ms", fmt.Sprintf("%.2f", ns/1e6), "iters", strconv.FormatUint(iters, 10),
			"peak_rss_kib", strconv.FormatUint(statusKiB("VmHWM:"), 10))
	case "tcp_echo":
		ns, iters := tcpEcho(n, arg("trips", 100), budget)
		report(workload, "ns_per_op", fmt.Sprintf("%.2f", ns), "iters", strconv.FormatUint(iters, 10))
	default:
		var once func() (time.Duration, uint64)
		switch workload {
		case "spawn_join":
			once = func() (time.Duration, uint64) { return spawnJoin(n) }
		case "yield_pingpong":
			once = func() (time.Duration, uint64) { return yieldPingpong(n) }
		case "channel_pingpong":
			once = func() (time.Duration, uint64) { return channelPingpong(n) }
		case "select_pingpong":
			once = func() (time.Duration, uint64) { return selectPingpong(n) }
		case "timeout_pingpong":
			timeout := time.Duration(arg("timeout_ms", 1000)) * time.Millisecond
			once = func() (time.Duration, uint64) { return timeoutPingpong(n, timeout) }
		case "fanout_fib":
			once = func() (time.Duration, uint64) { return fanoutFib(n) }
		default:
			fmt.Fprintf(os.Stderr, "unknown workload %s\n", workload)
			os.Exit(2)
		}
		ns, iters := measure(budget, once)
		report(workload, "ns_per_op", fmt.Sprintf("%.2f", ns), "iters", strconv.FormatUint(iters, 10))
	}
}
