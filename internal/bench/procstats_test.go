//go:build integration

package bench

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The round-trip column comes from librados itself: every Ceph client of a
// process under test (the driver's, through CEPH_ARGS in its environment;
// the floor's, the same way while it connects) serves an admin socket in a
// directory of the benchmark's own, and the benchmark reads the perf
// counters of every client before and after each call. No product code
// counts anything.
//
// Two numbers per call:
//   - msgs: messages the process's Ceph clients sent, to OSDs, monitors and
//     managers alike (the messenger's msgr_send_messages, all workers): one
//     per request that waits for an answer (an OSD op, a mon or mgr
//     command), plus the odd unsolicited one (a watch ping, a map
//     subscription), which the median over many calls leaves out;
//   - osd: of those, the OSD operations (the objecter's op_send, resends and
//     watch/notify ops included). A compound op (several omap writes in one
//     write op) is one.

// cephCounters are what the Ceph clients of one process report.
type cephCounters struct {
	Clients  int    // live librados clients (admin sockets that answer)
	Msgs     uint64 // messages sent
	OSDOps   uint64 // OSD operations sent
	TCPConns uint64 // messenger connections open (to mons, mgrs, OSDs)
}

func (c cephCounters) minus(o cephCounters) cephCounters {
	return cephCounters{Clients: c.Clients, Msgs: c.Msgs - o.Msgs, OSDOps: c.OSDOps - o.OSDOps, TCPConns: c.TCPConns}
}

// asoks names the admin sockets of the Ceph clients counted together: a
// glob pattern (every client of the driver process) or one socket (the
// floor's client).
type asoks string

// cephArgs is the CEPH_ARGS value that gives every client of a process a
// socket in dir ($pid and $cctid are Ceph's metavariables: one socket per
// client). librados reads CEPH_ARGS once per process, when the first
// client is made, and every later client reuses that value.
func cephArgs(dir string) string {
	return "--admin_socket=" + filepath.Join(dir, "$pid.$cctid.asok")
}

// read sums the counters of every client that a answers for.
func (a asoks) read() (cephCounters, error) {
	var total cephCounters
	socks, err := filepath.Glob(string(a))
	if err != nil {
		return total, err
	}
	for _, s := range socks {
		c, err := perfDump(s)
		if err != nil {
			// A client that shut down between the glob and the dial.
			if _, serr := os.Stat(s); os.IsNotExist(serr) {
				continue
			}
			return total, fmt.Errorf("%s: %w", filepath.Base(s), err)
		}
		total.Clients++
		total.Msgs += c.Msgs
		total.OSDOps += c.OSDOps
		total.TCPConns += c.TCPConns
	}
	return total, nil
}

// perfDump asks one admin socket for its perf counters. The protocol: the
// command as JSON and a NUL byte; the answer as a 32-bit big-endian length
// and that many bytes.
func perfDump(sock string) (cephCounters, error) {
	var out cephCounters
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return out, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(`{"prefix": "perf dump"}` + "\x00")); err != nil {
		return out, err
	}
	var n uint32
	if err := binary.Read(conn, binary.BigEndian, &n); err != nil {
		return out, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return out, err
	}
	var dump map[string]map[string]json.RawMessage
	if err := json.Unmarshal(body, &dump); err != nil {
		return out, err
	}
	num := func(v json.RawMessage) uint64 {
		x, _ := strconv.ParseUint(string(v), 10, 64)
		return x
	}
	for logger, counters := range dump {
		switch {
		case strings.HasPrefix(logger, "AsyncMessenger::Worker"):
			out.Msgs += num(counters["msgr_send_messages"])
			out.TCPConns += num(counters["msgr_active_connections"])
		case logger == "objecter":
			out.OSDOps += num(counters["op_send"])
		}
	}
	return out, nil
}

// procStats are what a process costs: resident memory, threads, open file
// descriptors and (from its Go profile endpoint) goroutines.
type procStats struct {
	RSS        uint64 // bytes
	Threads    int
	FDs        int
	Goroutines int // -1 when unknown
}

// readProc reads /proc/<pid> and, when pprofURL is set, the goroutine count
// of the process's profile endpoint.
func readProc(pid int, pprofURL string) (procStats, error) {
	st := procStats{Goroutines: -1}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			kb, _ := strconv.ParseUint(fields[0], 10, 64)
			st.RSS = kb << 10
		case "Threads":
			st.Threads, _ = strconv.Atoi(fields[0])
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return st, err
	}
	st.FDs = len(fds)
	if pprofURL != "" {
		if st.Goroutines, err = goroutines(pprofURL); err != nil {
			return st, err
		}
	}
	return st, nil
}

// goroutines reads the first line of the goroutine profile in text form:
// "goroutine profile: total N".
func goroutines(pprofURL string) (int, error) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(pprofURL + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return -1, err
	}
	var n int
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &n); err != nil {
		return -1, fmt.Errorf("goroutine profile starts %q: %w", line, err)
	}
	return n, nil
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
