// Package proxy is the disaggregated serving front end started by `worker
// disaggregated -c disagg_config.yaml [-m metadata_config.yaml]`, in the
// manner of `trtllm-serve disaggregated`: an OpenAI HTTP API
// (/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics)
// that runs each request's prefill on a context server and its decode on a
// generation server, or, without context servers, each whole request on an
// aggregated worker.
//
// # Request flow
//
//  1. The body is decoded into the typed api structs and checked (400/404
//     before any worker is called). One prompt and n = 1 per request, as
//     trtllm's disaggregated server requires.
//  2. A context server (context_servers.router) gets the request with
//     disaggregated_params {request_type: context_only, disagg_request_id},
//     stream false and no stream_options; max_tokens is left as the client
//     sent it (as current trtllm does; older trtllm sent 1).
//  3. If the reply finishes the request — finish_reason "stop" on the first
//     token, or max_tokens reached by first_gen_tokens — the client is
//     answered from it (streamed or not) and no generation server is
//     called. Otherwise its choices[0].disaggregated_params must carry
//     first_gen_tokens.
//  4. A generation server gets the client's request with those params
//     (request_type generation_only, the same disagg_request_id) and the
//     prompt's token ids from the context reply's prompt_token_ids: as the
//     prompt of a completions request, as prompt_token_ids of a chat
//     request (trtllm's field). The ids are passed on as raw JSON.
//  5. Its answer is relayed: non-streamed JSON as it came unless usage
//     lacks the prompt tokens or internal fields leaked (then re-encoded);
//     streamed events as they came, re-encoded only where the proxy changes
//     them. Usage counts the prompt tokens (the context reply's when the
//     generation worker's lacks them).
//
// Both workers get the client's X-Request-Id (or a new one), so that their
// answers carry the same id, and the configured API key as a Bearer token.
//
// # Aggregated mode
//
// A configuration without context servers (context_servers left out, or
// num_instances 0 and no urls) puts the proxy in aggregated mode: the
// generation_servers are plain aggregated workers (started without a
// role) and each request's body goes to one of them as the client sent it,
// chosen by generation_servers.router; its answer is relayed as a
// generation phase's is (same retries before the first byte, timeouts,
// request ids, API keys, error answers). /health needs a generation server
// up, /v1/models asks the generation servers, and the metrics label those
// servers role="aggregated" (disagg_proxy_info{mode="aggregated"} says the
// mode); Run logs the mode once at start. This lets a benchmark put a
// disaggregated deployment and aggregated workers behind the same proxy.
// trtllm-serve disaggregated has no such mode: it refuses a configuration
// without context servers unless TRTLLM_DISAGG_BENCHMARK_GEN_ONLY=1, a
// benchmark mode that sends generation_only requests with made-up
// first_gen_tokens and no KV.
//
// # Streaming
//
// Every event of a worker's stream is written to the client and flushed
// as soon as its line has arrived: the upstream body is read line by line
// (a read returns what the connection has, never waiting to fill the
// buffer) and each event is followed by a Flush of the response.
//
// # First token early (stream_first_token_from_context)
//
// For a streamed request with one choice and no logprobs, the proxy sends
// the context reply's first token to the client as soon as it has it, before
// the generation server answers. The generation worker's stream repeats that
// token (its answer is the whole completion, as in trtllm, where the
// generation phase output starts with first_gen_tokens); the proxy trims the
// text already sent from the start of that stream — by text, not by chunk,
// so a worker that merges or splits the first token's text is handled — and
// drops the role delta it already sent. A chunk with another id than the
// first chunk's is rewritten to carry it (SDK accumulators drop chunks of
// another id). If the generation stream does not start with the sent text,
// the rest after the common prefix is sent and a warning logged.
//
// # Reliability
//
// A server that refuses connections, breaks a connection before answering,
// or answers 5xx is marked down; the request goes to another server of the
// same role (max_retries times) as long as nothing of that phase reached the
// client. A 4xx from a worker is the client's answer as the worker wrote it
// (no retry). When the tries are spent the client gets an OpenAI error:
// 502 for failed servers, 504 when request_timeout passed. A stream that fails after events were
// sent ends with an error event and "data: [DONE]". Every server's /health
// is probed every health_check_interval_sec; a server comes back up when it
// answers 200. A client that goes away cancels the upstream calls (their
// context is the client's). request_timeout bounds each request's upstream
// work, a stream included (504 when exceeded before anything was sent).
//
// # Response headers
//
// X-Request-Id; X-Disagg-KV-Bytes and X-Disagg-KV-Transfer-Ms as the
// generation worker reported its KV pull; X-Disagg-Context-Server and X-Disagg-Context-Ms (time to the
// context reply); X-Disagg-Generation-Server and X-Disagg-Generation-Ms
// (time to the generation server's answer; for a stream they are HTTP
// trailers, with the time to the stream's end).
//
// # Discovery
//
// Static urls, or dynamic membership with disagg_cluster and an http://
// cluster_uri, as trtllm-serve's HTTP cluster storage: the proxy serves
// POST /set (register: key /trtllm-disagg/<cluster_name>/workers/<id>,
// value {worker_id, host, port, role}), GET /expire (heartbeat), DELETE
// /delete (deregister), GET /get_prefix and GET /cluster_info; the wire
// types and the worker's client are in disagg/worker/cluster. Requests need
// the key the proxy sends to workers (worker_api_key, else api_key). A
// registered worker joins its role's pool at once (marked up, then
// health-checked like the others); one not refreshed for
// inactive_timeout_sec is dropped; the pools change under the routers,
// which only ever see a snapshot of candidates. Readiness (/health, the
// "proxy ready" log) needs minimal_instances of each role up, with no
// start deadline. Static urls given as well stay members for good (trtllm
// ignores them); with disagg_cluster the proxy is always disaggregated
// (workers register as context or generation). An etcd:// cluster_uri is
// refused with ErrNotImplemented, and disagg_cluster with the metadata
// server file (-m) is refused, as trtllm does; -m alone is parsed and logs
// a warning.
package proxy
