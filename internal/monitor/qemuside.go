package monitor

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/gatevisor/gatevisor/internal/guestexec"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/qemu/qmp"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

// qemuSide is one QEMU process and the monitor's channels to it. The
// monitor holds exactly one at a time (Monitor.side); a QEMU restart or a
// rollback (restart.go) builds the next one beside it and swaps it in
// whole, so that every user sees either the old QEMU's channels or the
// new one's, never a mix.
type qemuSide struct {
	cfg    *qemu.Config // how this QEMU was started; cfg.Dir holds its sockets
	proc   *qemu.Process
	qmp    *qmp.Client
	gdb    *gdbrsp.Client
	exec   *guestexec.Client
	serial net.Conn
}

// noSide stands for "no QEMU yet" (a Start that failed early).
var noSide = &qemuSide{}

// q returns the QEMU the monitor currently drives.
func (m *Monitor) q() *qemuSide {
	if q := m.side.Load(); q != nil {
		return q
	}
	return noSide
}

// sockTimeout bounds the wait for QEMU's sockets and each connection.
const sockTimeout = 30 * time.Second

func (q *qemuSide) dial(ctx context.Context, name string) (net.Conn, error) {
	if err := q.proc.WaitSocket(q.cfg.Dir, name, sockTimeout); err != nil {
		return nil, err
	}
	return qemu.DialUnix(ctx, q.cfg.File(name), sockTimeout)
}

// connect attaches QMP, the serial console, the exec channel and the
// gdbstub.
func (q *qemuSide) connect(ctx context.Context) error {
	if err := q.connectChannels(ctx); err != nil {
		return err
	}
	return q.connectGDB(ctx)
}

// connectChannels attaches QMP, the serial console and the exec channel:
// everything but the gdbstub, which a QEMU waiting for an incoming
// migration gets only once the guest's state is in (restart.go).
func (q *qemuSide) connectChannels(ctx context.Context) error {
	conn, err := q.dial(ctx, qemu.QMPSocket)
	if err != nil {
		return fmt.Errorf("attach QMP: %w", err)
	}
	if q.qmp, err = qmp.NewClient(ctx, conn); err != nil {
		conn.Close()
		return fmt.Errorf("attach QMP: %w", err)
	}
	// Only SHUTDOWN is read (monitor.go); STOP and RESUME come with every
	// kernel-gate stop.
	q.qmp.IgnoreEvents("STOP", "RESUME")
	if q.serial, err = q.dial(ctx, qemu.SerialSocket); err != nil {
		return fmt.Errorf("attach serial console: %w", err)
	}
	execConn, err := q.dial(ctx, qemu.ExecSocket)
	if err != nil {
		return fmt.Errorf("attach exec channel: %w", err)
	}
	q.exec = guestexec.NewClient(execConn)
	return nil
}

func (q *qemuSide) connectGDB(ctx context.Context) error {
	conn, err := q.dial(ctx, qemu.GDBSocket)
	if err != nil {
		return fmt.Errorf("attach gdbstub: %w", err)
	}
	if q.gdb, err = gdbrsp.NewClient(ctx, conn); err != nil {
		conn.Close()
		return fmt.Errorf("attach gdbstub: %w", err)
	}
	return nil
}

// close kills this QEMU and closes every channel to it; safe on a partial
// side. The serial connection is the console's once attached: the console
// closes it (a restart closes the old one after QEMU exited, so that the
// console reads what it still holds).
func (q *qemuSide) close() {
	if q.proc != nil {
		_ = q.proc.Kill(5 * time.Second)
	}
	if q.qmp != nil {
		q.qmp.Close()
	}
	if q.gdb != nil {
		q.gdb.Close()
	}
	if q.exec != nil {
		q.exec.Close()
	}
}

// writeState records the VM's processes in its runtime directory.
func (m *Monitor) writeState(q *qemuSide) error {
	return m.dir.WriteState(vmdir.State{Name: m.cfg.Name, MonitorPID: os.Getpid(), QEMUPID: q.proc.Pid(), StartedAt: m.started, ConsoleLog: m.cfg.ConsoleLog})
}
