package monitor

import (
	"context"
	"fmt"
	"time"

	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// armRegisters reads TTBR1_EL1 and TCR_EL1 of vCPU 0 from the aarch64
// gdbstub's system registers. Neither is required: introspection finds
// the kernel's tables from the image (init_mm.pgd) when the gdbstub does
// not name them, and checks TCR_EL1 when it does.
func (m *Monitor) armRegisters(ctx context.Context) (linux.Registers, error) {
	var regs linux.Registers
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := m.dbg.Do(ctx, func(ctx context.Context, g *gdbrsp.Client) error {
		if err := g.SetVCPU(ctx, 0); err != nil {
			return err
		}
		if _, ok := g.Register("TCR_EL1"); ok {
			var err error
			if regs.TCR, err = g.ReadRegister(ctx, "TCR_EL1"); err != nil {
				return err
			}
		}
		if _, ok := g.Register("TTBR1_EL1"); ok {
			v, err := g.ReadRegister(ctx, "TTBR1_EL1")
			if err != nil {
				return err
			}
			regs.TTBR1 = v &^ (0xffff<<48 | 1) // ASID and CnP
		}
		return nil
	})
	if err != nil {
		return regs, fmt.Errorf("read vCPU 0 system registers: %w", err)
	}
	return regs, nil
}

// isARM64 reports whether the guest is arm64.
func (m *Monitor) isARM64() bool { return m.cfg.Arch == qemu.ArchARM64 }

// isARMHF reports whether the guest is 32-bit ARM (armhf).
func (m *Monitor) isARMHF() bool { return m.cfg.Arch == qemu.ArchARMHF }
