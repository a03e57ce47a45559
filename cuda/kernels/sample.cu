// sample.cu: sampling on the device (sample.h). One thread block per row
// turns the row's logits into one token id, with the semantics of Go's
// sampling.SampleRow: NaN logits are -inf and +inf the largest float;
// temperature below 1e-5 is the argmax (lowest id on ties); otherwise the
// unnormalised probabilities p = exp((l - max) / T) (the most likely is 1,
// those that underflow to 0 are out) go through top-k, then top-p over what
// top-k kept, then min-p, and one draw u = uniform(seed, step) picks the
// token whose cumulative probability, in id order, first exceeds u * total.
//
// Top-k and top-p find their cut with a radix select over the bits of p
// (a non-negative float, so its bits order like it): four passes of a
// 256-bin histogram of counts (top-k) or of probability mass (top-p). Ties
// at the cut keep the lowest ids, as the host does.

#include <cuda_runtime.h>

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sample.h"
#include "dcu_status.h"

namespace {

constexpr int ST = 1024;     // threads per row
constexpr int NW = ST / 32;  // warps per row (32: one warp scans the warps' totals)
static_assert(NW == 32, "the block scans assume 32 warps");




// The counter-based draw: splitmix64's finalizer over (seed, step), the
// same function as Go's sampling.Uniform.
__host__ __device__ inline uint64_t fmix64(uint64_t x) {
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

__host__ __device__ inline double uniform01(uint64_t seed, uint64_t step) {
	uint64_t x = fmix64(fmix64(seed ^ 0x5851f42d4c957f2dULL) + (step + 1) * 0x9e3779b97f4a7c15ULL);
	return (double)(x >> 11) * (1.0 / 9007199254740992.0); // 2^-53
}

__device__ inline float clean(float v) {
	if (v != v) return -INFINITY;
	if (v > FLT_MAX) return FLT_MAX;
	return v;
}

struct Scratch {
	double dred[NW];
	int ired[NW];
	double dhist[256];
	int ihist[256];
	float best[NW];
	int besti[NW];
	int bi[2];
	unsigned bu[2];
	double bd[2];
};

template <typename T> __device__ inline T warp_sum(T v) {
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

// Sum over the block, returned to every thread.
template <typename T> __device__ T block_sum(T v, T *red) {
	v = warp_sum(v);
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	__syncthreads();
	if (lane == 0) red[w] = v;
	__syncthreads();
	if (w == 0) {
		T t = warp_sum(red[lane]);
		if (lane == 0) red[0] = t;
	}
	__syncthreads();
	return red[0];
}

// Exclusive prefix sum over the threads in order; *total gets the sum.
template <typename T> __device__ T block_exscan(T v, T *red, T *total) {
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	T x = v;
	for (int o = 1; o < 32; o <<= 1) {
		T y = __shfl_up_sync(0xffffffffu, x, o);
		if (lane >= o) x += y;
	}
	__syncthreads();
	if (lane == 31) red[w] = x;
	__syncthreads();
	if (w == 0) {
		T s = red[lane];
		for (int o = 1; o < 32; o <<= 1) {
			T y = __shfl_up_sync(0xffffffffu, s, o);
			if (lane >= o) s += y;
		}
		red[lane] = s;
	}
	__syncthreads();
	T before = (w > 0 ? red[w - 1] : T(0)) + x - v;
	*total = red[NW - 1];
	__syncthreads();
	return before;
}

// A cut keeps the keys above x, and those equal to x up to index last.
struct Cut {
	unsigned x;
	int last;
};

__device__ inline bool keeps(const Cut &c, unsigned k, int i) { return k > c.x || (k == c.x && i <= c.last); }

// The index of the n-th (from 1) element, in id order, for which pred
// holds; -1 if there are fewer. Each thread takes a contiguous chunk.
template <class Pred> __device__ int nth_index(int V, int n, Pred pred, Scratch &s) {
	int C = (V + ST - 1) / ST;
	int lo = min((int)threadIdx.x * C, V), hi = min(lo + C, V);
	int c = 0;
	for (int i = lo; i < hi; i++) c += pred(i) ? 1 : 0;
	int total;
	int before = block_exscan<int>(c, s.ired, &total);
	if (threadIdx.x == 0) s.bi[0] = -1;
	__syncthreads();
	if (before < n && n <= before + c) {
		int cnt = before;
		for (int i = lo; i < hi; i++)
			if (pred(i) && ++cnt == n) {
				s.bi[0] = i;
				break;
			}
	}
	__syncthreads();
	int r = s.bi[0];
	__syncthreads();
	return r;
}

__global__ void __launch_bounds__(ST) sample_kernel(const float *__restrict__ logits, int V, int shared_row,
                                                    const dcu_sample_params *__restrict__ params,
                                                    int32_t *__restrict__ ids, int32_t *__restrict__ out) {
	__shared__ Scratch s;
	const int r = blockIdx.x, tid = threadIdx.x;
	const float *row = logits + (shared_row ? 0 : (size_t)r * V);
	const dcu_sample_params p = params[r];

	// The argmax, lowest index on ties; -inf is never chosen.
	float best = -INFINITY;
	int bi = 0x7fffffff;
	for (int i = tid; i < V; i += ST) {
		float v = clean(row[i]);
		if (v > best) { best = v; bi = i; } // strided: a thread sees increasing i
	}
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(0xffffffffu, best, o);
		int oi = __shfl_xor_sync(0xffffffffu, bi, o);
		if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
	}
	if ((tid & 31) == 0) { s.best[tid >> 5] = best; s.besti[tid >> 5] = bi; }
	__syncthreads();
	if (tid < 32) {
		best = s.best[tid];
		bi = s.besti[tid];
		for (int o = 16; o > 0; o >>= 1) {
			float ov = __shfl_xor_sync(0xffffffffu, best, o);
			int oi = __shfl_xor_sync(0xffffffffu, bi, o);
			if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
		}
		if (tid == 0) { s.best[0] = best; s.besti[0] = bi; }
	}
	__syncthreads();
	best = s.best[0];
	bi = s.besti[0];
	if (best == -INFINITY || bi >= V) { // nothing to sample
		if (tid == 0) { ids[r] = 0; out[r] = -1; }
		return;
	}
	if (!(p.temperature >= 1e-5f)) {
		if (tid == 0) { ids[r] = bi; out[r] = bi; }
		return;
	}

	const float m = best, invT = 1.f / p.temperature;
	auto key = [&](int i) -> unsigned {
		float l = clean(row[i]);
		if (l == -INFINITY) return 0u;
		return __float_as_uint(expf((l - m) * invT));
	};

	Cut ck{0u, -1}, cp{0u, -1}; // off: every p > 0

	// Top-k over the candidates (p > 0).
	if (p.top_k > 0) {
		int n = 0;
		for (int i = tid; i < V; i += ST) n += key(i) > 0u ? 1 : 0;
		n = block_sum<int>(n, s.ired);
		if (p.top_k < n) {
			unsigned prefix = 0, mask = 0;
			int kk = p.top_k;
			for (int shift = 24; shift >= 0; shift -= 8) {
				for (int b = tid; b < 256; b += ST) s.ihist[b] = 0;
				__syncthreads();
				for (int i = tid; i < V; i += ST) {
					unsigned k = key(i);
					if (k > 0u && (k & mask) == prefix) atomicAdd(&s.ihist[(k >> shift) & 255u], 1);
				}
				__syncthreads();
				if (tid == 0) {
					int above = 0, d = 255;
					for (; d > 0; d--) {
						if (above + s.ihist[d] >= kk) break;
						above += s.ihist[d];
					}
					s.bu[0] = (unsigned)d;
					s.bi[1] = kk - above;
				}
				__syncthreads();
				prefix |= s.bu[0] << shift;
				mask |= 255u << shift;
				kk = s.bi[1];
				__syncthreads();
			}
			ck.x = prefix;
			unsigned x = prefix;
			ck.last = nth_index(V, kk, [&](int i) { return key(i) == x; }, s);
		}
	}

	// Top-p over what top-k kept.
	if (p.top_p < 1.f) {
		double tot = 0;
		for (int i = tid; i < V; i += ST) {
			unsigned k = key(i);
			if (keeps(ck, k, i)) tot += (double)__uint_as_float(k);
		}
		tot = block_sum<double>(tot, s.dred);
		double tgt = (double)p.top_p * tot;
		unsigned prefix = 0, mask = 0;
		for (int shift = 24; shift >= 0; shift -= 8) {
			for (int b = tid; b < 256; b += ST) { s.dhist[b] = 0; s.ihist[b] = 0; }
			__syncthreads();
			for (int i = tid; i < V; i += ST) {
				unsigned k = key(i);
				if (keeps(ck, k, i) && (k & mask) == prefix) {
					unsigned d = (k >> shift) & 255u;
					atomicAdd(&s.dhist[d], (double)__uint_as_float(k));
					atomicAdd(&s.ihist[d], 1);
				}
			}
			__syncthreads();
			if (tid == 0) {
				// The highest digit at which the mass from the top reaches
				// the target; rounding short of it: the lowest non-empty one.
				double above = 0;
				int d = 255, low = -1;
				for (; d >= 0; d--) {
					if (s.ihist[d] == 0) continue;
					low = d;
					if (above + s.dhist[d] >= tgt) break;
					above += s.dhist[d];
				}
				if (d < 0) {
					d = low < 0 ? 0 : low;
					if (low >= 0) above -= s.dhist[low];
				}
				s.bu[0] = (unsigned)d;
				s.bd[0] = tgt - above;
				s.bi[1] = s.ihist[d];
			}
			__syncthreads();
			prefix |= s.bu[0] << shift;
			mask |= 255u << shift;
			tgt = s.bd[0];
			__syncthreads();
		}
		// Among the tokens at the cut (equal p), the lowest ids until the
		// mass reaches the target: at least one.
		unsigned y = prefix;
		int eq = s.bi[1];
		float py = __uint_as_float(y);
		double nd = py > 0.f ? ceil(tgt / (double)py) : (double)eq;
		int need = nd >= (double)eq ? eq : (nd < 1.0 ? 1 : (int)nd);
		cp.x = y;
		cp.last = nth_index(V, need, [&](int i) { unsigned k = key(i); return k == y && keeps(ck, k, i); }, s);
	}

	// Min-p, then the draw, in id order over contiguous chunks.
	const float minp = p.min_p;
	auto kept = [&](int i, unsigned k) {
		return k > 0u && keeps(ck, k, i) && keeps(cp, k, i) && (minp <= 0.f || __uint_as_float(k) >= minp);
	};
	int C = (V + ST - 1) / ST;
	int lo = min(tid * C, V), hi = min(lo + C, V);
	double mine = 0;
	int lastKept = -1;
	for (int i = lo; i < hi; i++) {
		unsigned k = key(i);
		if (kept(i, k)) {
			mine += (double)__uint_as_float(k);
			lastKept = i;
		}
	}
	double total;
	double before = block_exscan<double>(mine, s.dred, &total);
	double target = uniform01(p.seed, p.step) * total;
	if (tid == 0) s.bi[0] = 0x7fffffff;
	__syncthreads();
	if (mine > 0 && before <= target && target < before + mine) {
		double cum = before;
		for (int i = lo; i < hi; i++) {
			unsigned k = key(i);
			if (!kept(i, k)) continue;
			cum += (double)__uint_as_float(k);
			if (target < cum) {
				atomicMin(&s.bi[0], i);
				break;
			}
		}
	}
	// The last kept token, where rounding left the draw past every sum.
	int last = lastKept;
	for (int o = 16; o > 0; o >>= 1) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
	if ((tid & 31) == 0) s.besti[tid >> 5] = last;
	__syncthreads();
	if (tid == 0) {
		int pick = s.bi[0];
		if (pick == 0x7fffffff) {
			pick = -1;
			for (int w = 0; w < NW; w++) pick = max(pick, s.besti[w]);
		}
		if (pick < 0) pick = bi; // cannot happen: the most likely token is always kept
		ids[r] = pick;
		out[r] = pick;
	}
}

} // namespace

struct dcu_sampler {
	dcu_model *m;
	cudaStream_t stream;
	int dcap;                     // rows of d_params, d_out
	dcu_sample_params *d_params;  // the step's parameters on the device
	int32_t *d_out;               // the step's ids for the host (-1: none)
	int hcap[2];                  // rows of each slot's pinned buffers
	dcu_sample_params *h_params[2];
	int32_t *h_ids[2];
	cudaEvent_t ev[2];
	int busy[2];                  // enqueued, not yet waited for
	int rows[2];
	int k;                        // the slot used last
};

extern "C" int dcu_sampler_create(dcu_model *m, dcu_sampler **out, dcu_status *st) {
	if (!m || !out) INVALID("dcu_sampler_create: NULL model or out");
	dcu_sampler *s = (dcu_sampler *)calloc(1, sizeof(dcu_sampler));
	if (!s) INVALID("dcu_sampler_create: out of host memory");
	s->m = m;
	s->stream = (cudaStream_t)dcu_model_stream(m);
	s->k = 1;
	for (int i = 0; i < 2; i++) {
		cudaError_t e = cudaEventCreateWithFlags(&s->ev[i], cudaEventDisableTiming);
		if (e != cudaSuccess) {
			if (i == 1) cudaEventDestroy(s->ev[0]);
			free(s);
			CK(e);
		}
	}
	*out = s;
	return 1;
}

extern "C" int dcu_sample_async(dcu_sampler *s, const dcu_sample_params *p, int rows, int *slot, dcu_status *st) {
	if (!s || !slot || rows < 0 || (rows > 0 && !p)) INVALID("dcu_sample_async: bad arguments (rows %d)", rows);
	int k = s->k ^ 1;
	if (s->busy[k]) INVALID("dcu_sample_async: two sampled steps already wait for dcu_sample_wait");
	CK(cudaEventSynchronize(s->ev[k])); // the slot's last copies are done
	if (rows > s->dcap) {
		CK(cudaStreamSynchronize(s->stream)); // no kernel reads the old buffers
		cudaFree(s->d_params);
		cudaFree(s->d_out);
		s->d_params = nullptr;
		s->d_out = nullptr;
		s->dcap = 0;
		int cap = rows < 64 ? 64 : rows;
		CK(cudaMalloc((void **)&s->d_params, sizeof(dcu_sample_params) * cap));
		CK(cudaMalloc((void **)&s->d_out, sizeof(int32_t) * cap));
		s->dcap = cap;
	}
	if (rows > s->hcap[k]) {
		cudaFreeHost(s->h_params[k]);
		cudaFreeHost(s->h_ids[k]);
		s->h_params[k] = nullptr;
		s->h_ids[k] = nullptr;
		s->hcap[k] = 0;
		int cap = rows < 64 ? 64 : rows;
		CK(cudaMallocHost((void **)&s->h_params[k], sizeof(dcu_sample_params) * cap));
		CK(cudaMallocHost((void **)&s->h_ids[k], sizeof(int32_t) * cap));
		s->hcap[k] = cap;
	}
	if (rows > 0) {
		memcpy(s->h_params[k], p, sizeof(dcu_sample_params) * rows);
		CK(cudaMemcpyAsync(s->d_params, s->h_params[k], sizeof(dcu_sample_params) * rows, cudaMemcpyHostToDevice, s->stream));
		sample_kernel<<<rows, ST, 0, s->stream>>>(dcu_model_logits(s->m), dcu_model_vocab(s->m), 0, s->d_params,
		                                          dcu_model_ids(s->m), s->d_out);
		CK(cudaGetLastError());
		CK(cudaMemcpyAsync(s->h_ids[k], s->d_out, sizeof(int32_t) * rows, cudaMemcpyDeviceToHost, s->stream));
	}
	CK(cudaEventRecord(s->ev[k], s->stream));
	s->busy[k] = 1;
	s->rows[k] = rows;
	s->k = k;
	*slot = k;
	return 1;
}

extern "C" int dcu_sample_wait(dcu_sampler *s, int slot, int32_t *ids, int rows, dcu_status *st) {
	if (!s || slot < 0 || slot > 1 || !s->busy[slot]) INVALID("dcu_sample_wait: slot %d is not waiting", slot);
	if (rows != s->rows[slot] || (rows > 0 && !ids)) INVALID("dcu_sample_wait: %d rows asked, the step has %d", rows, s->rows[slot]);
	s->busy[slot] = 0;
	CK(cudaEventSynchronize(s->ev[slot]));
	if (rows > 0) memcpy(ids, s->h_ids[slot], sizeof(int32_t) * rows);
	return 1;
}

extern "C" int dcu_sampler_destroy(dcu_sampler *s, dcu_status *st) {
	if (!s) return 1;
	cudaError_t e = cudaStreamSynchronize(s->stream);
	cudaFree(s->d_params);
	cudaFree(s->d_out);
	for (int i = 0; i < 2; i++) {
		cudaFreeHost(s->h_params[i]);
		cudaFreeHost(s->h_ids[i]);
		cudaEventDestroy(s->ev[i]);
	}
	free(s);
	CK(e);
	return 1;
}

extern "C" int dcu_sample_logits(const float *logits, int rows, int vocab, int shared_row, const dcu_sample_params *p,
                                 int32_t *ids, dcu_status *st) {
	if (rows <= 0 || vocab <= 0 || !logits || !p || !ids) INVALID("dcu_sample_logits: bad arguments");
	size_t nl = shared_row ? (size_t)vocab : (size_t)rows * vocab;
	float *d_logits = nullptr;
	dcu_sample_params *d_p = nullptr;
	int32_t *d_ids = nullptr, *d_out = nullptr;
	cudaStream_t stream = nullptr;
	cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
	if (e == cudaSuccess) e = cudaMalloc((void **)&d_logits, sizeof(float) * nl);
	if (e == cudaSuccess) e = cudaMalloc((void **)&d_p, sizeof(dcu_sample_params) * rows);
	if (e == cudaSuccess) e = cudaMalloc((void **)&d_ids, sizeof(int32_t) * rows);
	if (e == cudaSuccess) e = cudaMalloc((void **)&d_out, sizeof(int32_t) * rows);
	if (e == cudaSuccess) e = cudaMemcpyAsync(d_logits, logits, sizeof(float) * nl, cudaMemcpyHostToDevice, stream);
	if (e == cudaSuccess) e = cudaMemcpyAsync(d_p, p, sizeof(dcu_sample_params) * rows, cudaMemcpyHostToDevice, stream);
	if (e == cudaSuccess) {
		sample_kernel<<<rows, ST, 0, stream>>>(d_logits, vocab, shared_row, d_p, d_ids, d_out);
		e = cudaGetLastError();
	}
	if (e == cudaSuccess) e = cudaMemcpyAsync(ids, d_out, sizeof(int32_t) * rows, cudaMemcpyDeviceToHost, stream);
	if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
	cudaFree(d_logits);
	cudaFree(d_p);
	cudaFree(d_ids);
	cudaFree(d_out);
	if (stream) cudaStreamDestroy(stream);
	CK(e);
	return 1;
}

extern "C" double dcu_sample_uniform(uint64_t seed, uint64_t step) { return uniform01(seed, step); }
