// Package bench is the library behind the `gatevisor bench` commands: it
// measures gatevisor against its peers on this machine. Boot times
// `gatevisor run` against plain QEMU, IDS the introspection's two memory
// paths, Syscalls the cost of the syscall gate, Net that of the network
// gate, Flood the gates under attack (a flooding guest process against
// another's allowed work), Memory the monitor's footprint, and Proc the
// process actions from below against an in-guest kill.
//
// A harness boots its benchmark VMs by running the gatevisor binary
// (os.Executable) and talks to them only through their API
// (internal/api/apiclient); how to find a VM by name is its caller's, given
// as an Env. It knows neither the CLI nor the monitor. Every harness stops
// its VMs before it returns, also when its context is cancelled (Ctrl-C).
// It returns a report whose JSON field names docs/benchmarks.md and
// scripts rely on; the report's WriteText renders it for a person.
package bench
