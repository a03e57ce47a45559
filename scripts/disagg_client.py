#!/usr/bin/env python3
"""Send prompts to the disaggregated proxy and print the answers.

As TensorRT-LLM's examples/disaggregated/clients/disagg_client.py (same
flags): the proxy's address and model come from disagg_config.yaml
(hostname, port, model) or --url; the prompts from a JSON file holding a
list of strings (or, for completions, lists of token ids). The answers are
printed, and written as a JSON list with -o. Python standard library only.

  scripts/disagg_client.py -c configs/disagg_config.yaml -p scripts/prompts.json
  scripts/disagg_client.py -c configs/disagg_config.yaml -p scripts/prompts.json -e chat --stream

Exit status: 0 when every prompt got an answer, 1 otherwise.
"""

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.request


def read_proxy_config(path):
    """(url, model) from the top-level keys hostname, port, model of
    disagg_config.yaml.

    A minimal reader for these scalar keys (no dependencies): top-level
    lines "key: value", comments and quotes stripped.
    """
    host, port, model = "localhost", 8000, ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line[0] in " \t#-":
                continue  # blank, comment, or nested under another key
            key, sep, value = line.partition(":")
            if not sep:
                continue
            value = value.split(" #", 1)[0].strip().strip("'\"")
            if key.strip() == "hostname" and value:
                host = value
            elif key.strip() == "port" and value:
                port = int(value)
            elif key.strip() == "model" and value:
                model = value
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    return f"http://{host}:{port}", model


def post(url, body, api_key, timeout):
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    return urllib.request.urlopen(req, timeout=timeout)


def wait_for_server(base, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{base}/health: no answer within {timeout} s")
        time.sleep(1)


def model_name(base, api_key, timeout):
    req = urllib.request.Request(base + "/v1/models")
    if api_key:
        req.add_header("Authorization", "Bearer " + api_key)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.load(r)["data"]
    return data[0]["id"] if data else ""


def send(base, endpoint, model, prompt, args):
    """Returns the answer's text, printing it as it streams when asked."""
    if endpoint == "chat":
        path = "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    else:
        path = "/v1/completions"
        body = {"model": model, "prompt": prompt}
    body.update({"max_tokens": args.max_tokens, "temperature": args.temperature, "stream": args.stream})
    if args.ignore_eos:
        body["ignore_eos"] = True
    with post(base + path, body, args.api_key, args.timeout) as r:
        if not args.stream:
            choice = json.load(r)["choices"][0]
            return choice["message"]["content"] if endpoint == "chat" else choice["text"]
        text = []
        for raw in r:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"].get("message", data))
            for c in event.get("choices", []):
                if endpoint == "chat":
                    piece = (c.get("delta") or {}).get("content")
                else:
                    piece = c.get("text")
                text.append(piece or "")
        return "".join(text)


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--disagg_config-file", "--disagg-config", dest="disagg_config", default="configs/disagg_config.yaml",
                    help="disagg_config.yaml (hostname, port, model)")
    ap.add_argument("--url", help="the proxy's URL (instead of -c), e.g. http://localhost:8000")
    ap.add_argument("-p", "--prompts-file", default="scripts/prompts.json", help="JSON list of prompt strings")
    ap.add_argument("-e", "--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--ignore-eos", action="store_true", help="decode max-tokens tokens whatever comes")
    ap.add_argument("--streaming", "--stream", dest="stream", action="store_true", help="stream the answers")
    ap.add_argument("--server-start-timeout", type=float, help="first wait this many seconds for the proxy's /health")
    ap.add_argument("-o", "--output-file", help="also write the answers to this file, as a JSON list")
    ap.add_argument("--model", help="model name (default: the config's model, else the first of /v1/models)")
    ap.add_argument("--api-key", help="sent as Authorization: Bearer")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per request")
    args = ap.parse_args()

    base, cfg_model = (args.url.rstrip("/"), "") if args.url else read_proxy_config(args.disagg_config)
    with open(args.prompts_file, encoding="utf-8") as f:
        prompts = json.load(f)
    ok = isinstance(prompts, list) and all(
        isinstance(p, str) or (args.endpoint == "completions" and isinstance(p, list) and all(isinstance(i, int) for i in p))
        for p in prompts)
    if not ok:
        sys.exit(f"{args.prompts_file}: want a JSON list of strings (or, for completions, of token id lists)")
    if args.server_start_timeout:
        wait_for_server(base, args.server_start_timeout)
    try:
        model = args.model or cfg_model or model_name(base, args.api_key, args.timeout)
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        sys.exit(f"{base}/v1/models: {e}")

    failed = 0
    answers = []
    for i, prompt in enumerate(prompts):
        print(f"Prompt {i}: {prompt!r}")
        text = None
        try:
            text = send(base, args.endpoint, model, prompt, args)
            print(f"Answer {i}: {text!r}")
        except urllib.error.HTTPError as e:
            failed += 1
            print(f"Error {i}: HTTP {e.code}: {e.read().decode('utf-8', 'replace')}")
        except (urllib.error.URLError, OSError, ValueError, RuntimeError) as e:
            failed += 1
            print(f"Error {i}: {e}")
        answers.append(text)
        sys.stdout.flush()
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as f:
            json.dump(answers, f, indent=2, ensure_ascii=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
