// Command gatevisor runs a device's Linux in a QEMU/KVM virtual machine and
// secures it from below. All logic lives in internal/cli; main only wires the
// process's arguments, signals and exit code to it.
package main

import (
	"os"

	"github.com/gatevisor/gatevisor/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
