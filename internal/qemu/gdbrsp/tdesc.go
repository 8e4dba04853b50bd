package gdbrsp

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// Bounds on a target description, which comes from the stub and is treated
// as untrusted.
const (
	maxTdescDocs     = 32      // documents, counting target.xml and every include
	maxTdescDepth    = 8       // include nesting
	maxTdescBytes    = 1 << 20 // all documents together
	maxTdescRegs     = 4096
	maxRegisterBits  = 4096
	maxTdescElements = 1 << 16
)

// Register describes one register from the target description.
type Register struct {
	Name    string
	Num     int    // GDB register number, used by 'p' packets
	BitSize int    // a multiple of 8
	Type    string // e.g. "int64", "code_ptr", "x64_cr3", "vec128"
	Group   string // e.g. "float", "vector"; "" when the description gives none
	Feature string // enclosing <feature name=...>, e.g. "org.gnu.gdb.i386.core"
	// Offset is the register's byte offset in a 'g' reply, or -1 when it is
	// not reachable through 'g' (a gap in the numbering precedes it).
	Offset int
}

// TargetDescription is the parsed target description.
type TargetDescription struct {
	Architecture string     // e.g. "i386:x86-64"
	Registers    []Register // sorted by Num
	byName       map[string]int
}

// Register looks a register up by name.
func (td *TargetDescription) Register(name string) (Register, bool) {
	i, ok := td.byName[name]
	if !ok {
		return Register{}, false
	}
	return td.Registers[i], true
}

// parseTargetDescription parses target.xml and the documents it includes,
// fetched through fetch. Parsing is pure given fetch; every loop is bounded
// by the constants above.
func parseTargetDescription(fetch func(annex string) ([]byte, error)) (*TargetDescription, error) {
	p := &tdescParser{fetch: fetch, seen: map[string]bool{}}
	if err := p.doc("target.xml", 0); err != nil {
		return nil, err
	}
	td := &TargetDescription{Architecture: p.arch, Registers: p.regs, byName: map[string]int{}}
	sort.SliceStable(td.Registers, func(i, j int) bool { return td.Registers[i].Num < td.Registers[j].Num })
	off := 0
	ambiguous := map[string]bool{}
	for i := range td.Registers {
		r := &td.Registers[i]
		if i > 0 && td.Registers[i-1].Num == r.Num {
			return nil, fmt.Errorf("%w: target description: register number %d used twice", ErrProtocol, r.Num)
		}
		if _, dup := td.byName[r.Name]; dup || ambiguous[r.Name] {
			// qemu-system-arm's description names q0-q15 twice (the
			// NEON feature and the system registers'): a name given
			// twice is not looked up at all, so that no read picks
			// either by chance; the registers stay reachable by number.
			delete(td.byName, r.Name)
			ambiguous[r.Name] = true
		} else {
			td.byName[r.Name] = i
		}
		// 'g' carries registers 0, 1, 2, ... in order; a gap ends it.
		if off >= 0 && r.Num == i {
			r.Offset = off
			off += r.BitSize / 8
		} else {
			r.Offset, off = -1, -1
		}
	}
	return td, nil
}

type tdescParser struct {
	fetch    func(string) ([]byte, error)
	seen     map[string]bool
	docs     int
	bytes    int
	elements int
	arch     string
	regs     []Register
	nextNum  int
	feature  string
}

func (p *tdescParser) doc(annex string, depth int) error {
	if depth > maxTdescDepth {
		return fmt.Errorf("%w: target description: includes nested deeper than %d", ErrProtocol, maxTdescDepth)
	}
	if p.seen[annex] {
		return fmt.Errorf("%w: target description: %s included twice", ErrProtocol, annex)
	}
	p.seen[annex] = true
	if p.docs++; p.docs > maxTdescDocs {
		return fmt.Errorf("%w: target description: more than %d documents", ErrProtocol, maxTdescDocs)
	}
	data, err := p.fetch(annex)
	if err != nil {
		return fmt.Errorf("target description: read %s: %w", annex, err)
	}
	if p.bytes += len(data); p.bytes > maxTdescBytes {
		return fmt.Errorf("%w: target description: larger than %d bytes", ErrProtocol, maxTdescBytes)
	}
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	// The DTD is never fetched; entities other than XML's own are errors.
	d.Entity = map[string]string{}
	var inArch bool
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: target description %s: %v", ErrProtocol, annex, err)
		}
		if p.elements++; p.elements > maxTdescElements {
			return fmt.Errorf("%w: target description: more than %d XML tokens", ErrProtocol, maxTdescElements)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "architecture":
				inArch = true
			case "feature":
				p.feature = attr(t, "name")
			case "include":
				href := attr(t, "href")
				if href == "" || !validAnnex(href) {
					return fmt.Errorf("%w: target description %s: bad include %q", ErrProtocol, annex, href)
				}
				if err := p.doc(href, depth+1); err != nil {
					return err
				}
			case "reg":
				if err := p.reg(t); err != nil {
					return fmt.Errorf("target description %s: %w", annex, err)
				}
			}
		case xml.EndElement:
			switch t.Name.Local {
			case "architecture":
				inArch = false
			case "feature":
				p.feature = ""
			}
		case xml.CharData:
			if inArch && len(p.arch) < 64 {
				p.arch += string(bytes.TrimSpace(t))
			}
		}
	}
}

func (p *tdescParser) reg(t xml.StartElement) error {
	if len(p.regs) >= maxTdescRegs {
		return fmt.Errorf("%w: more than %d registers", ErrProtocol, maxTdescRegs)
	}
	r := Register{Name: attr(t, "name"), Type: attr(t, "type"), Group: attr(t, "group"), Feature: p.feature}
	if r.Name == "" {
		return fmt.Errorf("%w: register without a name", ErrProtocol)
	}
	bits, err := strconv.Atoi(attr(t, "bitsize"))
	if err != nil || bits <= 0 || bits%8 != 0 || bits > maxRegisterBits {
		return fmt.Errorf("%w: register %s: bad bitsize %q", ErrProtocol, r.Name, attr(t, "bitsize"))
	}
	r.BitSize = bits
	r.Num = p.nextNum
	if s := attr(t, "regnum"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n >= 1<<16 {
			return fmt.Errorf("%w: register %s: bad regnum %q", ErrProtocol, r.Name, s)
		}
		r.Num = n
	}
	if r.Num >= 1<<16 {
		return fmt.Errorf("%w: register %s: regnum %d too large", ErrProtocol, r.Name, r.Num)
	}
	p.nextNum = r.Num + 1
	p.regs = append(p.regs, r)
	return nil
}

func attr(t xml.StartElement, name string) string {
	for _, a := range t.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// validAnnex accepts the file names stubs use ("i386-64bit.xml") and
// rejects anything that could confuse the qXfer packet syntax.
func validAnnex(s string) bool {
	if len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
