package linux

import "fmt"

// IDTGate is one present gate of the interrupt descriptor table.
type IDTGate struct {
	Vector  int    `json:"vector"`
	Handler uint64 `json:"handler"`
	Symbol  string `json:"symbol,omitempty"`
	// InCoreText says the handler is in the kernel's core text, where
	// every handler the kernel installs lives (.entry.text included).
	InCoreText bool `json:"in_core_text"`
}

// idtEntries is the x86-64 IDT's size: 256 16-byte gates.
const idtEntries = 256

// IDT reads idt_table, the table the kernel loads into IDTR (through its
// read-only alias in the CPU entry area), and decodes every present gate's
// handler address.
func (k *Kernel) IDT() ([]IDTGate, error) {
	va, err := k.Addr("idt_table")
	if err != nil {
		return nil, err
	}
	b := make([]byte, 16*idtEntries)
	if _, err := k.AS.ReadVirtual(va, b); err != nil {
		return nil, fmt.Errorf("linux: idt_table: %w", err)
	}
	return decodeIDT(b, k), nil
}

// decodeIDT decodes 16-byte gates (struct gate_struct: offset_low u16,
// segment u16, bits u16 with the present bit at 15, offset_middle u16,
// offset_high u32, reserved u32); k names the handlers (nil: no names).
func decodeIDT(b []byte, k *Kernel) []IDTGate {
	var out []IDTGate
	for v := 0; v+1 <= len(b)/16 && v < idtEntries; v++ {
		g := b[16*v : 16*v+16]
		if le.Uint16(g[4:])&0x8000 == 0 {
			continue
		}
		h := uint64(le.Uint16(g[0:])) | uint64(le.Uint16(g[6:]))<<16 | uint64(le.Uint32(g[8:]))<<32
		gate := IDTGate{Vector: v, Handler: h}
		if k != nil {
			gate.Symbol, gate.InCoreText = k.symbolName(h), k.inCoreText(h)
		}
		out = append(out, gate)
	}
	return out
}

// IDTPhys is idt_table's guest-physical address: what IDTR's base must
// translate to (the CPU entry area maps the same page read-only).
func (k *Kernel) IDTPhys() (uint64, error) {
	va, err := k.Addr("idt_table")
	if err != nil {
		return 0, err
	}
	pa, _, err := k.AS.Translate(va)
	return pa, err
}

// TranslateKernel translates a kernel virtual address through the
// kernel's page tables.
func (k *Kernel) TranslateKernel(va uint64) (uint64, error) {
	pa, _, err := k.AS.Translate(va)
	if err != nil {
		return 0, fmt.Errorf("linux: translate %#x: %w", va, err)
	}
	return pa, nil
}
