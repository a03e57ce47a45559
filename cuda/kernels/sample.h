/* sample.h: sampling on the device, from a model's logits (dcu.h) into its
 * ids, so that only token ids reach the host. Plain C types; the same
 * conventions as dcu.h: 1 on success, 0 on failure described in *st, and
 * every function that touches the device is called from the thread that
 * owns it (cuda.Device.Do). */
#ifndef DCU_SAMPLE_H
#define DCU_SAMPLE_H

#include "dcu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One row's sampling parameters (compute.SampleParams). */
typedef struct dcu_sample_params {
	float temperature; /* below 1e-5: greedy (argmax, lowest id on ties) */
	int32_t top_k;     /* > 0 keeps the k most likely; <= 0 off */
	float top_p;       /* < 1 keeps the smallest most-likely set reaching it */
	float min_p;       /* > 0 drops tokens below min_p times the most likely */
	uint64_t seed;     /* the draw is dcu_sample_uniform(seed, step) */
	uint64_t step;
} dcu_sample_params;

/* A model's sampler: its pinned host staging (parameters in, ids out),
 * alternating between two slots so that one step can be enqueued while the
 * previous one's ids are still to be read, with an event per slot. */
typedef struct dcu_sampler dcu_sampler;

int dcu_sampler_create(dcu_model *m, dcu_sampler **out, dcu_status *st);

/* Enqueues on the model's stream, after the step dcu_forward_async just
 * enqueued (called with b->argmax NULL): sampling of rows [0, rows) of
 * dcu_model_logits into dcu_model_ids (where the next step's negative token
 * ids read them; a row with no token to sample leaves id 0 there), the copy
 * of the ids to pinned host memory (-1 for such a row), and an event.
 * *slot names the step for dcu_sample_wait. rows may be 0 (the event alone).
 * At most two steps may wait for dcu_sample_wait: a third is refused. */
int dcu_sample_async(dcu_sampler *s, const dcu_sample_params *p, int rows, int *slot, dcu_status *st);

/* Waits for the step of slot (its kernels, the sampling, the copy) and
 * copies its rows ids into ids (may be NULL when rows is 0). */
int dcu_sample_wait(dcu_sampler *s, int slot, int32_t *ids, int rows, dcu_status *st);

int dcu_sampler_destroy(dcu_sampler *s, dcu_status *st);

/* Test hooks. dcu_sample_logits samples rows of host logits [rows][vocab]
 * (or, when shared_row, one row for every p[r]) with the same kernel,
 * synchronously on a stream of its own, into host ids (-1: no token).
 * dcu_sample_uniform is the counter-based draw in [0, 1), the same function
 * as Go's sampling.Uniform. */
int dcu_sample_logits(const float *logits, int rows, int vocab, int shared_row, const dcu_sample_params *p,
                      int32_t *ids, dcu_status *st);
double dcu_sample_uniform(uint64_t seed, uint64_t step);

#ifdef __cplusplus
}
#endif
#endif
