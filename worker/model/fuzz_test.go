package model

import "testing"

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":12,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":64,"eos_token_id":[1,2]}`))
	f.Add([]byte(`{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":12,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":64,"rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,"original_max_position_embeddings":8}}`))
	f.Add([]byte(`{"architectures":["LlamaForCausalLM"],"num_key_value_heads":0}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if c.HeadDim <= 0 || c.NumKVHeads <= 0 || c.NumHeads%c.NumKVHeads != 0 {
			t.Fatalf("accepted inconsistent config %+v", c)
		}
		if n := len(c.InvFreq()); n != c.HeadDim/2 {
			t.Fatalf("InvFreq has %d values, want %d", n, c.HeadDim/2)
		}
	})
}
