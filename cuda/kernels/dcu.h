/* dcu.h: the C API of the CUDA kernels library (libdcu.a, built from
 * dcu.cu by scripts/cuda/build.sh). Plain C types only, so that cgo needs no
 * CUDA header. Every function returns 1 on success and 0 on failure, with
 * the failure described in *st (the CUDA or cuBLAS status name and message,
 * and the call that failed). Functions that take a dcu_model must be called
 * from the one OS thread that owns the device (cuda.Device.Do). */
#ifndef DCU_H
#define DCU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { DCU_OK = 0, DCU_ERR_CUDA = 1, DCU_ERR_CUBLAS = 2, DCU_ERR_INVALID = 3 };

typedef struct dcu_status {
	int kind;       /* DCU_ERR_* */
	int code;       /* cudaError_t or cublasStatus_t value */
	char name[64];  /* e.g. cudaErrorMemoryAllocation */
	char msg[448];  /* message and the failing call */
} dcu_status;

typedef struct dcu_config {
	int vocab, hidden, inter, layers, heads, kv_heads, head_dim;
	int tokens_per_block, num_blocks;
	float eps;
	int tied;   /* LM head shares the embedding */
	int graphs; /* replay decode steps as CUDA graphs */
	int fp32;   /* weights, GEMM inputs and KV in fp32 (4-byte weights to
	               dcu_model_set_weight, 4-byte KV elements): results that
	               follow an fp32 reference to rounding; slower */
} dcu_config;

/* Weight kinds for dcu_model_set_weight. Q, K, V are packed into one QKV
 * matrix and Gate, Up into one GateUp matrix on the device. */
enum {
	DCU_W_EMBED = 0, DCU_W_NORM = 1, DCU_W_LMHEAD = 2,
	DCU_W_ATTN_NORM = 3, DCU_W_Q = 4, DCU_W_K = 5, DCU_W_V = 6, DCU_W_O = 7,
	DCU_W_MLP_NORM = 8, DCU_W_GATE = 9, DCU_W_UP = 10, DCU_W_DOWN = 11
};

typedef struct dcu_model dcu_model;

/* A step. ints is packed host data: tokens[T], pos[T], slot[T] (block id *
 * tokens_per_block + offset in block, where the token's K/V go), btoff[T]
 * (offset of the token's sequence's block table in tables), rows[R] (token
 * index of each logits row), tables[n_tables]. */
typedef struct dcu_batch {
	int num_tokens;
	int num_rows;
	int n_tables;
	int max_ctx;          /* largest pos+1 in the step */
	const int32_t *ints;  /* 4*T + R + n_tables values */
	float *logits;        /* host [R][vocab] or NULL */
	int32_t *argmax;      /* host [R] or NULL */
} dcu_batch;

int dcu_device_count(int *n, dcu_status *st);
int dcu_set_device(int dev, dcu_status *st);
int dcu_device_name(int dev, char *buf, int len, int *cc_major, int *cc_minor, int *sms, dcu_status *st);
int dcu_mem_info(size_t *free_b, size_t *total_b, dcu_status *st);
int dcu_malloc(void **p, size_t n, dcu_status *st);
int dcu_free(void *p, dcu_status *st);
int dcu_memset(void *p, int v, size_t n, dcu_status *st);
int dcu_memcpy_htod(void *dst, const void *src, size_t n, dcu_status *st);
int dcu_memcpy_dtoh(void *dst, const void *src, size_t n, dcu_status *st);
int dcu_synchronize(dcu_status *st);

/* Device copy bandwidth probe: copies bytes device to device iters times;
 * *ms is the total time from device events. */
int dcu_copy_bench(size_t bytes, int iters, float *ms, dcu_status *st);

int dcu_model_create(const dcu_config *cfg, void *kv_base, size_t kv_bytes,
                     const float *inv_freq, dcu_model **out, dcu_status *st);
/* data: host bf16 (fp32 in the fp32 mode), exactly the tensor's element
 * count * 2 (4) bytes. */
int dcu_model_set_weight(dcu_model *m, int kind, int layer, const void *data, size_t bytes, dcu_status *st);
int dcu_model_weight_bytes(dcu_model *m, size_t *n);
int dcu_forward(dcu_model *m, const dcu_batch *b, dcu_status *st);
/* Asynchronous steps (device sampling, overlap scheduler). dcu_forward_async
 * enqueues the step on the model's stream and returns without waiting: the
 * logits stay on the device (dcu_model_logits, [num_rows][vocab] fp32), and
 * when b->argmax is not NULL the argmax of each row goes to dcu_model_ids
 * (b->argmax itself is not written). A token id < 0 in b->ints names the id
 * in row -id-1 of dcu_model_ids as left by the previous step (argmax or a
 * sampler on the model's stream), so that step n+1 can be enqueued before
 * step n's ids reach the host. Two host staging buffers alternate: the call
 * waits only for the copy of the step before the previous one. */
int dcu_forward_async(dcu_model *m, const dcu_batch *b, dcu_status *st);
float *dcu_model_logits(dcu_model *m);
int32_t *dcu_model_ids(dcu_model *m); /* device, at least num_rows of the last step */
void *dcu_model_stream(dcu_model *m); /* the model's cudaStream_t */
int dcu_model_vocab(dcu_model *m);
/* Times n replays of the same step on the device (events), for benchmarks;
 * logits are not copied; graph=0 launches every kernel directly. */
int dcu_forward_timed(dcu_model *m, const dcu_batch *b, int n, int graph, float *ms, dcu_status *st);
/* Runs the step once with an event after every operation; ms_by_kind
 * [DCU_PROF_KINDS] gets the device time per operation kind (dcu_prof_name). */
#define DCU_PROF_KINDS 12
int dcu_profile_step(dcu_model *m, const dcu_batch *b, float *ms_by_kind, dcu_status *st);
const char *dcu_prof_name(int kind);
int dcu_model_destroy(dcu_model *m, dcu_status *st);

#ifdef __cplusplus
}
#endif
#endif
