#!/usr/bin/env python3
"""Make the tokenizer package's own golden files with Hugging Face `tokenizers`.

Trains small BPE tokenizers (byte-fallback/Metaspace like Llama 2, byte-level
like GPT-2 and Llama 3, and a few that exercise added-token flags,
normalizers and decoders), writes each as <name>/tokenizer.json, and records
what HF returns for many inputs in <name>/golden.json:

  {"tokenizers_version": "...",
   "encode": [{"text": ..., "ids": [...], "ids_with_special": [...]}],
   "decode": [{"ids": [...], "text": ..., "text_skip_special": ...}]}

The Go tests compare against these; they never compare Go with itself.
Run from this folder:  python3 -m venv /tmp/v && /tmp/v/bin/pip install tokenizers==0.23.3
                       /tmp/v/bin/python gen_golden.py
The corpus is the running Python's standard library sources plus the
multilingual lines below, so a re-run on another Python may train slightly
different vocabularies (the committed files are what the tests use).
"""

import glob
import json
import os
import random
import sys

import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MULTILINGUAL = """
Le renard brun rapide saute par-dessus le chien paresseux. Ça va? Très bien, merci.
Der schnelle braune Fuchs springt über den faulen Hund. Straße, Größe, Übung.
Быстрая коричневая лиса перепрыгивает через ленивую собаку. Привет, мир!
快速的棕色狐狸跳过了懒狗。你好，世界！我们今天学习中文。
素早い茶色の狐がのろまな犬を飛び越える。こんにちは、世界！カタカナとひらがな。
빠른 갈색 여우가 게으른 개를 뛰어넘는다. 안녕하세요 세계!
الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم
तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। नमस्ते दुनिया
Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. Γειά σου Κόσμε!
🦙 llamas are great 🦙🦙 emoji 😀😃😄 👍🏽 ✨ 🚀 🇫🇷
Numbers: 0 1 2 3 42 3.14159 1,000,000 2024-11-25 12:30:45 $19.99 50% #1
"""


def corpus():
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:60]
    out = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            out.extend(fh.read().splitlines())
    out.extend(MULTILINGUAL.strip().splitlines() * 30)
    return out


def byte_fallback_vocab(tok_json, specials):
    """Rebuild a trained vocab as Llama's: specials, <0x00>..<0xFF>, the rest."""
    d = json.loads(tok_json)
    old = d["model"]["vocab"]
    vocab = {}
    for s in specials:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for tok, _ in sorted(old.items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    d["model"]["vocab"] = vocab
    for a in d["added_tokens"]:
        a["id"] = vocab[a["content"]]
    return d


def train_metaspace(lines, vocab_size=1000):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=300,
        show_progress=False)
    tok.train_from_iterator(lines, trainer)
    d = byte_fallback_vocab(tok.to_str(), ["<unk>", "<s>", "</s>"])
    for a in d["added_tokens"]:
        a["normalized"] = False
    return d


def train_bytelevel(lines, pre, specials, vocab_size=1200):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return json.loads(tok.to_str())


def special(content, id_, **kw):
    t = {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
    t.update(kw)
    return t


def template(bos_name, bos_id, pair=True):
    single = [{"SpecialToken": {"id": bos_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    p = single + [{"SpecialToken": {"id": bos_name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]
    return {"type": "TemplateProcessing", "single": single, "pair": p if pair else single,
            "special_tokens": {bos_name: {"id": bos_name, "ids": [bos_id], "tokens": [bos_name]}}}


LLAMA_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def configs(lines):
    out = {}
    base = train_metaspace(lines)

    d = json.loads(json.dumps(base))
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    d["post_processor"] = template("<s>", 1)
    d["decoder"] = LLAMA_DECODER
    out["llama2-metaspace"] = d

    d = json.loads(json.dumps(base))
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    d["pre_tokenizer"] = None
    d["post_processor"] = template("<s>", 1)
    d["decoder"] = LLAMA_DECODER
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]
    out["llama2-legacy"] = d

    d = json.loads(json.dumps(base))
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    d["post_processor"] = None
    d["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    out["metaspace-always"] = d

    # Added-token flags, normalizers, a decoder zoo, unk without byte fallback.
    d = json.loads(json.dumps(base))
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        {"type": "Lowercase"}]}
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}]}
    d["model"]["byte_fallback"] = False
    d["model"]["fuse_unk"] = False
    nxt = len(d["model"]["vocab"])
    d["added_tokens"] += [
        special("[MASK]", nxt, lstrip=True, rstrip=True),
        special("<sep>", nxt + 1, single_word=True),
        special("hello world", nxt + 2, special=False, normalized=True),
        special("Foo", nxt + 3, special=False, normalized=True, single_word=True),
        special("<x>", nxt + 4, rstrip=True, special=False),
        special("▁the", nxt + 5, special=False, normalized=True),
    ]
    d["post_processor"] = {"type": "Sequence", "processors": [template("<s>", 1, pair=False)]}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 0, "stop": 2}]}
    out["features"] = d

    d = json.loads(json.dumps(base))
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFD"}, {"type": "StripAccents"}, {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "NFC"}]}
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
    d["model"]["unk_token"] = None
    d["model"]["byte_fallback"] = False
    d["post_processor"] = None
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"},
        {"type": "Replace", "pattern": {"Regex": "▁+"}, "content": "_"},
        {"type": "Fuse"},
        {"type": "Replace", "pattern": {"String": "_a"}, "content": "[A]"},
        {"type": "Replace", "pattern": {"Regex": "[0-9]"}, "content": "#"},
        {"type": "Strip", "content": "_", "start": 2, "stop": 1}]}
    out["nfd-zoo"] = d

    d = json.loads(json.dumps(base))
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "▁"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[0-9]"}, "behavior": "Contiguous", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[aeiou]+"}, "behavior": "MergedWithNext", "invert": True},
        {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "Removed", "invert": False}]}
    d["post_processor"] = None
    d["decoder"] = None  # tokens joined with " "
    out["no-decoder"] = d

    d = json.loads(json.dumps(base))
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Fuse"}, {"type": "ByteFallback"},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}]}
    out["fuse-first"] = d

    out.update(handmade())

    gpt2_pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    d = train_bytelevel(lines, gpt2_pre, ["<|endoftext|>"])
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]
    out["gpt2"] = d

    d = train_bytelevel(lines, pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True), ["<|endoftext|>"], 900)
    d["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    d["added_tokens"].append(special("  ", len(d["model"]["vocab"]), special=False))
    d["added_tokens"].append(special("<|im_start|>", len(d["model"]["vocab"]) + 1, lstrip=True))
    eot = d["model"]["vocab"]["<|endoftext|>"]
    d["post_processor"] = {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eot], "cls": ["<|endoftext|>", eot],
                           "trim_offsets": True, "add_prefix_space": True}
    out["bytelevel-prefix"] = d

    llama3_pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|reserved_special_token_2|>", "<|eot_id|>"]
    d = train_bytelevel(lines, llama3_pre, [], 1500)
    vocab = d["model"]["vocab"]
    base_n = len(vocab)
    d["added_tokens"] = [special(n, base_n + i) for i, n in enumerate(names)]
    d["model"]["ignore_merges"] = True
    d["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        template("<|begin_of_text|>", base_n)]}
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    out["llama3"] = d
    return out


def handmade():
    """Tiny hand-written BPE models for what trained ones never show: unk
    with and without fusing, byte fallback with only some byte tokens,
    continuing_subword_prefix / end_of_word_suffix, merges whose results
    compete, a repeated merge."""
    out = {}

    def build(prefix, suffix, merges, extra):
        vocab = {"<unk>": 0, "[UNK]": 1, "<0x41>": 2, "<0xC3>": 3, "<0xA9>": 4}
        for c in "abcdé":
            for t in (c, prefix + c, c + suffix, prefix + c + suffix):
                vocab.setdefault(t, len(vocab))
        for a, b in merges:
            vocab.setdefault(a + b[len(prefix):], len(vocab))
        for t in extra:
            vocab.setdefault(t, len(vocab))
        return vocab

    merges = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc"), ("c", "d"), ("a", "a"), ("aa", "a"),
              ("d", "d"), ("dd", "dd"), ("b", "c"), ("é", "é")]
    vocab = build("", "", merges, ["<sep>"])
    for name, fuse, fallback in [("handmade-unk", False, True), ("handmade-fuse", True, False)]:
        post = None
        if fuse:
            post = {"type": "BertProcessing", "sep": ["<sep>", vocab["<sep>"]], "cls": ["[UNK]", vocab["[UNK]"]]}
        out[name] = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [special("<sep>", vocab["<sep>"])],
            "normalizer": None,
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": post,
            "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": fuse, "byte_fallback": fallback,
                      "ignore_merges": False, "vocab": vocab, "merges": [list(m) for m in merges]},
        }
    merges = [("a", "##b"), ("##b", "##c"), ("ab", "##c"), ("##c", "##d</w>"), ("a", "##a"), ("##b", "##c</w>"),
              ("a", "##b</w>"), ("d", "##d"), ("ab", "##c</w>")]
    vocab = build("##", "</w>", merges, [])
    out["handmade-affix"] = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "Digits", "individual_digits": False},
        "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "end_of_word_suffix": "</w>", "fuse_unk": True, "byte_fallback": True,
                  "ignore_merges": False, "vocab": vocab, "merges": [" ".join(m) for m in merges]},
    }
    return out


# Code points where HF's Unicode differs from Go's 15.0 (see unicode_tables.go):
# Unicode 16 letters and digits, a lowercase mapping, characters HF's older
# normalization tables leave alone, marks StripAccents keeps or drops.
UNICODE_EDGES = [
    "\U00016100\U00016101's \U00010D40\U00010D41\U00010D42\U00010D43 x", "'\U0001610Cs", "\U0002EBF0\U0002EBF1",
    "\u32ff \ua7f2\ua7f3 \U00010781", "\u1c89\u1c8a \ua7cb \U00010D50", "\U00011938", "a\u0903b\u1cf2c\U00011F00",
    "\U0001CCD6\U0001CCF0 \U000105C0x", "e\u0301\U00016D40 \u1c89",
]

FIXED = UNICODE_EDGES + [
    "", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "Hello world", " Hello", "Hello  world", "hello\nworld",
    "Hello world!", "  leading and trailing  ", "The quick brown fox jumps over the lazy dog.",
    "<s>", "</s>", "<unk>", "<s>Hello", "Hello</s>", "</s><s>", " <s> ", "a<s>b", "<s> <s>", "<s>\n",
    "🦙🦙", "👨‍👩‍👧", "你好，世界", "こんにちは", "안녕하세요", "مرحبا", "नमस्ते", "Привет мир",
    "e\u0301", "é", "İstanbul", "ß ẞ", "ﬁne ﬂow", "Ⅻ ② ¼", "12345678901234", "3.14159", "1,000,000",
    "def f(x):\n    return x**2\n", "I'm you're they've we'll she'd IT'S 'S 'T", "'s", "'",
    "\u00a0nbsp\u00a0", "\u3000ideographic", "line\u2028sep", "zwj\u200dx", "tab\tsep", "a" * 300,
    "\x00\x01\x7f", "▁", "▁▁hello", "hello▁world", "<0x41>", "<0xE4>", "[MASK]", " [MASK] x", "a [MASK]b",
    "<sep>", "x<sep>", " <sep> ", "Hello World", "hello world", "HELLO WORLD", "hello  world", "Foo", "foo", "Foobar",
    "a Foo b", "<x>  y", "the", " the", "The the", "<|endoftext|>", "a<|endoftext|>b", "  <|endoftext|>",
    "<|begin_of_text|>hi", "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "<|im_start|>", "x  <|im_start|>y", "   x", "x   ", "a  b   c    d", "\n\n\n", " \n ", "a\n\n b",
    "ſ 'ſ 'S", "K", "ǅ", "Ὠ", "ﬀ", "\ufeffbom", "\U0001F600\U0001F600", "\U000E0001", "\uFFFD", "abcd", "abc", "aaaa", "dddd", "ddddd", "é", "ééé", "xa", "A", "Ab", "aéb", "a1b22c333",
    "zzz abc", "é1é", "cd dc", "bcbc",
    "1234567", "１２３", "x" * 70 + " " + "y" * 70,
]


def random_texts(rng, n, specials):
    frags = ["the", "The", " ", "  ", "\n", "\t", "hello", "world", "llama", "token", ",", ".", "!", "?",
             "'s", "'ll", "0", "12", "345", "ing", "tion", "é", "ü", "中", "文", "日本", "ё", "ж", "🦙", "😀",
             "\u00a0", "\u3000", "▁", "_", "-", "--", "...", "(", ")", "{", "}", "\"", "'", "`", "$", "%",
             "\r\n", "    ", "def", "return", "x", "y", "Foo", "Hello", "HELLO"] + specials
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.75:
                parts.append(rng.choice(frags))
            elif r < 0.9:
                parts.append(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                                             rng.randint(0x3000, 0xd7ff), rng.randint(0xe000, 0xffff),
                                             rng.randint(0x10000, 0x1ffff)])))
            else:
                parts.append(chr(rng.randint(0, 0x1f)))
        out.append("".join(parts))
    return out


def random_ids(rng, tok, vocab_size, n):
    vocab = tok.get_vocab(with_added_tokens=True)
    # get_vocab's order is a hash map's: sort, so reruns give the same files.
    byte_ids = sorted(i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x"))
    added = sorted(tok.get_added_tokens_decoder().keys())
    meta = sorted(i for t, i in vocab.items() if t.startswith("▁"))
    out = []
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(0, 25)):
            r = rng.random()
            if r < 0.25 and byte_ids:
                ids.append(rng.choice(byte_ids))
            elif r < 0.35 and added:
                ids.append(rng.choice(added))
            elif r < 0.5 and meta:
                ids.append(rng.choice(meta))
            else:
                ids.append(rng.randrange(vocab_size))
        out.append(ids)
    return out


def safe_decode(tok, ids, skip):
    """HF's decode, or None where HF panics (a Strip decoder with stop > 0
    on an empty string indexes out of bounds)."""
    try:
        return tok.decode(ids, skip_special_tokens=skip)
    except BaseException:  # pyo3's PanicException derives from BaseException
        return None


def main():
    lines = corpus()
    rng = random.Random(20261125)
    for name, d in configs(lines).items():
        text = json.dumps(d, ensure_ascii=False, indent=None)
        tok = Tokenizer.from_str(text)
        folder = os.path.join(HERE, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text)
        specials = [a["content"] for a in d["added_tokens"]]
        texts = FIXED + random_texts(rng, 250, specials)
        enc = []
        for t in texts:
            enc.append({"text": t,
                        "ids": tok.encode(t, add_special_tokens=False).ids,
                        "ids_with_special": tok.encode(t, add_special_tokens=True).ids})
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        dec = []
        id_lists = [e["ids_with_special"] for e in enc[:120]] + random_ids(rng, tok, vocab_size, 200)
        for ids in id_lists:
            dec.append({"ids": ids,
                        "text": safe_decode(tok, ids, False),
                        "text_skip_special": safe_decode(tok, ids, True)})
        with open(os.path.join(folder, "golden.json"), "w", encoding="utf-8") as f:
            # One case per line: compact, and diffs stay readable.
            dumps = lambda v: json.dumps(v, ensure_ascii=False)
            f.write('{"tokenizers_version": %s,\n"encode": [\n' % dumps(tokenizers.__version__))
            f.write(",\n".join(dumps(e) for e in enc))
            f.write('\n],\n"decode": [\n')
            f.write(",\n".join(dumps(d) for d in dec))
            f.write("\n]}\n")
        print(name, len(d["model"]["vocab"]), "vocab,", len(enc), "encode,", len(dec), "decode", file=sys.stderr)


if __name__ == "__main__":
    main()
