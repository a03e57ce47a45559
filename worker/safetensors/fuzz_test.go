package safetensors

import "testing"

func FuzzParse(f *testing.F) {
	f.Add(build(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, le32(1, 2)))
	f.Add(build(`{"__metadata__":{"a":"b"},"w":{"dtype":"F16","shape":[1,2],"data_offsets":[0,4]}}`, le16(1, 2)))
	f.Add(build(`{"w":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}}`, le16(0x3f80)))
	f.Add(build(`{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, le32(1, 2)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		sf, err := Parse(data)
		if err != nil {
			return
		}
		for _, name := range sf.Names() {
			tn, err := sf.Tensor(name)
			if err != nil {
				t.Fatalf("listed tensor %q: %v", name, err)
			}
			if got := tn.NumElements() * tn.DType.Size(); got != len(tn.Data) {
				t.Fatalf("tensor %q: %d bytes for %d elements of %s", name, len(tn.Data), tn.NumElements(), tn.DType)
			}
			if tn.DType.Float() {
				if _, err := tn.Float32(); err != nil {
					t.Fatalf("tensor %q: %v", name, err)
				}
			}
		}
		if err := sf.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
