//go:build !gatevisor_monitor

package cli

// monitorBuild is false in gatevisor's full executable, which hands `run`
// over to gatevisor-monitor when it can (monitorexe.go).
const monitorBuild = false
