#!/usr/bin/env python3
"""Generate the test fixtures under testdata/ (everything except testdata/embed*).

Usage (from the repository root):
    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_fixtures.py            # everything
    .venv-fixtures/bin/python scripts/make_fixtures.py llama2     # only some parts
        parts: llama2 llama3 dtypes tokenizers

Everything is built offline from a corpus embedded in this file and fixed seeds,
so reruns produce the same tokenizers, weights and reference numbers. The
reference numbers are computed with Hugging Face transformers / tokenizers and
are the independent reference the Go code is tested against.
"""

import json
import os
import random
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Regex, AddedToken

import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TD = os.path.join(ROOT, "testdata")

torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
torch.use_deterministic_algorithms(True)

# ---------------------------------------------------------------------------
# Training corpus (written for this project; deterministic).
# ---------------------------------------------------------------------------

PROSE = """\
The quick brown fox jumps over the lazy dog. A tiny model can still say something.
Once upon a time, in a small town by the river, there lived a baker who woke up before the sun.
Every morning she mixed flour, water and salt, and the smell of fresh bread filled the street.
The children walked to school and the old men sat on the bench, talking about the weather.
It was a quiet life, but nobody in the town would have traded it for anything in the world.
Language models read text as tokens. A token may be a word, a piece of a word, or a single byte.
The server splits the work: one worker computes the prompt, another worker generates the answer.
The key and value cache moves between the workers, block by block, over a fast transport.
When a request arrives, the proxy picks a context worker and a generation worker for it.
If a worker dies, the proxy marks it down and tries again on another one, if nothing was sent yet.
Tests compare our numbers with the numbers computed by the reference implementation.
We don't guess; we measure. I'll write it down, you'll check it, and they'll review it.
She said: "It's fine." He asked, 'Isn't it late?' They weren't sure, but we're ready now.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 65536 3.14159 2.71828 1,000,000 2026-11-25.
Prices went from $12.50 to $13.75 (+10%), while the index fell by 2.5% in the second quarter.
Questions? Answers! Lists; colons: dashes - and -- and em dashes, brackets [a] {b} <c> (d).
The weather today is sunny with a light breeze, and tomorrow it will probably rain again.
Good morning! How are you? I am fine, thank you. What would you like to drink? Tea, please.
Hello world. Hello there. Hello, my friend. Goodbye for now, and see you again tomorrow.
"""

CODE = """\
def fibonacci(n):
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Cache:
    def __init__(self, size):
        self.size = size
        self.blocks = [None] * size

    def get(self, key):
        return self.blocks[key % self.size]


func main() {
\tfmt.Println("hello, world")
\tfor i := 0; i < 10; i++ {
\t\tif err := run(i); err != nil {
\t\t\treturn err
\t\t}
\t}
}

for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }
SELECT name, count(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;
{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
"""

UNICODE = """\
Café, naïve, façade, résumé, über, señor, coöperate, Ångström, crème brûlée, déjà vu.
Der Bär läuft über die Straße. Les élèves étudient à l'école. El niño comió una piña.
Ελληνικά: Καλημέρα κόσμε. Русский: Привет, мир! Здравствуйте.
日本語のテキスト。東京は大きい都市です。中文：你好，世界！我们在学习。한국어: 안녕하세요.
Emoji: 😀 😂 👍 🎉 ❤️ 🚀 🌍 ✨ 🙂 😀😀 👍🏽 👨‍👩‍👧‍👦
Arabic: مرحبا بالعالم. Hindi: नमस्ते दुनिया।
"""

WORDS = ("time person year way day thing man world life hand part child eye woman place work week "
         "case point number group problem fact model token worker request cache block prompt answer "
         "server client proxy test value key layer head weight byte string file folder batch").split()
VERBS = "is makes takes sees finds gives tells reads writes moves keeps starts runs checks sends".split()
ADJS = "good new first last long great little own other old right big high small large next early young".split()


def build_corpus():
    rng = random.Random(1234)
    parts = [PROSE, CODE, UNICODE]
    # Deterministic generated sentences (random.Random with a fixed seed is stable across versions).
    for _ in range(600):
        s = "The %s %s %s a %s %s." % (
            rng.choice(ADJS), rng.choice(WORDS), rng.choice(VERBS), rng.choice(ADJS), rng.choice(WORDS))
        if rng.random() < 0.3:
            s = s[:-1] + ", and the %s %s %d %ss." % (rng.choice(WORDS), rng.choice(VERBS),
                                                     rng.randrange(1000), rng.choice(WORDS))
        parts.append(s + ("\n" if rng.random() < 0.2 else " "))
    return "".join(parts) + PROSE + CODE + UNICODE


def corpus_lines():
    return [l for l in build_corpus().split("\n") if l.strip()]


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

SPM = "\u2581"  # ▁


def train_byte_fallback_bpe(vocab_size=1000):
    """Llama-2 style BPE with byte fallback. Returns (vocab dict, merges list)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # For training, words are split on spaces (sentencepiece behaviour); the final
    # tokenizer does not split (Metaspace split=false), as modern Llama-2 files do.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="always", split=True)
    n_special = 3 + 256
    # Keep only the 120 most frequent characters (ties broken by code point) so that
    # rarer characters (most CJK, emoji, ...) are encoded with byte fallback. Done here
    # rather than with BpeTrainer(limit_alphabet=...), whose tie-breaking is not stable.
    lines = corpus_lines()
    counts = {}
    for l in lines:
        for ch in SPM + l.replace(" ", SPM):
            counts[ch] = counts.get(ch, 0) + 1
    alphabet = sorted(counts, key=lambda ch: (-counts[ch], ch))[:120]
    keep = set(alphabet)
    lines = ["".join(ch if ch in keep else " " for ch in l) for l in lines]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256,  # byte tokens are added below
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    m = json.loads(tok.to_str())["model"]
    trained = sorted(m["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in trained:
        if t in ("<unk>", "<s>", "</s>"):
            continue
        assert t not in vocab, t
        vocab[t] = len(vocab)
    merges = m["merges"]
    merges = [tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in merges]
    assert len(vocab) >= n_special
    return vocab, merges


def spm_tokenizer(vocab, merges, old_format=False):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    if old_format:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM), normalizers.Replace(" ", SPM)])
        tok.pre_tokenizer = None
    else:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace(SPM, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]


def train_bytelevel_bpe(vocab_size, llama3):
    tok = Tokenizer(models.BPE(ignore_merges=llama3))
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([build_corpus()[i:i + 4000] for i in range(0, len(build_corpus()), 4000)],
                            trainer=trainer)
    if llama3:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[("<|begin_of_text|>", bos)]),
        ])
    else:
        tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


# Chat templates (written for this project from the documented behaviour of the
# Zephyr / TinyLlama-Chat and Llama-3-Instruct formats).
LLAMA2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def save_hf_tokenizer(tok, out_dir, bos, eos, unk, chat_template, extra):
    """Save tokenizer.json + tokenizer_config.json the way HF checkpoints look."""
    os.makedirs(out_dir, exist_ok=True)
    kw = dict(tokenizer_object=tok, bos_token=bos, eos_token=eos, model_max_length=512,
              clean_up_tokenization_spaces=False)
    if unk:
        kw["unk_token"] = unk
    hf = PreTrainedTokenizerFast(**kw)
    hf.save_pretrained(out_dir)
    # Write tokenizer_config.json ourselves (inline chat_template, as most checkpoints have it).
    for f in ("chat_template.jinja", "special_tokens_map.json"):
        p = os.path.join(out_dir, f)
        if os.path.exists(p):
            os.remove(p)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update({
        "bos_token": bos,
        "eos_token": eos,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template,
    })
    if unk:
        cfg["unk_token"] = unk
    cfg.update(extra)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    # Re-save tokenizer.json pretty-printed and deterministic.
    tj = os.path.join(out_dir, "tokenizer.json")
    Tokenizer.from_file(tj).save(tj, pretty=True)


# ---------------------------------------------------------------------------
# Tokenizer test corpus
# ---------------------------------------------------------------------------

TOKENIZE_CASES = [
    "",
    " ",
    "  ",
    "hello",
    " hello",
    "hello ",
    "  hello   world  ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "\t",
    "a\tb\t\tc",
    "\n",
    "line one\nline two\n\nline four",
    "windows\r\nline\r\n",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "1234567890",
    "3.14159265358979323846264338327950288419716939937510",
    "12,345.67 and 2026-11-25 at 10:30",
    "don't",
    "I'LL do it, you'd've, we're, they've, it's",
    "DON'T SHOUT",
    "Café naïve façade résumé",
    "crème brûlée",
    "Ελληνικά: Καλημέρα κόσμε",
    "Привет, мир!",
    "日本語のテキスト",
    "你好，世界！",
    "안녕하세요",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "I ❤️ emoji 🎉🎉🎉",
    "e\u0301",  # e + combining acute (NFD)
    "Cafe\u0301 re\u0301sume\u0301",
    "\u00e9 vs e\u0301",
    "\ufb01 ligature and \u2460 circled and ｆｕｌｌｗｉｄｔｈ",
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth",
    "hello</s>world",
    "<s>",
    "</s>",
    "<s>hello</s>",
    "<unk>",
    "<|eot_id|>",
    "hi<|begin_of_text|>there<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>",
    "<|endoftext|>",
    "<0x41>",
    "<0x41><0xFF>",
    "▁hello▁world",
    "Supercalifragilisticexpialidocious" * 3,
    "a" * 100,
    "def f(x):\n    return x * 2\n\n\tif x:\n\t\tpass\n",
    "    indented four\n        eight",
    "func main() {\n\tfmt.Println(\"hi\")\n}",
    "The tiny model says: 你好 👋 — ça va?",
    "MiXeD CaSe WoRdS",
    "\x00\x01\x7f",
]

SPECIAL_FALSE_SUBSET = [
    "", " ", "hello", " hello", "Hello, world!", "line one\nline two\n\nline four", "don't",
    "日本語のテキスト", "👨‍👩‍👧‍👦", "hello</s>world", "<s>hello</s>", "hi<|begin_of_text|>there<|eot_id|>",
    "<|endoftext|>", "<0x41>", "  hello   world  ",
]


def tokenize_cases(encode, decode):
    out = []
    for add in (True, False):
        for text in (TOKENIZE_CASES if add else SPECIAL_FALSE_SUBSET):
            ids = encode(text, add)
            out.append({
                "text": text,
                "add_special_tokens": add,
                "ids": ids,
                "decoded": decode(ids, False),
                "decoded_skip_special": decode(ids, True),
            })
    return out


def hf_tokenize_cases(hf, raw):
    """Reference via AutoTokenizer; cross-checked against the raw tokenizers library."""
    cases = tokenize_cases(
        lambda t, add: hf(t, add_special_tokens=add).input_ids,
        lambda ids, skip: hf.decode(ids, skip_special_tokens=skip))
    for c in cases:
        rids = raw.encode(c["text"], add_special_tokens=c["add_special_tokens"]).ids
        if rids != c["ids"]:
            print("WARNING: transformers and tokenizers disagree on ids for %r" % c["text"])
        for key, skip in (("decoded", False), ("decoded_skip_special", True)):
            if raw.decode(c["ids"], skip_special_tokens=skip) != c[key]:
                print("WARNING: transformers and tokenizers disagree on %s for %r" % (key, c["text"]))
    return cases


# ---------------------------------------------------------------------------
# Chat cases
# ---------------------------------------------------------------------------

CHAT_CASES = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "system", "content": "You are terse."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello. What do you need?"},
      {"role": "user", "content": "A poem, please."}], True),
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."}], False),
    ([{"role": "user", "content": "  Line one\nline two\n\n  café 日本 👋  "}], True),
    ([{"role": "user", "content": ""}], True),
]
CHAT_ERROR_CASES = [
    ([{"role": "tool", "content": "42"}], True),
]


def chat_cases(hf):
    out = []
    for msgs, agp in CHAT_CASES + CHAT_ERROR_CASES:
        try:
            rendered = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
            ids = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = [int(i) for i in ids]
            out.append({"messages": msgs, "add_generation_prompt": agp, "rendered": rendered, "ids": ids})
        except Exception as e:  # template raised
            out.append({"messages": msgs, "add_generation_prompt": agp, "error": True,
                        "error_message": str(e)})
    return out


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def init_weights(model, seed, std):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # deterministic order
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name and not model.config.tie_word_embeddings:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


LONG_TEXT = (PROSE + CODE + UNICODE) * 2

GREEDY_PROMPTS = [
    "",
    "Hello",
    "The quick brown fox",
    "Once upon a time, in a small town by the river,",
    "def fibonacci(n):\n    a, b = 0, 1\n",
    "Café, naïve, 日本語 and 😀 emoji mixed in one prompt.",
    "The key and value cache moves between the workers, block by block, over a fast transport. "
    "When a request arrives, the proxy picks a context worker and a generation worker for it.",
    PROSE[:250],
]
LOGIT_LENGTHS = [1, 2, 5, 17, 40, 100]
ALL_LOGIT_LENGTHS = [5, 40]


def r6(x):
    return float(f"{x:.6g}")


def load_f32(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def run_greedy(model, hf, eos_ids, pad_id):
    res = []
    for p in GREEDY_PROMPTS:
        ids = hf(p).input_ids
        inp = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False, max_new_tokens=32,
                                 min_new_tokens=32, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=pad_id)
        new = out.sequences[0, len(ids):].tolist()
        raw = torch.stack(out.logits, 0)[:, 0, :]  # raw logits, before the min_new_tokens EOS mask
        top2 = raw.topk(2, dim=-1)
        margin = float((top2.values[:, 0] - top2.values[:, 1]).min())
        eos_top = any(int(i) in eos_ids for i in top2.indices[:, 0].tolist())
        # With EOS never top-1 in the raw logits, masked and unmasked greedy agree.
        agree = top2.indices[:, 0].tolist() == new
        res.append({"prompt": p, "prompt_ids": ids, "output_ids": new,
                    "output_text": hf.decode(new, skip_special_tokens=False), "min_margin": margin,
                    "_ok": (not eos_top) and agree, "_distinct": len(set(new))})
    return res


MIN_MARGIN = 2e-3  # float32 implementations differ by ~1e-5; keep greedy far from ties


def check_greedy_plain(model, greedy):
    """Independent check: argmax over full forwards (no KV cache, no EOS mask) gives the same tokens."""
    for c in greedy:
        ids = list(c["prompt_ids"])
        for _ in range(32):
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert ids[len(c["prompt_ids"]):] == c["output_ids"], c["prompt"]


def check_reload(make_model, seed, std, model_disk, stored_dtype):
    """The reloaded config/weights describe the same model as the one built in memory
    (parameters rounded to the stored dtype; buffers such as RoPE inv_freq stay float32)."""
    ids = torch.tensor([list(range(3, 120))])
    ref = make_model()
    init_weights(ref, seed, std)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(stored_dtype).to(torch.float32))
    ref.eval()
    with torch.no_grad():
        a = ref(ids).logits
        b = model_disk(ids).logits
    assert torch.equal(a, b), float((a - b).abs().max())


def build_and_check(make_model, save, model_dir, hf, eos_ids, pad_id, seeds, std, stored_dtype):
    """Try seeds until greedy is safe (margins >= 1e-3, no EOS argmax, not degenerate)."""
    fallback = None
    for seed in seeds:
        model = make_model()
        init_weights(model, seed, std)
        save(model, model_dir)
        m = load_f32(model_dir)
        g = run_greedy(m, hf, eos_ids, pad_id)
        margins = [c["min_margin"] for c in g]
        ok = all(c["_ok"] for c in g) and min(margins) >= MIN_MARGIN
        distinct_ok = min(c["_distinct"] for c in g) >= 4
        print("  seed %d: min margin %.5f, ok=%s, distinct=%s" % (
            seed, min(margins), ok, [c["_distinct"] for c in g]))
        if ok and distinct_ok:
            check_reload(make_model, seed, std, m, stored_dtype)
            check_greedy_plain(m, g)
            return seed, m, g
        if ok and fallback is None:
            fallback = seed
    assert fallback is not None, "no seed satisfied the greedy-safety criteria"
    seed = fallback
    model = make_model()
    init_weights(model, seed, std)
    save(model, model_dir)
    m = load_f32(model_dir)
    g = run_greedy(m, hf, eos_ids, pad_id)
    check_reload(make_model, seed, std, m, stored_dtype)
    check_greedy_plain(m, g)
    return seed, m, g


def write_json(path, obj, compact=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def write_references(name, model, hf, raw_tok, greedy, seed, std, extra_note=""):
    ref = os.path.join(TD, "reference", name)
    write_json(os.path.join(ref, "tokenize.json"), hf_tokenize_cases(hf, raw_tok))
    write_json(os.path.join(ref, "chat.json"), chat_cases(hf))
    long_ids = hf(LONG_TEXT).input_ids
    cases = []
    for n in LOGIT_LENGTHS:
        ids = long_ids[:n]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        c = {"ids": ids, "last_logits": [r6(x) for x in logits[-1].tolist()]}
        if n in ALL_LOGIT_LENGTHS:
            c["all_logits"] = [[r6(x) for x in row] for row in logits.tolist()]
        cases.append(c)
    write_json(os.path.join(ref, "logits.json"), {
        "note": ("Logits from transformers %s LlamaForCausalLM, float32, attn_implementation=eager, "
                 "torch.no_grad(), no KV cache, one forward over `ids` (BOS included, taken from the "
                 "tokenization of a long text and truncated). Floats rounded to 6 significant digits "
                 "(float(f'{x:.6g}')). %s" % (transformers.__version__, extra_note)),
        "cases": cases,
    }, compact=True)
    greedy_out = [{k: v for k, v in c.items() if not k.startswith("_")} for c in greedy]
    write_json(os.path.join(ref, "greedy.json"), greedy_out)
    write_json(os.path.join(ref, "meta.json"), {
        "note": ("greedy.json: model.generate(do_sample=False, max_new_tokens=32, min_new_tokens=32) in float32 "
                 "eager; min_new_tokens masks EOS, but the seed was chosen so that EOS is never the top-1 raw "
                 "logit in these runs, so plain argmax greedy (no masking) gives the same output_ids. "
                 "min_margin = smallest (top1 - top2) raw logit gap over the 32 steps. " + extra_note),
        "weight_seed": seed, "init_std": std,
        "transformers": transformers.__version__, "torch": torch.__version__,
    })


def fix_config(model_dir, rope_scaling=None):
    """Write config.json in the classic checkpoint layout (rope_theta / rope_scaling keys)."""
    p = os.path.join(model_dir, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        cfg["rope_theta"] = rp["rope_theta"]
        cfg["rope_scaling"] = rope_scaling
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def clean_dir(d):
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)


# ---------------------------------------------------------------------------
# tiny-llama2
# ---------------------------------------------------------------------------

def make_llama2():
    print("== tiny-llama2")
    d = os.path.join(TD, "models", "tiny-llama2")
    clean_dir(d)
    vocab, merges = train_byte_fallback_bpe(1000)
    raw = spm_tokenizer(vocab, merges)
    save_hf_tokenizer(raw, d, "<s>", "</s>", "<unk>", LLAMA2_CHAT_TEMPLATE,
                      {"add_bos_token": True, "add_eos_token": False, "legacy": False,
                       "pad_token": None})
    hf = AutoTokenizer.from_pretrained(d)
    raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    V = len(hf)
    print("  vocab", V)
    std = 0.3

    def make_model():
        cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          max_position_embeddings=512, rms_norm_eps=1e-5,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                          tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                          initializer_range=std, attn_implementation="eager")
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg).to(torch.float32)

    def save(model, md):
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
        model.save_pretrained(md, safe_serialization=True)
        fix_config(md, rope_scaling=None)

    seed, model, greedy = build_and_check(make_model, save, d, hf, {2}, 2, range(1, 60), std,
                                          torch.float32)
    print("  chosen seed", seed, "min margins", [round(c["min_margin"], 4) for c in greedy])
    write_references("tiny-llama2", model, hf, raw, greedy, seed, std)
    return seed, greedy


# ---------------------------------------------------------------------------
# tiny-llama3
# ---------------------------------------------------------------------------

def make_llama3():
    print("== tiny-llama3")
    d = os.path.join(TD, "models", "tiny-llama3")
    clean_dir(d)
    raw = train_bytelevel_bpe(1200, llama3=True)
    save_hf_tokenizer(raw, d, "<|begin_of_text|>", "<|eot_id|>", None, LLAMA3_CHAT_TEMPLATE, {})
    hf = AutoTokenizer.from_pretrained(d)
    raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    V = len(hf)
    bos = raw.token_to_id("<|begin_of_text|>")
    eot = raw.token_to_id("<|eot_id|>")
    eos_text = raw.token_to_id("<|end_of_text|>")
    print("  vocab", V, "bos", bos, "eos", [eos_text, eot])
    std = 0.3
    rope_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64}

    def make_model():
        rp = dict(rope_scaling, rope_theta=500000.0)
        cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=2, head_dim=12,
                          max_position_embeddings=512, rms_norm_eps=1e-5, rope_parameters=rp,
                          tie_word_embeddings=True, bos_token_id=bos, eos_token_id=[eos_text, eot],
                          initializer_range=std, attn_implementation="eager")
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg).to(torch.float32)

    def save(model, md):
        for f in os.listdir(md):
            if f.startswith("model") or f in ("config.json", "generation_config.json"):
                os.remove(os.path.join(md, f))
        model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eos_text, eot])
        model.to(torch.bfloat16).save_pretrained(md, safe_serialization=True, max_shard_size="200KB")
        fix_config(md, rope_scaling=rope_scaling)
        shards = sorted(f for f in os.listdir(md) if f.endswith(".safetensors"))
        assert len(shards) == 2, shards

    seed, model, greedy = build_and_check(make_model, save, d, hf, {eos_text, eot}, eos_text,
                                          range(1, 60), std, torch.bfloat16)
    print("  chosen seed", seed, "min margins", [round(c["min_margin"], 4) for c in greedy])
    write_references("tiny-llama3", model, hf, raw, greedy, seed, std,
                     extra_note="Weights are stored as bfloat16; references use those stored values "
                                "upcast to float32 (from_pretrained(dtype=float32)).")
    return seed, greedy


# ---------------------------------------------------------------------------
# dtype conversion fixture
# ---------------------------------------------------------------------------

def make_dtypes():
    print("== safetensors dtypes")
    d = os.path.join(TD, "safetensors")
    clean_dir(d)
    vals = [[0.1, -2.75, 3.0e-6], [-1.0e-40, 65519.0, -3.14159265]]
    base = torch.tensor(vals, dtype=torch.float64)
    tensors = {"f32": base.to(torch.float32), "f16": base.to(torch.float16), "bf16": base.to(torch.bfloat16)}
    path = os.path.join(d, "dtypes.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    from safetensors.torch import load_file
    loaded = load_file(path)
    exp = {"shape": [2, 3], "source_values": [v for row in vals for v in row]}
    for k in ("f32", "f16", "bf16"):
        exp[k] = [float(x) for x in loaded[k].to(torch.float32).flatten().tolist()]
    write_json(os.path.join(d, "expected.json"), exp)


# ---------------------------------------------------------------------------
# tokenizer-only fixtures
# ---------------------------------------------------------------------------

def raw_tokenize_cases(tok):
    return tokenize_cases(lambda t, add: tok.encode(t, add_special_tokens=add).ids,
                          lambda ids, skip: tok.decode(ids, skip_special_tokens=skip))


def make_tokenizer_fixtures():
    print("== tokenizer fixtures")
    base = os.path.join(TD, "tokenizers")
    if os.path.exists(base):
        shutil.rmtree(base)
    vocab, merges = train_byte_fallback_bpe(1000)
    fixtures = {
        "llama2-normalizer": spm_tokenizer(vocab, merges, old_format=True),
        "gpt2-bytelevel": train_bytelevel_bpe(1000, llama3=False),
    }
    t = train_bytelevel_bpe(1000, llama3=False)
    t.normalizer = normalizers.NFKC()
    fixtures["bytelevel-nfkc"] = t
    t = spm_tokenizer(vocab, merges)
    t.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    fixtures["metaspace-nfc-lowercase"] = t
    for name, tok in fixtures.items():
        d = os.path.join(base, name)
        os.makedirs(d)
        p = os.path.join(d, "tokenizer.json")
        tok.save(p, pretty=True)
        tok = Tokenizer.from_file(p)
        write_json(os.path.join(d, "expected.json"), raw_tokenize_cases(tok))


def main():
    parts = sys.argv[1:] or ["llama2", "llama3", "dtypes", "tokenizers"]
    print("transformers", transformers.__version__, "torch", torch.__version__)
    if "llama2" in parts:
        make_llama2()
    if "llama3" in parts:
        make_llama3()
    if "dtypes" in parts:
        make_dtypes()
    if "tokenizers" in parts:
        make_tokenizer_fixtures()
    # save_pretrained writes the weights with mode 0600; make everything world-readable.
    for sub in ("models", "reference", "safetensors", "tokenizers"):
        for dirpath, _, files in os.walk(os.path.join(TD, sub)):
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)


if __name__ == "__main__":
    main()
