package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// GPT-2's byte-to-unicode table: printable bytes stand for themselves, the
// others are mapped to U+0100 onwards, so every byte is a visible character.
var byteToChar, charToByte = buildByteTables()

func buildByteTables() ([256]rune, map[rune]byte) {
	var b2c [256]rune
	printable := func(b int) bool {
		return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
	}
	n := 0
	for b := 0; b < 256; b++ {
		if printable(b) {
			b2c[b] = rune(b)
		} else {
			b2c[b] = rune(256 + n)
			n++
		}
	}
	c2b := make(map[rune]byte, 256)
	for b, c := range b2c {
		c2b[c] = byte(b)
	}
	return b2c, c2b
}

// bytesToChars maps every byte of s to its byte-level character.
func bytesToChars(s string) string {
	var b strings.Builder
	b.Grow(2 * len(s))
	for i := 0; i < len(s); i++ {
		b.WriteRune(byteToChar[s[i]])
	}
	return b.String()
}

// appendTokenBytes appends the bytes a byte-level token stands for. Like HF,
// a token with any character outside the table contributes its own UTF-8
// bytes instead.
func appendTokenBytes(dst []byte, tok string) []byte {
	start := len(dst)
	for _, r := range tok {
		b, ok := charToByte[r]
		if !ok {
			return append(dst[:start], tok...)
		}
		dst = append(dst, b)
	}
	return dst
}

// lossyPrefix decodes b as Rust's String::from_utf8_lossy does (one U+FFFD
// per maximal invalid subpart) and appends it to dst. When final is false a
// trailing sequence that is merely incomplete is left undecoded; the number
// of bytes consumed is returned.
func lossyPrefix(dst []byte, b []byte, final bool) ([]byte, int) {
	i := 0
	for i < len(b) {
		c := b[i]
		if c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		n, lo, hi := seqInfo(c)
		if n == 0 {
			dst = append(dst, "\uFFFD"...)
			i++
			continue
		}
		// Count how many continuation bytes are valid.
		j := 1
		for ; j < n && i+j < len(b); j++ {
			x := b[i+j]
			if j == 1 {
				if x < lo || x > hi {
					break
				}
			} else if x < 0x80 || x > 0xBF {
				break
			}
		}
		if j == n {
			dst = append(dst, b[i:i+n]...)
			i += n
			continue
		}
		if i+j == len(b) && !final {
			// Incomplete at the end: wait for more bytes.
			return dst, i
		}
		dst = append(dst, "\uFFFD"...)
		i += j
	}
	return dst, i
}

// seqInfo gives, for a UTF-8 lead byte, the sequence length and the allowed
// range of the second byte; n is 0 for bytes that cannot start a sequence.
func seqInfo(c byte) (n int, lo, hi byte) {
	switch {
	case c >= 0xC2 && c <= 0xDF:
		return 2, 0x80, 0xBF
	case c == 0xE0:
		return 3, 0xA0, 0xBF
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		return 3, 0x80, 0xBF
	case c == 0xED:
		return 3, 0x80, 0x9F
	case c == 0xF0:
		return 4, 0x90, 0xBF
	case c >= 0xF1 && c <= 0xF3:
		return 4, 0x80, 0xBF
	case c == 0xF4:
		return 4, 0x80, 0x8F
	}
	return 0, 0, 0
}
