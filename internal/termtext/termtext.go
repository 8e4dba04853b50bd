// Package termtext makes untrusted text safe to show on a terminal or in a
// line-oriented log. Guest-chosen names (a process's comm, paths, module
// names, the kernel banner, console-derived text) reach the operator through
// text tables; a name with a newline could forge a row, one with an escape
// sequence could clear the screen or retitle the window, and a bidi override
// could reorder the columns as displayed. Escape shows every such byte or rune
// as a visible escape and leaves printable text, non-ASCII letters included,
// as it is. JSON output does not use it: JSON stays exact.
//
// Anything that prints guest-controlled text for a person to read uses it.
// A leaf: it imports nothing from gatevisor.
package termtext

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Escape returns s with every byte or rune that a terminal would interpret,
// or that could make one line look like two, shown as an escape:
//
//	\n \t \r            newline, tab, carriage return
//	\\                  a backslash, so that the escaping is unambiguous
//	\xHH                other C0 controls (ESC is \x1b), DEL, and each byte
//	                    that is not part of valid UTF-8
//	\u{H...}            C1 controls (U+0080–U+009F), the bidi marks, embeddings,
//	                    overrides and isolates (U+061C, U+200E, U+200F,
//	                    U+202A–U+202E, U+2066–U+2069) and the line and
//	                    paragraph separators (U+2028, U+2029)
//
// C1 controls are written \u{..} rather than \x.. so that the rune U+009B
// (bytes C2 9B) and a lone invalid byte 9B stay distinguishable. Everything
// else is unchanged. If nothing needs escaping, Escape returns s itself
// without allocating.
func Escape(s string) string {
	i := firstUnsafe(s)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c == '\\':
				b.WriteString(`\\`)
			case c == '\n':
				b.WriteString(`\n`)
			case c == '\t':
				b.WriteString(`\t`)
			case c == '\r':
				b.WriteString(`\r`)
			case c < 0x20 || c == 0x7f:
				writeHexByte(&b, c)
			default:
				b.WriteByte(c)
			}
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			writeHexByte(&b, c)
		case unsafeRune(r):
			b.WriteString(`\u{`)
			b.WriteString(strconv.FormatUint(uint64(r), 16))
			b.WriteByte('}')
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// firstUnsafe returns the index of the first byte of s that Escape must
// rewrite, or -1 if there is none.
func firstUnsafe(s string) int {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f || c == '\\' {
				return i
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || unsafeRune(r) {
			return i
		}
		i += n
	}
	return -1
}

// unsafeRune reports whether a valid non-ASCII rune must be escaped.
func unsafeRune(r rune) bool {
	switch {
	case r >= 0x80 && r <= 0x9f: // C1 controls (CSI is U+009B)
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f: // bidi marks ALM, LRM, RLM
		return true
	case r >= 0x202a && r <= 0x202e: // LRE RLE PDF LRO RLO
		return true
	case r >= 0x2066 && r <= 0x2069: // LRI RLI FSI PDI
		return true
	case r == 0x2028, r == 0x2029: // line and paragraph separators
		return true
	}
	return false
}

const hexDigits = "0123456789abcdef"

func writeHexByte(b *strings.Builder, c byte) {
	b.WriteString(`\x`)
	b.WriteByte(hexDigits[c>>4])
	b.WriteByte(hexDigits[c&0xf])
}
