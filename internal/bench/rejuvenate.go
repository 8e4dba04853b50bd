package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// RejuvenateOptions configure Rejuvenate.
type RejuvenateOptions struct {
	// SizesMiB are the guest RAM sizes, each a VM of its own.
	SizesMiB []int
	Rounds   int
	// FillMiB is how much random data the guest writes to its tmpfs
	// before the timings, so that its RAM holds that much more that is
	// not zero (a full migration and a snapshot move it; a restart
	// keeping RAM does not).
	FillMiB int
	// TickPeriod is how often the guest's ticker writes to the console.
	TickPeriod time.Duration
	// Net, when set, is each VM's --net (isolated: a network of its own),
	// so that the network gate and the network's other end are part of
	// what a restart and an upgrade hand over.
	Net string
}

// RejuvenateOp is one operation's timings over the rounds, in ms.
type RejuvenateOp struct {
	Name string `json:"name"`
	// Seen is the longest gap between two ticker lines that reached the
	// host around the operation, less the ticker's period: the pause the
	// guest's output shows, seen from outside.
	Seen []float64 `json:"seen_ms"`
	// Reported is the monitor's own figure (the guest stopped, from the
	// stop to the resume); Command the API call's round trip.
	Reported []float64 `json:"reported_ms"`
	Command  []float64 `json:"command_ms"`
	// Bytes is what the operation moved or stored (device state, or the
	// snapshot's RAM on disk).
	Bytes []int64 `json:"bytes,omitempty"`
}

// RejuvenateSize is one RAM size's results.
type RejuvenateSize struct {
	MemMiB int `json:"mem_mib"`
	// ColdBootMs is `run --detach` to the ready marker; ColdRebootMs a
	// forced stop plus that (the device's cold reboot).
	ColdBootMs   float64        `json:"cold_boot_ms"`
	ColdRebootMs float64        `json:"cold_reboot_ms"`
	Ops          []RejuvenateOp `json:"ops"`
	SnapshotRAM  int64          `json:"snapshot_ram_pages"`
}

// RejuvenateReport is what Rejuvenate measured.
type RejuvenateReport struct {
	Rounds       int              `json:"rounds"`
	FillMiB      int              `json:"fill_mib"`
	TickPeriodMs float64          `json:"tick_period_ms"`
	Accel        string           `json:"accel"`
	HostCPUs     int              `json:"host_cpus"`
	LoadAvg      [2]string        `json:"loadavg"`
	Sizes        []RejuvenateSize `json:"sizes"`
}

// The operations, in the order each round does them.
const (
	opRestart  = "QEMU restart, RAM kept (x-ignore-shared)"
	opFull     = "QEMU restart, full migration to a file and back"
	opSnapshot = "snapshot"
	opRollback = "rollback"
	opUpgrade  = "monitor upgrade (exec in place)"
)

// Rejuvenate boots one VM per size with procgap added, fills --fill-mib of
// its tmpfs, starts procgap's ticker on the console and, rounds times,
// restarts QEMU keeping RAM, restarts it with a full migration, takes a
// snapshot and rolls back to it; each timed from the host by the ticker's
// lines (attached to the console through the API) and by the monitor's own
// report. Then it stops the VM and boots it again (the cold reboot).
func Rejuvenate(ctx context.Context, env Env, o RejuvenateOptions) (*RejuvenateReport, error) {
	tmp, err := os.MkdirTemp("", "gatevisor-bench-rejuvenate-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	procgap, err := buildStatic(ctx, tmp, "procgap", procgapSource)
	if err != nil {
		return nil, err
	}
	rep := &RejuvenateReport{Rounds: o.Rounds, FillMiB: o.FillMiB, TickPeriodMs: ms(o.TickPeriod), HostCPUs: runtime.NumCPU()}
	rep.LoadAvg[0] = loadAvg()
	for _, size := range o.SizesMiB {
		s, err := rejuvenateSize(ctx, env, o, procgap, size, rep)
		if err != nil {
			return nil, fmt.Errorf("%d MiB: %w", size, err)
		}
		rep.Sizes = append(rep.Sizes, s)
	}
	rep.LoadAvg[1] = loadAvg()
	return rep, nil
}

func rejuvenateSize(ctx context.Context, env Env, o RejuvenateOptions, procgap string, size int, rep *RejuvenateReport) (RejuvenateSize, error) {
	res := RejuvenateSize{MemMiB: size}
	name := fmt.Sprintf("bench-rejuv-%d-%d", size, os.Getpid())
	args := []string{"--add", procgap + ":" + procgapGuestPath, "--mem", strconv.Itoa(size) + "M"}
	switch o.Net {
	case "":
	case "isolated":
		args = append(args, "--net", "isolated:"+name)
	default:
		args = append(args, "--net", o.Net)
	}
	t0 := time.Now()
	c, stop, err := env.bootVM(ctx, name, args...)
	if err != nil {
		return res, err
	}
	res.ColdBootMs = ms(time.Since(t0))
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	st, err := c.Status(ctx)
	if err != nil {
		return res, err
	}
	rep.Accel = st.Accel
	if o.FillMiB > 0 {
		if _, err := guestSh(ctx, c, fmt.Sprintf("dd if=/dev/urandom of=/tmp/fill bs=1M count=%d 2>/dev/null", o.FillMiB), 600); err != nil {
			return res, fmt.Errorf("fill the guest's tmpfs: %w", err)
		}
	}
	tk, err := startTicker(ctx, c, o.TickPeriod)
	if err != nil {
		return res, err
	}
	defer tk.close()
	ops := map[string]*RejuvenateOp{}
	order := []string{opRestart, opFull, opSnapshot, opRollback, opUpgrade}
	for _, n := range order {
		ops[n] = &RejuvenateOp{Name: n}
	}
	// The full migrations come last: QEMU's load writes every page of
	// guest RAM, zero ones included, so that the RAM file holds all of
	// guest RAM afterwards, and the snapshots after it would read it all.
	for i := range 2 * o.Rounds {
		round, full := i%o.Rounds, i >= o.Rounds
		tag := fmt.Sprintf("bench-%d", round)
		steps := []struct {
			name string
			do   func() (float64, int64, error)
		}{
			{opRestart, func() (float64, int64, error) {
				r, err := c.Restart(ctx, api.RestartRequest{KeepGuest: true})
				return r.DowntimeSeconds * 1000, r.DeviceStateBytes, err
			}},
			{opFull, func() (float64, int64, error) {
				r, err := c.Restart(ctx, api.RestartRequest{KeepGuest: true, CopyRAM: true})
				return r.DowntimeSeconds * 1000, r.DeviceStateBytes, err
			}},
			{opSnapshot, func() (float64, int64, error) {
				s, err := c.Snapshot(ctx, tag)
				res.SnapshotRAM = s.RAMPages
				return s.PausedSeconds * 1000, s.RAMStoredBytes, err
			}},
			{opRollback, func() (float64, int64, error) {
				r, err := c.Rollback(ctx, tag)
				return r.DowntimeSeconds * 1000, 0, err
			}},
			{opUpgrade, func() (float64, int64, error) {
				return upgradeMonitor(ctx, env, name, tk)
			}},
		}
		for _, s := range steps {
			if (s.name == opFull) != full {
				continue
			}
			// A quiet second between operations, so that each one's
			// gap stands alone among the ticks.
			if err := sleepCtx(ctx, time.Second); err != nil {
				return res, err
			}
			start := time.Now()
			reported, bytes, err := s.do()
			end := time.Now()
			if err != nil {
				return res, fmt.Errorf("%s: %w", s.name, err)
			}
			if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
				return res, err
			}
			var gap time.Duration
			if s.name != opUpgrade {
				if gap, err = tk.longestGap(start.Add(-200*time.Millisecond), end.Add(400*time.Millisecond)); err != nil {
					return res, fmt.Errorf("%s: %w", s.name, err)
				}
			} else {
				// The console stream is the old monitor's: it ends at the
				// exec and is attached again afterwards, so the host
				// cannot time the pause from it.
				if c, err = env.Client(name); err != nil {
					return res, err
				}
				if tk, err = attachTicker(ctx, c); err != nil {
					return res, err
				}
				defer tk.close()
			}
			op := ops[s.name]
			if s.name != opUpgrade {
				op.Seen = append(op.Seen, max(0, ms(gap-o.TickPeriod)))
			}
			op.Reported = append(op.Reported, reported)
			op.Command = append(op.Command, ms(end.Sub(start)))
			op.Bytes = append(op.Bytes, bytes)
			env.logf("%d MiB round %d: %s: seen %.1f ms, reported %.1f ms, command %.1f ms\n", size, round+1, s.name, ms(gap-o.TickPeriod), reported, ms(end.Sub(start)))
		}
		if !full {
			if err := c.RemoveSnapshot(ctx, tag); err != nil {
				return res, err
			}
		}
	}
	for _, n := range order {
		res.Ops = append(res.Ops, *ops[n])
	}
	tk.close()
	// The cold reboot: a forced stop, then a boot to the ready marker.
	t0 = time.Now()
	stop()
	stopped = true
	_, stop2, err := env.bootVM(ctx, name, args...)
	if err != nil {
		return res, err
	}
	res.ColdRebootMs = ms(time.Since(t0))
	stop2()
	return res, nil
}

// ticker is procgap's tick lines as they reach the host through the
// console.
type ticker struct {
	conn io.Closer
	mu   sync.Mutex
	at   []time.Time // arrival of each line, in order
	done chan struct{}
	once sync.Once
}

// maxTicks bounds what a ticker keeps (an hour at 1 ms).
const maxTicks = 3_600_000

func startTicker(ctx context.Context, c *apiclient.Client, period time.Duration) (*ticker, error) {
	tk, err := attachTicker(ctx, c)
	if err != nil {
		return nil, err
	}
	if _, err := guestStart(ctx, c, fmt.Sprintf("sh -c '%s tick %d >/dev/console'", procgapGuestPath, period.Microseconds())); err != nil {
		tk.close()
		return nil, err
	}
	return tk, tk.waitLines(ctx, 10)
}

// attachTicker attaches to the console and records the ticker's lines.
func attachTicker(ctx context.Context, c *apiclient.Client) (*ticker, error) {
	conn, err := c.Console(ctx, 0)
	if err != nil {
		return nil, fmt.Errorf("attach the console: %w", err)
	}
	tk := &ticker{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(tk.done)
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			if strings.HasPrefix(strings.TrimSpace(sc.Text()), "gvT") {
				now := time.Now()
				tk.mu.Lock()
				if len(tk.at) < maxTicks {
					tk.at = append(tk.at, now)
				}
				tk.mu.Unlock()
			}
		}
	}()
	return tk, nil
}

// waitLines waits until the ticker has seen n lines; it closes tk if not.
func (tk *ticker) waitLines(ctx context.Context, n int) error {
	for deadline := time.Now().Add(30 * time.Second); ; {
		tk.mu.Lock()
		got := len(tk.at)
		tk.mu.Unlock()
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			tk.close()
			return fmt.Errorf("the guest's ticker wrote %d lines to the console in 30 s", got)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			tk.close()
			return err
		}
	}
}

// upgradeMonitor replaces VM name's monitor with this binary and waits
// for the new one: the pause it reports, and no bytes.
func upgradeMonitor(ctx context.Context, env Env, name string, tk *ticker) (float64, int64, error) {
	c, err := env.Client(name)
	if err != nil {
		return 0, 0, err
	}
	res, err := c.Upgrade(ctx, api.UpgradeRequest{})
	if err != nil {
		return 0, 0, err
	}
	tk.close()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return 0, 0, err
		}
		nc, err := env.Client(name)
		if err != nil {
			continue
		}
		if st, err := nc.Status(ctx); err == nil && st.MonitorUpgrades >= res.Upgrades && st.State == api.StateRunning {
			return st.UpgradePauseMs, 0, nil
		}
	}
	return 0, 0, fmt.Errorf("the upgraded monitor did not answer within a minute")
}

// longestGap returns the longest time between two consecutive lines
// arriving in [from, to], counting from the last one before from.
func (tk *ticker) longestGap(from, to time.Time) (time.Duration, error) {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	var longest time.Duration
	var prev time.Time
	n := 0
	for _, t := range tk.at {
		if t.Before(from) {
			prev = t
			continue
		}
		if t.After(to) {
			break
		}
		if !prev.IsZero() && t.Sub(prev) > longest {
			longest = t.Sub(prev)
		}
		prev = t
		n++
	}
	if n < 2 {
		return 0, fmt.Errorf("the guest's ticker wrote %d lines in the %v around the operation: it stopped", n, to.Sub(from))
	}
	return longest, nil
}

func (tk *ticker) close() {
	tk.once.Do(func() {
		tk.conn.Close()
		<-tk.done
	})
}

// WriteText writes the report for a person.
func (rep *RejuvenateReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("rejuvenation, %d rounds, accel %s, guest tmpfs filled with %d MiB of random data, ticker every %.1f ms (load %s -> %s):\n",
		rep.Rounds, rep.Accel, rep.FillMiB, rep.TickPeriodMs, rep.LoadAvg[0], rep.LoadAvg[1])
	t.printf("  pause the host sees in the guest's console ticks (longest gap less one period), median [min, max] ms; the monitor's own figure; the command; bytes moved or stored\n")
	for _, s := range rep.Sizes {
		t.printf("%d MiB: cold boot to ready %.0f ms, cold reboot (stop + boot) %.0f ms; snapshot RAM %d non-zero pages\n", s.MemMiB, s.ColdBootMs, s.ColdRebootMs, s.SnapshotRAM)
		for _, op := range s.Ops {
			lo, hi := minMax(op.Seen)
			var bytes []float64
			for _, b := range op.Bytes {
				bytes = append(bytes, float64(b))
			}
			if len(op.Seen) == 0 {
				t.printf("  %-48s seen     n/a                 reported %7.1f  command %7.1f  bytes %.0f  (reported / cold reboot %.3f)\n",
					op.Name, Median(op.Reported), Median(op.Command), Median(bytes), Median(op.Reported)/s.ColdRebootMs)
				continue
			}
			t.printf("  %-48s seen %7.1f [%.1f, %.1f]  reported %7.1f  command %7.1f  bytes %.0f  (seen / cold reboot %.3f)\n",
				op.Name, Median(op.Seen), lo, hi, Median(op.Reported), Median(op.Command), Median(bytes), Median(op.Seen)/s.ColdRebootMs)
		}
	}
	t.printf("(the monitor upgrade's pause is not seen from the host: the console stream it is timed on is the old monitor's, which the exec ends)\n")
	return t.err
}
