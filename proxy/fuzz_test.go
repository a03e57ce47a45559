package proxy

import (
	"testing"
)

// FuzzRequestAndReplies feeds arbitrary bytes to every decoder the proxy
// runs on input it does not control: client bodies, context replies and
// generation stream events. None may panic.
func FuzzRequestAndReplies(f *testing.F) {
	f.Add([]byte(`{"prompt":"hi","max_tokens":3,"stream":true}`))
	f.Add([]byte(`{"messages":[{"role":"user","content":"hi"}],"n":1}`))
	f.Add([]byte(`{"id":"x","choices":[{"text":"a","finish_reason":"length","disaggregated_params":{"first_gen_tokens":[1]}}],"prompt_token_ids":[1,2]}`))
	f.Add([]byte(`{"id":"x","choices":[{"delta":{"role":"assistant","content":"Hel"}}],"usage":{"prompt_tokens":0}}`))
	f.Add([]byte(`{"choices":[{"message":{"content":"a"}}],"prompt_token_ids":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range []call{&completionCall{}, &chatCall{}} {
			if cc, e := newCompletionCall(data); e == nil {
				c = cc
			} else if ch, e := newChatCall(data); e == nil {
				c = ch
			}
			if _, err := c.contextBody(1); err != nil {
				t.Fatal(err)
			}
			res, err := c.parseContext(data)
			if err == nil {
				finished(res, c.maxTokens())
				if checkContext(res) == nil {
					if _, err := c.generationBody(res, 1); err != nil {
						t.Fatal(err)
					}
				}
				_, _ = c.contextChunks(res, true)
				_, _ = c.fromContext(data, res)
				_, _ = c.fixReply(data, res)
			}
			st := &streamState{skip: "He", skipRole: true, promptTokens: 3}
			_ = st.setID("x")
			_, _, _ = c.fixChunk(data, st)
		}
	})
}
