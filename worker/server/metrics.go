package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus metrics, in a registry of its own:
//
//	worker_http_requests_total{endpoint,status}  counter: answered HTTP requests
//	worker_http_requests_in_flight               gauge: HTTP requests being handled
//	worker_prompt_tokens_total                   counter: prompt tokens of admitted sequences
//	worker_generation_tokens_total               counter: generated tokens
//	worker_time_to_first_token_seconds           histogram: request arrival to a sequence's first token
//	worker_inter_token_latency_seconds           histogram: time between a sequence's tokens
//	worker_e2e_request_latency_seconds           histogram: request arrival to a sequence's last token
//	worker_num_requests_running                  gauge: sequences being decoded (engine)
//	worker_num_requests_waiting                  gauge: sequences queued (engine; the queue length)
//	worker_kv_blocks_used, worker_kv_blocks_free gauge: the KV pool's blocks (engine)
//
// plus the Go runtime and process collectors, and Deps.Collectors.
type metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	inFlight   prometheus.Gauge
	promptToks prometheus.Counter
	genToks    prometheus.Counter
	ttft       prometheus.Histogram
	itl        prometheus.Histogram
	e2e        prometheus.Histogram
}

func newMetrics(stats func() EngineStats, extra ...prometheus.Collector) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_http_requests_total", Help: "HTTP requests answered, by endpoint and status code.",
		}, []string{"endpoint", "status"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "worker_http_requests_in_flight", Help: "HTTP requests being handled.",
		}),
		promptToks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "worker_prompt_tokens_total", Help: "Prompt tokens of the sequences submitted to the engine.",
		}),
		genToks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "worker_generation_tokens_total", Help: "Tokens generated.",
		}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "worker_time_to_first_token_seconds", Help: "Time from the request's arrival to a sequence's first token.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80},
		}),
		itl: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "worker_inter_token_latency_seconds", Help: "Time between two tokens of a sequence.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5},
		}),
		e2e: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "worker_e2e_request_latency_seconds", Help: "Time from the request's arrival to a sequence's last token.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.3, 0.5, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240},
		}),
	}
	m.reg.MustRegister(m.requests, m.inFlight, m.promptToks, m.genToks, m.ttft, m.itl, m.e2e,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(extra...)
	gauge := func(name, help string, get func(EngineStats) int) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if stats == nil {
				return 0
			}
			return float64(get(stats()))
		}))
	}
	gauge("worker_num_requests_running", "Sequences being decoded.", func(s EngineStats) int { return s.Running })
	gauge("worker_num_requests_waiting", "Sequences waiting for admission (the queue length).", func(s EngineStats) int { return s.Waiting })
	gauge("worker_kv_blocks_used", "KV cache blocks in use.", func(s EngineStats) int { return s.KVBlocksUsed })
	gauge("worker_kv_blocks_free", "KV cache blocks free.", func(s EngineStats) int { return s.KVBlocksFree })
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
