package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"disagg/api"
)

// maxReplyBytes bounds a worker's non-streamed answer.
const maxReplyBytes = 64 << 20

// Kinds of upstream failure, the "kind" label of the errors metric.
const (
	failConnect  = "connect"
	failStatus5  = "status_5xx"
	failStatus4  = "status_4xx"
	failTimeout  = "timeout"
	failCanceled = "canceled"
	failBadReply = "bad_reply"
	failStream   = "stream"
	failHandoff  = "kv_handoff"
)

// upstreamError is a failed call to a worker, with what to do about it.
type upstreamError struct {
	kind string
	// retry: another server of the role may succeed.
	retry bool
	// down: the server looks dead; mark it down.
	down bool
	// handoff: a generation server could not get the context server's KV;
	// the generation server is fine, the prefill must run again.
	handoff bool
	// client is what the client is told when no retry helps.
	client *api.Error
	err    error
}

func (e *upstreamError) Error() string {
	if e.err != nil {
		return e.kind + ": " + e.err.Error()
	}
	return e.kind + ": " + e.client.Message
}

func (e *upstreamError) Unwrap() error { return e.err }

// newHTTPClient is the client for worker calls: pooled keep-alive
// connections, a dial timeout, and no overall timeout (each call's context
// carries its deadline, which must also cover a stream).
func newHTTPClient(connectTimeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}}
}

// post sends body to server s at path and returns the response when it is
// a 200; every other outcome is an upstreamError. The caller closes the
// body.
func (p *Proxy) post(ctx context.Context, s *Server, path string, body []byte, reqID string) (*http.Response, *upstreamError) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+path, bytes.NewReader(body))
	if err != nil {
		return nil, &upstreamError{kind: failConnect, client: api.Internal("Could not build the upstream request."), err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", reqID)
	if p.workerKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.workerKey)
	}
	if s.calls != nil {
		s.calls.Inc()
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, p.transportError(ctx, s, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	data, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if rerr != nil {
		return nil, p.transportError(ctx, s, rerr)
	}
	var er api.ErrorResponse
	if json.Unmarshal(data, &er) != nil || er.Error == nil || er.Error.Message == "" {
		er.Error = api.NewError(resp.StatusCode, api.TypeServer, "", fmt.Sprintf("%s server answered %d %s.",
			s.Role, resp.StatusCode, http.StatusText(resp.StatusCode)))
	}
	er.Error.Status = resp.StatusCode
	switch {
	case er.Error.Code != nil && *er.Error.Code == api.CodeKVTransferFailed:
		ue := &upstreamError{kind: failHandoff, handoff: true, err: fmt.Errorf("status %d: %s", resp.StatusCode, er.Error.Message)}
		ue.client = api.NewError(http.StatusBadGateway, api.TypeServer, "",
			fmt.Sprintf("The KV handoff to the %s server failed: %s", s.Role, er.Error.Message))
		return nil, p.count(s, ue)
	case resp.StatusCode >= 500:
		ue := &upstreamError{kind: failStatus5, retry: true, down: true, err: fmt.Errorf("status %d: %s", resp.StatusCode, er.Error.Message)}
		ue.client = api.NewError(http.StatusBadGateway, api.TypeServer, "",
			fmt.Sprintf("The %s server failed: %s", s.Role, er.Error.Message))
		return nil, p.count(s, ue)
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, p.count(s, &upstreamError{kind: failStatus4, retry: true, client: er.Error, err: errors.New("status 429")})
	}
	// A 4xx is about the request: the client gets it as the worker said it.
	return nil, p.count(s, &upstreamError{kind: failStatus4, client: er.Error, err: fmt.Errorf("status %d", resp.StatusCode)})
}

// transportError classifies a failed round trip or body read.
func (p *Proxy) transportError(ctx context.Context, s *Server, err error) *upstreamError {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return &upstreamError{kind: failCanceled, client: api.NewError(499, api.TypeInvalidRequest, "", "The client closed the request."), err: err}
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return p.count(s, &upstreamError{kind: failTimeout, err: err,
			client: api.NewError(http.StatusGatewayTimeout, api.TypeServer, "",
				fmt.Sprintf("The %s server did not answer within request_timeout (%d s).", s.Role, p.cfg.RequestTimeout))})
	}
	return p.count(s, &upstreamError{kind: failConnect, retry: true, down: true, err: err,
		client: api.NewError(http.StatusBadGateway, api.TypeServer, "",
			fmt.Sprintf("Could not reach %s %s server.", article(s.Role), s.Role))})
}

// count records a failure in the metrics and returns it.
func (p *Proxy) count(s *Server, e *upstreamError) *upstreamError {
	p.metrics.upstreamErrs.WithLabelValues(s.Role, s.URL, e.kind).Inc()
	return e
}

// readReply reads a non-streamed 200 answer.
func (p *Proxy) readReply(ctx context.Context, s *Server, resp *http.Response) ([]byte, *upstreamError) {
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes+1))
	if err != nil {
		return nil, p.transportError(ctx, s, err)
	}
	if len(data) > maxReplyBytes {
		return nil, p.badReply(s, fmt.Errorf("reply larger than %d bytes", maxReplyBytes))
	}
	return data, nil
}

// badReply is a 200 answer the proxy cannot use.
func (p *Proxy) badReply(s *Server, err error) *upstreamError {
	return p.count(s, &upstreamError{kind: failBadReply, err: err,
		client: api.NewError(http.StatusBadGateway, api.TypeServer, "",
			fmt.Sprintf("The %s server sent an answer the proxy cannot use: %v.", s.Role, err))})
}

// callResult is a successful call: the server, its response and how long
// it took to answer.
type callResult struct {
	server  *Server
	resp    *http.Response
	release func()
	elapsed time.Duration
}

// callWithRetry posts body to a server of pl, retrying on other servers
// (at most max_retries times) when a call fails in a way another server
// may not. tried lists the servers this request already used (a retry
// budget shared by the calls of one phase). The caller must release the result and close its body.
func (p *Proxy) callWithRetry(ctx context.Context, pl *pool, info *routeInfo, path string, body []byte, reqID string, tried []*Server) (*callResult, []*Server, *upstreamError) {
	var last *upstreamError
	for len(tried) <= p.cfg.MaxRetries {
		s, release := pl.acquire(info, tried)
		if s == nil {
			break
		}
		tried = append(tried, s)
		if len(tried) > 1 {
			p.metrics.retries.WithLabelValues(pl.role).Inc()
			p.log.Info("retrying on another server", "role", pl.role, "server", s.URL, "request_id", reqID)
		}
		t0 := time.Now()
		resp, ue := p.post(ctx, s, path, body, reqID)
		if ue == nil {
			pl.setUp(s, true, "")
			return &callResult{server: s, resp: resp, release: release, elapsed: time.Since(t0)}, tried, nil
		}
		release()
		if ue.down {
			pl.setUp(s, false, ue.Error())
		}
		last = ue
		if !ue.retry {
			return nil, tried, ue
		}
	}
	if last == nil {
		return nil, tried, &upstreamError{kind: failConnect, client: api.Unavailable("No %s server is available.", pl.role)}
	}
	return nil, tried, last
}
