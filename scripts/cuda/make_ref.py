"""TinyLlama-shaped model with seeded random bf16 weights, and references.

Run on the GPU machine (PyTorch + transformers there):
    python3 scripts/cuda/make_ref.py OUTDIR [--bench]

Writes OUTDIR/model (a Hugging Face checkpoint folder, bf16 safetensors),
OUTDIR/ref.json and OUTDIR/ref.bin: for each case, the logits at the listed
positions from transformers in float32 over the same (bf16-valued) weights
(the reference), then from transformers in bf16 (to show bf16's own error).
With --bench it also times transformers (bf16, eager loop) on the same model
and a device copy, into OUTDIR/hf_bench.json.
"""

import json
import os
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM



def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
def write_tokenizer(d, vocab_size=32000):
    """A byte-level BPE tokenizer.json for the random-weight model, so that the
    worker can serve it (prompts as token ids): the 256 byte symbols, then
    placeholder tokens up to vocab_size, no merges."""
    bc = byte_chars()
    alpha = [bc[b] for b in range(256)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for a in alpha:
        vocab.setdefault(a, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        tok = alpha[97 + i % 26] + alpha[97 + (i // 26) % 26] + alpha[97 + (i // 676) % 26]
        if i >= 26 ** 3: tok += alpha[48 + i // 26 ** 3 % 10]
        vocab.setdefault(tok, len(vocab)); i += 1
    tj = {"version": "1.0", "truncation": None, "padding": None,
          "added_tokens": [{"id": k, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True} for t, k in (("<unk>", 0), ("<s>", 1), ("</s>", 2))],
          "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
          "post_processor": None,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False, "vocab": vocab, "merges": []}}
    json.dump(tj, open(d + "/tokenizer.json", "w"))
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048}, open(d + "/tokenizer_config.json", "w"))

def main():
    out = sys.argv[1]
    bench = "--bench" in sys.argv
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, head_dim=64, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        hidden_act="silu",
    )
    t0 = time.time()
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16).eval()
    with torch.no_grad():
        g = torch.Generator(device="cuda").manual_seed(2)
        for name, p in model.named_parameters():
            if "norm" in name:  # random norm weights, not all ones
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, device="cuda"))
    model.save_pretrained(os.path.join(out, "model"))
    write_tokenizer(os.path.join(out, "model"), cfg.vocab_size)
    print(f"model written in {time.time()-t0:.1f}s", flush=True)

    # Reload as a user would (from_pretrained): model.to(bfloat16) above also
    # rounded the rotary inv_freq buffer to bf16, which a loaded model keeps
    # in float32.
    del model
    torch.cuda.empty_cache()
    mdir = os.path.join(out, "model")
    model = LlamaForCausalLM.from_pretrained(mdir, dtype=torch.bfloat16).cuda().eval()
    m32 = LlamaForCausalLM.from_pretrained(mdir, dtype=torch.float32).cuda().eval()
    for name, mm in (("bf16", model), ("fp32", m32)):
        for bn, buf in mm.named_buffers():
            if "inv_freq" in bn:
                print(f"{name} model: {bn} {buf.dtype}", flush=True)
                break
    gen = torch.Generator().manual_seed(1)
    specs = [
        ("p1", 1, [0]), ("p7", 7, [3, 6]), ("p100", 100, [99]), ("p511", 511, [255, 510]),
        ("p1000", 1000, [999]), ("p2048", 2048, [2047]), ("decode", 1032, list(range(1023, 1032))),
    ]
    cases, chunks, off = [], [], 0
    with torch.no_grad():
        for name, n, pos in specs:
            ids = torch.randint(0, cfg.vocab_size, (n,), generator=gen)
            ids[0] = 1
            x = ids[None].cuda()
            r32 = m32(x).logits[0, pos].float().cpu()
            r16 = model(x).logits[0, pos].float().cpu()
            rel = ((r16 - r32).norm() / r32.norm()).item()
            print(f"{name}: n={n} transformers bf16 vs fp32 rel err {rel:.3e}", flush=True)
            cases.append({"name": name, "ids": ids.tolist(), "positions": pos, "ref32_offset": off,
                          "hf16_offset": off + r32.numel()})
            off += 2 * r32.numel()
            chunks += [r32.contiguous().numpy().tobytes(), r16.contiguous().numpy().tobytes()]
    with open(os.path.join(out, "ref.bin"), "wb") as f:
        for c in chunks:
            f.write(c)
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump({"vocab": cfg.vocab_size, "cases": cases}, f)
    del m32
    torch.cuda.empty_cache()
    if bench:
        hf_bench(model, cfg, out)


def timed(fn, reps):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2] / 1e3


def hf_bench(model, cfg, out):
    res = {}
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), 20)
    res["torch_copy_GBps"] = 2 * a.numel() / t / 1e9
    del a, b
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    res["weight_bytes"] = wbytes
    res["roofline_tps"] = res["torch_copy_GBps"] * 1e9 / wbytes
    gen = torch.Generator(device="cuda").manual_seed(3)
    with torch.no_grad():
        for n in (512, 2048):
            ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda", generator=gen)
            t = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), 5)
            res[f"hf_prefill_{n}_tps"] = n / t
            print(f"transformers prefill {n}: {t*1e3:.2f} ms, {n/t:.0f} tokens/s", flush=True)
        for B in (1, 32):
            ids = torch.randint(0, cfg.vocab_size, (B, 1024), device="cuda", generator=gen)
            o = model(ids, use_cache=True, logits_to_keep=1)
            cache = o.past_key_values
            nxt = o.logits[:, -1].argmax(-1, keepdim=True)
            steps = 16
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                o = model(nxt, past_key_values=cache, use_cache=True)
                nxt = o.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / steps
            res[f"hf_decode_b{B}_tps"] = B / dt
            print(f"transformers eager decode batch {B} ctx 1024: {dt*1e3:.2f} ms/step, {B/dt:.0f} tokens/s", flush=True)
    res["torch"] = torch.__version__
    import transformers
    res["transformers"] = transformers.__version__
    res["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(res, indent=1))
    with open(os.path.join(out, "hf_bench.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
