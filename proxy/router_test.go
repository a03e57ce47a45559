package proxy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"disagg/api"
)

func servers(n int, active ...int64) []*Server {
	out := make([]*Server, n)
	for i := range out {
		out[i] = &Server{URL: string(rune('a' + i))}
		if i < len(active) {
			out[i].active.Store(active[i])
		}
	}
	return out
}

func names(picks []*Server) string {
	var b strings.Builder
	for _, s := range picks {
		b.WriteString(s.URL)
	}
	return b.String()
}

func TestRoundRobin(t *testing.T) {
	r := &RoundRobin{}
	s := servers(3)
	var picks []*Server
	for range 7 {
		picks = append(picks, r.Pick(s, &routeInfo{}))
	}
	if got := names(picks); got != "abcabca" {
		t.Errorf("picks %q", got)
	}
}

func TestLoadBalancing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		active    []int64
		tokens    []int64
		useTokens bool
		want      string
	}{
		{"fewest requests", []int64{3, 1, 2}, nil, false, "b"},
		{"fewest tokens", []int64{0, 5, 5}, []int64{900, 10, 50}, true, "b"},
		{"requests ignore tokens", []int64{2, 1, 3}, []int64{0, 900, 0}, false, "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := servers(len(tc.active), tc.active...)
			for i, n := range tc.tokens {
				s[i].tokens.Store(n)
			}
			r := &LoadBalancing{UseTokens: tc.useTokens}
			for range 3 {
				if got := r.Pick(s, &routeInfo{}).URL; got != tc.want {
					t.Errorf("picked %q, want %q", got, tc.want)
				}
			}
		})
	}
	// Ties spread.
	r := &LoadBalancing{}
	s := servers(2)
	seen := map[string]bool{}
	for range 4 {
		seen[r.Pick(s, &routeInfo{}).URL] = true
	}
	if len(seen) != 2 {
		t.Errorf("ties went to %v", seen)
	}
}

func TestPrefixAware(t *testing.T) {
	long := strings.Repeat("You are a helpful assistant. ", 20) // 580 bytes: several 128-byte blocks
	tokens := make([]int32, 100)
	for i := range tokens {
		tokens[i] = int32(i)
	}
	type step struct {
		info   routeInfo
		active []int64 // load before the pick
		want   string
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"sticky text prefix", []step{
			{routeInfo{textKey: long + "Q1"}, []int64{0, 0, 0}, "b"},
			{routeInfo{textKey: long + "Q2"}, []int64{0, 0, 0}, "b"},
			{routeInfo{textKey: long + "Q3"}, []int64{0, 1, 0}, "b"},
		}},
		{"new prefix spreads", []step{
			{routeInfo{textKey: "alpha"}, []int64{0, 0, 0}, "b"},
			{routeInfo{textKey: "beta"}, []int64{0, 0, 0}, "c"},
		}},
		{"load beats a shared prefix", []step{
			{routeInfo{textKey: long + "Q1"}, []int64{0, 0, 0}, "b"},
			{routeInfo{textKey: long + "Q2"}, []int64{0, 64, 0}, "c"},
		}},
		{"token prefix", []step{
			{routeInfo{tokenKey: tokens[:70]}, []int64{0, 0, 0}, "b"},
			{routeInfo{tokenKey: tokens[:99]}, []int64{0, 0, 0}, "b"},
			{routeInfo{tokenKey: append([]int32{7}, tokens[1:99]...)}, []int64{0, 0, 0}, "a"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewPrefixAware(32, 64, 1000)
			s := servers(3)
			var got, want []string
			for _, st := range tc.steps {
				for i, a := range st.active {
					s[i].active.Store(a)
				}
				got = append(got, r.Pick(s, &st.info).URL)
				want = append(want, st.want)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("picks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPrefixAwareBounded(t *testing.T) {
	r := NewPrefixAware(1, 64, 10)
	s := servers(2)
	for i := range 100 {
		r.Pick(s, &routeInfo{tokenKey: []int32{int32(i), 1, 2}})
	}
	if n := len(r.cur) + len(r.old); n > 10 {
		t.Errorf("table holds %d entries, limit 10", n)
	}
}

func TestPoolAcquire(t *testing.T) {
	p := &pool{role: RoleContext, router: &RoundRobin{}, servers: servers(3)}
	p.servers[0].up.Store(true)
	p.servers[2].up.Store(true)
	s, release := p.acquire(&routeInfo{tokens: 10}, []*Server{p.servers[0]})
	if s != p.servers[2] || s.Active() != 1 || s.tokens.Load() != 10 {
		t.Fatalf("picked %v", s.URL)
	}
	release()
	if s.Active() != 0 || s.tokens.Load() != 0 {
		t.Errorf("release left %d/%d", s.Active(), s.tokens.Load())
	}
	// All up ones excluded: try a down one rather than none.
	s, release = p.acquire(&routeInfo{}, []*Server{p.servers[0], p.servers[2]})
	if s != p.servers[1] {
		t.Fatalf("picked %v", s)
	}
	release()
	if s, _ := p.acquire(&routeInfo{}, p.servers); s != nil {
		t.Errorf("picked %v with every server excluded", s.URL)
	}
}

// TestFixChunk covers the trimming of a generation stream that repeats the
// first token already sent, the id and usage fixes, and the fast path.
func TestFixChunk(t *testing.T) {
	str := func(s string) *string { return &s }
	chat := func(id, role string, content *string, finish *string, usage *api.Usage) []byte {
		b, err := json.Marshal(api.ChatCompletionChunk{ID: id, Object: api.ObjectChatChunk, Model: "m",
			Choices: []api.ChatChunkChoice{{Delta: api.ChatDelta{Role: role, Content: content}, FinishReason: finish}}, Usage: usage})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	type out struct {
		Drop    bool
		Content string
		Role    string
		ID      string
		Prompt  int
	}
	decode := func(b []byte, drop bool) out {
		if drop {
			return out{Drop: true}
		}
		var ch api.ChatCompletionChunk
		if err := json.Unmarshal(b, &ch); err != nil {
			t.Fatal(err)
		}
		o := out{ID: ch.ID}
		if len(ch.Choices) > 0 {
			o.Role = ch.Choices[0].Delta.Role
			if ch.Choices[0].Delta.Content != nil {
				o.Content = *ch.Choices[0].Delta.Content
			}
		}
		if ch.Usage != nil {
			o.Prompt = ch.Usage.PromptTokens
		}
		return o
	}
	c := &chatCall{}
	st := &streamState{skip: "Hello", skipRole: true, promptTokens: 7}
	if err := st.setID("X"); err != nil {
		t.Fatal(err)
	}
	var got []out
	for _, in := range [][]byte{
		chat("X", "assistant", str(""), nil, nil), // role chunk: dropped
		chat("X", "", str("Hel"), nil, nil),       // part of the first token: dropped
		chat("X", "", str("lo wor"), nil, nil),    // rest of it, then new text
		chat("Y", "", str("ld"), nil, nil),        // another id: rewritten
		chat("X", "", nil, str("stop"), nil),      // fast path
		chat("X", "", nil, nil, &api.Usage{CompletionTokens: 3}),
	} {
		b, drop, err := c.fixChunk(in, st)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, decode(b, drop))
	}
	want := []out{{Drop: true}, {Drop: true}, {Content: " wor", ID: "X"}, {Content: "ld", ID: "X"}, {ID: "X"}, {ID: "X", Prompt: 7}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	// A stream that does not repeat the first token keeps its text after
	// the common prefix, and says so.
	st = &streamState{skip: "Hello"}
	if text := st.trim("Help"); text != "p" || !st.mismatch || st.skipping() {
		t.Errorf("trim %q %+v", text, st)
	}

	// Completions: the fast path returns the same bytes.
	cc := &completionCall{}
	in := []byte(`{"id":"X","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"a","logprobs":null,"finish_reason":null}]}`)
	st = &streamState{}
	if err := st.setID("X"); err != nil {
		t.Fatal(err)
	}
	b, drop, err := cc.fixChunk(in, st)
	if err != nil || drop || string(b) != string(in) {
		t.Errorf("fast path: %s %v %v", b, drop, err)
	}
}

func TestFinished(t *testing.T) {
	p := &api.DisaggregatedParams{FirstGenTokens: []int32{1}}
	for _, tc := range []struct {
		finish string
		max    int
		want   bool
	}{
		{api.FinishStop, 10, true},
		{api.FinishLength, 1, true},
		{api.FinishLength, 2, false},
		{api.FinishLength, 0, false},
		{"", 1, true},
		{"", 2, false},
		{"not_finished", 5, false},
	} {
		if got := finished(&ctxResult{finish: tc.finish, params: p}, tc.max); got != tc.want {
			t.Errorf("finished(%q, max %d) = %v", tc.finish, tc.max, got)
		}
	}
}
