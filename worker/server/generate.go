package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"disagg/api"
	"disagg/worker/engine"
	"disagg/worker/sampling"
)

// job is one OpenAI request turned into engine sequences, one per prompt and
// choice (choice index = prompt index * n + j, as OpenAI orders them).
type job struct {
	id       string
	start    time.Time
	prompts  [][]int32
	n        int
	base     engine.Request // Prompt and Sampling.Seed are set per sequence
	stops    []string
	skip     bool // skip special tokens when detokenizing
	logprobs bool // report logprobs
	// resume is the KV a generation_only request brought (one sequence);
	// the job owns its blocks until the engine accepts them.
	resume *engine.Resume
}

// tokenInfo is one generated token, for logprobs.
type tokenInfo struct {
	id      int32
	logprob float32
	top     []sampling.TokenLogprob
	offset  int   // characters of the choice's text before this token
	prev    int32 // the token before it (the prompt's last for the first)
}

// event is news of one sequence: new text and tokens, and on the last
// event, the finish reason or the error.
type event struct {
	choice int
	text   string
	tokens []tokenInfo
	finish string // set on the sequence's last event
	err    error  // the engine failed (finish is FinishAbort)
	count  int    // tokens generated so far, on the last event
}

// run submits every sequence of j and returns the channel of their events,
// closed when all have ended, and the function that cancels them all. If a
// submit fails, the ones already submitted are cancelled and the error
// returned.
func (s *Server) run(ctx context.Context, j *job) (<-chan event, context.CancelFunc, *api.Error) {
	ctx, cancel := context.WithCancel(ctx)
	type started struct {
		ch     <-chan engine.Output
		cancel context.CancelFunc
	}
	seqs := make([]started, 0, len(j.prompts)*j.n)
	for p, prompt := range j.prompts {
		for c := 0; c < j.n; c++ {
			r := j.base
			r.Prompt = prompt
			r.ID = j.id
			if len(j.prompts)*j.n > 1 {
				r.ID = fmt.Sprintf("%s-%d", j.id, p*j.n+c)
			}
			if r.Sampling.HasSeed {
				r.Sampling.Seed += int64(c)
			}
			r.Resume = j.resume
			sctx, scancel := context.WithCancel(ctx)
			ch, err := s.deps.Generator.Submit(sctx, &r)
			if err != nil {
				if j.resume != nil && s.deps.Disagg != nil {
					s.deps.Disagg.Free(j.resume.Blocks)
				}
				scancel()
				cancel()
				for _, st := range seqs {
					go drain(st.ch)
				}
				return nil, nil, classify(err)
			}
			s.metrics.promptToks.Add(float64(len(prompt)))
			seqs = append(seqs, started{ch, scancel})
		}
	}
	events := make(chan event, len(seqs))
	var wg sync.WaitGroup
	for i, st := range seqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.cancel()
			s.follow(ctx, j, i, st.ch, st.cancel, events)
		}()
	}
	go func() {
		wg.Wait()
		close(events)
	}()
	return events, cancel, nil
}

// drain empties an abandoned output channel so the engine never blocks on it.
func drain(ch <-chan engine.Output) {
	for range ch {
	}
}

// follow turns one sequence's outputs into events on out. cancelSeq aborts
// the sequence (after a stop string). Sends give up once ctx is done.
func (s *Server) follow(ctx context.Context, j *job, choice int, ch <-chan engine.Output, cancelSeq context.CancelFunc, out chan<- event) {
	prompt := j.prompts[choice/j.n]
	prev := prompt[len(prompt)-1]
	send := func(ev event) bool {
		ev.choice = choice
		select {
		case out <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic while following a sequence", "request", j.id, "panic", v)
			cancelSeq()
			go drain(ch)
			send(event{finish: api.FinishAbort, err: fmt.Errorf("internal error: %v", v)})
		}
	}()
	dec := s.deps.NewStreamDecoder(j.skip)
	stop := newStopMatcher(j.stops)
	count, chars := 0, 0
	last := j.start
	for o := range ch {
		var ev event
		if o.HasToken {
			now := time.Now()
			if count == 0 {
				s.metrics.ttft.Observe(now.Sub(j.start).Seconds())
			} else {
				s.metrics.itl.Observe(now.Sub(last).Seconds())
			}
			last = now
			count++
			s.metrics.genToks.Inc()
			piece, err := dec.Add(o.Token)
			if err != nil {
				cancelSeq()
				go drain(ch)
				send(event{finish: api.FinishAbort, err: fmt.Errorf("detokenizing: %w", err), count: count})
				return
			}
			if j.logprobs {
				ev.tokens = []tokenInfo{{id: o.Token, logprob: o.Logprob, top: o.Top, offset: chars, prev: prev}}
			}
			prev = o.Token
			chars += utf8.RuneCountInString(piece)
			text, stopped := stop.push(piece)
			ev.text = text
			if stopped {
				cancelSeq()
				go drain(ch)
				ev.finish, ev.count = api.FinishStop, count
				s.metrics.e2e.Observe(time.Since(j.start).Seconds())
				send(ev)
				return
			}
		}
		if o.Finish != engine.FinishNone {
			text, stopped := stop.push(dec.Flush())
			ev.text += text
			if !stopped {
				ev.text += stop.flush()
			}
			ev.count = count
			switch {
			case stopped:
				ev.finish = api.FinishStop
			case o.Finish == engine.FinishAbort:
				ev.finish = api.FinishAbort
				ev.err = o.Err
				if ev.err == nil {
					ev.err = errors.New("the sequence was aborted")
				}
			default:
				ev.finish = string(o.Finish)
			}
			s.metrics.e2e.Observe(time.Since(j.start).Seconds())
			send(ev)
			go drain(ch)
			return
		}
		if ev.text != "" || len(ev.tokens) > 0 {
			if !send(ev) {
				cancelSeq()
				go drain(ch)
				return
			}
		}
	}
	// The channel closed without a finishing output.
	send(event{finish: api.FinishAbort, err: errors.New("the engine ended the sequence without finishing it"), count: count})
}
