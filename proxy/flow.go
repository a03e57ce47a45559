package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"disagg/api"
)

// serve runs one request: the context phase, then (unless the context reply
// finished it) the generation phase, relayed to the client. In aggregated
// mode the client's body goes whole to a generation server instead.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, c call, body []byte, reqID string, start time.Time) {
	h := w.Header()
	h.Set(HeaderRequestID, reqID)
	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.requestTimeout())
	defer cancel()
	if p.cfg.Aggregated() {
		p.serveAggregated(ctx, w, c, body, reqID, start)
		return
	}
	did := p.nextDisaggID()

	ctxBody, err := c.contextBody(did)
	if err != nil {
		p.writeError(w, api.Internal("Could not encode the context request: %v.", err))
		return
	}
	// A failed KV handoff (the generation server could not get the context
	// server's KV) re-runs the prefill on another context server, unseen by
	// the client, while nothing has reached it and the budget lasts.
	var ctxTried []*Server
	for attempt := 0; ; attempt++ {
		res, raw, cs, ctxDur, tried, ue := p.runContext(ctx, c, ctxBody, reqID, ctxTried)
		ctxTried = tried
		if ue != nil {
			p.fail(w, ue, reqID)
			return
		}
		h.Set(HeaderContextServer, cs.URL)
		h.Set(HeaderContextMs, ms(ctxDur))
		for k, v := range res.breakdown {
			h.Set(k, v)
		}

		if finished(res, c.maxTokens()) {
			p.metrics.answeredByCtx.Inc()
			p.answerFromContext(w, c, res, raw, start)
			return
		}
		if err := checkContext(res); err != nil {
			p.fail(w, p.badReply(cs, err), reqID)
			return
		}
		genBody, err := c.generationBody(res, did)
		if err != nil {
			p.writeError(w, api.Internal("Could not encode the generation request: %v.", err))
			return
		}
		var handoff *upstreamError
		if c.streaming() {
			handoff = p.streamGeneration(ctx, w, c, res, genBody, reqID, start)
		} else {
			handoff = p.answerGeneration(ctx, w, c, res, genBody, reqID, start)
		}
		if handoff == nil {
			return
		}
		if attempt >= p.cfg.MaxRetries {
			p.fail(w, handoff, reqID)
			return
		}
		p.metrics.retries.WithLabelValues(RoleContext).Inc()
		p.log.Info("KV handoff failed; prefilling again on another context server", "request_id", reqID, "context_server", cs.URL, "error", handoff.Error())
	}
}

// serveAggregated sends the client's request, as the client sent it, to a
// generation server (an aggregated worker) and relays the answer, with the
// same retries, timeouts and error answers as the generation phase of a
// disaggregated request. An empty context result leaves nothing to trim
// from the stream and no prompt tokens to fix in usage.
func (p *Proxy) serveAggregated(ctx context.Context, w http.ResponseWriter, c call, body []byte, reqID string, start time.Time) {
	var ue *upstreamError
	if c.streaming() {
		ue = p.streamGeneration(ctx, w, c, &ctxResult{}, body, reqID, start)
	} else {
		ue = p.answerGeneration(ctx, w, c, &ctxResult{}, body, reqID, start)
	}
	if ue != nil { // a KV handoff failure, which an aggregated worker does not have
		p.fail(w, ue, reqID)
	}
}

// runContext sends the context_only request and reads the reply, retrying
// on another context server where that may help.
// tried lists context servers this request used before; the updated list
// comes back.
func (p *Proxy) runContext(ctx context.Context, c call, body []byte, reqID string, tried []*Server) (*ctxResult, []byte, *Server, time.Duration, []*Server, *upstreamError) {
	for {
		cr, t, ue := p.callWithRetry(ctx, p.ctxPool, c.route(), c.path(), body, reqID, tried)
		tried = t
		if ue != nil {
			return nil, nil, nil, 0, tried, ue
		}
		data, ue := p.readReply(ctx, cr.server, cr.resp)
		elapsed := cr.elapsed
		cr.release()
		if ue != nil {
			if ue.down {
				p.ctxPool.setUp(cr.server, false, ue.Error())
			}
			if ue.retry && len(tried) <= p.cfg.MaxRetries {
				continue
			}
			return nil, nil, nil, 0, tried, ue
		}
		p.metrics.phase.WithLabelValues(RoleContext).Observe(elapsed.Seconds())
		res, err := c.parseContext(data)
		if err != nil {
			return nil, nil, nil, 0, tried, p.badReply(cr.server, err)
		}
		for _, h := range []string{api.HeaderContextQueueMs, api.HeaderPrefillMs} {
			if v := cr.resp.Header.Get(h); v != "" {
				if res.breakdown == nil {
					res.breakdown = map[string]string{}
				}
				res.breakdown[h] = v
			}
		}
		return res, data, cr.server, elapsed, tried, nil
	}
}

// fail answers with an upstream failure, unless the client is gone.
func (p *Proxy) fail(w http.ResponseWriter, ue *upstreamError, reqID string) {
	if ue.kind == failCanceled {
		p.log.Debug("client went away", "request_id", reqID)
		return
	}
	p.log.Warn("upstream failed", "request_id", reqID, "kind", ue.kind, "error", ue.Error())
	p.writeError(w, ue.client)
}

// answerFromContext answers a request that the context reply finished.
func (p *Proxy) answerFromContext(w http.ResponseWriter, c call, res *ctxResult, raw []byte, start time.Time) {
	if !c.streaming() {
		body, err := c.fromContext(raw, res)
		if err != nil {
			p.writeError(w, api.Internal("Could not encode the answer: %v.", err))
			return
		}
		p.writeJSON(w, body)
		p.metrics.e2e.Observe(time.Since(start).Seconds())
		return
	}
	chunks, err := c.contextChunks(res, true)
	if err != nil {
		p.writeError(w, api.Internal("Could not encode the answer: %v.", err))
		return
	}
	sse := newSSE(w, p, start)
	for _, ch := range chunks {
		sse.event(ch, true)
	}
	sse.done()
	p.metrics.e2e.Observe(time.Since(start).Seconds())
}

// answerGeneration runs a non-streamed generation phase. A failed KV
// handoff comes back unanswered, for the caller to prefill again.
func (p *Proxy) answerGeneration(ctx context.Context, w http.ResponseWriter, c call, res *ctxResult, body []byte, reqID string, start time.Time) (handoff *upstreamError) {
	var tried []*Server
	for {
		cr, t, ue := p.callWithRetry(ctx, p.genPool, c.route(), c.path(), body, reqID, tried)
		tried = t
		if ue != nil {
			if ue.handoff {
				return ue
			}
			p.fail(w, ue, reqID)
			return nil
		}
		data, ue := p.readReply(ctx, cr.server, cr.resp)
		cr.release()
		if ue != nil {
			if ue.down {
				p.genPool.setUp(cr.server, false, ue.Error())
			}
			if ue.retry && len(tried) <= p.cfg.MaxRetries {
				continue
			}
			if ue.handoff {
				return ue
			}
			p.fail(w, ue, reqID)
			return nil
		}
		elapsed := cr.elapsed
		p.metrics.phase.WithLabelValues(p.genPool.role).Observe(elapsed.Seconds())
		out, err := c.fixReply(data, res)
		if err != nil {
			p.fail(w, p.badReply(cr.server, err), reqID)
			return nil
		}
		w.Header().Set(HeaderGenerationServer, cr.server.URL)
		w.Header().Set(HeaderGenerationMs, ms(elapsed))
		p.kvReport(w.Header(), cr.resp.Header)
		p.writeJSON(w, out)
		p.metrics.e2e.Observe(time.Since(start).Seconds())
		return nil
	}
}

// streamGeneration streams the answer: the first token from the context
// reply when allowed, then the generation server's events. A failed KV
// handoff before anything reached the client comes back unanswered.
func (p *Proxy) streamGeneration(ctx context.Context, w http.ResponseWriter, c call, res *ctxResult, body []byte, reqID string, start time.Time) (handoff *upstreamError) {
	w.Header().Set("Trailer", strings.Join([]string{HeaderGenerationServer, HeaderGenerationMs, api.HeaderKVBytes, api.HeaderKVTransferMs}, ", "))
	sse := newSSE(w, p, start)
	st := &streamState{promptTokens: res.promptTokens()}
	if p.cfg.firstTokenEarly() && c.earlyOK() && res.text != "" {
		chunks, err := c.contextChunks(res, false)
		if err == nil {
			err = st.setID(res.id)
		}
		if err == nil {
			sse.event(chunks[0], true)
			st.skip = res.text
			_, st.skipRole = c.(*chatCall)
		} else {
			p.log.Warn("could not encode the first token's chunk", "request_id", reqID, "error", err)
		}
	}
	var tried []*Server
	for {
		cr, t, ue := p.callWithRetry(ctx, p.genPool, c.route(), c.path(), body, reqID, tried)
		tried = t
		if ue != nil {
			if ue.handoff && !sse.started {
				return ue
			}
			p.streamFail(w, sse, ue, reqID)
			return nil
		}
		p.metrics.phase.WithLabelValues(p.genPool.role).Observe(cr.elapsed.Seconds())
		relayed, err := p.relay(ctx, sse, c, st, cr.resp.Body)
		cr.resp.Body.Close()
		cr.release()
		if err == nil {
			w.Header().Set(HeaderGenerationServer, cr.server.URL)
			w.Header().Set(HeaderGenerationMs, ms(time.Since(start)))
			p.kvReport(w.Header(), cr.resp.Header)
			if st.mismatch {
				p.log.Warn("the generation stream did not repeat the first token's text; sent its remainder", "request_id", reqID)
			}
			p.metrics.e2e.Observe(time.Since(start).Seconds())
			return nil
		}
		if sse.err != nil {
			p.log.Debug("client went away during the stream", "request_id", reqID, "error", sse.err)
			return nil
		}
		var ue2 *upstreamError
		if !errors.As(err, &ue2) {
			ue2 = p.transportError(ctx, cr.server, err)
		}
		if ue2.down {
			p.genPool.setUp(cr.server, false, ue2.Error())
		}
		if !relayed && ue2.retry && len(tried) <= p.cfg.MaxRetries {
			continue
		}
		p.streamFail(w, sse, ue2, reqID)
		return nil
	}
}

// streamFail ends a stream with an error: a JSON error when nothing was
// sent yet, else an error event and [DONE].
func (p *Proxy) streamFail(w http.ResponseWriter, sse *sseWriter, ue *upstreamError, reqID string) {
	if ue.kind == failCanceled {
		p.log.Debug("client went away", "request_id", reqID)
		return
	}
	p.log.Warn("generation stream failed", "request_id", reqID, "kind", ue.kind, "error", ue.Error())
	if !sse.started {
		w.Header().Del("Trailer")
		p.writeError(w, ue.client)
		return
	}
	sse.errorEvent(ue.client)
	sse.done()
}

var (
	dataPrefix  = []byte("data:")
	doneData    = []byte("[DONE]")
	errorPrefix = []byte(`{"error"`)
)

// relay copies a generation stream's events to the client, trimming its
// start where the first token was sent already. relayed reports whether
// anything of this stream reached the client; err is nil when the stream
// ended with [DONE].
func (p *Proxy) relay(ctx context.Context, sse *sseWriter, c call, st *streamState, body io.Reader) (relayed bool, err error) {
	br := bufio.NewReaderSize(body, 32<<10)
	for {
		line, err := readLine(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			switch {
			case errors.Is(ctx.Err(), context.Canceled):
				return relayed, &upstreamError{kind: failCanceled, err: ctx.Err(),
					client: api.NewError(499, api.TypeInvalidRequest, "", "The client closed the request.")}
			case ctx.Err() != nil:
				return relayed, &upstreamError{kind: failTimeout, err: ctx.Err(),
					client: api.NewError(http.StatusGatewayTimeout, api.TypeServer, "",
						fmt.Sprintf("The generation did not end within request_timeout (%d s).", p.cfg.RequestTimeout))}
			}
			return relayed, &upstreamError{kind: failStream, retry: !relayed, down: !relayed, err: err,
				client: api.NewError(http.StatusBadGateway, api.TypeServer, "",
					"The generation server's stream ended before [DONE].")}
		}
		data, ok := bytes.CutPrefix(line, dataPrefix)
		if !ok {
			continue // blank separators, comments, other fields
		}
		data = bytes.TrimSpace(data)
		if bytes.Equal(data, doneData) {
			sse.done()
			return relayed, sse.err
		}
		if bytes.HasPrefix(data, errorPrefix) {
			// The worker's own error event: pass it on; [DONE] follows.
			sse.event(data, false)
			relayed = true
			continue
		}
		out, drop, err := c.fixChunk(data, st)
		if err != nil {
			return relayed, &upstreamError{kind: failBadReply, err: err,
				client: api.NewError(http.StatusBadGateway, api.TypeServer, "",
					fmt.Sprintf("The generation server sent an event the proxy cannot read: %v.", err))}
		}
		if drop {
			continue
		}
		sse.event(out, true)
		relayed = true
		if sse.err != nil {
			return relayed, sse.err
		}
	}
}

// readLine reads one line of any length, without its end of line.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		rest, err2 := br.ReadBytes('\n')
		line = append(append([]byte(nil), line...), rest...)
		err = err2
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// sseWriter writes server-sent events to the client; after a write error
// it writes nothing more and err says why.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	p       *Proxy
	start   time.Time
	last    time.Time
	started bool
	tokens  int
	err     error
	buf     []byte
}

func newSSE(w http.ResponseWriter, p *Proxy, start time.Time) *sseWriter {
	return &sseWriter{w: w, rc: http.NewResponseController(w), p: p, start: start}
}

func (e *sseWriter) begin() {
	if e.started {
		return
	}
	e.started = true
	h := e.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	e.w.WriteHeader(http.StatusOK)
}

// event writes one data event; token marks chunks that count for TTFT and
// inter-token latency.
func (e *sseWriter) event(data []byte, token bool) {
	e.raw(data)
	if !token || e.err != nil {
		return
	}
	now := time.Now()
	if e.tokens == 0 {
		e.p.metrics.ttft.Observe(now.Sub(e.start).Seconds())
	} else {
		e.p.metrics.itl.Observe(now.Sub(e.last).Seconds())
	}
	e.tokens++
	e.last = now
}

// errorEvent writes an OpenAI error object as an event.
func (e *sseWriter) errorEvent(ae *api.Error) {
	body, err := json.Marshal(api.ErrorResponse{Error: ae})
	if err != nil {
		e.err = err
		return
	}
	e.raw(body)
}

// done writes the final [DONE] event.
func (e *sseWriter) done() { e.raw(doneData) }

func (e *sseWriter) raw(data []byte) {
	if e.err != nil {
		return
	}
	e.begin()
	e.buf = append(e.buf[:0], "data: "...)
	e.buf = append(e.buf, data...)
	e.buf = append(e.buf, "\n\n"...)
	if _, err := e.w.Write(e.buf); err != nil {
		e.err = err
		return
	}
	if err := e.rc.Flush(); err != nil {
		e.err = err
	}
}

// ms formats a duration in milliseconds with microsecond precision.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 3, 64)
}

// kvReport passes the generation worker's KV transfer report on to the
// client and into the proxy's metrics.
func (p *Proxy) kvReport(dst, src http.Header) {
	for _, h := range []string{api.HeaderKVBytes, api.HeaderKVTransferMs} {
		if v := src.Get(h); v != "" {
			dst.Set(h, v)
		}
	}
	if b, err := strconv.ParseInt(src.Get(api.HeaderKVBytes), 10, 64); err == nil && b >= 0 {
		p.metrics.kvBytes.Add(float64(b))
	}
	if ms, err := strconv.ParseFloat(src.Get(api.HeaderKVTransferMs), 64); err == nil && ms >= 0 {
		p.metrics.kvSeconds.Observe(ms / 1000)
	}
}
