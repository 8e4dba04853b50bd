// Command peek shows, for the demo, what the gatevisor monitor sees of a
// running guest from outside it, through the VM's API: vCPU 0's registers
// (read through the gdbstub) and the Linux kernel banner found by scanning
// live guest RAM.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: peek API-SOCKET")
		os.Exit(2)
	}
	c := apiclient.New(os.Args[1])
	ctx := context.Background()
	regs, err := c.Registers(ctx, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, r := range []string{"rip", "cr3", "gs_base", "efer"} {
		fmt.Printf("vCPU 0 %-8s %s\n", r, regs.Registers[r])
	}
	layout, err := c.MemoryLayout(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	marker := []byte("Linux version ")
	const chunk = 1 << 20
	for _, r := range layout.Regions {
		for off := uint64(0); off < r.Size; off += chunk - 256 {
			b, err := c.ReadPhysical(ctx, r.GPA+off, int(min(chunk, r.Size-off)))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			for i := bytes.Index(b, marker); i >= 0; {
				end := bytes.IndexByte(b[i:], '\n')
				if end > 0 && bytes.Contains(b[i:i+end], []byte("(")) {
					fmt.Printf("guest-physical %#x: %s\n", r.GPA+off+uint64(i), b[i:i+end])
					return
				}
				j := bytes.Index(b[i+1:], marker)
				if j < 0 {
					break
				}
				i += 1 + j
			}
		}
	}
	fmt.Fprintln(os.Stderr, "no banner found")
	os.Exit(1)
}
