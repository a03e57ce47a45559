package proxy

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the proxy's Prometheus metrics, in a registry of its own:
//
//	disagg_proxy_info{mode}                                gauge: 1, mode "disaggregated" or "aggregated" (no context servers)
//	disagg_proxy_requests_total{endpoint,status}          counter: client requests answered
//	disagg_proxy_requests_in_flight                        gauge: client requests being handled
//	disagg_proxy_upstream_requests_total{role,server}      counter: calls to workers
//	disagg_proxy_upstream_errors_total{role,server,kind}   counter: failed calls (kind: connect, status_5xx, status_4xx, timeout, stream, bad_reply)
//	disagg_proxy_retries_total{role}                       counter: calls retried on another server
//	disagg_proxy_answered_by_context_total                 counter: requests finished by the context server alone
//	disagg_proxy_server_up{role,server}                    gauge: 1 when the server is up
//	disagg_proxy_phase_seconds{role}                       histogram: a phase's time to the worker's answer (stream: its headers)
//	disagg_proxy_time_to_first_token_seconds               histogram: arrival to the first token sent
//	disagg_proxy_inter_token_latency_seconds               histogram: time between streamed chunks
//	disagg_proxy_e2e_request_latency_seconds               histogram: arrival to the end of the answer
//
// The role label is "context" or "generation"; in aggregated mode (no
// context servers) the generation_servers are labelled "aggregated", since
// they run whole requests, and no "context" series exist.
//
// plus the Go runtime and process collectors.
type metrics struct {
	reg           *prometheus.Registry
	info          *prometheus.GaugeVec
	requests      *prometheus.CounterVec
	inFlight      prometheus.Gauge
	upstream      *prometheus.CounterVec
	upstreamErrs  *prometheus.CounterVec
	retries       *prometheus.CounterVec
	answeredByCtx prometheus.Counter
	serverUp      *prometheus.GaugeVec
	phase         *prometheus.HistogramVec
	ttft          prometheus.Histogram
	itl           prometheus.Histogram
	e2e           prometheus.Histogram
	kvBytes       prometheus.Counter
	kvSeconds     prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "disagg_proxy_info", Help: "1, labelled with the proxy's mode: disaggregated, or aggregated (no context servers).",
		}, []string{"mode"}),
		kvBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "disagg_proxy_kv_transfer_bytes_total", Help: "KV bytes the generation servers reported pulling for this proxy's requests.",
		}),
		kvSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "disagg_proxy_kv_transfer_seconds", Help: "KV transfer time the generation servers reported, per request.",
			Buckets: []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "disagg_proxy_requests_total", Help: "Client requests answered, by endpoint and status code.",
		}, []string{"endpoint", "status"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "disagg_proxy_requests_in_flight", Help: "Client requests being handled.",
		}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "disagg_proxy_upstream_requests_total", Help: "Calls to workers, by role and server.",
		}, []string{"role", "server"}),
		upstreamErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "disagg_proxy_upstream_errors_total", Help: "Failed calls to workers, by role, server and kind.",
		}, []string{"role", "server", "kind"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "disagg_proxy_retries_total", Help: "Calls retried on another server, by role.",
		}, []string{"role"}),
		answeredByCtx: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "disagg_proxy_answered_by_context_total", Help: "Requests the context server finished alone (EOS or max_tokens on the first token).",
		}),
		serverUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "disagg_proxy_server_up", Help: "1 when the server is up, 0 when marked down.",
		}, []string{"role", "server"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "disagg_proxy_phase_seconds", Help: "Time from sending a phase's request to the worker's answer (stream: its headers).",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"role"}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "disagg_proxy_time_to_first_token_seconds", Help: "Time from the request's arrival to the first token sent to the client.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80},
		}),
		itl: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "disagg_proxy_inter_token_latency_seconds", Help: "Time between two streamed chunks sent to the client.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5},
		}),
		e2e: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "disagg_proxy_e2e_request_latency_seconds", Help: "Time from the request's arrival to the end of its answer.",
			Buckets: []float64{0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240},
		}),
	}
	m.reg.MustRegister(m.info, m.requests, m.inFlight, m.upstream, m.upstreamErrs, m.retries, m.answeredByCtx,
		m.serverUp, m.phase, m.ttft, m.itl, m.e2e, m.kvBytes, m.kvSeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
