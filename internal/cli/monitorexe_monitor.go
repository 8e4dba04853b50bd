//go:build gatevisor_monitor

package cli

// monitorBuild is true in gatevisor-monitor (monitorexe.go): it runs
// monitors itself and leaves out the commands no monitor runs.
const monitorBuild = true
