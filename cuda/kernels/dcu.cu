// dcu.cu: the CUDA kernels and the step driver of the Go CUDA backend.
//
// Storage is bf16 (weights, KV pool); arithmetic accumulates in fp32. The
// residual stream stays fp32 across the layers, GEMM outputs are fp32 (the
// O and Down projections accumulate straight into the residual with beta=1,
// which is the residual add fused into the GEMM), and the inputs of every
// GEMM are bf16. GEMMs go through cublasGemmEx (bf16 in, fp32 compute).
//
// KV pool layout (kvcache.Layout): [block][layer][k=0,v=1][token in block]
// [kv head][head dim], bf16.

#include "dcu.h"
#include "dcu_status.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

// ---------------------------------------------------------------------------
// Status handling (set_status, CK and INVALID: dcu_status.h)

static const char *cublas_name(cublasStatus_t s) {
	switch (s) {
	case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
	case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
	case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
	case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
	case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
	case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
	case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
	case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
	case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
	case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
	default: return "CUBLAS_STATUS_UNKNOWN";
	}
}


#define CKB(call)                                                                                  \
	do {                                                                                           \
		cublasStatus_t s_ = (call);                                                                \
		if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
			set_status(st, DCU_ERR_CUBLAS, (int)s_, cublas_name(s_), "%s (%s at %s:%d)",          \
			           cublasGetStatusString(s_), #call, __FILE__, __LINE__);                      \
			return 0;                                                                              \
		}                                                                                          \
	} while (0)

#define CKL() CK(cudaGetLastError())


// ---------------------------------------------------------------------------
// Kernels

// Programmatic dependent launch: a kernel launched with it may start before
// the one before it ends; pdl_wait blocks until that one has finished and its
// writes are visible (a no-op for a normal launch). pdl_trigger lets the
// next kernel launch once every block of this one has started.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// A launch configuration that allows programmatic dependent launch when pdl
// is set (cudaLaunchKernelEx); not copyable, since cfg points at its own
// attribute.
struct PdlLaunch {
	cudaLaunchConfig_t cfg = {};
	cudaLaunchAttribute at[1];
	PdlLaunch(dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl) {
		cfg.gridDim = grid;
		cfg.blockDim = block;
		cfg.dynamicSmemBytes = smem;
		cfg.stream = s;
		at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
		at[0].val.programmaticStreamSerializationAllowed = 1;
		cfg.attrs = at;
		cfg.numAttrs = pdl ? 1 : 0;
	}
	PdlLaunch(const PdlLaunch &) = delete;
	PdlLaunch &operator=(const PdlLaunch &) = delete;
};

__device__ __forceinline__ float warp_sum(float v) {
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}
__device__ __forceinline__ float warp_max(float v) {
	for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

// Block-wide sum; blockDim.x a multiple of 32, at most 1024.
__device__ float block_sum(float v) {
	__shared__ float red[32];
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	v = warp_sum(v);
	__syncthreads();
	if (lane == 0) red[w] = v;
	__syncthreads();
	int nw = blockDim.x >> 5;
	v = (threadIdx.x < nw) ? red[threadIdx.x] : 0.f;
	if (w == 0) v = warp_sum(v);
	if (threadIdx.x == 0) red[0] = v;
	__syncthreads();
	return red[0];
}

// The block ids b0..b1 of a token's block table bt (the blocks of one
// attention split's keys) into shared memory, then a barrier.
__device__ __forceinline__ void split_table(int32_t *bts, const int32_t *__restrict__ bt, int b0, int b1) {
	for (int i = threadIdx.x; i <= b1 - b0; i += blockDim.x) bts[i] = bt[b0 + i];
	__syncthreads();
}

// Storage types: bf16 (the default) or float (the fp32 mode, dcu_config.fp32:
// weights, GEMM inputs and KV in fp32, for results that match an fp32
// reference token for token).
__device__ __forceinline__ float tof(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float tof(float v) { return v; }
template <typename T> __device__ __forceinline__ T fromf(float v);
template <> __device__ __forceinline__ __nv_bfloat16 fromf<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ float fromf<float>(float v) { return v; }

// x[t][:] = embed[tokens[t]][:]
// A token id < 0 is the id sampled for row -id-1 of the previous step (ids).
template <typename W>
__global__ void embed_kernel(const int32_t *__restrict__ tokens, const int32_t *__restrict__ ids,
                             const W *__restrict__ emb, float *__restrict__ x, int H) {
	int t = blockIdx.x;
	int tok = tokens[t];
	if (tok < 0) tok = ids[-tok - 1];
	const W *row = emb + (size_t)tok * H;
	float *out = x + (size_t)t * H;
	for (int i = threadIdx.x; i < H; i += blockDim.x) out[i] = tof(row[i]);
}

// four values to W at p (8-byte aligned for bf16, 16 for float)
__device__ __forceinline__ void store4(__nv_bfloat16 *p, float a, float b, float c, float d) {
	__nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
	*(uint2 *)p = make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
}
__device__ __forceinline__ void store4(float *p, float a, float b, float c, float d) { *(float4 *)p = make_float4(a, b, c, d); }

// out[r][:] = W(x[src][:] * rsqrt(mean(x^2) + eps) * w), src = rows ? rows[r] : r.
// Rows of a multiple of 4 go as 16-byte loads of x and 4-value stores.
template <typename W>
__global__ void rmsnorm_kernel(const float *__restrict__ x, const int32_t *__restrict__ rows,
                               const W *__restrict__ w, W *__restrict__ out, int H, float eps) {
	int r = blockIdx.x;
	int src = rows ? rows[r] : r;
	const float *xr = x + (size_t)src * H;
	float ss = 0.f;
	if ((H & 3) == 0) {
		const float4 *x4 = (const float4 *)xr;
		for (int i = threadIdx.x; i < H / 4; i += blockDim.x) {
			const float4 v = x4[i];
			ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
		}
		ss = block_sum(ss);
		const float inv = rsqrtf(ss / (float)H + eps);
		W *o = out + (size_t)r * H;
		for (int i = threadIdx.x; i < H / 4; i += blockDim.x) {
			const float4 v = x4[i];
			const W *wi = w + 4 * i;
			store4(o + 4 * i, v.x * inv * tof(wi[0]), v.y * inv * tof(wi[1]), v.z * inv * tof(wi[2]),
			       v.w * inv * tof(wi[3]));
		}
		return;
	}
	for (int i = threadIdx.x; i < H; i += blockDim.x) ss += xr[i] * xr[i];
	ss = block_sum(ss);
	float inv = rsqrtf(ss / (float)H + eps);
	W *o = out + (size_t)r * H;
	for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = fromf<W>(xr[i] * inv * tof(w[i]));
}

// RoPE (rotate_half) on q and k of qkv [T][(nh+2nkv)*D] (fp32); q goes to
// q_out [T][nh][D] (fp32), the rotated k and v are appended to the KV pool
// (KV: bf16, or float in the fp32 mode) at slot[t]. kv_layer points at
// block 0's plane of this layer (base + layer*2*plane); block_stride is the
// element stride between blocks.
template <typename KV>
__global__ void rope_kv_kernel(const float *__restrict__ qkv, const int32_t *__restrict__ pos,
                               const int32_t *__restrict__ slot, const float *__restrict__ inv_freq,
                               float *__restrict__ q_out, KV *__restrict__ kv_layer,
                               size_t block_stride, int nh, int nkv, int D, int tpb) {
	__shared__ float sn_s[128], cs_s[128]; // one angle per pair: half <= 128 (head_dim <= 256, checked at load)
	int t = blockIdx.x;
	int half = D / 2;
	const float *row = qkv + (size_t)t * (nh + 2 * nkv) * D;
	float p = (float)pos[t];
	int s = slot[t];
	for (int j = threadIdx.x; j < half; j += blockDim.x) sincosf(p * inv_freq[j], &sn_s[j], &cs_s[j]);
	__syncthreads();
	size_t plane = (size_t)tpb * nkv * D;
	KV *kdst = kv_layer + (size_t)(s / tpb) * block_stride + (size_t)(s % tpb) * nkv * D;
	KV *vdst = kdst + plane;
	int nrot = (nh + nkv) * half;
	for (int i = threadIdx.x; i < nrot; i += blockDim.x) {
		int h = i / half, j = i % half;
		const float sn = sn_s[j], cs = cs_s[j];
		const float *v = row + (size_t)h * D;
		float x1 = v[j], x2 = v[j + half];
		float o1 = x1 * cs - x2 * sn, o2 = x2 * cs + x1 * sn;
		if (h < nh) {
			float *q = q_out + ((size_t)t * nh + h) * D;
			q[j] = o1;
			q[j + half] = o2;
		} else {
			KV *k = kdst + (size_t)(h - nh) * D;
			k[j] = fromf<KV>(o1);
			k[j + half] = fromf<KV>(o2);
		}
	}
	const float *vsrc = row + (size_t)(nh + nkv) * D;
	for (int i = threadIdx.x; i < nkv * D; i += blockDim.x) vdst[i] = fromf<KV>(vsrc[i]);
}

#define ATT_CHUNK 32
#define ATT_MAXD 8 // head_dim <= 256

// Split (flash-decoding style) paged attention. Grid (T, nkv, nsplit); one
// warp per query head of the kv head's group (blockDim = 32*G). Split s
// covers keys [s*P, min((s+1)*P, pos+1)) of the token's sequence (causal).
// Writes unnormalized partial sums: pacc [T][nh][nsplit][D], pm and pl
// [T][nh][nsplit].
template <typename KV>
__global__ void attn_split_kernel(const float *__restrict__ q, const int32_t *__restrict__ pos,
                                  const int32_t *__restrict__ btoff, const int32_t *__restrict__ tables,
                                  const KV *__restrict__ kv_layer, size_t block_stride, int nh,
                                  int nkv, int D, int tpb, int P, int nsplit, float scale,
                                  float *__restrict__ pacc, float *__restrict__ pm, float *__restrict__ pl) {
	extern __shared__ float sm[];
	int t = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
	int G = nh / nkv;
	int ctx = pos[t] + 1;
	int k0 = s * P;
	if (k0 >= ctx) return;
	int k1 = min(k0 + P, ctx);
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int h = kvh * G + warp;
	int KS = D + 1; // padded K row stride
	float *qs = sm;                        // [G][D]
	float *ks = qs + G * D;                // [32][D+1]
	float *vs = ks + ATT_CHUNK * KS;       // [32][D]
	for (int i = threadIdx.x; i < G * D; i += blockDim.x)
		qs[i] = q[((size_t)t * nh + kvh * G) * D + i] * scale;
	const int32_t *bt = tables + btoff[t];
	size_t plane = (size_t)tpb * nkv * D;
	float m = -INFINITY, l = 0.f;
	float acc[ATT_MAXD];
#pragma unroll
	for (int i = 0; i < ATT_MAXD; i++) acc[i] = 0.f;
	for (int c0 = k0; c0 < k1; c0 += ATT_CHUNK) {
		int n = min(ATT_CHUNK, k1 - c0);
		__syncthreads();
		for (int i = threadIdx.x; i < n * D; i += blockDim.x) {
			int j = i / D, d = i % D;
			int key = c0 + j;
			const KV *kp = kv_layer + (size_t)bt[key / tpb] * block_stride + (size_t)(key % tpb) * nkv * D +
			               (size_t)kvh * D + d;
			ks[j * KS + d] = tof(kp[0]);
			vs[j * D + d] = tof(kp[plane]);
		}
		__syncthreads();
		float sc = -INFINITY;
		if (lane < n) {
			const float *qh = qs + warp * D;
			const float *kr = ks + lane * KS;
			float a = 0.f;
			for (int d = 0; d < D; d++) a += qh[d] * kr[d];
			sc = a;
		}
		float cm = warp_max(sc);
		float mn = fmaxf(m, cm);
		float p = (lane < n) ? __expf(sc - mn) : 0.f;
		float corr = __expf(m - mn); // m = -inf on the first chunk: corr = 0
		l = l * corr + warp_sum(p);
		m = mn;
#pragma unroll
		for (int i = 0; i < ATT_MAXD; i++) acc[i] *= corr;
		for (int j = 0; j < n; j++) {
			float pj = __shfl_sync(0xffffffffu, p, j);
			const float *vr = vs + j * D;
#pragma unroll
			for (int i = 0; i < ATT_MAXD; i++) {
				int d = lane + 32 * i;
				if (d < D) acc[i] += pj * vr[d];
			}
		}
	}
	size_t base = ((size_t)t * nh + h) * nsplit + s;
	float *pa = pacc + base * D;
#pragma unroll
	for (int i = 0; i < ATT_MAXD; i++) {
		int d = lane + 32 * i;
		if (d < D) pa[d] = acc[i];
	}
	if (lane == 0) {
		pm[base] = m;
		pl[base] = l;
	}
}


// Tiled variant for head dims that are a multiple of 8: a block serves QT
// consecutive query tokens of one sequence (a tile) for one kv head and one
// split, so that each K/V chunk is loaded once (16-byte loads) for QT tokens
// and the G query heads of the group. Grid (tiles, nkv, nsplit), one warp
// per query head. Keys are causal per token: key <= pos[token].
template <int D, int QT>
__global__ void __launch_bounds__(256, QT == 1 ? 4 : 2) attn_tile_kernel(const float *__restrict__ q, const int32_t *__restrict__ pos,
                                 const int32_t *__restrict__ btoff, const int32_t *__restrict__ tables,
                                 const int32_t *__restrict__ tile_first, const int32_t *__restrict__ tile_len,
                                 const __nv_bfloat16 *__restrict__ kv_layer, size_t block_stride, int nh, int nkv,
                                 int tpb, int P, int nsplit, float scale, float *__restrict__ pacc,
                                 float *__restrict__ pm, float *__restrict__ pl) {
	pdl_trigger();
	constexpr int NDL = (D + 31) / 32;
	constexpr int KS = D + 1;
	extern __shared__ float sm[];
	const int tile = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
	const int G = nh / nkv;
	const int t0 = tile_first[tile], tl = tile_len[tile];
	const int p0 = pos[t0];
	const int ctx = p0 + tl; // last token's pos + 1
	const int k0 = s * P;
	if (k0 >= ctx) return;
	const int k1 = min(k0 + P, ctx);
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	float *qs = sm;                         // [G][QT][D]
	float *ks = qs + G * QT * D;            // [32][D+1]
	float *vs = ks + ATT_CHUNK * KS;        // [32][D]
	float *ps = vs + ATT_CHUNK * D;         // [G][QT][32]
	int32_t *bts = (int32_t *)(ps + G * QT * 32); // block ids of the split's keys
	for (int i = threadIdx.x; i < G * QT * D; i += blockDim.x) {
		int g = i / (QT * D), r = i % (QT * D), qi = r / D, d = r % D;
		qs[i] = qi < tl ? q[((size_t)(t0 + qi) * nh + kvh * G + g) * D + d] * scale : 0.f;
	}
	const int b0 = k0 / tpb;
	{
		const int32_t *bt = tables + btoff[t0];
		for (int i = threadIdx.x; i <= (k1 - 1) / tpb - b0; i += blockDim.x) bts[i] = bt[b0 + i];
	}
	__syncthreads();
	const size_t plane = (size_t)tpb * nkv * D;
	float m[QT], l[QT], acc[QT][NDL];
#pragma unroll
	for (int qi = 0; qi < QT; qi++) {
		m[qi] = -INFINITY;
		l[qi] = 0.f;
#pragma unroll
		for (int i = 0; i < NDL; i++) acc[qi][i] = 0.f;
	}
	const float *qw = qs + warp * QT * D;
	float *pw = ps + warp * QT * 32;
	// K/V chunks go global -> registers (16-byte loads, issued one chunk
	// ahead, in flight during the compute of the current chunk) -> shared
	// memory as fp32. Each thread holds up to LPT 16-byte pieces of K and V.
	constexpr int LPT = 2;
	uint4 rk[LPT], rv[LPT];
	auto fetch = [&](int c0) {
		const int n = min(ATT_CHUNK, k1 - c0);
#pragma unroll
		for (int u = 0; u < LPT; u++) {
			int e = threadIdx.x + u * blockDim.x;
			if (e < n * (D / 8)) {
				int j = e / (D / 8), d8 = (e % (D / 8)) * 8;
				int key = c0 + j;
				const __nv_bfloat16 *kp = kv_layer + (size_t)bts[key / tpb - b0] * block_stride +
				                          (size_t)(key % tpb) * nkv * D + (size_t)kvh * D + d8;
				rk[u] = *(const uint4 *)kp;
				rv[u] = *(const uint4 *)(kp + plane);
			}
		}
	};
	fetch(k0);
	for (int c0 = k0; c0 < k1; c0 += ATT_CHUNK) {
		const int n = min(ATT_CHUNK, k1 - c0);
		__syncthreads();
#pragma unroll
		for (int u = 0; u < LPT; u++) {
			int e = threadIdx.x + u * blockDim.x;
			if (e < n * (D / 8)) {
				int j = e / (D / 8), d8 = (e % (D / 8)) * 8;
				const __nv_bfloat162 *k2 = (const __nv_bfloat162 *)&rk[u];
				const __nv_bfloat162 *v2 = (const __nv_bfloat162 *)&rv[u];
#pragma unroll
				for (int w = 0; w < 4; w++) {
					float2 kf = __bfloat1622float2(k2[w]), vf = __bfloat1622float2(v2[w]);
					ks[j * KS + d8 + 2 * w] = kf.x;
					ks[j * KS + d8 + 2 * w + 1] = kf.y;
					vs[j * D + d8 + 2 * w] = vf.x;
					vs[j * D + d8 + 2 * w + 1] = vf.y;
				}
			}
		}
		__syncthreads();
		if (c0 + ATT_CHUNK < k1) fetch(c0 + ATT_CHUNK);
		const float *krow = ks + (lane < n ? lane : 0) * KS;
		const int key = c0 + lane;
		float sc_[QT];
#pragma unroll
		for (int qi = 0; qi < QT; qi++) sc_[qi] = 0.f;
#pragma unroll
		for (int d4 = 0; d4 < D / 4; d4++) {
			float k0_ = krow[4 * d4], k1_ = krow[4 * d4 + 1], k2_ = krow[4 * d4 + 2], k3_ = krow[4 * d4 + 3];
#pragma unroll
			for (int qi = 0; qi < QT; qi++) {
				float4 qq = ((const float4 *)(qw + qi * D))[d4];
				sc_[qi] += qq.x * k0_ + qq.y * k1_ + qq.z * k2_ + qq.w * k3_;
			}
		}
#pragma unroll
		for (int qi = 0; qi < QT; qi++) {
			float a = sc_[qi];
			bool valid = lane < n && qi < tl && key <= p0 + qi;
			float sc = valid ? a : -INFINITY;
			float mn = fmaxf(m[qi], warp_max(sc));
			float p = 0.f, corr = 1.f;
			if (mn != -INFINITY) {
				p = valid ? __expf(sc - mn) : 0.f;
				corr = __expf(m[qi] - mn);
			}
			l[qi] = l[qi] * corr + warp_sum(p);
			m[qi] = mn;
#pragma unroll
			for (int i = 0; i < NDL; i++) acc[qi][i] *= corr;
			pw[lane * QT + qi] = p; // [key][token]: one key's p for the tile in one vector read
		}
		__syncwarp();
		for (int j = 0; j < n; j++) {
			float v[NDL];
#pragma unroll
			for (int i = 0; i < NDL; i++) {
				int d = lane + 32 * i;
				v[i] = d < D ? vs[j * D + d] : 0.f;
			}
			float pj[QT];
			if constexpr (QT % 4 == 0) {
#pragma unroll
				for (int q4 = 0; q4 < QT / 4; q4++) {
					float4 pp = ((const float4 *)(pw + j * QT))[q4];
					pj[4 * q4] = pp.x;
					pj[4 * q4 + 1] = pp.y;
					pj[4 * q4 + 2] = pp.z;
					pj[4 * q4 + 3] = pp.w;
				}
			} else {
#pragma unroll
				for (int qi = 0; qi < QT; qi++) pj[qi] = pw[j * QT + qi];
			}
#pragma unroll
			for (int qi = 0; qi < QT; qi++) {
#pragma unroll
				for (int i = 0; i < NDL; i++) acc[qi][i] += pj[qi] * v[i];
			}
		}
		__syncwarp();
	}
	const int h = kvh * G + warp;
#pragma unroll
	for (int qi = 0; qi < QT; qi++) {
		if (qi >= tl || k0 > p0 + qi) continue; // this split holds no key of that token
		size_t base = ((size_t)(t0 + qi) * nh + h) * nsplit + s;
		float *pa = pacc + base * D;
#pragma unroll
		for (int i = 0; i < NDL; i++) {
			int d = lane + 32 * i;
			if (d < D) pa[d] = acc[qi][i];
		}
		if (lane == 0) {
			pm[base] = m[qi];
			pl[base] = l[qi];
		}
	}
}

typedef void (*attn_tile_fn)(const float *, const int32_t *, const int32_t *, const int32_t *, const int32_t *,
                             const int32_t *, const __nv_bfloat16 *, size_t, int, int, int, int, int, float, float *,
                             float *, float *);

#define TILE_QT 8

static attn_tile_fn tile_kernel(int D, int qt) {
	switch (D) {
	case 16: return qt == 1 ? attn_tile_kernel<16, 1> : attn_tile_kernel<16, TILE_QT>;
	case 32: return qt == 1 ? attn_tile_kernel<32, 1> : attn_tile_kernel<32, TILE_QT>;
	case 64: return qt == 1 ? attn_tile_kernel<64, 1> : attn_tile_kernel<64, TILE_QT>;
	case 128: return qt == 1 ? attn_tile_kernel<128, 1> : attn_tile_kernel<128, TILE_QT>;
	}
	return nullptr;
}

#define ATT_MAXBT 520 // block ids of one split: P/tpb + 2 with P <= 512
static size_t tile_smem(int G, int D, int qt) {
	return sizeof(float) * ((size_t)G * qt * D + ATT_CHUNK * (D + 1) + ATT_CHUNK * D + (size_t)G * qt * 32) +
	       sizeof(int32_t) * ATT_MAXBT;
}


// Decode attention (every query token alone in its tile): a block serves one
// token, one kv head and one split; its 4 warps take interleaved 32-key
// chunks, and each warp computes all G query heads of the group, so a key's
// K row is read once (straight from the pool into registers, 16-byte loads)
// for every head. Per-warp softmax state is merged in shared memory at the
// end. Grid (T, nkv, nsplit), 128 threads.
#define DEC_WARPS 4
#define DEC_GM 8
template <int D>
__global__ void __launch_bounds__(128) attn_decode_kernel(const float *__restrict__ q, const int32_t *__restrict__ pos,
                                                          const int32_t *__restrict__ btoff,
                                                          const int32_t *__restrict__ tables,
                                                          const __nv_bfloat16 *__restrict__ kv_layer,
                                                          size_t block_stride, int nh, int nkv, int tpb, int P,
                                                          int nsplit, float scale, float *__restrict__ pacc,
                                                          float *__restrict__ pm, float *__restrict__ pl) {
	constexpr int NDL = D / 32, VS = D + 4;
	extern __shared__ float sm[];
	const int t = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
	const int G = nh / nkv;
	const int ctx = pos[t] + 1;
	const int k0 = s * P;
	if (k0 >= ctx) return;
	const int k1 = min(k0 + P, ctx);
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	float *qs = sm;                                   // [G][D], scaled
	float *vs = qs + DEC_GM * D;                      // [warps][32][D+4]
	float *pt = vs + DEC_WARPS * 32 * VS;             // [warps][32][GM]
	int32_t *bts = (int32_t *)(pt + DEC_WARPS * 32 * DEC_GM);
	for (int i = threadIdx.x; i < G * D; i += blockDim.x) qs[i] = q[((size_t)t * nh + kvh * G) * D + i] * scale;
	const int b0 = k0 / tpb;
	split_table(bts, tables + btoff[t], b0, (k1 - 1) / tpb);
	const size_t plane = (size_t)tpb * nkv * D;
	float m[DEC_GM], l[DEC_GM], acc[DEC_GM][NDL];
#pragma unroll
	for (int h = 0; h < DEC_GM; h++) {
		m[h] = -INFINITY;
		l[h] = 0.f;
#pragma unroll
		for (int i = 0; i < NDL; i++) acc[h][i] = 0.f;
	}
	float *vw = vs + warp * 32 * VS;
	float *pw = pt + warp * 32 * DEC_GM;
	for (int c0 = k0 + warp * 32; c0 < k1; c0 += DEC_WARPS * 32) {
		const int n = min(32, k1 - c0);
		const int key = c0 + lane;
		const bool valid = lane < n;
		float sc[DEC_GM];
#pragma unroll
		for (int h = 0; h < DEC_GM; h++) sc[h] = 0.f;
		if (valid) {
			const __nv_bfloat16 *kp =
			    kv_layer + (size_t)bts[key / tpb - b0] * block_stride + (size_t)(key % tpb) * nkv * D + (size_t)kvh * D;
			uint4 kk[D / 8], vv[D / 8];
#pragma unroll
			for (int u = 0; u < D / 8; u++) {
				kk[u] = ((const uint4 *)kp)[u];
				vv[u] = ((const uint4 *)(kp + plane))[u];
			}
#pragma unroll
			for (int u = 0; u < D / 8; u++) {
				const __nv_bfloat162 *k2 = (const __nv_bfloat162 *)&kk[u];
				const __nv_bfloat162 *v2 = (const __nv_bfloat162 *)&vv[u];
				float kf[8], vf[8];
#pragma unroll
				for (int w = 0; w < 4; w++) {
					float2 a = __bfloat1622float2(k2[w]), b = __bfloat1622float2(v2[w]);
					kf[2 * w] = a.x;
					kf[2 * w + 1] = a.y;
					vf[2 * w] = b.x;
					vf[2 * w + 1] = b.y;
				}
				*(float4 *)(vw + lane * VS + 8 * u) = make_float4(vf[0], vf[1], vf[2], vf[3]);
				*(float4 *)(vw + lane * VS + 8 * u + 4) = make_float4(vf[4], vf[5], vf[6], vf[7]);
#pragma unroll
				for (int h = 0; h < DEC_GM; h++) {
					if (h < G) {
						float4 qa = *(const float4 *)(qs + h * D + 8 * u);
						float4 qb = *(const float4 *)(qs + h * D + 8 * u + 4);
						sc[h] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
						         qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
					}
				}
			}
		}
#pragma unroll
		for (int h = 0; h < DEC_GM; h++) {
			if (h < G) {
				float v = valid ? sc[h] : -INFINITY;
				float mn = fmaxf(m[h], warp_max(v)); // finite: lane 0 holds a key
				float p = valid ? __expf(v - mn) : 0.f;
				float corr = __expf(m[h] - mn);
				l[h] = l[h] * corr + warp_sum(p);
				m[h] = mn;
#pragma unroll
				for (int i = 0; i < NDL; i++) acc[h][i] *= corr;
				pw[lane * DEC_GM + h] = p;
			}
		}
		__syncwarp();
		for (int j = 0; j < n; j++) {
			float v[NDL];
#pragma unroll
			for (int i = 0; i < NDL; i++) v[i] = vw[j * VS + lane + 32 * i];
			float4 pa = *(const float4 *)(pw + j * DEC_GM), pb = *(const float4 *)(pw + j * DEC_GM + 4);
			float pj[DEC_GM] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
#pragma unroll
			for (int h = 0; h < DEC_GM; h++)
#pragma unroll
				for (int i = 0; i < NDL; i++) acc[h][i] += pj[h] * v[i];
		}
		__syncwarp();
	}
	// merge the warps: state to shared memory (reusing vs), then warp w
	// finishes heads w, w+4, ...
	__syncthreads();
	float *cacc = vs;                                  // [warps][GM][D]
	float *cm = cacc + DEC_WARPS * DEC_GM * D;         // [warps][GM]
	float *cl = cm + DEC_WARPS * DEC_GM;
#pragma unroll
	for (int h = 0; h < DEC_GM; h++) {
		if (h < G) {
#pragma unroll
			for (int i = 0; i < NDL; i++) cacc[(warp * DEC_GM + h) * D + lane + 32 * i] = acc[h][i];
			if (lane == 0) {
				cm[warp * DEC_GM + h] = m[h];
				cl[warp * DEC_GM + h] = l[h];
			}
		}
	}
	__syncthreads();
	for (int h = warp; h < G; h += DEC_WARPS) {
		float M = -INFINITY;
		for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, cm[w * DEC_GM + h]);
		float L = 0.f, wt[DEC_WARPS];
		for (int w = 0; w < DEC_WARPS; w++) {
			float mw = cm[w * DEC_GM + h];
			wt[w] = mw == -INFINITY ? 0.f : __expf(mw - M);
			L += cl[w * DEC_GM + h] * wt[w];
		}
		size_t base = ((size_t)t * nh + kvh * G + h) * nsplit + s;
		for (int d = lane; d < D; d += 32) {
			float a = 0.f;
			for (int w = 0; w < DEC_WARPS; w++) a += cacc[(w * DEC_GM + h) * D + d] * wt[w];
			pacc[base * D + d] = a;
		}
		if (lane == 0) {
			pm[base] = M;
			pl[base] = L;
		}
	}
}

static size_t decode_smem(int D) {
	return sizeof(float) * ((size_t)DEC_GM * D + DEC_WARPS * 32 * (D + 4) + DEC_WARPS * 32 * DEC_GM) +
	       sizeof(int32_t) * ATT_MAXBT;
}

typedef void (*attn_decode_fn)(const float *, const int32_t *, const int32_t *, const int32_t *, const __nv_bfloat16 *,
                               size_t, int, int, int, int, int, float, float *, float *, float *);
static attn_decode_fn decode_kernel(int D, int G) {
	if (G > DEC_GM) return nullptr;
	switch (D) {
	case 64: return attn_decode_kernel<64>;
	case 128: return attn_decode_kernel<128>;
	}
	return nullptr;
}


// Tensor-core attention (mma.sync m16n8k16, bf16 in, fp32 accumulate),
// head dim 64: tiles of up to MMA_QT query tokens for prefill (attn_fa_kernel)
// and the decode kernel below.
#define MMA_QT 16
#define MMA_KS 72 // K row stride (bf16): 64 + 8

__device__ __forceinline__ void mma16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
	             "{%0,%1,%2,%3};\n"
	             : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
	             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
	__nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
	return *(uint32_t *)&v;
}

// An MMA accumulator row's values live in one quad (4 lanes): its max and sum.
__device__ __forceinline__ float quad_max(float v) {
	v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
	return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
	v += __shfl_xor_sync(0xffffffffu, v, 1);
	return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Scales the two rows of 8 m16n8 accumulators (c0, c1: row g; c2, c3: row g+8).
__device__ __forceinline__ void scale_rows(float (&o)[8][4], float r0, float r1) {
#pragma unroll
	for (int i = 0; i < 8; i++) {
		o[i][0] *= r0;
		o[i][1] *= r0;
		o[i][2] *= r1;
		o[i][3] *= r1;
	}
}

// Prefill attention: a block serves a tile of up to 16 consecutive query
// tokens of one sequence x the G heads of one kv head, warp w head kvh*G+w
// (the MMA rows are the tile's tokens; two heads per warp, sharing every K
// and V fragment, and blocks of 4 warps were measured slower). Chunks of
// KC keys (128, in dynamic shared memory; 64 with DCU_PF_KC=64, which
// measured about 1 % slower at 2048 tokens) of K and V are copied into a
// two-stage shared-memory ring by cp.async (the next chunk in flight while
// this one is used), both kept as [key][dim] and read into MMA fragments
// with ldmatrix (.trans for V);
// softmax in base 2; no mask on chunks wholly below the tile. Splits are
// DCU_PF_P keys long (default 4096, so that prompts up to that length need
// no combine); rows whose keys all lie in split 0 (pos < P) are written
// normalized to out directly, the others as partial sums for the combine,
// which leaves the former alone (its direct flag). Tiles are taken longest
// first.
#define FA_KC 64 // the fewer keys per chunk (DCU_PF_KC=64), and the split length's unit
#define FA_S 72  // row stride of a staged chunk (bf16): 64 + 8, conflict-free ldmatrix
static constexpr size_t fa_smem_bytes(int kc) { return sizeof(__nv_bfloat16) * 4 * kc * FA_S; }

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool ok) {
	const unsigned d = (unsigned)__cvta_generic_to_shared(smem);
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gmem), "r"(ok ? 16 : 0));
}

__device__ __forceinline__ void ldsm_x4(uint32_t *r, const void *smem) {
	const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
	             : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
	             : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const void *smem) {
	const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
	             : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
	             : "r"(a));
}

template <int KC>
__global__ void __launch_bounds__(256, 1) attn_fa_kernel(const float *__restrict__ q, const int32_t *__restrict__ pos,
                                                         const int32_t *__restrict__ btoff,
                                                         const int32_t *__restrict__ tables,
                                                         const int32_t *__restrict__ tile_first,
                                                         const int32_t *__restrict__ tile_len,
                                                         const __nv_bfloat16 *__restrict__ kv_layer,
                                                         size_t block_stride, int nh, int nkv, int tpb, int P,
                                                         int nsplit, float scale, float *__restrict__ pacc,
                                                         float *__restrict__ pm, float *__restrict__ pl,
                                                         __nv_bfloat16 *__restrict__ out) {
	constexpr int D = 64;
	extern __shared__ __align__(16) unsigned char fa_smem[]; // fa_smem_bytes(KC)
	__nv_bfloat16(*ks)[KC * FA_S] = (__nv_bfloat16(*)[KC * FA_S])fa_smem;
	__nv_bfloat16(*vs)[KC * FA_S] = ks + 2;
	const int tile = gridDim.x - 1 - blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
	const int G = nh / nkv;
	const int t0 = tile_first[tile], tl = tile_len[tile];
	const int p0 = pos[t0];
	const int ctx = p0 + tl;
	const int k0 = s * P;
	if (k0 >= ctx) return;
	const int k1 = min(k0 + P, ctx);
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int g = lane >> 2, tq = lane & 3;
	const int h = kvh * G + warp;
	const int32_t *bt = tables + btoff[t0];
	const size_t plane = (size_t)tpb * nkv * D;
	// stage the chunk of keys [c0, c0+KC) (zeros past k1)
	auto stage = [&](int buf, int c0) {
		const int d8 = (threadIdx.x & 7) * 8;
		for (int j = threadIdx.x >> 3; j < KC; j += blockDim.x >> 3) {
			const int key = c0 + j;
			const bool ok = key < k1;
			const __nv_bfloat16 *src = kv_layer;
			if (ok) src = kv_layer + (size_t)bt[key / tpb] * block_stride + (size_t)((key % tpb) * nkv + kvh) * D + d8;
			cp_async16(ks[buf] + j * FA_S + d8, src, ok);
			cp_async16(vs[buf] + j * FA_S + d8, ok ? src + plane : src, ok);
		}
		asm volatile("cp.async.commit_group;\n" ::);
	};
	stage(0, k0);
	// Q fragments (bf16): rows g and g+8 are tokens t0+g and t0+g+8 (zero past the tile)
	uint32_t qa[4][4];
	{
		const float *qg = q + ((size_t)(t0 + g) * nh + h) * D;
		const float *qg8 = q + ((size_t)(t0 + g + 8) * nh + h) * D;
		const bool r0 = g < tl, r1 = g + 8 < tl;
#pragma unroll
		for (int kk = 0; kk < 4; kk++) {
			const int c = kk * 16 + 2 * tq;
			float2 a = r0 ? *(const float2 *)(qg + c) : make_float2(0.f, 0.f);
			float2 b = r1 ? *(const float2 *)(qg8 + c) : make_float2(0.f, 0.f);
			float2 a8 = r0 ? *(const float2 *)(qg + c + 8) : make_float2(0.f, 0.f);
			float2 b8 = r1 ? *(const float2 *)(qg8 + c + 8) : make_float2(0.f, 0.f);
			qa[kk][0] = pack_bf16(a.x, a.y);
			qa[kk][1] = pack_bf16(b.x, b.y);
			qa[kk][2] = pack_bf16(a8.x, a8.y);
			qa[kk][3] = pack_bf16(b8.x, b8.y);
		}
	}
	const float sl2 = scale * 1.4426950408889634f; // scores in base 2
	const int pr0 = p0 + g, pr1 = p0 + g + 8;      // positions of the two rows
	float o[8][4];
#pragma unroll
	for (int i = 0; i < 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
	float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
	// ldmatrix lane addresses: matrix mi = lane/8, its row lane%8
	const int mi = lane >> 3, mr = lane & 7;
	int buf = 0;
	for (int c0 = k0; c0 < k1; c0 += KC, buf ^= 1) {
		if (c0 + KC < k1) {
			stage(buf ^ 1, c0 + KC);
			asm volatile("cp.async.wait_group 1;\n" ::);
		} else {
			asm volatile("cp.async.wait_group 0;\n" ::);
		}
		__syncthreads();
		const __nv_bfloat16 *K = ks[buf], *Vv = vs[buf];
		// S = Q K^T: KC/8 n-tiles of 8 keys; one ldmatrix.x4 gives two k-steps of one n-tile
		float sc[KC / 8][4];
#pragma unroll
		for (int nt = 0; nt < KC / 8; nt++) {
			sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
			for (int kp = 0; kp < 2; kp++) {
				uint32_t b[4];
				ldsm_x4(b, K + (nt * 8 + mr) * FA_S + (2 * kp + (mi >> 1)) * 16 + (mi & 1) * 8);
				mma16816(sc[nt], qa[2 * kp], b[0], b[1]);
				mma16816(sc[nt], qa[2 * kp + 1], b[2], b[3]);
			}
		}
		// causal mask and the end of the split, only where the chunk reaches them
		if (c0 + KC > p0 || c0 + KC > k1) {
#pragma unroll
			for (int nt = 0; nt < KC / 8; nt++) {
#pragma unroll
				for (int u = 0; u < 2; u++) {
					const int key = c0 + nt * 8 + 2 * tq + u;
					const bool x0 = key >= k1 || key > pr0, x1 = key >= k1 || key > pr1;
					if (x0) sc[nt][u] = -INFINITY;
					if (x1) sc[nt][2 + u] = -INFINITY;
				}
			}
		}
		// online softmax of the two rows (a row's KC values live in one quad); P as
		// A fragments of the KC/16 k-steps of 16 keys
		uint32_t pa[KC / 16][4];
		{
			float mx0 = m[0], mx1 = m[1];
#pragma unroll
			for (int nt = 0; nt < KC / 8; nt++) {
				mx0 = fmaxf(mx0, fmaxf(sc[nt][0], sc[nt][1]) * sl2);
				mx1 = fmaxf(mx1, fmaxf(sc[nt][2], sc[nt][3]) * sl2);
			}
			mx0 = quad_max(mx0);
			mx1 = quad_max(mx1);
			// a row with no key yet keeps max -inf: subtract 0 instead (its values are all -inf -> 0)
			const float b0 = mx0 == -INFINITY ? 0.f : mx0, b1 = mx1 == -INFINITY ? 0.f : mx1;
			const float corr0 = exp2f(m[0] - b0), corr1 = exp2f(m[1] - b1);
			float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
			for (int nt = 0; nt < KC / 8; nt++) {
				const float e0 = exp2f(fmaf(sc[nt][0], sl2, -b0)), e1 = exp2f(fmaf(sc[nt][1], sl2, -b0));
				const float e2 = exp2f(fmaf(sc[nt][2], sl2, -b1)), e3 = exp2f(fmaf(sc[nt][3], sl2, -b1));
				rs0 += e0 + e1;
				rs1 += e2 + e3;
				pa[nt >> 1][(nt & 1) * 2] = pack_bf16(e0, e1);
				pa[nt >> 1][(nt & 1) * 2 + 1] = pack_bf16(e2, e3);
			}
			rs0 = quad_sum(rs0);
			rs1 = quad_sum(rs1);
			l[0] = l[0] * corr0 + rs0;
			l[1] = l[1] * corr1 + rs1;
			m[0] = mx0;
			m[1] = mx1;
			scale_rows(o, corr0, corr1);
		}
		// O += P V: KC/16 k-steps of 16 keys; one ldmatrix.x4.trans gives two n-tiles of 8 dims
#pragma unroll
		for (int kk = 0; kk < KC / 16; kk++) {
#pragma unroll
			for (int np = 0; np < 4; np++) {
				uint32_t b[4];
				ldsm_x4_t(b, Vv + (kk * 16 + (mi & 1) * 8 + mr) * FA_S + np * 16 + (mi >> 1) * 8);
				mma16816(o[2 * np], pa[kk], b[0], b[1]);
				mma16816(o[2 * np + 1], pa[kk], b[2], b[3]);
			}
		}
		__syncthreads(); // the next iteration's copy overwrites this stage
	}
	// rows with all their keys in split 0: normalized, to out; the others: partial sums
	const float ln2 = 0.6931471805599453f;
#pragma unroll
	for (int r = 0; r < 2; r++) {
		const int row = g + 8 * r;
		if (row >= tl || k0 > p0 + row) continue;
		const int t = t0 + row;
		if (s == 0 && p0 + row < P) {
			const float inv = 1.f / l[r];
			__nv_bfloat16 *op = out + ((size_t)t * nh + h) * D;
#pragma unroll
			for (int nd = 0; nd < 8; nd++)
				*(uint32_t *)(op + nd * 8 + 2 * tq) = pack_bf16(o[nd][2 * r] * inv, o[nd][2 * r + 1] * inv);
			continue;
		}
		const size_t base = ((size_t)t * nh + h) * nsplit + s;
		float *pp = pacc + base * D;
#pragma unroll
		for (int nd = 0; nd < 8; nd++) *(float2 *)(pp + nd * 8 + 2 * tq) = make_float2(o[nd][2 * r], o[nd][2 * r + 1]);
		if (tq == 0) {
			pm[base] = m[r] * ln2;
			pl[base] = l[r];
		}
	}
}

// Pieces of the tensor-core decode kernels (head dim 64): the MMA rows are
// the G (<= 16) query heads of one kv head's group; lane = 4g + tq.

// Q fragments: row r = query head kvh*G + r of token t (zero for r >= G).
__device__ __forceinline__ void dec_q_frags(uint32_t (&qa)[4][4], const float *__restrict__ q, int t, int nh, int kvh,
                                            int G, int g, int tq) {
	constexpr int D = 64;
	const float *qh = q + ((size_t)t * nh + kvh * G) * D;
	const bool r0 = g < G, r1 = g + 8 < G;
#pragma unroll
	for (int kk = 0; kk < 4; kk++) {
		int c = kk * 16 + 2 * tq;
		qa[kk][0] = r0 ? pack_bf16(qh[g * D + c], qh[g * D + c + 1]) : 0u;
		qa[kk][1] = r1 ? pack_bf16(qh[(g + 8) * D + c], qh[(g + 8) * D + c + 1]) : 0u;
		qa[kk][2] = r0 ? pack_bf16(qh[g * D + c + 8], qh[g * D + c + 9]) : 0u;
		qa[kk][3] = r1 ? pack_bf16(qh[(g + 8) * D + c + 8], qh[(g + 8) * D + c + 9]) : 0u;
	}
}

// One staged chunk of n (<= 32) keys, rows MMA_KS apart in ks and vs: S =
// Q K^T, the online softmax (m, l: rows g and g+8), O += P V (V fragments
// through ldmatrix.trans).
__device__ __forceinline__ void dec_mma_chunk(const uint32_t (&qa)[4][4], const __nv_bfloat16 *ks,
                                              uint32_t vs_base, int n, float scale, int lane, float (&o)[8][4],
                                              float &m0, float &m1, float &l0, float &l1) {
	const int g = lane >> 2, tq = lane & 3;
	float sc[4][4];
#pragma unroll
	for (int nt = 0; nt < 4; nt++) {
		sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
		const __nv_bfloat16 *kr = ks + (nt * 8 + g) * MMA_KS + 2 * tq;
#pragma unroll
		for (int kk = 0; kk < 4; kk++)
			mma16816(sc[nt], qa[kk], *(const uint32_t *)(kr + kk * 16), *(const uint32_t *)(kr + kk * 16 + 8));
	}
	float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
	for (int nt = 0; nt < 4; nt++) {
#pragma unroll
		for (int u = 0; u < 2; u++) {
			bool ok = nt * 8 + 2 * tq + u < n;
			sc[nt][u] = ok ? sc[nt][u] * scale : -INFINITY;
			sc[nt][2 + u] = ok ? sc[nt][2 + u] * scale : -INFINITY;
			mx0 = fmaxf(mx0, sc[nt][u]);
			mx1 = fmaxf(mx1, sc[nt][2 + u]);
		}
	}
	mx0 = quad_max(mx0);
	mx1 = quad_max(mx1);
	float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1); // finite: the chunk's first key is valid
	float corr0 = __expf(m0 - mn0), corr1 = __expf(m1 - mn1);
	float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
	for (int nt = 0; nt < 4; nt++) {
#pragma unroll
		for (int u = 0; u < 2; u++) {
			float a = __expf(sc[nt][u] - mn0), b = __expf(sc[nt][2 + u] - mn1);
			sc[nt][u] = a;
			sc[nt][2 + u] = b;
			rs0 += a;
			rs1 += b;
		}
	}
	rs0 = quad_sum(rs0);
	rs1 = quad_sum(rs1);
	l0 = l0 * corr0 + rs0;
	l1 = l1 * corr1 + rs1;
	m0 = mn0;
	m1 = mn1;
	scale_rows(o, corr0, corr1);
#pragma unroll
	for (int kk = 0; kk < 2; kk++) {
		uint32_t pa[4] = {pack_bf16(sc[2 * kk][0], sc[2 * kk][1]), pack_bf16(sc[2 * kk][2], sc[2 * kk][3]),
		                  pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
		                  pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
		for (int nd = 0; nd < 8; nd++) {
			// V[16kk + r][8nd .. 8nd+7] rows -> B fragments through ldmatrix.trans
			uint32_t addr = vs_base + (uint32_t)(((16 * kk + (lane & 15)) * MMA_KS + 8 * nd) * 2);
			uint32_t bb0, bb1;
			asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
			             : "=r"(bb0), "=r"(bb1)
			             : "r"(addr));
			mma16816(o[nd], pa, bb0, bb1);
		}
	}
}

// Shared memory dec_merge needs for W warps.
#define DEC_MERGE_BYTES(W) (sizeof(float) * (W) * 16 * (64 + 3))

// Merges the W warps' states per row (query head) through mem (the stages,
// free once every warp is done: the first barrier) and writes head kvh*G+r
// of token t: normalized to out when out is set, else as split s's partial
// sums for the combine.
template <int W>
__device__ __forceinline__ void dec_merge(void *mem, const float (&o)[8][4], float m0, float m1, float l0, float l1,
                                          int t, int nh, int kvh, int G, int s, int nsplit, float *__restrict__ pacc,
                                          float *__restrict__ pm, float *__restrict__ pl,
                                          __nv_bfloat16 *__restrict__ out) {
	constexpr int D = 64;
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int g = lane >> 2, tq = lane & 3;
	float(*mrg_o)[16][D + 1] = (float(*)[16][D + 1])mem;
	float(*mrg_m)[16] = (float(*)[16])((float *)mem + W * 16 * (D + 1));
	float(*mrg_l)[16] = (float(*)[16])((float *)mem + W * 16 * (D + 2));
	__syncthreads(); // every warp is done with its stage
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int row = g + 8 * r;
#pragma unroll
		for (int nd = 0; nd < 8; nd++) {
			mrg_o[warp][row][nd * 8 + 2 * tq] = o[nd][2 * r];
			mrg_o[warp][row][nd * 8 + 2 * tq + 1] = o[nd][2 * r + 1];
		}
		if (tq == 0) {
			mrg_m[warp][row] = r ? m1 : m0;
			mrg_l[warp][row] = r ? l1 : l0;
		}
	}
	__syncthreads();
	for (int row = warp; row < G; row += W) {
		float M = -INFINITY;
		for (int w = 0; w < W; w++) M = fmaxf(M, mrg_m[w][row]);
		float L = 0.f, wt[W];
		for (int w = 0; w < W; w++) {
			float mw = mrg_m[w][row];
			wt[w] = mw == -INFINITY ? 0.f : __expf(mw - M);
			L += mrg_l[w][row] * wt[w];
		}
		const size_t head = (size_t)t * nh + kvh * G + row;
		if (out) {
			for (int d = lane; d < D; d += 32) {
				float a = 0.f;
				for (int w = 0; w < W; w++) a += mrg_o[w][row][d] * wt[w];
				out[head * D + d] = __float2bfloat16(a / L);
			}
			continue;
		}
		size_t base = head * nsplit + s;
		for (int d = lane; d < D; d += 32) {
			float a = 0.f;
			for (int w = 0; w < W; w++) a += mrg_o[w][row][d] * wt[w];
			pacc[base * D + d] = a;
		}
		if (lane == 0) {
			pm[base] = M;
			pl[base] = L;
		}
	}
}

// Decode attention on the tensor cores, head dim 64: a block serves one
// query token, one kv head and one split. Each of the 4 warps takes
// interleaved 32-key chunks into its own shared-memory stage (16-byte
// loads, one key row per lane) and runs dec_mma_chunk on it; the warps'
// states are merged at the end. Grid (T, nkv, nsplit), 128 threads.
__global__ void __launch_bounds__(128) attn_mma_dec_kernel(const float *__restrict__ q,
                                                           const int32_t *__restrict__ pos,
                                                           const int32_t *__restrict__ btoff,
                                                           const int32_t *__restrict__ tables,
                                                           const __nv_bfloat16 *__restrict__ kv_layer,
                                                           size_t block_stride, int nh, int nkv, int tpb, int P,
                                                           int nsplit, float scale, float *__restrict__ pacc,
                                                           float *__restrict__ pm, float *__restrict__ pl) {
	pdl_trigger();
	constexpr int D = 64;
	// per-warp K and V stages; after the loop the same bytes hold the merge
	constexpr int STAGE = ATT_CHUNK * MMA_KS; // bf16 elements
	__shared__ __align__(16) __nv_bfloat16 stage[2 * DEC_WARPS * STAGE];
	__shared__ int32_t bts[ATT_MAXBT];
	static_assert(DEC_MERGE_BYTES(DEC_WARPS) <= sizeof(__nv_bfloat16) * 2 * DEC_WARPS * STAGE, "merge fits");
	const int t = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
	const int G = nh / nkv;
	const int ctx = pos[t] + 1;
	const int k0 = s * P;
	if (k0 >= ctx) return;
	const int k1 = min(k0 + P, ctx);
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int g = lane >> 2, tq = lane & 3;
	const int b0 = k0 / tpb;
	split_table(bts, tables + btoff[t], b0, (k1 - 1) / tpb);
	const size_t plane = (size_t)tpb * nkv * D;
	__nv_bfloat16 *ks = stage + warp * STAGE, *vs = stage + (DEC_WARPS + warp) * STAGE;
	// Stage a chunk of keys [c0, c0+32) into this warp's ks/vs (zeros past k1);
	// only = -1: every key, else only key `only`.
	auto stage_chunk = [&](int c0, int only) {
		const int n = min(ATT_CHUNK, k1 - c0);
		uint4 kk[8], vv[8];
		const int key = c0 + lane;
		const bool ok = lane < n, mine = only < 0 || key == only;
		if (ok && mine) {
			const __nv_bfloat16 *kp =
			    kv_layer + (size_t)bts[key / tpb - b0] * block_stride + (size_t)(key % tpb) * nkv * D + (size_t)kvh * D;
#pragma unroll
			for (int u = 0; u < 8; u++) {
				kk[u] = ((const uint4 *)kp)[u];
				vv[u] = ((const uint4 *)(kp + plane))[u];
			}
		}
		__syncwarp();
		if (mine) {
#pragma unroll
			for (int u = 0; u < 8; u++) {
				*(uint4 *)(ks + lane * MMA_KS + 8 * u) = ok ? kk[u] : make_uint4(0, 0, 0, 0);
				*(uint4 *)(vs + lane * MMA_KS + 8 * u) = ok ? vv[u] : make_uint4(0, 0, 0, 0);
			}
		}
		__syncwarp();
	};
	// Under programmatic dependent launch the kernel before (QKV, which
	// appends this token's K and V) may still run: the warp's first chunk is
	// staged now except the token's own key, which comes after the wait.
	const int first = k0 + warp * ATT_CHUNK;
	if (first < k1) stage_chunk(first, -1);
	pdl_wait();
	if (first < k1 && ctx - 1 < first + ATT_CHUNK && ctx - 1 >= first) stage_chunk(first, ctx - 1);
	uint32_t qa[4][4];
	dec_q_frags(qa, q, t, nh, kvh, G, g, tq);
	float o[8][4];
#pragma unroll
	for (int i = 0; i < 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
	float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
	const uint32_t vs_base = (uint32_t)__cvta_generic_to_shared(vs);
	for (int c0 = first; c0 < k1; c0 += DEC_WARPS * ATT_CHUNK) {
		if (c0 != first) stage_chunk(c0, -1);
		dec_mma_chunk(qa, ks, vs_base, min(ATT_CHUNK, k1 - c0), scale, lane, o, m0, m1, l0, l1);
		__syncwarp();
	}
	dec_merge<DEC_WARPS>(stage, o, m0, m1, l0, l1, t, nh, kvh, G, s, nsplit, pacc, pm, pl, nullptr);
}

// Decode attention, deep form (DCU_DEC_RING): 8 warps, each with a ring of
// two stages filled by cp.async, so that a block keeps up to 16 chunks
// (128 KB of keys and values) in flight and one block can take a
// long split. A token whose keys all lie in split 0 (pos < P) has its
// result written normalized to out, so with one split per token no
// combine kernel runs; the others leave partial sums. Each warp's first
// two chunks are asked for before griddepcontrol.wait, without the
// token's own key, which the kernel before (QKV) appends. Grid (T, nkv,
// nsplit), 32 * RING_WARPS threads, ring_smem(P, tpb) bytes.
#define RING_WARPS 8
#define RING_STAGE (ATT_CHUNK * MMA_KS) // bf16 elements of one K or V stage
#define RING_PMAX 512                   // longest split: two chunks a warp, all asked for at once
static size_t ring_smem(int P, int tpb) {
	return sizeof(__nv_bfloat16) * 2 * 2 * RING_WARPS * RING_STAGE + sizeof(int32_t) * (P / tpb + 2);
}

__global__ void __launch_bounds__(32 * RING_WARPS, 1)
    attn_ring_dec_kernel(const float *__restrict__ q, const int32_t *__restrict__ pos, const int32_t *__restrict__ btoff,
                         const int32_t *__restrict__ tables, const __nv_bfloat16 *__restrict__ kv_layer,
                         size_t block_stride, int nh, int nkv, int tpb, int P, int nsplit, float scale,
                         float *__restrict__ pacc, float *__restrict__ pm, float *__restrict__ pl,
                         __nv_bfloat16 *__restrict__ out) {
	pdl_trigger();
	constexpr int D = 64;
	static_assert(DEC_MERGE_BYTES(RING_WARPS) <= sizeof(__nv_bfloat16) * 2 * 2 * RING_WARPS * RING_STAGE, "merge fits");
	extern __shared__ __align__(16) unsigned char ring_mem[]; // [warp][stage][K, V][RING_STAGE], then the block ids
	__nv_bfloat16 *ring = (__nv_bfloat16 *)ring_mem;
	int32_t *bts = (int32_t *)(ring + 2 * 2 * RING_WARPS * RING_STAGE);
	const int t = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
	const int G = nh / nkv;
	const int ctx = pos[t] + 1, own = ctx - 1;
	const int k0 = s * P;
	if (k0 >= ctx) return;
	const int k1 = min(k0 + P, ctx);
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int g = lane >> 2, tq = lane & 3;
	const int b0 = k0 / tpb;
	split_table(bts, tables + btoff[t], b0, (k1 - 1) / tpb);
	const size_t plane = (size_t)tpb * nkv * D;
	// Ask for the chunk of keys [c0, c0+32) (lane: key c0+lane; zeros past
	// k1) in stage st: which 0 every key but the own one, 1 every key, 2
	// only the own key.
	auto issue = [&](int c0, int st, int which) {
		__nv_bfloat16 *ks = ring + (size_t)(warp * 2 + st) * 2 * RING_STAGE, *vs = ks + RING_STAGE;
		const int key = c0 + lane;
		if ((which == 0 && key == own) || (which == 2 && key != own)) return;
		const bool ok = key < k1;
		const __nv_bfloat16 *kp = kv_layer;
		if (ok) kp += (size_t)bts[key / tpb - b0] * block_stride + (size_t)(key % tpb) * nkv * D + (size_t)kvh * D;
#pragma unroll
		for (int u = 0; u < 8; u++) {
			cp_async16(ks + lane * MMA_KS + 8 * u, kp + 8 * u, ok);
			cp_async16(vs + lane * MMA_KS + 8 * u, ok ? kp + plane + 8 * u : kp, ok);
		}
	};
	auto commit = []() { asm volatile("cp.async.commit_group;\n" ::); };
	const int first = k0 + warp * ATT_CHUNK, stride = RING_WARPS * ATT_CHUNK;
	for (int i = 0; i < 2; i++) {
		if (first + i * stride < k1) issue(first + i * stride, i, 0);
		commit();
	}
	pdl_wait();
	for (int i = 0; i < 2; i++) {
		const int c0 = first + i * stride;
		if (c0 < k1 && own >= c0 && own < c0 + ATT_CHUNK) issue(c0, i, 2);
	}
	commit();
	uint32_t qa[4][4];
	dec_q_frags(qa, q, t, nh, kvh, G, g, tq);
	float o[8][4];
#pragma unroll
	for (int i = 0; i < 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
	float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
	asm volatile("cp.async.wait_group 0;\n" ::);
	__syncwarp();
	for (int i = 0, c0 = first; c0 < k1; i++, c0 += stride) {
		if (i > 0) {
			// every group but the newest (chunk i+1's) is complete: chunk i is
			asm volatile("cp.async.wait_group 1;\n" ::);
			__syncwarp();
		}
		const int st = i & 1;
		const __nv_bfloat16 *ks = ring + (size_t)(warp * 2 + st) * 2 * RING_STAGE;
		const uint32_t vs_base = (uint32_t)__cvta_generic_to_shared(ks + RING_STAGE);
		dec_mma_chunk(qa, ks, vs_base, min(ATT_CHUNK, k1 - c0), scale, lane, o, m0, m1, l0, l1);
		__syncwarp(); // the stage is free again
		if (c0 + 2 * stride < k1) issue(c0 + 2 * stride, st, 1);
		commit();
	}
	asm volatile("cp.async.wait_all;\n" ::);
	dec_merge<RING_WARPS>(ring, o, m0, m1, l0, l1, t, nh, kvh, G, s, nsplit, pacc, pm, pl, pos[t] < P ? out : nullptr);
}

// Combine the splits: out[t][h*D+d] = sum_s acc_s e^{m_s-M} / sum_s l_s e^{m_s-M}.
// One thread per d (blockDim >= D).
// WIDE (small grids: decode steps): the splits are taken 16 at a time with
// every load of a group issued before the first is used, so the combine
// costs about one trip to memory per group (it is on the critical path of
// every decode step), with the running sums rescaled between groups. Its
// registers cost occupancy, so large grids (prefill) loop split by split.
// PDL: launched with programmatic dependent launch (the fused decode path).
template <bool PDL, bool WIDE, typename O = __nv_bfloat16>
__global__ void attn_reduce_kernel(const int32_t *__restrict__ pos, const float *__restrict__ pacc,
                                   const float *__restrict__ pm, const float *__restrict__ pl, int nh, int D,
                                   int P, int nsplit, int direct, O *__restrict__ out) {
	if (PDL) {
		pdl_trigger();
		pdl_wait();
	}
	constexpr int NB = WIDE ? 16 : 1;
	const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
	const int ns = pos[t] / P + 1;
	if (direct && ns == 1) return; // the attention kernel wrote this row itself
	const size_t base = ((size_t)t * nh + h) * nsplit;
	if (!WIDE) {
		float M = -INFINITY;
		for (int s = 0; s < ns; s++) M = fmaxf(M, pm[base + s]);
		float L = 0.f, a = 0.f;
		for (int s = 0; s < ns; s++) {
			const float w = __expf(pm[base + s] - M);
			L += pl[base + s] * w;
			if (d < D) a += pacc[(base + s) * D + d] * w;
		}
		if (d < D) out[((size_t)t * nh + h) * D + d] = fromf<O>(a / L);
		return;
	}
	float M = -INFINITY, L = 0.f, a = 0.f;
	for (int s0 = 0; s0 < ns; s0 += NB) {
		float mv[NB], lv[NB], av[NB];
#pragma unroll
		for (int j = 0; j < NB; j++) {
			const int s = s0 + j;
			const bool ok = s < ns;
			mv[j] = ok ? pm[base + s] : -INFINITY;
			lv[j] = ok ? pl[base + s] : 0.f;
			av[j] = ok && d < D ? pacc[(base + s) * D + d] : 0.f;
		}
		float Mn = M;
#pragma unroll
		for (int j = 0; j < NB; j++) Mn = fmaxf(Mn, mv[j]);
		const float c = __expf(M - Mn); // 0 on the first group (M = -inf, Mn finite: split 0 holds key 0)
		L *= c;
		a *= c;
#pragma unroll
		for (int j = 0; j < NB; j++) {
			const float w = __expf(mv[j] - Mn);
			L += lv[j] * w;
			a += av[j] * w;
		}
		M = Mn;
	}
	if (d < D) out[((size_t)t * nh + h) * D + d] = fromf<O>(a / L);
}

// act[t][i] = W(silu(gu[t][i]) * gu[t][I+i]); grid (ceil(I/256), T)
template <typename W>
__global__ void silu_mul_kernel(const float *__restrict__ gu, W *__restrict__ act, int I) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= I) return;
	size_t t = blockIdx.y;
	float g = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i];
	act[t * I + i] = fromf<W>(g / (1.f + (sizeof(W) == 4 ? expf(-g) : __expf(-g))) * u);
}

// The same from bf16 gate/up (prefill: the GEMM writes bf16, half the
// traffic of fp32), 8 elements per thread; I % 8 == 0.
__global__ void silu_mul_bf16_kernel(const __nv_bfloat16 *__restrict__ gu, __nv_bfloat16 *__restrict__ act, int I) {
	int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
	if (i >= I) return;
	size_t t = blockIdx.y;
	uint4 g8 = *(const uint4 *)(gu + t * 2 * I + i), u8 = *(const uint4 *)(gu + t * 2 * I + I + i);
	const __nv_bfloat162 *g2 = (const __nv_bfloat162 *)&g8, *u2 = (const __nv_bfloat162 *)&u8;
	uint4 o8;
	__nv_bfloat162 *o2 = (__nv_bfloat162 *)&o8;
#pragma unroll
	for (int k = 0; k < 4; k++) {
		float2 g = __bfloat1622float2(g2[k]), u = __bfloat1622float2(u2[k]);
		o2[k] = __floats2bfloat162_rn(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y);
	}
	*(uint4 *)(act + t * I + i) = o8;
}

// argmax over each row (lowest index on ties).
__global__ void argmax_kernel(const float *__restrict__ logits, int V, int32_t *__restrict__ out) {
	int r = blockIdx.x;
	const float *row = logits + (size_t)r * V;
	float best = -INFINITY;
	int bi = 0x7fffffff;
	for (int i = threadIdx.x; i < V; i += blockDim.x) {
		float v = row[i];
		if (v > best || (v == best && i < bi)) { best = v; bi = i; }
	}
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(0xffffffffu, best, o);
		int oi = __shfl_xor_sync(0xffffffffu, bi, o);
		if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
	}
	__shared__ float sv[32];
	__shared__ int si[32];
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	if (lane == 0) { sv[w] = best; si[w] = bi; }
	__syncthreads();
	if (w == 0) {
		int nw = blockDim.x >> 5;
		best = lane < nw ? sv[lane] : -INFINITY;
		bi = lane < nw ? si[lane] : 0x7fffffff;
		for (int o = 16; o > 0; o >>= 1) {
			float ov = __shfl_xor_sync(0xffffffffu, best, o);
			int oi = __shfl_xor_sync(0xffffffffu, bi, o);
			if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
		}
		if (lane == 0) out[r] = bi;
	}
}


// Y[t][o] = beta*Y[t][o] + sum_k W[o][k] X[t][k] for NT <= 4 rows of X
// (decode steps): W is read once with 16-byte loads, the step's dominant
// traffic at small batch; X stays in L1/L2. KS warps share one output row
// (split K, summed in shared memory) so that short matrices still put enough
// loads in flight; a block is 8 warps = 8/KS rows.
template <int NT, int KS>
__global__ void __launch_bounds__(256) gemv_kernel(const __nv_bfloat16 *__restrict__ W, const __nv_bfloat16 *__restrict__ X,
                                                   float *__restrict__ Y, int out, int in, float beta) {
	__shared__ float part[8][NT];
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int row = blockIdx.x * (8 / KS) + warp / KS, ks = warp % KS;
	const int n8 = in / 8;
	const int per = (n8 + KS - 1) / KS, i0 = ks * per, i1 = min(n8, i0 + per);
	float acc[NT];
#pragma unroll
	for (int t = 0; t < NT; t++) acc[t] = 0.f;
	if (row < out) {
		const uint4 *w = (const uint4 *)(W + (size_t)row * in);
#pragma unroll 8
		for (int i = i0 + lane; i < i1; i += 32) {
			uint4 wv = __ldg(w + i);
			const __nv_bfloat162 *w2 = (const __nv_bfloat162 *)&wv;
			float2 wf[4];
#pragma unroll
			for (int u = 0; u < 4; u++) wf[u] = __bfloat1622float2(w2[u]);
#pragma unroll
			for (int t = 0; t < NT; t++) {
				uint4 xv = *((const uint4 *)(X + (size_t)t * in) + i);
				const __nv_bfloat162 *x2 = (const __nv_bfloat162 *)&xv;
#pragma unroll
				for (int u = 0; u < 4; u++) {
					float2 xf = __bfloat1622float2(x2[u]);
					acc[t] += wf[u].x * xf.x + wf[u].y * xf.y;
				}
			}
		}
	}
#pragma unroll
	for (int t = 0; t < NT; t++) {
		float v = warp_sum(acc[t]);
		if (lane == 0) part[warp][t] = v;
	}
	if (KS > 1) __syncthreads();
	if (ks == 0 && lane < NT && row < out) {
		float v = 0.f;
#pragma unroll
		for (int k = 0; k < KS; k++) v += part[warp + k][lane];
		float *y = Y + (size_t)lane * out + row;
		*y = beta != 0.f ? beta * *y + v : v;
	}
}

template <int KS>
static void gemv_launch(int n, const __nv_bfloat16 *W, const __nv_bfloat16 *X, float *Y, int out, int in, float beta,
                        cudaStream_t s) {
	unsigned blocks = (unsigned)((out + 8 / KS - 1) / (8 / KS));
	switch (n) {
	case 1: gemv_kernel<1, KS><<<blocks, 256, 0, s>>>(W, X, Y, out, in, beta); break;
	case 2: gemv_kernel<2, KS><<<blocks, 256, 0, s>>>(W, X, Y, out, in, beta); break;
	case 3: gemv_kernel<3, KS><<<blocks, 256, 0, s>>>(W, X, Y, out, in, beta); break;
	default: gemv_kernel<4, KS><<<blocks, 256, 0, s>>>(W, X, Y, out, in, beta); break;
	}
}

// ---------------------------------------------------------------------------
// Small-batch decode path (steps of at most 4 tokens): one kernel per weight
// matrix, each fusing what surrounds its GEMV.
//
//   norm+QKV+RoPE+append : every block normalizes the step's rows itself
//                          (RMSNorm, 8 KB from L2) into shared memory; a warp
//                          owns rows (j, j+D/2) of a head and rotates them in
//                          its epilogue: q to q_out, k and v into the KV pool;
//   O + residual         : Y += W x;
//   norm+Gate/Up+SiLU*mul: a warp owns gate row i and up row i and writes
//                          bf16(silu(g)*u);
//   Down + residual.
//
// Weight rows are read once with 16-byte streaming loads, the step's
// dominant traffic. Blocks stay resident (two per SM) and loop over the
// units, so the prologue is paid once per block. The kernels are launched
// with programmatic dependent launch: a warp issues its first weight loads
// before griddepcontrol.wait, so the weight stream of one kernel starts
// while the one before it drains. Every read or write of data that an
// earlier kernel touches comes after the wait.

// No L2 prefetch-size hint: with L2::256B a batch-1 step took 9-13 us
// longer on an H100; L2::128B measured as fast as none (docs/PERFORMANCE.md).
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
	uint4 v;
	asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
	             : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
	             : "l"(p));
	return v;
}

enum { FG_STORE = 0, FG_RESID = 1, FG_SILU = 2, FG_ROPE = 3 };

struct FgArgs {
	const __nv_bfloat16 *W;    // [out][in]
	const float *xf;           // fp32 rows to normalize (norm != null), row stride in
	const int32_t *rows;       // xf row of input t (null: t)
	const __nv_bfloat16 *norm; // RMSNorm weight [in], or null: inputs are xb
	const __nv_bfloat16 *xb;   // bf16 inputs [NT][in]
	float eps;
	int out, in;
	float *Y;                  // FG_STORE, FG_RESID: [NT][out]
	__nv_bfloat16 *act;        // FG_SILU: [NT][out/2]
	const int32_t *pos, *slot; // FG_ROPE
	const float *inv_freq;
	float *q_out;              // [NT][nh][D]
	__nv_bfloat16 *kv_layer;
	size_t block_stride;
	int nh, nkv, D, tpb;
	int pre; // epilogue inputs of a warp's first unit loaded ahead (DCU_FG_PRE, FgPre)
	// The argmax folded into the LM head (FG_STORE, DCU_FG_AMAX): when amax
	// is set, each block folds its rows' (logit, id) keys into amax[t]
	// (fg_key), and the last block to finish (amax_count) writes ids_out[t]
	// and resets amax and amax_count for the next step.
	unsigned long long *amax;
	unsigned *amax_count;
	int32_t *ids_out;
};

// A (logit, id) pair as one integer that orders as argmax_kernel does: the
// larger logit, and of equal logits the smaller id; a NaN never beats a
// number. 0 is below every key.
__device__ __forceinline__ unsigned long long fg_key(float v, int id) {
	if (v != v) v = -INFINITY;
	unsigned u = __float_as_uint(v + 0.f); // -0 as +0
	u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
	return ((unsigned long long)u << 32) | (0xffffffffu - (unsigned)id);
}

// The end of an FG_STORE kernel with FgArgs.amax: lane t < NT of each warp
// holds its best key for input t.
template <int NT>
__device__ __forceinline__ void fg_argmax_tail(const FgArgs &a, unsigned long long best) {
	static_assert(NT <= 4, "at most 4 inputs (fuse_max)");
	__shared__ unsigned long long bb[8][4];
	__shared__ int last;
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	if (lane < NT) bb[warp][lane] = best;
	__syncthreads();
	if (threadIdx.x < NT) {
		unsigned long long k = bb[0][threadIdx.x];
		for (int w = 1; w < (int)(blockDim.x >> 5); w++) k = max(k, bb[w][threadIdx.x]);
		atomicMax(a.amax + threadIdx.x, k);
		__threadfence();
	}
	__syncthreads();
	if (threadIdx.x == 0) last = atomicAdd(a.amax_count, 1u) == gridDim.x - 1;
	__syncthreads();
	if (last && threadIdx.x < NT) {
		__threadfence();
		const unsigned long long k = atomicExch(a.amax + threadIdx.x, 0ull);
		a.ids_out[threadIdx.x] = (int32_t)(0xffffffffu - (unsigned)(k & 0xffffffffu));
		if (threadIdx.x == 0) atomicExch(a.amax_count, 0u);
	}
}

// Epilogue inputs of a warp's first unit u, loaded ahead so that the
// epilogue makes no trip to memory of its own: lane t's residual value
// (FG_RESID, loaded right after the wait, when the kernels that wrote it
// are done) or its RoPE angle and KV slot (FG_ROPE, before the wait: step
// inputs that no kernel writes). u = -1: none.
struct FgPre {
	int u;
	float y, sn, cs;
	int slot;
};

// A unit is what one warp reads and finishes: two weight rows whose results
// its epilogue combines, (j, j+D/2) of a head for RoPE, then pairs of V rows,
// (gate i, up i) for SiLU; one row otherwise (r1 = -1).
template <int MODE>
__device__ __forceinline__ void fg_rows(const FgArgs &a, int u, int &r0, int &r1) {
	if (MODE == FG_SILU) {
		r0 = u;
		r1 = u + a.out / 2;
	} else if (MODE == FG_ROPE) {
		const int half = a.D / 2, nrot = (a.nh + a.nkv) * half;
		if (u < nrot) {
			r0 = (u / half) * a.D + u % half;
			r1 = r0 + half;
		} else {
			r0 = (a.nh + a.nkv) * a.D + 2 * (u - nrot);
			r1 = r0 + 1;
		}
	} else {
		r0 = u; // one row: more warps for the short matrices
		r1 = -1;
	}
}

__device__ __forceinline__ void fg_dot(float *acc, uint4 wv, const __nv_bfloat16 *xs, int in, int i, int nt) {
	const __nv_bfloat162 *w2 = (const __nv_bfloat162 *)&wv;
	float2 wf[4];
#pragma unroll
	for (int u = 0; u < 4; u++) wf[u] = __bfloat1622float2(w2[u]);
#pragma unroll
	for (int t = 0; t < 4; t++) {
		if (t >= nt) break;
		uint4 xv = *((const uint4 *)(xs + (size_t)t * in) + i);
		const __nv_bfloat162 *x2 = (const __nv_bfloat162 *)&xv;
#pragma unroll
		for (int u = 0; u < 4; u++) {
			float2 xf = __bfloat1622float2(x2[u]);
			acc[t] += wf[u].x * xf.x + wf[u].y * xf.y;
		}
	}
}

// The epilogue of unit u for input t: x1, x2 are the two rows' dot products.
template <int MODE>
__device__ __forceinline__ void fg_epilogue(const FgArgs &a, int u, int r0, int r1, int t, float x1, float x2,
                                            const FgPre &pre) {
	if (MODE == FG_STORE || MODE == FG_RESID) {
		float *y = a.Y + (size_t)t * a.out;
		y[r0] = MODE == FG_RESID ? (u == pre.u ? pre.y : y[r0]) + x1 : x1;
		if (r1 >= 0) y[r1] = MODE == FG_RESID ? y[r1] + x2 : x2;
	} else if (MODE == FG_SILU) {
		const int I = a.out / 2;
		a.act[(size_t)t * I + u] = __float2bfloat16(x1 / (1.f + __expf(-x1)) * x2);
	} else {
		const int D = a.D, half = D / 2, nrot = (a.nh + a.nkv) * half, nkv = a.nkv;
		const int s = u == pre.u ? pre.slot : a.slot[t];
		__nv_bfloat16 *kdst = a.kv_layer + (size_t)(s / a.tpb) * a.block_stride + (size_t)(s % a.tpb) * nkv * D;
		if (u < nrot) {
			const int h = u / half, j = u % half;
			float sn = pre.sn, cs = pre.cs;
			if (u != pre.u) sincosf((float)a.pos[t] * a.inv_freq[j], &sn, &cs);
			const float o1 = x1 * cs - x2 * sn, o2 = x2 * cs + x1 * sn;
			if (h < a.nh) {
				float *q = a.q_out + ((size_t)t * a.nh + h) * D;
				q[j] = o1;
				q[j + half] = o2;
			} else {
				__nv_bfloat16 *k = kdst + (size_t)(h - a.nh) * D;
				k[j] = __float2bfloat16(o1);
				k[j + half] = __float2bfloat16(o2);
			}
		} else {
			__nv_bfloat16 *v = kdst + (size_t)a.tpb * nkv * D + 2 * (u - nrot);
			v[0] = __float2bfloat16(x1);
			v[1] = __float2bfloat16(x2);
		}
	}
}

// The epilogue of unit u for input t = lane (lane < NT), from a warp's
// summed dot products of its two rows for each input; returns the first
// row's (the logit the folded argmax keeps).
template <int NT, int MODE>
__device__ __forceinline__ float fg_lane_epilogue(const FgArgs &a, int u, int r0, int r1, int lane, const float *acc0,
                                                  const float *acc1, const FgPre &pre = FgPre{-1, 0.f, 0.f, 1.f, 0}) {
	float x1 = acc0[0], x2 = acc1[0];
#pragma unroll
	for (int k = 1; k < NT; k++)
		if (lane == k) {
			x1 = acc0[k];
			x2 = acc1[k];
		}
	fg_epilogue<MODE>(a, u, r0, r1, lane, x1, x2, pre);
	return x1;
}

// RMSNorm of NT rows of xf into xs (bf16), by the whole block; the row's
// loads are all issued before the sum when in is a multiple of 1024 up to 4096.
template <int NT>
__device__ __forceinline__ void fg_norm(const FgArgs &a, __nv_bfloat16 *xs) {
	for (int t = 0; t < NT; t++) {
		const float *xr = a.xf + (size_t)(a.rows ? a.rows[t] : t) * a.in;
		__nv_bfloat16 *o = xs + (size_t)t * a.in;
		if (a.in % 1024 == 0 && a.in <= 4096 && blockDim.x == 256) {
			const int J = a.in / 1024;
			float4 v[4];
			float ss = 0.f;
#pragma unroll
			for (int j = 0; j < 4; j++)
				if (j < J) v[j] = ((const float4 *)xr)[threadIdx.x + 256 * j];
#pragma unroll
			for (int j = 0; j < 4; j++)
				if (j < J) ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
			ss = block_sum(ss);
			const float inv = rsqrtf(ss / (float)a.in + a.eps);
#pragma unroll
			for (int j = 0; j < 4; j++)
				if (j < J) {
					const int k = 4 * (threadIdx.x + 256 * j);
					const __nv_bfloat162 *w2 = (const __nv_bfloat162 *)(a.norm + k);
					float2 w0 = __bfloat1622float2(w2[0]), w1 = __bfloat1622float2(w2[1]);
					__nv_bfloat162 *o2 = (__nv_bfloat162 *)(o + k);
					o2[0] = __floats2bfloat162_rn(v[j].x * inv * w0.x, v[j].y * inv * w0.y);
					o2[1] = __floats2bfloat162_rn(v[j].z * inv * w1.x, v[j].w * inv * w1.y);
				}
		} else {
			float ss = 0.f;
			for (int k = threadIdx.x; k < a.in; k += blockDim.x) ss += xr[k] * xr[k];
			ss = block_sum(ss);
			const float inv = rsqrtf(ss / (float)a.in + a.eps);
			for (int k = threadIdx.x; k < a.in; k += blockDim.x) o[k] = __float2bfloat16(xr[k] * inv * __bfloat162float(a.norm[k]));
		}
	}
}

// One warp per unit, blocks of 8 warps looping over the units (the inputs
// are normalized into shared memory once per block). A warp's work is a
// sequence of steps, FG_B 16-byte chunks per lane of each of its unit's two
// rows; the loads of step k+1 are in flight while step k is summed, so the
// weight stream never drains between units.
// KS = 2 splits each unit's inputs between two warps of the block (warps w
// and w+4), which combine through shared memory under a barrier of their
// own: twice the warps on a short matrix.
template <int NT, int MODE, int FG_B, int KS>
__global__ void __launch_bounds__(256, 2) fgemv_kernel(FgArgs a, int units) {
	extern __shared__ __align__(16) unsigned char fg_smem[];
	__nv_bfloat16 *xs = (__nv_bfloat16 *)fg_smem; // [NT][in]
	constexpr bool TWO = MODE == FG_SILU || MODE == FG_ROPE; // two rows per unit
	constexpr int PW = 8 / KS; // units in flight per block
	__shared__ float kpart[PW][2][4];
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int pw = warp % PW, half = warp / PW;
	const int n8 = a.in / 8;
	const int per = (n8 + KS - 1) / KS, k0 = half * per, k1 = min(n8, k0 + per); // this warp's chunks
	const int nb = (per + 32 * FG_B - 1) / (32 * FG_B); // steps per unit
	const int stride = gridDim.x * PW;
	int u = blockIdx.x * PW + pw, b = 0;
	int r0 = -1, r1 = -1;
	if (u < units) fg_rows<MODE>(a, u, r0, r1);
	uint4 c0[FG_B], c1[FG_B];
	// step 0 before waiting on the kernel before (weights only)
#pragma unroll
	for (int j = 0; j < FG_B; j++) {
		const int i = k0 + lane + 32 * j;
		if (u < units && i < k1) {
			c0[j] = ld_stream((const uint4 *)(a.W + (size_t)r0 * a.in) + i);
			if (TWO) c1[j] = ld_stream((const uint4 *)(a.W + (size_t)r1 * a.in) + i);
		}
	}
	pdl_trigger();
	FgPre pre = {-1, 0.f, 0.f, 1.f, 0};
	if (MODE == FG_ROPE && a.pre && u < units && lane < NT) {
		const int half = a.D / 2;
		pre.slot = a.slot[lane];
		if (u < (a.nh + a.nkv) * half) sincosf((float)a.pos[lane] * a.inv_freq[u % half], &pre.sn, &pre.cs);
		pre.u = u;
	}
	pdl_wait();
	if (MODE == FG_RESID && a.pre && u < units && lane < NT) {
		pre.y = a.Y[(size_t)lane * a.out + r0];
		pre.u = u;
	}
	if (a.norm) {
		fg_norm<NT>(a, xs);
	} else {
		const uint4 *src = (const uint4 *)a.xb;
		uint4 *dst = (uint4 *)xs;
		for (int k = threadIdx.x; k < NT * n8; k += blockDim.x) dst[k] = src[k];
	}
	__syncthreads();
	float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};
	unsigned long long best = 0; // FgArgs.amax: this lane's best key for input t = lane
	while (u < units) {
		// the next step: the next chunks of this unit, or the first of the next unit
		int nu = u, nbb = b + 1, n0 = r0, n1 = r1;
		if (nbb == nb) {
			nu = u + stride;
			nbb = 0;
			if (nu < units) fg_rows<MODE>(a, nu, n0, n1);
		}
		uint4 x0[FG_B], x1[FG_B];
		if (nu < units) {
			const uint4 *w0 = (const uint4 *)(a.W + (size_t)n0 * a.in);
			const uint4 *w1 = (const uint4 *)(a.W + (size_t)(TWO ? n1 : n0) * a.in);
#pragma unroll
			for (int j = 0; j < FG_B; j++) {
				const int i = k0 + nbb * 32 * FG_B + lane + 32 * j;
				if (i < k1) {
					x0[j] = ld_stream(w0 + i);
					if (TWO) x1[j] = ld_stream(w1 + i);
				}
			}
		}
#pragma unroll
		for (int j = 0; j < FG_B; j++) {
			const int i = k0 + b * 32 * FG_B + lane + 32 * j;
			if (i < k1) {
				fg_dot(acc0, c0[j], xs, a.in, i, NT);
				if (TWO) fg_dot(acc1, c1[j], xs, a.in, i, NT);
			}
		}
		if (b == nb - 1) {
#pragma unroll
			for (int t = 0; t < NT; t++) {
				acc0[t] = warp_sum(acc0[t]);
				if (TWO) acc1[t] = warp_sum(acc1[t]);
			}
			if (KS == 2) {
				// the second half hands its sums to the first (named barrier
				// 1+pw for the two warps; both run the same units)
				if (half == 1 && lane == 0) {
#pragma unroll
					for (int t = 0; t < NT; t++) {
						kpart[pw][0][t] = acc0[t];
						kpart[pw][1][t] = acc1[t];
					}
				}
				asm volatile("bar.sync %0, 64;" ::"r"(1 + pw) : "memory");
				if (half == 0) {
#pragma unroll
					for (int t = 0; t < NT; t++) {
						acc0[t] += kpart[pw][0][t];
						acc1[t] += kpart[pw][1][t];
					}
				}
				asm volatile("bar.sync %0, 64;" ::"r"(1 + pw) : "memory");
			}
			if (lane < NT && half == 0) {
				const float v = fg_lane_epilogue<NT, MODE>(a, u, r0, r1, lane, acc0, acc1, pre);
				if (MODE == FG_STORE && a.amax) best = max(best, fg_key(v, r0));
			}
#pragma unroll
			for (int t = 0; t < 4; t++) acc0[t] = acc1[t] = 0.f;
		}
		u = nu;
		b = nbb;
		r0 = n0;
		r1 = n1;
#pragma unroll
		for (int j = 0; j < FG_B; j++) {
			c0[j] = x0[j];
			c1[j] = x1[j];
		}
	}
	if (MODE == FG_STORE && a.amax) fg_argmax_tail<NT>(a, best);
}

// bal: a grid whose warps all get the same number of units where one of
// at least half the blocks allows it (DCU_FG_BAL=1: Gate/Up of TinyLlama,
// 5632 units, gets 176 blocks of 4 units a warp instead of 264 blocks where
// two warps in three read 3 units and the rest 2).
template <int NT, int MODE, int B, int KS>
static cudaError_t fg_launch1(const FgArgs &a, int sms, int occ, int pdl, cudaStream_t s, int bal) {
	const int units = (MODE == FG_STORE || MODE == FG_RESID) ? a.out : a.out / 2;
	const size_t smem = (size_t)NT * a.in * 2;
	if (occ <= 0) {
		// as many blocks as fit on an SM (registers, shared memory), cached per kernel and size
		static int cached[2] = {0, -1};
		if (cached[1] != (int)smem) {
			int n = 0;
			cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fgemv_kernel<NT, MODE, B, KS>, 256, smem);
			if (e != cudaSuccess) return e;
			cached[0] = n < 1 ? 1 : n;
			cached[1] = (int)smem;
		}
		occ = cached[0];
	}
	constexpr int PW = 8 / KS;
	int blocks = (units + PW - 1) / PW;
	if (blocks > occ * sms) blocks = occ * sms;
	if (bal && units % PW == 0 && units / PW > blocks)
		for (int b = blocks; b >= blocks / 2; b--)
			if ((units / PW) % b == 0) {
				blocks = b;
				break;
			}
	PdlLaunch l(dim3((unsigned)blocks), dim3(256), smem, s, pdl);
	return cudaLaunchKernelEx(&l.cfg, fgemv_kernel<NT, MODE, B, KS>, a, units);
}

template <int MODE, int B, int KS>
static cudaError_t fg_launch2(int nt, const FgArgs &a, int sms, int occ, int pdl, cudaStream_t s, int bal) {
	switch (nt) {
	case 1: return fg_launch1<1, MODE, B, KS>(a, sms, occ, pdl, s, bal);
	case 2: return fg_launch1<2, MODE, B, KS>(a, sms, occ, pdl, s, bal);
	case 3: return fg_launch1<3, MODE, B, KS>(a, sms, occ, pdl, s, bal);
	default: return fg_launch1<4, MODE, B, KS>(a, sms, occ, pdl, s, bal);
	}
}

// b: chunks per lane and row per step (2, 4 or 8); occ: blocks per SM (0:
// as many as fit); ks: warps per unit (1 or 2)
template <int MODE>
static cudaError_t fg_launch(int nt, const FgArgs &a, int sms, int b, int occ, int pdl, cudaStream_t s, int ks, int bal) {
	if (ks == 2) {
		if (b == 2) return fg_launch2<MODE, 2, 2>(nt, a, sms, occ, pdl, s, bal);
		if (b == 4) return fg_launch2<MODE, 4, 2>(nt, a, sms, occ, pdl, s, bal);
		return fg_launch2<MODE, 8, 2>(nt, a, sms, occ, pdl, s, bal);
	}
	if (b == 2) return fg_launch2<MODE, 2, 1>(nt, a, sms, occ, pdl, s, bal);
	if (b == 4) return fg_launch2<MODE, 4, 1>(nt, a, sms, occ, pdl, s, bal);
	return fg_launch2<MODE, 8, 1>(nt, a, sms, occ, pdl, s, bal);
}

// Largest dynamic shared memory any fused GEMV of the model asks for.
template <int MODE, int KS>
static cudaError_t fg_allow_smem_ks(int bytes) {
	cudaError_t e = cudaSuccess;
	const void *fs[] = {(const void *)fgemv_kernel<1, MODE, 4, KS>, (const void *)fgemv_kernel<2, MODE, 4, KS>,
	                    (const void *)fgemv_kernel<3, MODE, 4, KS>, (const void *)fgemv_kernel<4, MODE, 4, KS>,
	                    (const void *)fgemv_kernel<1, MODE, 8, KS>, (const void *)fgemv_kernel<2, MODE, 8, KS>,
	                    (const void *)fgemv_kernel<3, MODE, 8, KS>, (const void *)fgemv_kernel<4, MODE, 8, KS>,
	                    (const void *)fgemv_kernel<1, MODE, 2, KS>, (const void *)fgemv_kernel<2, MODE, 2, KS>,
	                    (const void *)fgemv_kernel<3, MODE, 2, KS>, (const void *)fgemv_kernel<4, MODE, 2, KS>};
	for (const void *f : fs)
		if (e == cudaSuccess) e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
	return e;
}

template <int MODE>
static cudaError_t fg_allow_smem(int bytes) {
	cudaError_t e = fg_allow_smem_ks<MODE, 1>(bytes);
	return e == cudaSuccess ? fg_allow_smem_ks<MODE, 2>(bytes) : e;
}

// ---------------------------------------------------------------------------
// Bulk-copy fused GEMV (DCU_BULK=1, for steps of at most 4 tokens): the same
// units, prologues and epilogues as fgemv_kernel, but the weights travel
// into a ring of shared-memory slots by the copy engine (cp.async.bulk,
// completion counted on an mbarrier per slot) instead of through registers.
// A producer warp keeps every slot of the ring in flight, so an SM can have
// far more bytes outstanding than its registers would hold, and its first
// slots are asked for before griddepcontrol.wait: a kernel launched while
// the one before it still runs (programmatic dependent launch) streams its
// weights during that one's tail, and during attention, which reads little.
// Each block owns a contiguous range of units, one unit per slot, and its
// eight consumer warps take the units in turn, each a whole unit.

constexpr int BK_WARPS = 8;                    // consumer warps
constexpr int BK_THREADS = 32 * (BK_WARPS + 1); // and the producer warp

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t *b, uint32_t count) {
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(b)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t *b) {
	asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(b)) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, uint32_t bytes) {
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(b)), "r"(bytes) : "memory");
}

// Waits until the barrier's phase of the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) {
	uint32_t done = 0;
	while (!done)
		asm volatile("{\n\t.reg .pred p;\n\t"
		             "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
		             "selp.u32 %0, 1, 0, p;\n\t}"
		             : "=r"(done)
		             : "r"(smem_addr(b)), "r"(parity)
		             : "memory");
}

// bytes (a multiple of 16) from global src to shared dst, both 16-byte
// aligned, counted on bar when they have landed.
__device__ __forceinline__ void bulk_load(void *dst, const void *src, uint32_t bytes, uint64_t *bar) {
	asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
	                 smem_addr(dst)),
	             "l"(src), "r"(bytes), "r"(smem_addr(bar))
	             : "memory");
}

// Asks for unit u's weight rows into slot dst; one thread.
template <int MODE>
__device__ __forceinline__ void bk_fill(const FgArgs &a, int u, unsigned char *dst, uint64_t *full) {
	constexpr bool TWO = MODE == FG_SILU || MODE == FG_ROPE;
	const uint32_t row = (uint32_t)a.in * 2;
	int r0, r1;
	fg_rows<MODE>(a, u, r0, r1);
	mbar_expect_tx(full, TWO ? 2 * row : row);
	bulk_load(dst, a.W + (size_t)r0 * a.in, row, full);
	if (TWO) bulk_load(dst + row, a.W + (size_t)r1 * a.in, row, full);
}

// RMSNorm of NT rows of a.xf into xs (bf16) by the consumer warps, which
// meet at named barrier 1.
template <int NT>
__device__ __forceinline__ void bk_norm(const FgArgs &a, __nv_bfloat16 *xs, float *red) {
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	for (int t = 0; t < NT; t++) {
		const float *xr = a.xf + (size_t)(a.rows ? a.rows[t] : t) * a.in;
		float ss = 0.f;
		for (int k = tid; k < a.in; k += 32 * BK_WARPS) ss += xr[k] * xr[k];
		ss = warp_sum(ss);
		if (lane == 0) red[t * BK_WARPS + warp] = ss;
	}
	asm volatile("bar.sync 1, %0;" ::"n"(32 * BK_WARPS) : "memory");
	for (int t = 0; t < NT; t++) {
		float ss = 0.f;
#pragma unroll
		for (int w = 0; w < BK_WARPS; w++) ss += red[t * BK_WARPS + w];
		const float inv = rsqrtf(ss / (float)a.in + a.eps);
		const float *xr = a.xf + (size_t)(a.rows ? a.rows[t] : t) * a.in;
		__nv_bfloat16 *o = xs + (size_t)t * a.in;
		for (int k = tid; k < a.in; k += 32 * BK_WARPS) o[k] = __float2bfloat16(xr[k] * inv * __bfloat162float(a.norm[k]));
	}
}

// Shared memory of a bulk GEMV block: the ring, the inputs, the partial sums
// and the slots' barriers.
__host__ __device__ inline size_t bk_smem(int nt, int in, int two, int slots) {
	const size_t slot = (size_t)(two ? 2 : 1) * in * 2;
	return (size_t)slots * slot + (size_t)nt * in * 2 + sizeof(float) * 4 * BK_WARPS + 2 * sizeof(uint64_t) * slots;
}

template <int NT, int MODE>
__global__ void __launch_bounds__(BK_THREADS, 3) bgemv_kernel(FgArgs a, int units, int slots) {
	extern __shared__ __align__(128) unsigned char bk_mem[];
	constexpr bool TWO = MODE == FG_SILU || MODE == FG_ROPE;
	const int n8 = a.in / 8;
	const size_t slot_bytes = (size_t)(TWO ? 2 : 1) * a.in * 2;
	unsigned char *ring = bk_mem;
	__nv_bfloat16 *xs = (__nv_bfloat16 *)(ring + (size_t)slots * slot_bytes);
	float *red = (float *)(xs + (size_t)NT * a.in); // [4][BK_WARPS]
	uint64_t *full = (uint64_t *)(red + 4 * BK_WARPS), *empty = full + slots;
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int u0 = (int)((long long)blockIdx.x * units / gridDim.x);
	const int n = (int)((long long)(blockIdx.x + 1) * units / gridDim.x) - u0;
	if (threadIdx.x == 0) {
		for (int s = 0; s < slots; s++) {
			mbar_init(&full[s], 1);
			mbar_init(&empty[s], 1);
		}
		asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
		// the first slots before waiting on the kernel before: weights only
		for (int j = 0; j < n && j < slots; j++) bk_fill<MODE>(a, u0 + j, ring + (size_t)j * slot_bytes, &full[j]);
	}
	__syncthreads();
	pdl_trigger();
	if (warp == BK_WARPS) {
		// the producer: refill each slot once its consumer is done with it
		if (lane == 0)
			for (int j = slots; j < n; j++) {
				const int s = j % slots;
				mbar_wait(&empty[s], (uint32_t)((j / slots - 1) & 1));
				bk_fill<MODE>(a, u0 + j, ring + (size_t)s * slot_bytes, &full[s]);
			}
		return;
	}
	pdl_wait();
	if (a.norm) {
		bk_norm<NT>(a, xs, red);
	} else {
		const uint4 *src = (const uint4 *)a.xb;
		uint4 *dst = (uint4 *)xs;
		for (int k = threadIdx.x; k < NT * n8; k += 32 * BK_WARPS) dst[k] = src[k];
	}
	asm volatile("bar.sync 1, %0;" ::"n"(32 * BK_WARPS) : "memory");
	// consumer warp w takes units w, w+nw, ...: whole rows, so that the
	// warps' chains of loads, sums and epilogues overlap. nw divides the
	// slots, so each slot has one consumer, which never waits for a slot
	// more than one phase ahead (a parity wait could not tell).
	int nw = slots < BK_WARPS ? slots : BK_WARPS;
	while (slots % nw) nw--;
	if (warp >= nw) return;
	for (int j = warp; j < n; j += nw) {
		const int s = j % slots, u = u0 + j;
		mbar_wait(&full[s], (uint32_t)((j / slots) & 1));
		const uint4 *w = (const uint4 *)(ring + (size_t)s * slot_bytes);
		float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};
		for (int c = lane; c < n8; c += 32) {
			fg_dot(acc0, w[c], xs, a.in, c, NT);
			if (TWO) fg_dot(acc1, w[n8 + c], xs, a.in, c, NT);
		}
		__syncwarp();
		if (lane == 0) mbar_arrive(&empty[s]);
#pragma unroll
		for (int t = 0; t < NT; t++) {
			acc0[t] = warp_sum(acc0[t]);
			if (TWO) acc1[t] = warp_sum(acc1[t]);
		}
		if (lane < NT) {
			int r0, r1;
			fg_rows<MODE>(a, u, r0, r1);
			fg_lane_epilogue<NT, MODE>(a, u, r0, r1, lane, acc0, acc1);
		}
	}
}

// One block per SM, each taking about budget bytes of shared memory (as
// many slots as fit): two blocks of different kernels and an attention
// block fit on one SM at the default (DCU_BULK_SMEM, KB).
template <int NT, int MODE>
static cudaError_t bk_launch1(const FgArgs &a, int sms, int budget, int pdl, cudaStream_t s) {
	constexpr bool TWO = MODE == FG_SILU || MODE == FG_ROPE;
	const int units = TWO ? a.out / 2 : a.out;
	const int blocks = units < sms ? units : sms;
	const int per = (units + blocks - 1) / blocks;
	const size_t slot = (size_t)(TWO ? 2 : 1) * a.in * 2, base = bk_smem(NT, a.in, TWO, 0);
	int slots = (size_t)budget > base ? (int)(((size_t)budget - base) / (slot + 2 * sizeof(uint64_t))) : 0;
	if (slots < 2) slots = 2;
	if (slots > per) slots = per;
	// a multiple of the consumer warps (bgemv_kernel): as many slots as
	// some count of up to BK_WARPS warps allows
	if (slots > BK_WARPS) {
		int best = BK_WARPS * (slots / BK_WARPS);
		for (int nw = BK_WARPS - 1; nw >= BK_WARPS / 2; nw--)
			if (nw * (slots / nw) > best) best = nw * (slots / nw);
		slots = best;
	}
	PdlLaunch l(dim3((unsigned)blocks), dim3(BK_THREADS), bk_smem(NT, a.in, TWO, slots), s, pdl);
	return cudaLaunchKernelEx(&l.cfg, bgemv_kernel<NT, MODE>, a, units, slots);
}

template <int MODE>
static cudaError_t bk_launch(int nt, const FgArgs &a, int sms, int budget, int pdl, cudaStream_t s) {
	switch (nt) {
	case 1: return bk_launch1<1, MODE>(a, sms, budget, pdl, s);
	case 2: return bk_launch1<2, MODE>(a, sms, budget, pdl, s);
	case 3: return bk_launch1<3, MODE>(a, sms, budget, pdl, s);
	default: return bk_launch1<4, MODE>(a, sms, budget, pdl, s);
	}
}

template <int MODE>
static cudaError_t bk_allow_smem(int bytes) {
	cudaError_t e = cudaSuccess;
	const void *fs[] = {(const void *)bgemv_kernel<1, MODE>, (const void *)bgemv_kernel<2, MODE>,
	                    (const void *)bgemv_kernel<3, MODE>, (const void *)bgemv_kernel<4, MODE>};
	for (const void *f : fs)
		if (e == cudaSuccess) e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
	return e;
}

// ---------------------------------------------------------------------------
// Gate/Up's first rows asked of L2 during attention (DCU_L2PF). In a
// one-token step the memory bus is mostly idle from the end of QKV until O
// streams its weights: attention reads about 1 MB a layer, through a chain
// of dependent trips. A one-warp-per-block kernel on a second stream, ordered
// after QKV, asks L2 for the first n bytes of Gate/Up's gate rows and of its
// up rows (the rows its first warps read), one chunk of each per thread,
// so that Gate/Up finds them there. Measured: docs/PERFORMANCE.md.
constexpr unsigned L2PF_CHUNK = 16 * 1024;

__global__ void l2_prefetch_kernel(const char *__restrict__ gate, const char *__restrict__ up, unsigned n) {
	const size_t off = (size_t)(blockIdx.x * blockDim.x + threadIdx.x) * L2PF_CHUNK;
	if (off >= n) return;
	const unsigned k = (unsigned)min((size_t)L2PF_CHUNK, n - off);
	asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(gate + off), "r"(k) : "memory");
	asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(up + off), "r"(k) : "memory");
}

// ---------------------------------------------------------------------------
// Model

struct Layer {
	__nv_bfloat16 *attn_norm, *qkv, *o, *mlp_norm, *gate_up, *down;
};

struct dcu_model {
	dcu_config c;
	cudaStream_t stream;
	cublasHandle_t blas;
	__nv_bfloat16 *wbuf; // all weights (float in the fp32 mode: es bytes per element)
	int es;              // bytes per weight, GEMM-input and KV element: 2 (bf16) or 4 (fp32 mode)
	size_t wbytes;
	__nv_bfloat16 *embed, *norm, *lm_head;
	std::vector<Layer> layers;
	__nv_bfloat16 *kv;
	size_t kv_bytes;
	float *inv_freq;
	int sms;
	// scratch, grown on demand
	int cap_t, cap_r, cap_ints;
	size_t cap_part;
	float *x, *qkv, *q, *gu, *logits, *pacc, *pm, *pl;
	__nv_bfloat16 *xn, *attn, *act;
	int32_t *d_ints, *d_argmax; // d_argmax: the step's ids (argmax or dcu_sample), read by the next step's negative tokens
	int32_t *h_ints[2];         // pinned staging, alternating so that a step can be prepared while the last one runs
	cudaEvent_t ev_ints[2];     // the copy out of h_ints[k] is done
	int ints_k, prev_r;         // staging buffer in use; rows of the previous step
	cudaEvent_t ev0, ev1;
	void *blas_ws;
	// CUDA graphs of decode steps, keyed by the step's shape; dropped when
	// the scratch buffers move.
	struct Graph { int T, R, P, ns, am, nt, qt, dec, ring; cudaGraphExec_t exec; };
	// the current step's attention plan (prepare)
	int nt, qt, P, nsplit; // tiles (0: per-token kernel), tokens per tile, split size and count
	int use_dec;           // the decode kernel (tiles of one token, batch >= dec_min)
	int use_ring;          // its deep form, attn_ring_dec_kernel (DCU_DEC_RING)
	int use_mma;           // the tensor-core prefill kernel (tiles of up to 16 tokens)
	int pf_p;              // its split (DCU_PF_P keys)
	int pf_kc;             // its keys per chunk (DCU_PF_KC: 128, or 64)
	// tuning knobs (environment, for experiments): DCU_FILL blocks per SM the
	// split plan aims at, DCU_PMAX the longest split (<= 512), DCU_DEC_MIN the
	// smallest batch for the decode kernel
	int fill, pmax, pmin, dec_min;
	int mma_dec; // tensor-core decode kernel for head dim 64 (DCU_NO_MMA=1 turns it off)
	int ring;    // DCU_DEC_RING: fewest splits per token and kv head for attn_ring_dec_kernel (0: never that kernel)
	std::vector<Graph> graphs;
	int use_graphs;
	int prof_on, prof_n;
	int use_gemv; // own GEMV kernel for steps of at most 4 tokens (DCU_NO_GEMV=1 turns it off)
	int fuse;     // fused GEMV kernels for steps of at most fuse_max tokens (DCU_NO_FUSE=1 turns them off)
	int fuse_max;
	int pdl;      // programmatic dependent launch between them (DCU_NO_PDL=1 turns it off)
	int gu_bf16;  // prefill Gate/Up GEMM writes bf16 (DCU_GU_F32=1: fp32)
	// fused GEMV: 16-byte chunks per lane and row per step for one-row units
	// (O, Down, LM head: DCU_FG_B1) and two-row units (QKV, Gate/Up:
	// DCU_FG_B2), 2|4|8; blocks per SM (DCU_FG_OCC, 0: all that fit)
	int fg_b1, fg_b2, fg_occ;
	int skip;     // DCU_DIAG_SKIP: kernels of the fused path left out, for timing only (results are wrong)
	int fg_split; // bit 1: QKV, bit 2: Gate/Up, bit 4: O and Down: two warps per unit (DCU_FG_SPLIT)
	int fg_pre;     // DCU_FG_PRE: epilogue inputs loaded ahead (FgPre)
	int fg_amax;    // DCU_FG_AMAX: the argmax folded into the LM head (FgArgs.amax)
	unsigned long long *d_amax; // its keys, [4], then its block counter; zero between steps
	int fg_occ_mask; // DCU_FG_OCC_MASK: which matrices DCU_FG_OCC applies to (bits as DCU_BULK)
	int fg_bal;    // equal units per warp where a smaller grid allows it (DCU_FG_BAL=1)
	// the bulk-copy GEMV for the fused path, per matrix (DCU_BULK: 1 all, or
	// a mask: 2 QKV, 4 O, 8 Gate/Up, 16 Down, 32 LM head; slower so far:
	// docs/PERFORMANCE.md)
	int bulk;
	int bulk_smem; // its shared memory per block, bytes (DCU_BULK_SMEM, KB)
	// DCU_L2PF: KB of Gate/Up's gate rows, and as many of its up rows,
	// asked of L2 during attention in one-token steps of the fused path
	// (l2_prefetch_kernel; 0: none)
	int l2pf;
	cudaStream_t side;            // its stream
	cudaEvent_t ev_fork, ev_join; // ordering between the two streams
	std::vector<cudaEvent_t> prof_ev;
	std::vector<int> prof_kind;
};

// The fused GEMV of one weight matrix for a step of nt tokens: the
// bulk-copy kernel, or the register-streaming one (b chunks per lane, ks
// warps per unit).
// which: the matrix's bit of DCU_BULK.
template <int MODE>
static cudaError_t fused_gemv(const dcu_model *m, int which, int nt, const FgArgs &a, int b, int pdl, cudaStream_t s,
                              int ks = 1) {
	if (m->bulk & which) return bk_launch<MODE>(nt, a, m->sms, m->bulk_smem, pdl, s);
	FgArgs pa = a;
	pa.pre = m->fg_pre;
	return fg_launch<MODE>(nt, pa, m->sms, b, m->fg_occ_mask & which ? m->fg_occ : 0, pdl, s, ks, m->fg_bal);
}

// Profiling (dcu_profile_step): an event after every operation of a step,
// the time between consecutive events summed per operation kind.
static const char *prof_names[DCU_PROF_KINDS] = {"embed", "rmsnorm", "gemm_qkv", "rope_kv_append", "attention",
                                                  "attention_reduce", "gemm_o", "gemm_gate_up", "silu_mul",
                                                  "gemm_down", "gemm_lm_head", "argmax"};
#define MARK(kind)                                                              \
	do {                                                                        \
		if (m->prof_on) {                                                       \
			if (m->prof_n >= (int)m->prof_ev.size()) {                          \
				cudaEvent_t ev_;                                                \
				CK(cudaEventCreate(&ev_));                                      \
				m->prof_ev.push_back(ev_);                                      \
			}                                                                   \
			CK(cudaEventRecord(m->prof_ev[m->prof_n], m->stream));              \
			m->prof_kind.resize(m->prof_ev.size());                             \
			m->prof_kind[m->prof_n++] = (kind);                                 \
		}                                                                       \
	} while (0)

static void drop_graphs(dcu_model *m) {
	for (auto &g : m->graphs) cudaGraphExecDestroy(g.exec);
	m->graphs.clear();
}

static int env_int(const char *name, int def, int lo, int hi) {
	const char *v = getenv(name);
	if (!v || !*v) return def;
	int x = atoi(v);
	return x < lo ? lo : (x > hi ? hi : x);
}

static size_t qkv_dim(const dcu_config &c) { return (size_t)(c.heads + 2 * c.kv_heads) * c.head_dim; }

extern "C" int dcu_device_count(int *n, dcu_status *st) {
	CK(cudaGetDeviceCount(n));
	return 1;
}
extern "C" int dcu_set_device(int dev, dcu_status *st) {
	CK(cudaSetDevice(dev));
	CK(cudaFree(0)); // create the context now
	return 1;
}
extern "C" int dcu_device_name(int dev, char *buf, int len, int *maj, int *min, int *sms, dcu_status *st) {
	cudaDeviceProp p;
	CK(cudaGetDeviceProperties(&p, dev));
	snprintf(buf, len, "%s", p.name);
	*maj = p.major;
	*min = p.minor;
	*sms = p.multiProcessorCount;
	return 1;
}
extern "C" int dcu_mem_info(size_t *f, size_t *t, dcu_status *st) {
	CK(cudaMemGetInfo(f, t));
	return 1;
}
extern "C" int dcu_malloc(void **p, size_t n, dcu_status *st) {
	CK(cudaMalloc(p, n));
	return 1;
}
extern "C" int dcu_free(void *p, dcu_status *st) {
	CK(cudaFree(p));
	return 1;
}
extern "C" int dcu_memset(void *p, int v, size_t n, dcu_status *st) {
	CK(cudaMemset(p, v, n));
	CK(cudaDeviceSynchronize()); // the model's stream does not wait for the legacy stream
	return 1;
}
extern "C" int dcu_memcpy_htod(void *d, const void *s, size_t n, dcu_status *st) {
	CK(cudaMemcpy(d, s, n, cudaMemcpyHostToDevice));
	return 1;
}
extern "C" int dcu_memcpy_dtoh(void *d, const void *s, size_t n, dcu_status *st) {
	CK(cudaMemcpy(d, s, n, cudaMemcpyDeviceToHost));
	return 1;
}
extern "C" int dcu_synchronize(dcu_status *st) {
	CK(cudaDeviceSynchronize());
	return 1;
}

extern "C" int dcu_copy_bench(size_t bytes, int iters, float *ms, dcu_status *st) {
	void *a = nullptr, *b = nullptr;
	cudaEvent_t e0, e1;
	CK(cudaMalloc(&a, bytes));
	CK(cudaMalloc(&b, bytes));
	CK(cudaMemset(a, 1, bytes));
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice)); // warm up
	CK(cudaEventRecord(e0));
	for (int i = 0; i < iters; i++) CK(cudaMemcpyAsync(i & 1 ? a : b, i & 1 ? b : a, bytes, cudaMemcpyDeviceToDevice));
	CK(cudaEventRecord(e1));
	CK(cudaEventSynchronize(e1));
	CK(cudaEventElapsedTime(ms, e0, e1));
	CK(cudaEventDestroy(e0));
	CK(cudaEventDestroy(e1));
	CK(cudaFree(a));
	CK(cudaFree(b));
	return 1;
}

extern "C" int dcu_model_create(const dcu_config *cfg, void *kv_base, size_t kv_bytes, const float *inv_freq,
                                dcu_model **out, dcu_status *st) {
	const dcu_config &c = *cfg;
	if (c.head_dim % 2 || c.head_dim > 32 * ATT_MAXD) INVALID("head_dim %d: must be even and at most %d", c.head_dim, 32 * ATT_MAXD);
	if (c.heads % c.kv_heads || c.heads / c.kv_heads > 32) INVALID("heads %d / kv heads %d: group must divide and be at most 32", c.heads, c.kv_heads);
	size_t plane = (size_t)c.tokens_per_block * c.kv_heads * c.head_dim;
	size_t need = (size_t)c.num_blocks * c.layers * 2 * plane * (c.fp32 ? 4 : 2);
	if (kv_bytes < need) INVALID("KV memory of %zu bytes is smaller than %zu", kv_bytes, need);
	dcu_model *m = new dcu_model();
	memset((void *)&m->c, 0, sizeof m->c);
	m->c = c;
	m->kv = (__nv_bfloat16 *)kv_base;
	m->kv_bytes = kv_bytes;
	m->es = c.fp32 ? 4 : 2;
	*out = m;
	int dev;
	CK(cudaGetDevice(&dev));
	CK(cudaDeviceGetAttribute(&m->sms, cudaDevAttrMultiProcessorCount, dev));
	CK(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
	CKB(cublasCreate(&m->blas));
	CKB(cublasSetStream(m->blas, m->stream));
	CKB(cublasSetMathMode(m->blas, CUBLAS_DEFAULT_MATH));
	// a workspace of our own, so that GEMMs can be captured in CUDA graphs
	const size_t ws = 32u << 20;
	CK(cudaMalloc(&m->blas_ws, ws));
	CKB(cublasSetWorkspace(m->blas, m->blas_ws, ws));
	m->use_graphs = c.graphs;
	m->use_gemv = !c.fp32 && !(getenv("DCU_NO_GEMV") && getenv("DCU_NO_GEMV")[0] == '1');
	m->fill = env_int("DCU_FILL", 4, 1, 64);
	m->pmax = env_int("DCU_PMAX", 512, 32, 512) / ATT_CHUNK * ATT_CHUNK;
	// the batch decode kernel from batch 1 on (measured faster than the tiled
	// kernel at batch 1 once it is launched with PDL beside the fused GEMVs)
	m->dec_min = env_int("DCU_DEC_MIN", 1, 1, 1 << 30);
	// splits of at least 64 keys: measured faster at batch 1 (fewer partial results to combine)
	m->pmin = env_int("DCU_PMIN", 64, ATT_CHUNK, 512) / ATT_CHUNK * ATT_CHUNK;
	if (m->pmin > m->pmax) m->pmin = m->pmax;
	m->mma_dec = !(getenv("DCU_NO_MMA") && getenv("DCU_NO_MMA")[0] == '1');
	// the deep decode kernel in 8 splits (measured fastest at batch 1 and
	// context 1024 on an H100: docs/PERFORMANCE.md), where a block may
	// take its shared memory (sm_90 and sm_80 can, sm_86 and sm_89 cannot)
	m->ring = env_int("DCU_DEC_RING", 8, 0, 64);
	{
		int optin = 0;
		const size_t most = ring_smem(RING_PMAX, 1); // the longest split's
		CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
		if ((size_t)optin >= most)
			CK(cudaFuncSetAttribute(attn_ring_dec_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)most));
		else
			m->ring = 0;
	}
	m->pf_p = env_int("DCU_PF_P", 4096, FA_KC, 1 << 20) / FA_KC * FA_KC;
	m->pf_kc = env_int("DCU_PF_KC", 128, FA_KC, 128) == FA_KC ? FA_KC : 128;
	m->fuse = m->use_gemv && !(getenv("DCU_NO_FUSE") && getenv("DCU_NO_FUSE")[0] == '1');
	m->pdl = !(getenv("DCU_NO_PDL") && getenv("DCU_NO_PDL")[0] == '1');
	m->gu_bf16 = !(getenv("DCU_GU_F32") && getenv("DCU_GU_F32")[0] == '1');
	{
		int b1 = env_int("DCU_FG_B1", 8, 2, 8), b2 = env_int("DCU_FG_B2", 4, 2, 8);
		m->fg_b1 = b1 >= 8 ? 8 : b1 >= 4 ? 4 : 2;
		m->fg_b2 = b2 >= 8 ? 8 : b2 >= 4 ? 4 : 2;
	}
	m->fg_split = env_int("DCU_FG_SPLIT", 0, 0, 7);
	m->skip = env_int("DCU_DIAG_SKIP", 0, 0, 511);
	m->fg_occ = env_int("DCU_FG_OCC", 0, 0, 16);
	m->bulk = env_int("DCU_BULK", 0, 0, 63);
	if (m->bulk == 1) m->bulk = 62;
	m->fg_bal = env_int("DCU_FG_BAL", 0, 0, 1);
	m->fg_pre = env_int("DCU_FG_PRE", 1, 0, 1);
	m->fg_amax = env_int("DCU_FG_AMAX", 1, 0, 1);
	m->fg_occ_mask = env_int("DCU_FG_OCC_MASK", 62, 0, 63);
	m->bulk_smem = env_int("DCU_BULK_SMEM", 88, 16, 200) * 1024;
	// 4 MB of each (measured best of 1 to 12 MB at batch 1 on an H100)
	m->l2pf = env_int("DCU_L2PF", 4096, 0, 1 << 20);
	CK(cudaEventCreate(&m->ev0));
	CK(cudaEventCreate(&m->ev1));
	CK(cudaEventCreateWithFlags(&m->ev_ints[0], cudaEventDisableTiming));
	CK(cudaEventCreateWithFlags(&m->ev_ints[1], cudaEventDisableTiming));
	size_t H = c.hidden, I = c.inter, V = c.vocab;
	size_t per_layer = 2 * H + qkv_dim(c) * H + H * (size_t)c.heads * c.head_dim + 2 * I * H + I * H;
	size_t elems = V * H + H + (c.tied ? 0 : V * H) + per_layer * c.layers;
	m->wbytes = elems * m->es;
	CK(cudaMalloc((void **)&m->wbuf, m->wbytes));
	// the weights one after another (pointers typed bf16; float data in the fp32 mode)
	size_t off = 0;
	auto take = [&](size_t n) {
		__nv_bfloat16 *q = (__nv_bfloat16 *)((char *)m->wbuf + off * m->es);
		off += n;
		return q;
	};
	m->embed = take(V * H);
	m->norm = take(H);
	m->lm_head = c.tied ? m->embed : take(V * H);
	m->layers.resize(c.layers);
	for (int l = 0; l < c.layers; l++) {
		Layer &L = m->layers[l];
		L.attn_norm = take(H);
		L.qkv = take(qkv_dim(c) * H);
		L.o = take(H * (size_t)c.heads * c.head_dim);
		L.mlp_norm = take(H);
		L.gate_up = take(2 * I * H);
		L.down = take(I * H);
	}
	// fused GEMVs hold a step's inputs in shared memory: up to 4 rows of the widest input
	{
		size_t wide = H > I ? H : I;
		if ((size_t)c.heads * c.head_dim > wide) wide = (size_t)c.heads * c.head_dim;
		m->fuse_max = 0;
		for (int nt = 4; nt >= 1 && !m->fuse_max; nt--)
			if (nt * wide * 2 <= 200 * 1024) m->fuse_max = nt;
		if (H % 8 || I % 8 || (c.heads * c.head_dim) % 8) m->fuse = 0;
		size_t fs = (size_t)m->fuse_max * wide * 2;
		if (m->fuse && fs > 48 * 1024) {
			CK(fg_allow_smem<FG_STORE>((int)fs));
			CK(fg_allow_smem<FG_RESID>((int)fs));
			CK(fg_allow_smem<FG_SILU>((int)fs));
			CK(fg_allow_smem<FG_ROPE>((int)fs));
		}
		if (m->fuse && m->bulk) {
			const int most = 227 * 1024;
			CK(bk_allow_smem<FG_STORE>(most));
			CK(bk_allow_smem<FG_RESID>(most));
			CK(bk_allow_smem<FG_SILU>(most));
			CK(bk_allow_smem<FG_ROPE>(most));
		}
	}
	CK(cudaFuncSetAttribute(attn_fa_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fa_smem_bytes(128)));
	CK(cudaMalloc((void **)&m->inv_freq, sizeof(float) * c.head_dim / 2));
	CK(cudaMalloc((void **)&m->d_amax, sizeof(unsigned long long) * 5));
	CK(cudaMemset(m->d_amax, 0, sizeof(unsigned long long) * 5));
	CK(cudaMemcpy(m->inv_freq, inv_freq, sizeof(float) * c.head_dim / 2, cudaMemcpyHostToDevice));
	// dynamic shared memory of the attention kernel may exceed 48 KB for large heads
	int G = c.heads / c.kv_heads;
	size_t smem = sizeof(float) * ((size_t)G * c.head_dim + ATT_CHUNK * (c.head_dim + 1) + ATT_CHUNK * c.head_dim);
	if (smem > 48 * 1024) {
		CK(cudaFuncSetAttribute(attn_split_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
		CK(cudaFuncSetAttribute(attn_split_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
	}
	if (decode_kernel(c.head_dim, G) && decode_smem(c.head_dim) > 48 * 1024)
		CK(cudaFuncSetAttribute((const void *)decode_kernel(c.head_dim, G), cudaFuncAttributeMaxDynamicSharedMemorySize,
		                        (int)decode_smem(c.head_dim)));
	for (int qt : {1, TILE_QT}) {
		attn_tile_fn f = tile_kernel(c.head_dim, qt);
		size_t ts = tile_smem(G, c.head_dim, qt);
		if (f && ts > 48 * 1024) CK(cudaFuncSetAttribute((const void *)f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ts));
	}
	if (m->l2pf) {
		CK(cudaStreamCreateWithFlags(&m->side, cudaStreamNonBlocking));
		CK(cudaEventCreateWithFlags(&m->ev_fork, cudaEventDisableTiming));
		CK(cudaEventCreateWithFlags(&m->ev_join, cudaEventDisableTiming));
	}
	return 1;
}

extern "C" int dcu_model_weight_bytes(dcu_model *m, size_t *n) {
	*n = m->wbytes;
	return 1;
}

extern "C" int dcu_model_set_weight(dcu_model *m, int kind, int layer, const void *data, size_t bytes, dcu_status *st) {
	const dcu_config &c = m->c;
	size_t H = c.hidden, I = c.inter, V = c.vocab, D = c.head_dim;
	char *dst = nullptr; // the tensor's first element; sub-matrices at element offsets times es
	size_t n = 0;
	const size_t es = m->es;
	if (kind >= DCU_W_ATTN_NORM && (layer < 0 || layer >= c.layers)) INVALID("layer %d out of range", layer);
	Layer *L = kind >= DCU_W_ATTN_NORM ? &m->layers[layer] : nullptr;
	switch (kind) {
	case DCU_W_EMBED: dst = (char *)m->embed; n = V * H; break;
	case DCU_W_NORM: dst = (char *)m->norm; n = H; break;
	case DCU_W_LMHEAD:
		if (c.tied) INVALID("LM head of a tied model");
		dst = (char *)m->lm_head; n = V * H; break;
	case DCU_W_ATTN_NORM: dst = (char *)L->attn_norm; n = H; break;
	case DCU_W_Q: dst = (char *)L->qkv; n = c.heads * D * H; break;
	case DCU_W_K: dst = (char *)L->qkv + (c.heads * D * H) * es; n = c.kv_heads * D * H; break;
	case DCU_W_V: dst = (char *)L->qkv + ((c.heads + c.kv_heads) * D * H) * es; n = c.kv_heads * D * H; break;
	case DCU_W_O: dst = (char *)L->o; n = H * c.heads * D; break;
	case DCU_W_MLP_NORM: dst = (char *)L->mlp_norm; n = H; break;
	case DCU_W_GATE: dst = (char *)L->gate_up; n = I * H; break;
	case DCU_W_UP: dst = (char *)L->gate_up + (I * H) * es; n = I * H; break;
	case DCU_W_DOWN: dst = (char *)L->down; n = H * I; break;
	default: INVALID("weight kind %d", kind);
	}
	if (bytes != n * es) INVALID("weight kind %d layer %d: %zu bytes, want %zu", kind, layer, bytes, n * es);
	CK(cudaMemcpy(dst, data, bytes, cudaMemcpyHostToDevice));
	CK(cudaDeviceSynchronize());
	return 1;
}

static void free_scratch(dcu_model *m) {
	cudaFree(m->x); cudaFree(m->qkv); cudaFree(m->q); cudaFree(m->gu); cudaFree(m->xn); cudaFree(m->attn);
	cudaFree(m->act);
	m->x = m->qkv = m->q = m->gu = nullptr;
	m->xn = m->attn = m->act = nullptr;
}

static int ensure(dcu_model *m, int T, int R, int nints, size_t part, dcu_status *st) {
	const dcu_config &c = m->c;
	if (T > m->cap_t || R > m->cap_r || nints > m->cap_ints || part > m->cap_part) {
		CK(cudaStreamSynchronize(m->stream));
		drop_graphs(m);
	}
	size_t H = c.hidden, I = c.inter, V = c.vocab;
	if (T > m->cap_t) {
		CK(cudaStreamSynchronize(m->stream));
		free_scratch(m);
		int cap = T < 16 ? 16 : T;
		m->cap_t = 0;
		CK(cudaMalloc((void **)&m->x, sizeof(float) * cap * H));
		CK(cudaMalloc((void **)&m->qkv, sizeof(float) * cap * qkv_dim(c)));
		CK(cudaMalloc((void **)&m->q, sizeof(float) * cap * c.heads * c.head_dim));
		CK(cudaMalloc((void **)&m->gu, sizeof(float) * cap * 2 * I));
		CK(cudaMalloc((void **)&m->xn, m->es * cap * H));
		CK(cudaMalloc((void **)&m->attn, m->es * (size_t)cap * c.heads * c.head_dim));
		CK(cudaMalloc((void **)&m->act, m->es * cap * I));
		m->cap_t = cap;
	}
	if (R > m->cap_r) {
		CK(cudaStreamSynchronize(m->stream));
		cudaFree(m->logits);
		m->logits = nullptr;
		int cap = R < 16 ? 16 : R;
		CK(cudaMalloc((void **)&m->logits, sizeof(float) * cap * V));
		// keep the previous step's ids: the next step's negative tokens read them
		int32_t *ids = nullptr;
		CK(cudaMalloc((void **)&ids, sizeof(int32_t) * cap));
		if (m->d_argmax) CK(cudaMemcpy(ids, m->d_argmax, sizeof(int32_t) * m->cap_r, cudaMemcpyDeviceToDevice));
		cudaFree(m->d_argmax);
		m->d_argmax = ids;
		m->cap_r = cap;
	}
	if (nints > m->cap_ints) {
		CK(cudaStreamSynchronize(m->stream));
		cudaFree(m->d_ints); cudaFreeHost(m->h_ints[0]); cudaFreeHost(m->h_ints[1]);
		m->d_ints = nullptr; m->h_ints[0] = m->h_ints[1] = nullptr; m->cap_ints = 0;
		int cap = nints < 4096 ? 4096 : nints * 2;
		CK(cudaMalloc((void **)&m->d_ints, sizeof(int32_t) * cap));
		CK(cudaMallocHost((void **)&m->h_ints[0], sizeof(int32_t) * cap));
		CK(cudaMallocHost((void **)&m->h_ints[1], sizeof(int32_t) * cap));
		m->cap_ints = cap;
	}
	if (part > m->cap_part) {
		CK(cudaStreamSynchronize(m->stream));
		cudaFree(m->pacc); cudaFree(m->pm); cudaFree(m->pl);
		m->pacc = m->pm = m->pl = nullptr; m->cap_part = 0;
		CK(cudaMalloc((void **)&m->pacc, sizeof(float) * part * c.head_dim));
		CK(cudaMalloc((void **)&m->pm, sizeof(float) * part));
		CK(cudaMalloc((void **)&m->pl, sizeof(float) * part));
		m->cap_part = part;
	}
	return 1;
}

// Y[n][out] (fp32) = beta*Y + X[n][in] (bf16) * W[out][in]^T (bf16)
static int gemm(dcu_model *m, const __nv_bfloat16 *W, const __nv_bfloat16 *X, float *Y, int out, int n, int in,
                float beta, dcu_status *st) {
	if (n <= 4 && in % 8 == 0 && m->use_gemv && ((uintptr_t)W & 15) == 0) {
		// split K over 4 warps when one warp per row would not fill the chip
		if (out / 8 < 4 * m->sms) gemv_launch<4>(n, W, X, Y, out, in, beta, m->stream);
		else gemv_launch<1>(n, W, X, Y, out, in, beta, m->stream);
		CKL();
		return 1;
	}
	float alpha = 1.f;
	CKB(cublasGemmEx(m->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, W, CUDA_R_16BF, in, X, CUDA_R_16BF, in,
	                 &beta, Y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	return 1;
}

static void split_plan(const dcu_model *m, int units, int max_ctx, int *P, int *nsplit) {
	int base = units * m->c.kv_heads;
	int want = (m->fill * m->sms + base - 1) / base; // splits per unit to fill the chip
	if (want < 1) want = 1;
	int p = (max_ctx + want - 1) / want;
	p = (p + ATT_CHUNK - 1) / ATT_CHUNK * ATT_CHUNK;
	if (p < m->pmin) p = m->pmin;
	if (p > m->pmax) p = m->pmax;
	*P = p;
	*nsplit = (max_ctx + p - 1) / p;
}

// Y[n][out] (fp32) = beta*Y + X[n][in] * W[out][in]^T, all fp32 (the fp32
// mode; no TF32).
static int gemm32(dcu_model *m, const float *W, const float *X, float *Y, int out, int n, int in, float beta,
                  dcu_status *st) {
	float alpha = 1.f;
	CKB(cublasGemmEx(m->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, W, CUDA_R_32F, in, X, CUDA_R_32F, in,
	                 &beta, Y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
	return 1;
}

// The step in the fp32 mode: weights, GEMM inputs and KV in fp32, the plain
// kernels (per-token split attention, cuBLAS for every product), so that
// the result follows an fp32 reference to rounding. For small models and
// checks, not speed.
static int enqueue_f32(dcu_model *m, int T, int R, int want_argmax, dcu_status *st) {
	const dcu_config &c = m->c;
	const int H = c.hidden, I = c.inter, V = c.vocab, D = c.head_dim, nh = c.heads, nkv = c.kv_heads, G = nh / nkv;
	const int32_t *tokens = m->d_ints, *pos = tokens + T, *slot = pos + T, *btoff = slot + T, *rows = btoff + T;
	const int32_t *tables = rows + R + 2 * m->nt; // no tiles in this mode (prepare)
	const int P = m->P, nsplit = m->nsplit;
	const size_t plane = (size_t)c.tokens_per_block * nkv * D, block_stride = (size_t)c.layers * 2 * plane;
	const size_t smem = sizeof(float) * ((size_t)G * D + ATT_CHUNK * (D + 1) + ATT_CHUNK * D);
	const float scale = 1.f / sqrtf((float)D);
	cudaStream_t s = m->stream;
	float *xn = (float *)m->xn, *attn = (float *)m->attn, *act = (float *)m->act;
	auto W = [](const __nv_bfloat16 *p) { return (const float *)p; };
	MARK(-1);
	embed_kernel<<<T, 256, 0, s>>>(tokens, m->d_argmax, W(m->embed), m->x, H);
	CKL();
	MARK(0);
	for (int l = 0; l < c.layers; l++) {
		const Layer &L = m->layers[l];
		float *kv_layer = (float *)m->kv + (size_t)l * 2 * plane;
		rmsnorm_kernel<<<T, 256, 0, s>>>(m->x, nullptr, W(L.attn_norm), xn, H, c.eps);
		CKL();
		MARK(1);
		if (!gemm32(m, W(L.qkv), xn, m->qkv, (int)qkv_dim(c), T, H, 0.f, st)) return 0;
		MARK(2);
		rope_kv_kernel<<<T, 128, 0, s>>>(m->qkv, pos, slot, m->inv_freq, m->q, kv_layer, block_stride, nh, nkv, D,
		                                 c.tokens_per_block);
		CKL();
		MARK(3);
		attn_split_kernel<<<dim3(T, nkv, nsplit), 32 * G, smem, s>>>(m->q, pos, btoff, tables, (const float *)kv_layer,
		                                                             block_stride, nh, nkv, D, c.tokens_per_block, P,
		                                                             nsplit, scale, m->pacc, m->pm, m->pl);
		CKL();
		MARK(4);
		attn_reduce_kernel<false, false, float><<<dim3(T, nh), D < 32 ? 32 : D, 0, s>>>(pos, m->pacc, m->pm, m->pl, nh,
		                                                                                 D, P, nsplit, 0, attn);
		CKL();
		MARK(5);
		if (!gemm32(m, W(L.o), attn, m->x, H, T, nh * D, 1.f, st)) return 0;
		MARK(6);
		rmsnorm_kernel<<<T, 256, 0, s>>>(m->x, nullptr, W(L.mlp_norm), xn, H, c.eps);
		CKL();
		MARK(1);
		if (!gemm32(m, W(L.gate_up), xn, m->gu, 2 * I, T, H, 0.f, st)) return 0;
		MARK(7);
		silu_mul_kernel<<<dim3((I + 255) / 256, T), 256, 0, s>>>(m->gu, act, I);
		CKL();
		MARK(8);
		if (!gemm32(m, W(L.down), act, m->x, H, T, I, 1.f, st)) return 0;
		MARK(9);
	}
	if (R > 0) {
		rmsnorm_kernel<<<R, 256, 0, s>>>(m->x, rows, W(m->norm), xn, H, c.eps);
		CKL();
		MARK(1);
		if (!gemm32(m, W(m->lm_head), xn, m->logits, V, R, H, 0.f, st)) return 0;
		MARK(10);
		if (want_argmax) {
			argmax_kernel<<<R, 1024, 0, s>>>(m->logits, V, m->d_argmax);
			CKL();
			MARK(11);
		}
	}
	return 1;
}

// The side stream's prefetch of layer L's first Gate/Up rows (DCU_L2PF),
// ordered after the work enqueued on s so far.
static int l2_prefetch(dcu_model *m, const Layer &L, cudaStream_t s, dcu_status *st) {
	const size_t H = m->c.hidden, I = m->c.inter;
	const size_t n = std::min((size_t)m->l2pf * 1024, I * H * 2);
	const size_t chunks = (n + L2PF_CHUNK - 1) / L2PF_CHUNK;
	CK(cudaEventRecord(m->ev_fork, s));
	CK(cudaStreamWaitEvent(m->side, m->ev_fork, 0));
	l2_prefetch_kernel<<<(unsigned)((chunks + 31) / 32), 32, 0, m->side>>>((const char *)L.gate_up,
	                                                                      (const char *)(L.gate_up + I * H), (unsigned)n);
	CKL();
	return 1;
}

// Enqueue the step (everything after the ints are on the device).
static int enqueue(dcu_model *m, int T, int R, int max_ctx, int n_tables, int want_argmax, dcu_status *st) {
	if (m->c.fp32) return enqueue_f32(m, T, R, want_argmax, st);
	const dcu_config &c = m->c;
	int H = c.hidden, I = c.inter, V = c.vocab, D = c.head_dim, nh = c.heads, nkv = c.kv_heads;
	const int32_t *tokens = m->d_ints, *pos = tokens + T, *slot = pos + T, *btoff = slot + T, *rows = btoff + T;
	// device layout (prepare): the tiles before the block tables, so that
	// every pointer a captured graph holds depends only on the graph's key
	// (T, R, nt), not on the block tables' length, which grows with decoding
	const int32_t *tile_first = rows + R, *tile_len = tile_first + m->nt;
	const int32_t *tables = tile_len + m->nt;
	(void)n_tables;
	(void)max_ctx;
	const int P = m->P, nsplit = m->nsplit;
	attn_tile_fn tk = m->nt ? tile_kernel(D, m->qt) : nullptr;
	size_t plane = (size_t)c.tokens_per_block * nkv * D;
	size_t block_stride = (size_t)c.layers * 2 * plane;
	int G = nh / nkv;
	size_t smem = sizeof(float) * ((size_t)G * D + ATT_CHUNK * (D + 1) + ATT_CHUNK * D);
	float scale = 1.f / sqrtf((float)D);
	cudaStream_t s = m->stream;

	const bool fused = m->fuse && T <= m->fuse_max && ((uintptr_t)m->wbuf & 15) == 0;
	// DCU_DIAG_SKIP, to time a kernel by leaving it out: 1 QKV, 2 attention, 4 combine, 8 O, 16 Gate/Up, 32 Down, 64 LM head,
	// 128 argmax, 256 embedding
	const int skip = fused ? m->skip : 0;
	// prefill on the tensor cores, and the deep decode kernel: rows within
	// split 0 need no combine
	const int direct_rows = m->use_mma || m->use_ring;
	// the argmax folded into the LM head (DCU_FG_AMAX)
	const bool amax_fold = fused && want_argmax && m->fg_amax && R > 0 && R <= m->fuse_max && !(m->bulk & 32);
	MARK(-1);
	if (!(skip & 256)) {
		embed_kernel<<<T, 256, 0, s>>>(tokens, m->d_argmax, m->embed, m->x, H);
		CKL();
	}
	MARK(0);
	// Steps of a few tokens: the fused GEMVs (the norms, RoPE and append,
	// SiLU*mul and residual adds in their prologues and epilogues).
	FgArgs fa = {};
	fa.eps = c.eps;
	fa.pos = pos;
	fa.slot = slot;
	fa.inv_freq = m->inv_freq;
	fa.q_out = m->q;
	fa.block_stride = block_stride;
	fa.nh = nh;
	fa.nkv = nkv;
	fa.D = D;
	fa.tpb = c.tokens_per_block;
	const int pdl = m->pdl && !m->prof_on;
	// one-token steps only: at 4 tokens it measured 40 µs a step slower
	const bool l2pf = fused && T == 1 && m->side && !m->prof_on;
	for (int l = 0; l < c.layers; l++) {
		Layer &L = m->layers[l];
		__nv_bfloat16 *kv_layer = m->kv + (size_t)l * 2 * plane;
		if (fused) {
			fa.W = L.qkv;
			fa.norm = L.attn_norm;
			fa.xf = m->x;
			fa.rows = nullptr;
			fa.out = (int)qkv_dim(c);
			fa.in = H;
			fa.kv_layer = kv_layer;
			if (!(skip & 1)) CK(fused_gemv<FG_ROPE>(m, 2, T, fa, m->fg_b2, pdl, s, m->fg_split & 1 ? 2 : 1));
			MARK(2);
			// Gate/Up's first rows asked of L2 while attention runs (after QKV:
			// measured faster than before QKV or after attention)
			if (l2pf && !l2_prefetch(m, L, s, st)) return 0;
		} else {
			rmsnorm_kernel<<<T, 256, 0, s>>>(m->x, nullptr, L.attn_norm, m->xn, H, c.eps);
			CKL();
			MARK(1);
			if (!gemm(m, L.qkv, m->xn, m->qkv, (int)qkv_dim(c), T, H, 0.f, st)) return 0;
			MARK(2);
			rope_kv_kernel<<<T, 128, 0, s>>>(m->qkv, pos, slot, m->inv_freq, m->q, kv_layer, block_stride, nh, nkv, D,
			                                 c.tokens_per_block);
			CKL();
			MARK(3);
		}
		if (skip & 2) {
		} else if (m->use_mma) {
			auto fak = m->pf_kc == 128 ? attn_fa_kernel<128> : attn_fa_kernel<FA_KC>;
			fak<<<dim3(m->nt, nkv, nsplit), 32 * G, fa_smem_bytes(m->pf_kc), s>>>(
			    m->q, pos, btoff, tables, tile_first, tile_len, kv_layer, block_stride, nh, nkv, c.tokens_per_block, P,
			    nsplit, scale, m->pacc, m->pm, m->pl, m->attn);
		} else if (m->use_ring) {
			PdlLaunch al(dim3(T, nkv, nsplit), dim3(32 * RING_WARPS), ring_smem(P, c.tokens_per_block), s, fused && pdl);
			CK(cudaLaunchKernelEx(&al.cfg, attn_ring_dec_kernel, (const float *)m->q, pos, btoff, tables,
			                      (const __nv_bfloat16 *)kv_layer, block_stride, nh, nkv, c.tokens_per_block, P, nsplit,
			                      scale, m->pacc, m->pm, m->pl, m->attn));
		} else if (m->use_dec && D == 64 && G <= 16 && m->mma_dec) {
			PdlLaunch al(dim3(T, nkv, nsplit), dim3(32 * DEC_WARPS), 0, s, fused && pdl);
			CK(cudaLaunchKernelEx(&al.cfg, attn_mma_dec_kernel, (const float *)m->q, pos, btoff, tables,
			                      (const __nv_bfloat16 *)kv_layer, block_stride, nh, nkv, c.tokens_per_block, P, nsplit,
			                      scale, m->pacc, m->pm, m->pl));
		} else if (m->use_dec) {
			decode_kernel(D, G)<<<dim3(T, nkv, nsplit), 32 * DEC_WARPS, decode_smem(D), s>>>(
			    m->q, pos, btoff, tables, kv_layer, block_stride, nh, nkv, c.tokens_per_block, P, nsplit, scale, m->pacc,
			    m->pm, m->pl);
		} else if (tk) {
			tk<<<dim3(m->nt, nkv, nsplit), 32 * G, tile_smem(G, D, m->qt), s>>>(
			    m->q, pos, btoff, tables, tile_first, tile_len, kv_layer, block_stride, nh, nkv, c.tokens_per_block, P,
			    nsplit, scale, m->pacc, m->pm, m->pl);
		} else {
			attn_split_kernel<<<dim3(T, nkv, nsplit), 32 * G, smem, s>>>(m->q, pos, btoff, tables, kv_layer, block_stride,
			                                                             nh, nkv, D, c.tokens_per_block, P, nsplit, scale,
			                                                             m->pacc, m->pm, m->pl);
		}
		CKL();
		MARK(4);
		if (!(skip & 4) && !(direct_rows && nsplit == 1)) {
			PdlLaunch rl(dim3(T, nh), dim3(D < 32 ? 32 : (D > 256 ? 256 : D)), 0, s, fused && pdl);
			// the one-trip combine while the grid is small (decode), the loop otherwise
			const bool wide = (size_t)T * nh <= (size_t)16 * m->sms;
			auto rk = rl.cfg.numAttrs ? (wide ? attn_reduce_kernel<true, true> : attn_reduce_kernel<true, false>)
			                          : (wide ? attn_reduce_kernel<false, true> : attn_reduce_kernel<false, false>);
			CK(cudaLaunchKernelEx(&rl.cfg, rk, pos,
			                      (const float *)m->pacc, (const float *)m->pm, (const float *)m->pl, nh, D, P, nsplit,
			                      direct_rows, m->attn));
		}
		MARK(5);
		if (fused) {
			fa.W = L.o;
			fa.norm = nullptr;
			fa.xb = m->attn;
			fa.out = H;
			fa.in = nh * D;
			fa.Y = m->x;
			if (!(skip & 8)) CK(fused_gemv<FG_RESID>(m, 4, T, fa, m->fg_b1, pdl, s, m->fg_split & 4 ? 2 : 1));
			MARK(6);
			fa.W = L.gate_up;
			fa.norm = L.mlp_norm;
			fa.xf = m->x;
			fa.out = 2 * I;
			fa.in = H;
			fa.act = m->act;
			if (!(skip & 16)) CK(fused_gemv<FG_SILU>(m, 8, T, fa, m->fg_b2, pdl, s, m->fg_split & 2 ? 2 : 1));
			MARK(7);
			fa.W = L.down;
			fa.norm = nullptr;
			fa.xb = m->act;
			fa.out = H;
			fa.in = I;
			fa.Y = m->x;
			if (!(skip & 32)) CK(fused_gemv<FG_RESID>(m, 16, T, fa, m->fg_b1, pdl, s, m->fg_split & 4 ? 2 : 1));
			MARK(9);
			continue;
		}
		if (!gemm(m, L.o, m->attn, m->x, H, T, nh * D, 1.f, st)) return 0;
		MARK(6);
		rmsnorm_kernel<<<T, 256, 0, s>>>(m->x, nullptr, L.mlp_norm, m->xn, H, c.eps);
		CKL();
		MARK(1);
		if (T > 4 && I % 8 == 0 && m->gu_bf16) {
			// prefill: gate/up in bf16 (as the reference model computes them)
			float one = 1.f, zero = 0.f;
			CKB(cublasGemmEx(m->blas, CUBLAS_OP_T, CUBLAS_OP_N, 2 * I, T, H, &one, L.gate_up, CUDA_R_16BF, H, m->xn,
			                 CUDA_R_16BF, H, &zero, m->gu, CUDA_R_16BF, 2 * I, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
			MARK(7);
			silu_mul_bf16_kernel<<<dim3((I / 8 + 255) / 256, T), 256, 0, s>>>((const __nv_bfloat16 *)m->gu, m->act, I);
			CKL();
			MARK(8);
		} else {
			if (!gemm(m, L.gate_up, m->xn, m->gu, 2 * I, T, H, 0.f, st)) return 0;
			MARK(7);
			silu_mul_kernel<<<dim3((I + 255) / 256, T), 256, 0, s>>>(m->gu, m->act, I);
			CKL();
			MARK(8);
		}
		if (!gemm(m, L.down, m->act, m->x, H, T, I, 1.f, st)) return 0;
		MARK(9);
	}
	if (R > 0 && fused && R <= m->fuse_max) {
		fa.W = m->lm_head;
		fa.norm = m->norm;
		fa.xf = m->x;
		fa.rows = rows;
		fa.out = V;
		fa.in = H;
		fa.Y = m->logits;
		if (amax_fold) {
			fa.amax = m->d_amax;
			fa.amax_count = (unsigned *)(m->d_amax + 4);
			fa.ids_out = m->d_argmax;
		}
		if (!(skip & 64)) CK(fused_gemv<FG_STORE>(m, 32, R, fa, m->fg_b1, pdl, s));
		fa.amax = nullptr;
		MARK(10);
	} else if (R > 0) {
		rmsnorm_kernel<<<R, 256, 0, s>>>(m->x, rows, m->norm, m->xn, H, c.eps);
		CKL();
		MARK(1);
		if (!gemm(m, m->lm_head, m->xn, m->logits, V, R, H, 0.f, st)) return 0;
		MARK(10);
	}
	if (l2pf) {
		// the step is done only when the side stream's prefetches are
		CK(cudaEventRecord(m->ev_join, m->side));
		CK(cudaStreamWaitEvent(s, m->ev_join, 0));
	}
	if (R > 0) {
		if (want_argmax && !(skip & 128) && !amax_fold) {
			argmax_kernel<<<R, 1024, 0, s>>>(m->logits, V, m->d_argmax);
			CKL();
			MARK(11);
		}
	}
	return 1;
}

static int prepare(dcu_model *m, const dcu_batch *b, dcu_status *st) {
	const dcu_config &c = m->c;
	int T = b->num_tokens, R = b->num_rows;
	if (T <= 0) INVALID("empty step");
	if (T > 65535) INVALID("step of %d tokens: at most 65535", T);
	if (b->max_ctx <= 0) INVALID("max_ctx %d", b->max_ctx);
	const int32_t *pos = b->ints + T, *btoff = b->ints + 3 * T;
	int base = 4 * T + R + b->n_tables;
	for (int t = 0; t < T; t++) {
		int tok = b->ints[t];
		if (tok >= c.vocab || (tok < 0 && -tok - 1 >= m->prev_r))
			INVALID("token %d of the step: not in the vocabulary of %d nor a row of the previous step's %d ids", tok, c.vocab, m->prev_r);
	}
	// Tiles: runs of up to TILE_QT consecutive tokens of one sequence.
	// launch bounds: 256 threads; registers hold a chunk: 32*D/8 <= 2*threads
	int G = c.heads / c.kv_heads;
	bool tiled = !c.fp32 && tile_kernel(c.head_dim, 1) != nullptr && G <= 8 && c.head_dim <= 16 * G;
	// the tensor-core kernel for prefill (head dim 64, DCU_NO_MMA=1 turns it off)
	int tq = TILE_QT;
	bool mma_ok = tiled && c.head_dim == 64 && !(getenv("DCU_NO_MMA") && getenv("DCU_NO_MMA")[0] == '1');
	if (mma_ok) tq = MMA_QT;
	int nt = 0, longest = 0;
	if (tiled) {
		for (int t = 0; t < T;) {
			int e = t + 1;
			while (e < T && e - t < tq && btoff[e] == btoff[t] && pos[e] == pos[e - 1] + 1) e++;
			longest = e - t > longest ? e - t : longest;
			nt++;
			t = e;
		}
	}
	if (mma_ok && longest <= 1) { // decode step: the 1-token tiles are the same for every kernel
		tq = TILE_QT;
		mma_ok = false;
	}
	m->use_mma = mma_ok;
	int nints = base + 2 * nt;
	m->nt = nt;
	m->qt = longest > 1 ? TILE_QT : 1;
	split_plan(m, tiled ? nt : T, b->max_ctx, &m->P, &m->nsplit);
	if (mma_ok) { // splits of pf_p keys: the rows of split 0 skip the combine
		m->P = m->pf_p;
		m->nsplit = (b->max_ctx + m->P - 1) / m->P;
	}
	// The decode kernel pays off from a handful of sequences on (measured on
	// an H100: slower than the tiled kernel at batch 1, faster at 256).
	m->use_dec = tiled && m->qt == 1 && T >= m->dec_min && decode_kernel(c.head_dim, G) != nullptr;
	if (m->use_dec && m->P < DEC_WARPS * 32) {
		m->P = DEC_WARPS * 32; // every warp of the decode kernel gets a chunk
		m->nsplit = (b->max_ctx + m->P - 1) / m->P;
	}
	// The deep decode kernel where its grid fits in one wave (one block per
	// SM: its shared memory): at least m->ring splits per token and kv
	// head, of at most RING_PMAX keys, whole chunks.
	m->use_ring = 0;
	if (m->use_dec && m->ring && c.head_dim == 64 && G <= 16 && m->mma_dec) {
		int p = (b->max_ctx + m->ring - 1) / m->ring;
		p = (p + ATT_CHUNK - 1) / ATT_CHUNK * ATT_CHUNK;
		if (p > RING_PMAX) p = RING_PMAX;
		const int ns = (b->max_ctx + p - 1) / p;
		if ((long)T * c.kv_heads * ns <= m->sms) {
			m->use_ring = 1;
			m->P = p;
			m->nsplit = ns;
		}
	}
	size_t part = (size_t)T * c.heads * m->nsplit;
	if (!ensure(m, T, R, nints, part, st)) return 0;
	// Alternate staging buffers: the other one may still be read by the
	// copy of the step that is running.
	int k = m->ints_k ^ 1;
	CK(cudaEventSynchronize(m->ev_ints[k]));
	int32_t *h = m->h_ints[k];
	// tokens, pos, slot, btoff, rows | tile_first, tile_len | tables
	const int head = 4 * T + R;
	memcpy(h, b->ints, sizeof(int32_t) * head);
	memcpy(h + head + 2 * nt, b->ints + head, sizeof(int32_t) * b->n_tables);
	if (tiled) {
		int32_t *first = h + head, *len = first + nt;
		int n = 0;
		for (int t = 0; t < T;) {
			int e = t + 1;
			while (e < T && e - t < tq && btoff[e] == btoff[t] && pos[e] == pos[e - 1] + 1) e++;
			first[n] = t;
			len[n] = e - t;
			n++;
			t = e;
		}
	}
	CK(cudaMemcpyAsync(m->d_ints, h, sizeof(int32_t) * nints, cudaMemcpyHostToDevice, m->stream));
	CK(cudaEventRecord(m->ev_ints[k], m->stream));
	m->ints_k = k;
	return 1;
}

// Decode-like steps (every token wants a logits row, few tokens) replay a
// captured CUDA graph of the step; others are launched directly.
static int launch(dcu_model *m, int T, int R, int max_ctx, int n_tables, int am, int graph, dcu_status *st) {
	// graphs for decode steps only: one logits row per token, each token its own sequence
	if (!graph || !m->use_graphs || T != R || T > 512 || (m->nt && m->qt != 1))
		return enqueue(m, T, R, max_ctx, n_tables, am, st);
	const int P = m->P, ns = m->nsplit;
	for (auto &g : m->graphs)
		if (g.T == T && g.R == R && g.P == P && g.ns == ns && g.am == am && g.nt == m->nt && g.qt == m->qt && g.dec == m->use_dec &&
		    g.ring == m->use_ring && !m->use_mma) {
			CK(cudaGraphLaunch(g.exec, m->stream));
			return 1;
		}
	if (m->graphs.size() >= 64) {
		CK(cudaStreamSynchronize(m->stream));
		drop_graphs(m);
	}
	cudaGraph_t graph_ = nullptr;
	CK(cudaStreamBeginCapture(m->stream, cudaStreamCaptureModeThreadLocal));
	int ok = enqueue(m, T, R, max_ctx, n_tables, am, st);
	cudaError_t e = cudaStreamEndCapture(m->stream, &graph_);
	if (!ok) {
		if (graph_) cudaGraphDestroy(graph_);
		return 0;
	}
	CK(e);
	cudaGraphExec_t exec;
	e = cudaGraphInstantiate(&exec, graph_, 0);
	cudaGraphDestroy(graph_);
	CK(e);
	m->graphs.push_back({T, R, P, ns, am, m->nt, m->qt, m->use_dec, m->use_ring, exec});
	CK(cudaGraphLaunch(exec, m->stream));
	return 1;
}

extern "C" int dcu_forward_async(dcu_model *m, const dcu_batch *b, dcu_status *st) {
	if (!prepare(m, b, st)) return 0;
	int T = b->num_tokens, R = b->num_rows;
	if (!launch(m, T, R, b->max_ctx, b->n_tables, b->argmax != nullptr, 1, st)) return 0;
	m->prev_r = R;
	return 1;
}

extern "C" float *dcu_model_logits(dcu_model *m) { return m->logits; }
extern "C" int32_t *dcu_model_ids(dcu_model *m) { return m->d_argmax; }
extern "C" void *dcu_model_stream(dcu_model *m) { return (void *)m->stream; }
extern "C" int dcu_model_vocab(dcu_model *m) { return m->c.vocab; }

extern "C" int dcu_forward(dcu_model *m, const dcu_batch *b, dcu_status *st) {
	if (!dcu_forward_async(m, b, st)) return 0;
	int R = b->num_rows;
	if (R > 0 && b->logits) CK(cudaMemcpyAsync(b->logits, m->logits, sizeof(float) * R * m->c.vocab, cudaMemcpyDeviceToHost, m->stream));
	if (R > 0 && b->argmax) CK(cudaMemcpyAsync(b->argmax, m->d_argmax, sizeof(int32_t) * R, cudaMemcpyDeviceToHost, m->stream));
	CK(cudaStreamSynchronize(m->stream));
	return 1;
}

extern "C" int dcu_forward_timed(dcu_model *m, const dcu_batch *b, int n, int graph, float *ms, dcu_status *st) {
	if (!prepare(m, b, st)) return 0;
	int T = b->num_tokens, R = b->num_rows;
	if (!launch(m, T, R, b->max_ctx, b->n_tables, 1, graph, st)) return 0; // warm up (and capture)
	CK(cudaEventRecord(m->ev0, m->stream));
	for (int i = 0; i < n; i++)
		if (!launch(m, T, R, b->max_ctx, b->n_tables, 1, graph, st)) return 0;
	CK(cudaEventRecord(m->ev1, m->stream));
	CK(cudaEventSynchronize(m->ev1));
	CK(cudaEventElapsedTime(ms, m->ev0, m->ev1));
	return 1;
}

extern "C" const char *dcu_prof_name(int kind) { return kind >= 0 && kind < DCU_PROF_KINDS ? prof_names[kind] : ""; }

extern "C" int dcu_profile_step(dcu_model *m, const dcu_batch *b, float *ms_by_kind, dcu_status *st) {
	if (!prepare(m, b, st)) return 0;
	int T = b->num_tokens, R = b->num_rows;
	if (!enqueue(m, T, R, b->max_ctx, b->n_tables, 1, st)) return 0; // warm up
	m->prof_on = 1;
	m->prof_n = 0;
	int ok = enqueue(m, T, R, b->max_ctx, b->n_tables, 1, st);
	m->prof_on = 0;
	if (!ok) return 0;
	CK(cudaStreamSynchronize(m->stream));
	for (int k = 0; k < DCU_PROF_KINDS; k++) ms_by_kind[k] = 0.f;
	for (int i = 1; i < m->prof_n; i++) {
		float ms;
		CK(cudaEventElapsedTime(&ms, m->prof_ev[i - 1], m->prof_ev[i]));
		ms_by_kind[m->prof_kind[i]] += ms;
	}
	return 1;
}

extern "C" int dcu_model_destroy(dcu_model *m, dcu_status *st) {
	if (!m) return 1;
	int ok = 1;
	if (m->stream) {
		cudaError_t e = cudaStreamSynchronize(m->stream);
		if (e != cudaSuccess) {
			set_status(st, DCU_ERR_CUDA, (int)e, cudaGetErrorName(e), "%s (cudaStreamSynchronize in destroy)", cudaGetErrorString(e));
			ok = 0;
		}
	}
	drop_graphs(m);
	free_scratch(m);
	cudaFree(m->blas_ws);
	cudaFree(m->logits); cudaFree(m->d_argmax); cudaFree(m->d_ints); cudaFreeHost(m->h_ints[0]); cudaFreeHost(m->h_ints[1]);
	for (auto e : m->ev_ints) if (e) cudaEventDestroy(e);
	cudaFree(m->pacc); cudaFree(m->pm); cudaFree(m->pl);
	cudaFree(m->wbuf); cudaFree(m->inv_freq); cudaFree(m->d_amax);
	for (auto e : m->prof_ev) cudaEventDestroy(e);
	if (m->ev0) cudaEventDestroy(m->ev0);
	if (m->ev1) cudaEventDestroy(m->ev1);
	if (m->blas) cublasDestroy(m->blas);
	if (m->stream) cudaStreamDestroy(m->stream);
	if (m->side) {
		cudaStreamSynchronize(m->side);
		cudaStreamDestroy(m->side);
	}
	if (m->ev_fork) cudaEventDestroy(m->ev_fork);
	if (m->ev_join) cudaEventDestroy(m->ev_join);
	delete m;
	return ok;
}
