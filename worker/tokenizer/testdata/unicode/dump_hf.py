#!/usr/bin/env python3
"""Dump Hugging Face tokenizers' view of Unicode, for gen.go.

HF's regexes (Oniguruma) and Rust's char methods follow a newer Unicode than
Go's unicode package, and its NFC/NFKC tables (unicode-normalization-
alignments) an older one. This asks HF itself, code point by code point:
which are \\p{X} for the general categories below, and what Lowercase, StripAccents
and the four normalization forms make of each. Output: JSON on stdout.
Usage: python dump_hf.py > /tmp/hf_unicode.json && go run . /tmp/hf_unicode.json
"""
import json
import sys

import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers

CPS = [c for c in range(0x110000) if not (0xD800 <= c <= 0xDFFF)]
TEXT = "".join(chr(c) for c in CPS)
CATEGORIES = ["L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
              "P", "S", "Z"]


def members(pattern):
    kept = set()
    for piece, (a, b) in pre_tokenizers.Split(Regex(pattern), "removed").pre_tokenize_str(TEXT):
        assert TEXT[a:b] == piece
        kept.update(ord(ch) for ch in piece)
    return sorted(set(CPS) - kept)


def mapping(n):
    out = {}
    for i in range(0, len(CPS), 4096):
        chunk = CPS[i:i + 4096]
        res = n.normalize_str("\x00".join(chr(c) for c in chunk)).split("\x00")
        if len(res) != len(chunk):
            res = [n.normalize_str(chr(c)) for c in chunk]
        out.update({str(c): r for c, r in zip(chunk, res) if r != chr(c)})
    return out


def main():
    out = {"version": tokenizers.__version__, "classes": {}, "maps": {}}
    for cat in CATEGORIES:
        out["classes"][cat] = members(r"\p{%s}" % cat)
    out["classes"]["s"] = members(r"\s")
    for name, n in [("NFC", normalizers.NFC()), ("NFD", normalizers.NFD()), ("NFKC", normalizers.NFKC()),
                    ("NFKD", normalizers.NFKD()), ("Lowercase", normalizers.Lowercase()),
                    ("StripAccents", normalizers.StripAccents())]:
        out["maps"][name] = mapping(n)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
