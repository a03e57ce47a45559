#!/usr/bin/env python3
"""Serving benchmark: streaming requests to an OpenAI /v1/completions endpoint.

Sends --num-prompts streaming completion requests, each a prompt of
--input-len random token ids (from [--min-token-id, --vocab), so no
tokenizer is needed) asking for exactly --output-len tokens (ignore_eos,
greedy). Requests arrive as a Poisson process of --request-rate per second
(inf: all at once), at most --max-concurrency in flight. The target is the
proxy of disagg_config.yaml (-c: hostname, port, model) or any server at
--url, a single worker included. Python standard library only.

Reports, as a table on stdout and as JSON with -o:
  TTFT   time to first token: from sending the request to the first streamed
         chunk carrying a token (mean, p50, p99);
  ITL    inter-token latency: time between consecutive streamed chunks that
         carry tokens, over all requests (p50, p99); a server may put several
         tokens in one chunk, so there can be fewer gaps than tokens;
  TPOT   time per output token, per request: (latency - TTFT) / (tokens - 1);
  E2E    end-to-end latency of a request (p50, p99);
  request and output token throughput over the whole run;
  goodput: completed requests per second that met both --ttft-slo-ms and
         --tpot-slo-ms (an SLO left unset is not checked), and their fraction
         of all requests sent.
Output tokens are counted from the stream's final usage chunk (asked for with
stream_options.include_usage), else from the token chunks seen.

  scripts/bench_serve.py -c configs/disagg_config.yaml --num-prompts 64 --request-rate 8
  scripts/bench_serve.py --url http://127.0.0.1:8003 --model tiny-llama2 \\
      --num-prompts 16 --input-len 64 --output-len 32 --max-concurrency 8 -o bench.json

Failed requests (HTTP errors, error events in the stream, broken connections,
timeouts) are counted and listed, and leave the others' numbers alone.
Exit status: 0 when every request succeeded, 1 otherwise.
"""

import argparse
import concurrent.futures
import datetime
import http.client
import json
import math
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ in scripts/ from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from disagg_client import model_name, read_proxy_config, wait_for_server  # noqa: E402


class Result:
    """One request's outcome; times in seconds."""

    def __init__(self, index, prompt_len):
        self.index = index
        self.prompt_len = prompt_len  # as sent; usage's prompt_tokens replaces it
        self.ok = False
        self.error = ""
        self.start = 0.0  # time.perf_counter() when sent
        self.ttft = None
        self.latency = None
        self.itls = []
        self.output_tokens = 0
        self.usage_tokens = None  # completion_tokens of the usage chunk, if any


def make_prompts(args):
    rng = random.Random(args.seed)
    return [[rng.randrange(args.min_token_id, args.vocab) for _ in range(args.input_len)]
            for _ in range(args.num_prompts)]


def arrival_times(args):
    """Offsets in seconds from the start at which each request is due."""
    if math.isinf(args.request_rate):
        return [0.0] * args.num_prompts
    rng = random.Random(args.seed + 1)
    t, out = 0.0, []
    for _ in range(args.num_prompts):
        out.append(t)
        t += rng.expovariate(args.request_rate)
    return out


def sse_events(resp):
    """Yields (arrival time, data string) for each SSE "data:" line, as the
    bytes come in (read1: no waiting for a full buffer)."""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            break
        now = time.perf_counter()
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.strip()
            if line.startswith(b"data:"):
                yield now, line[5:].strip().decode("utf-8", "replace")
    line = buf.strip()
    if line.startswith(b"data:"):
        yield time.perf_counter(), line[5:].strip().decode("utf-8", "replace")


def run_one(target, body, headers, timeout, res):
    """Sends one streaming request and fills res; never raises."""
    conn_cls = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(target.hostname, target.port, timeout=timeout)
    path = target.path.rstrip("/") + "/v1/completions"
    last = None
    try:
        res.start = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read().decode("utf-8", "replace").strip()
            res.error = f"HTTP {resp.status}: {text[:300]}"
            return
        done = False
        for now, data in sse_events(resp):
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                err = event["error"]
                res.error = "stream error: " + (err.get("message", data) if isinstance(err, dict) else str(err))
                return
            usage = event.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                res.usage_tokens = usage["completion_tokens"]
                if usage.get("prompt_tokens") is not None:
                    res.prompt_len = usage["prompt_tokens"]
            # A chunk carrying a token: text, possibly empty while a
            # character's bytes are incomplete; a last chunk with only a
            # finish_reason and no text carries none.
            if any(c.get("text") or (c.get("text") == "" and not c.get("finish_reason"))
                   for c in event.get("choices") or []):
                if last is None:
                    res.ttft = now - res.start
                else:
                    res.itls.append(now - last)
                last = now
                res.output_tokens += 1
        res.latency = time.perf_counter() - res.start
        if not done:
            res.error = "stream ended without [DONE]"
        elif res.ttft is None:
            res.error = "no token streamed"
        else:
            if res.usage_tokens is not None:
                res.output_tokens = res.usage_tokens
            res.ok = True
    except (OSError, http.client.HTTPException, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def percentile(values, p):
    """p-th percentile with linear interpolation between closest ranks."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mean(values):
    return sum(values) / len(values) if values else None


def ms(v):
    return None if v is None else v * 1000.0


def tpot(r):
    return (r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else None


def summarize(results, duration, args):
    good = [r for r in results if r.ok]
    ttfts = [r.ttft for r in good]
    tpots = [t for t in (tpot(r) for r in good) if t is not None]
    lats = [r.latency for r in good]
    itls = [x for r in good for x in r.itls]
    out_tokens = sum(r.output_tokens for r in good)
    in_tokens = sum(r.prompt_len for r in good)

    def met(r):
        if args.ttft_slo_ms is not None and ms(r.ttft) > args.ttft_slo_ms:
            return False
        t = tpot(r)
        if args.tpot_slo_ms is not None and t is not None and ms(t) > args.tpot_slo_ms:
            return False
        return True

    n_met = sum(1 for r in good if met(r))
    return {
        "completed": len(good),
        "failed": len(results) - len(good),
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "expected_output_tokens": len(good) * args.output_len,
        "request_throughput": len(good) / duration if duration > 0 else None,
        "output_throughput": out_tokens / duration if duration > 0 else None,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration > 0 else None,
        "mean_ttft_ms": ms(mean(ttfts)),
        "p50_ttft_ms": ms(percentile(ttfts, 50)),
        "p99_ttft_ms": ms(percentile(ttfts, 99)),
        "mean_itl_ms": ms(mean(itls)),
        "p50_itl_ms": ms(percentile(itls, 50)),
        "p99_itl_ms": ms(percentile(itls, 99)),
        "mean_tpot_ms": ms(mean(tpots)),
        "p50_tpot_ms": ms(percentile(tpots, 50)),
        "p99_tpot_ms": ms(percentile(tpots, 99)),
        "mean_e2e_latency_ms": ms(mean(lats)),
        "p50_e2e_latency_ms": ms(percentile(lats, 50)),
        "p99_e2e_latency_ms": ms(percentile(lats, 99)),
        "ttft_slo_ms": args.ttft_slo_ms,
        "tpot_slo_ms": args.tpot_slo_ms,
        "slo_met": n_met,
        "goodput": n_met / duration if duration > 0 else None,
        "slo_fraction": n_met / len(results) if results else None,
    }


def print_table(m, args, base, model, errors):
    def f(v, unit=""):
        return "-" if v is None else (f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}")

    rate = "inf" if math.isinf(args.request_rate) else f"{args.request_rate:g}"
    slo = []
    if args.ttft_slo_ms is not None:
        slo.append(f"TTFT <= {args.ttft_slo_ms:g} ms")
    if args.tpot_slo_ms is not None:
        slo.append(f"TPOT <= {args.tpot_slo_ms:g} ms")
    rows = [
        ("Target", f"{base} ({model})"),
        ("Label", args.label or "-"),
        ("Workload", f"{args.num_prompts} x ({args.input_len} in, {args.output_len} out), "
                     f"rate {rate}/s, concurrency {args.max_concurrency or 'unlimited'}"),
        None,
        ("Successful requests", f(m["completed"])),
        ("Failed requests", f(m["failed"])),
        ("Duration (s)", f(m["duration_s"])),
        ("Input tokens", f(m["total_input_tokens"])),
        ("Output tokens", f"{m['total_output_tokens']} (expected {m['expected_output_tokens']})"),
        ("Request throughput (req/s)", f(m["request_throughput"])),
        ("Output token throughput (tok/s)", f(m["output_throughput"])),
        ("Total token throughput (tok/s)", f(m["total_token_throughput"])),
        None,
        ("TTFT mean / p50 / p99 (ms)", " / ".join(f(m[k]) for k in ("mean_ttft_ms", "p50_ttft_ms", "p99_ttft_ms"))),
        ("ITL mean / p50 / p99 (ms)", " / ".join(f(m[k]) for k in ("mean_itl_ms", "p50_itl_ms", "p99_itl_ms"))),
        ("TPOT mean / p50 / p99 (ms)", " / ".join(f(m[k]) for k in ("mean_tpot_ms", "p50_tpot_ms", "p99_tpot_ms"))),
        ("E2E latency mean / p50 / p99 (ms)",
         " / ".join(f(m[k]) for k in ("mean_e2e_latency_ms", "p50_e2e_latency_ms", "p99_e2e_latency_ms"))),
        None,
        ("SLO", ", ".join(slo) or "none set (every completed request counts)"),
        ("Goodput (req/s)", f(m["goodput"])),
        ("Requests meeting the SLO", f"{m['slo_met']} of {m['completed'] + m['failed']}"
                                      f" ({f(None if m['slo_fraction'] is None else 100 * m['slo_fraction'])}%)"),
    ]
    width = max(len(r[0]) for r in rows if r)
    line = "=" * (width + 42)
    print(line)
    print(" Serving benchmark ".center(len(line), "="))
    for r in rows:
        print("-" * len(line) if r is None else f"{r[0]:<{width}}  {r[1]}")
    print(line)
    if errors:
        print(f"Errors ({len(errors)}):")
        for i, e in errors[:10]:
            print(f"  request {i}: {e}")
        if len(errors) > 10:
            print(f"  ... {len(errors) - 10} more (all in the JSON output)")


def rate_arg(s):
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError("must be > 0 (or inf)")
    return v


def slo_arg(s):
    v = float(s)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--disagg-config", "--disagg_config-file", dest="disagg_config",
                    default="configs/disagg_config.yaml", help="disagg_config.yaml (hostname, port, model)")
    ap.add_argument("--url", help="the server's base URL (instead of -c), e.g. http://127.0.0.1:8000")
    ap.add_argument("--model", help="model name (default: the config's model, else the first of /v1/models)")
    ap.add_argument("--num-prompts", type=int, default=100, help="requests to send (default 100)")
    ap.add_argument("--input-len", type=int, default=128, help="prompt length in tokens (default 128)")
    ap.add_argument("--output-len", type=int, default=64, help="output tokens per request (default 64)")
    ap.add_argument("--vocab", type=int, default=1000,
                    help="prompt token ids are below this (default 1000: valid for the embedded tiny "
                         "model and any larger vocabulary)")
    ap.add_argument("--min-token-id", type=int, default=10,
                    help="prompt token ids are at least this, skipping special tokens (default 10)")
    ap.add_argument("--request-rate", type=rate_arg, default=math.inf,
                    help="mean requests per second, Poisson arrivals; inf (default): all at once")
    ap.add_argument("--max-concurrency", type=int, help="at most this many requests in flight (default: no limit)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompts and arrival times (default 0)")
    ap.add_argument("--ttft-slo-ms", type=slo_arg, help="goodput: TTFT at most this (ms); unset: not checked")
    ap.add_argument("--tpot-slo-ms", type=slo_arg, help="goodput: TPOT at most this (ms); unset: not checked")
    ap.add_argument("--label", default="", help="a name for this run, written into the JSON")
    ap.add_argument("-o", "--output-file", help="also write the results to this file as JSON")
    ap.add_argument("--api-key", help="sent as Authorization: Bearer")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    ap.add_argument("--server-start-timeout", type=float, help="first wait this many seconds for /health")
    args = ap.parse_args()

    for name in ("num_prompts", "input_len", "output_len"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.min_token_id < args.vocab:
        ap.error("need 0 <= --min-token-id < --vocab")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        ap.error("--max-concurrency must be at least 1")

    base, cfg_model = (args.url.rstrip("/"), "") if args.url else read_proxy_config(args.disagg_config)
    target = urllib.parse.urlsplit(base)
    if target.scheme not in ("http", "https") or not target.hostname:
        ap.error(f"not an http(s) URL: {base}")
    if args.server_start_timeout:
        wait_for_server(base, args.server_start_timeout)
    try:
        model = args.model or cfg_model or model_name(base, args.api_key, args.timeout)
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as e:
        sys.exit(f"{base}/v1/models: {e}")

    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if args.api_key:
        headers["Authorization"] = "Bearer " + args.api_key
    prompts = make_prompts(args)
    due = arrival_times(args)
    results = [Result(i, len(p)) for i, p in enumerate(prompts)]

    workers = min(args.max_concurrency or args.num_prompts, args.num_prompts)
    rate = "inf" if math.isinf(args.request_rate) else f"{args.request_rate:g}/s"
    print(f"{args.num_prompts} requests to {base}/v1/completions ({model}), rate {rate}, "
          f"concurrency {args.max_concurrency or 'unlimited'}", file=sys.stderr)
    finished = [0]
    step = max(1, math.ceil(args.num_prompts / 10))  # progress about every 10%
    lock = threading.Lock()

    def task(i):
        body = json.dumps({
            "model": model, "prompt": prompts[i], "max_tokens": args.output_len,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True},
        }).encode()
        run_one(target, body, headers, args.timeout, results[i])
        with lock:
            finished[0] += 1
            n = finished[0]
            if n % step == 0 or n == args.num_prompts:
                print(f"  {n}/{args.num_prompts} done", file=sys.stderr, flush=True)

    # The pool's size bounds the requests in flight; a request due while all
    # are busy waits in the queue, its clock starting when it is sent.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    t0 = time.perf_counter()
    futures = []
    try:
        for i in range(args.num_prompts):
            wait = t0 + due[i] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            futures.append(pool.submit(task, i))
        concurrent.futures.wait(futures)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        os._exit(130)
    duration = time.perf_counter() - t0
    pool.shutdown()

    m = summarize(results, duration, args)
    errors = [(r.index, r.error) for r in results if not r.ok]
    print_table(m, args, base, model, errors)
    if args.output_file:
        out = {
            "label": args.label,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "url": base,
            "model": model,
            "config": {k: (None if isinstance(v, float) and math.isinf(v) else v)
                       for k, v in vars(args).items() if k not in ("api_key", "output_file")},
            "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
            **m,
            "requests": [{
                "index": r.index, "ok": r.ok, "error": r.error or None,
                "prompt_tokens": r.prompt_len, "output_tokens": r.output_tokens,
                "start_s": r.start - t0 if r.start else None,
                "ttft_ms": ms(r.ttft), "e2e_latency_ms": ms(r.latency),
                "tpot_ms": ms(tpot(r)) if r.ok else None,
                "itl_ms": [round(ms(x), 3) for x in r.itls],
            } for r in results],
        }
        with open(args.output_file, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")
    return 1 if m["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
