package policy

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tString
	tInt
	tPunct // text holds the punctuation: ( ) { } , ; : = . * - < ! -> && || ..
)

type token struct {
	kind tokKind
	text string // identifier, decoded string, punctuation, or the integer as written
	val  int64
	pos  Pos
}

func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of file"
	case tIdent:
		return fmt.Sprintf("%q", t.text)
	case tString:
		return fmt.Sprintf("string %.40q", t.text)
	case tInt:
		return "number " + t.text
	}
	return fmt.Sprintf("%q", t.text)
}

// lex splits src into tokens. Comments run from # or // to the end of line.
func lex(file string, src []byte) ([]token, error) {
	if len(src) > MaxFileSize {
		return nil, errAt(ErrLimit, Pos{File: file, Line: 1, Col: 1},
			fmt.Sprintf("file is %d bytes", len(src)), "", fmt.Sprintf("policy files are limited to %d bytes; split it with include", MaxFileSize))
	}
	var toks []token
	line, col := 1, 1
	i := 0
	adv := func(n int) {
		for k := 0; k < n && i < len(src); k++ {
			if src[i] == '\n' {
				line++
				col = 1
			} else if src[i]&0xC0 != 0x80 {
				col++
			}
			i++
		}
	}
	for {
		// Skip space and comments.
		for i < len(src) {
			c := src[i]
			if c == ' ' || c == '\t' || c == '\r' || c == '\n' {
				adv(1)
				continue
			}
			if c == '#' || (c == '/' && i+1 < len(src) && src[i+1] == '/') {
				for i < len(src) && src[i] != '\n' {
					adv(1)
				}
				continue
			}
			break
		}
		pos := Pos{File: file, Line: line, Col: col}
		if i >= len(src) {
			toks = append(toks, token{kind: tEOF, pos: pos})
			return toks, nil
		}
		c := src[i]
		switch {
		case isIdentStart(c):
			j := i
			for j < len(src) && isIdentPart(src[j]) {
				j++
			}
			if j-i > MaxIdentLen {
				return nil, errAt(ErrLimit, pos, fmt.Sprintf("identifier is %d bytes", j-i), "", fmt.Sprintf("identifiers are limited to %d bytes", MaxIdentLen))
			}
			toks = append(toks, token{kind: tIdent, text: string(src[i:j]), pos: pos})
			adv(j - i)
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && (isIdentPart(src[j])) {
				j++
			}
			text := string(src[i:j])
			v, err := strconv.ParseInt(text, 0, 64)
			if err != nil {
				return nil, errAt(ErrSyntax, pos, fmt.Sprintf("bad number %.40q", text), "a decimal, 0x hex or 0o octal integer that fits in 64 bits", "")
			}
			toks = append(toks, token{kind: tInt, text: text, val: v, pos: pos})
			adv(j - i)
		case c == '"':
			s, n, err := lexString(src[i:], pos)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{kind: tString, text: s, pos: pos})
			adv(n)
		default:
			two := ""
			if i+1 < len(src) {
				two = string(src[i : i+2])
			}
			switch two {
			case "->", "&&", "||", "..":
				toks = append(toks, token{kind: tPunct, text: two, pos: pos})
				adv(2)
				continue
			}
			switch c {
			case '(', ')', '{', '}', ',', ';', ':', '=', '.', '*', '-', '<', '!':
				toks = append(toks, token{kind: tPunct, text: string(c), pos: pos})
				adv(1)
			default:
				r, _ := utf8.DecodeRune(src[i:])
				return nil, errAt(ErrSyntax, pos, fmt.Sprintf("unexpected character %q", r), "", "strings go in double quotes; comments start with #")
			}
		}
		if len(toks) > 4*MaxRules {
			return nil, errAt(ErrLimit, pos, "too many tokens", "", "split the policy")
		}
	}
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

// lexString decodes a double-quoted string at the start of b and returns it
// with the number of bytes consumed.
func lexString(b []byte, pos Pos) (string, int, error) {
	out := make([]byte, 0, 16)
	for i := 1; i < len(b); i++ {
		c := b[i]
		switch c {
		case '"':
			return string(out), i + 1, nil
		case '\n':
			return "", 0, errAt(ErrSyntax, pos, "newline in string", `closing "`, "strings cannot span lines")
		case '\\':
			if i+1 >= len(b) {
				break
			}
			i++
			switch b[i] {
			case '"', '\\':
				out = append(out, b[i])
			case 'n':
				out = append(out, '\n')
			case 't':
				out = append(out, '\t')
			case '0':
				out = append(out, 0)
			case 'x':
				if i+2 < len(b) {
					if v, err := strconv.ParseUint(string(b[i+1:i+3]), 16, 8); err == nil {
						out = append(out, byte(v))
						i += 2
						continue
					}
				}
				return "", 0, errAt(ErrSyntax, pos, "bad \\x escape in string", "two hex digits", "")
			default:
				return "", 0, errAt(ErrSyntax, pos, fmt.Sprintf("unknown escape \\%c in string", b[i]), `one of \" \\ \n \t \0 \xHH`, "")
			}
		default:
			out = append(out, c)
		}
		if len(out) > MaxStringLen {
			return "", 0, errAt(ErrLimit, pos, "string too long", "", fmt.Sprintf("strings are limited to %d bytes", MaxStringLen))
		}
	}
	return "", 0, errAt(ErrSyntax, pos, "unterminated string", `closing "`, "")
}
