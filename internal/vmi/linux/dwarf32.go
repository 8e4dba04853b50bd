package linux

import (
	"bufio"
	"debug/elf"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// isfFileFromVmlinux converts the DWARF of a vmlinux, 64-bit or 32-bit
// little-endian (pointers of its class's size), into an ISF file. With
// allSymbols, the file's symbols are those of the ELF symbol table (data
// and code, as dwarf2json writes them) and linux_banner's bytes as its
// constant data; otherwise it has none (LoadDWARF adds the few
// CheckAgainst compares).
func isfFileFromVmlinux(f *elf.File, path string, allSymbols bool) (*isfFile, error) {
	ptr := uint64(8)
	switch {
	case f.Data != elf.ELFDATA2LSB:
		return nil, fmt.Errorf("%w: %s: not a little-endian ELF", ErrBadISF, path)
	case f.Class == elf.ELFCLASS32:
		ptr = 4
	case f.Class != elf.ELFCLASS64:
		return nil, fmt.Errorf("%w: %s: ELF class %v", ErrBadISF, path, f.Class)
	}
	d, err := elfDWARF(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: no DWARF: %v", ErrBadISF, path, err)
	}
	j, err := isfFileFromDWARF(d, ptr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !allSymbols {
		return j, nil
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: no symbol table: %v", ErrBadISF, path, err)
	}
	j.Symbols = make(map[string]isfFileSymbol, len(syms))
	for _, s := range syms {
		typ := elf.ST_TYPE(s.Info)
		if s.Name == "" || s.Value == 0 || s.Section == elf.SHN_UNDEF || (typ != elf.STT_OBJECT && typ != elf.STT_FUNC && typ != elf.STT_NOTYPE) {
			continue
		}
		if _, dup := j.Symbols[s.Name]; dup {
			continue // a local symbol of the same name in another unit: the first is kept
		}
		addr := s.Value
		sym := isfFileSymbol{Address: &addr}
		if s.Name == "linux_banner" && int(s.Section) < len(f.Sections) && s.Size > 0 && s.Size < 4096 {
			sec := f.Sections[s.Section]
			if b := make([]byte, s.Size); sec.Type == elf.SHT_PROGBITS && s.Value >= sec.Addr {
				if _, err := sec.ReadAt(b, int64(s.Value-sec.Addr)); err == nil {
					sym.ConstantData = base64.StdEncoding.EncodeToString(b)
				}
			}
		}
		j.Symbols[s.Name] = sym
	}
	return j, nil
}

// WriteISF writes the ISF of a vmlinux with DWARF (such as Debian's -dbg
// package's) to w: every structure, union and enum as ISFFromDWARF lays
// them out, and every symbol of its symbol table, with linux_banner's
// bytes, as dwarf2json writes them. The result reads back with LoadISF.
// The whole DWARF is read into memory (a few hundred MB for a
// distribution kernel); this is done once, when a kit is built.
func WriteISF(vmlinux string, w io.Writer) error {
	f, err := elf.Open(vmlinux)
	if err != nil {
		return fmt.Errorf("linux: %s: %w", vmlinux, err)
	}
	defer f.Close()
	j, err := isfFileFromVmlinux(f, vmlinux, true)
	if err != nil {
		return err
	}
	if _, err := newISF(j); err != nil {
		return fmt.Errorf("%s: %w", vmlinux, err)
	}
	bw := bufio.NewWriter(w)
	if err := json.NewEncoder(bw).Encode(j); err != nil {
		return fmt.Errorf("linux: write the ISF of %s: %w", vmlinux, err)
	}
	return bw.Flush()
}

// WriteISFFile is WriteISF to a new file at path (written whole or not at
// all: a temporary file renamed into place).
func WriteISFFile(vmlinux, path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("linux: %w", err)
	}
	err = WriteISF(vmlinux, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("linux: %w", cerr)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
