/* C side of the UCX transceiver: dlopen of libucp and thin wrappers. */
#ifndef DISAGG_UCX_SHIM_H
#define DISAGG_UCX_SHIM_H

#include "ucp.h"

/* API version we ask ucp_init_version for: every call we make exists
 * since UCX 1.10. */
#define DXU_API_MAJOR 1
#define DXU_API_MINOR 10

int dxu_load(const char *path, char *err, size_t errlen);
int dxu_loaded(void);
void dxu_version(unsigned *major, unsigned *minor, unsigned *release);
const char *dxu_status_string(dxucs_status_t st);

/* key, if not NULL, is set to value in the context's configuration
 * (ucp_config_modify: UCP keys, or transport keys such as
 * CUDA_IPC_ENABLE_GET_ZCOPY, without the UCX_ prefix). */
dxucs_status_t dxu_init(uint64_t features, const char *key, const char *value, dxucp_context_h *ctx);
void dxu_cleanup(dxucp_context_h ctx);
dxucs_status_t dxu_memory_types(dxucp_context_h ctx, uint64_t *types);

dxucs_status_t dxu_worker_create(dxucp_context_h ctx, dxucp_worker_h *w);
void dxu_worker_destroy(dxucp_worker_h w);
dxucs_status_t dxu_worker_address(dxucp_worker_h w, void **addr, size_t *len);
void dxu_worker_release_address(dxucp_worker_h w, void *addr);
unsigned dxu_progress(dxucp_worker_h w);
/* The largest header ucp_am_send_nbx takes (0: unknown). */
size_t dxu_worker_max_am_header(dxucp_worker_h w);
/* Wakeup: the worker's event fd, and arming it before sleeping on it
 * (DXUCS_ERR_BUSY: events are pending, progress instead). */
dxucs_status_t dxu_worker_efd(dxucp_worker_h w, int *fd);
dxucs_status_t dxu_worker_arm(dxucp_worker_h w);

/* Received active messages, copied by the handler and queued in C until
 * the Go progress loop pops them (same thread). */
typedef struct dx_msg {
    struct dx_msg *next;
    size_t len;
    unsigned char data[];
} dx_msg;

typedef struct {
    dx_msg *head, *tail;
    uint64_t dropped;
} dx_queue;

dx_queue *dxu_queue_new(void);
void dxu_queue_free(dx_queue *q);
dx_msg *dxu_queue_pop(dx_queue *q);
dxucs_status_t dxu_set_am_handler(dxucp_worker_h w, unsigned id, dx_queue *q);

/* An endpoint and the failure status its error handler recorded. */
typedef struct {
    dxucp_ep_h ep;
    int failed; /* 0, or the ucs_status_t the error handler saw */
} dx_ep;

dx_ep *dxu_ep_new(void);
/* peer_errors: 1 for UCP_ERR_HANDLING_MODE_PEER (a dead peer fails
 * operations), 0 for none (faster transports, but a dead peer may hang
 * or abort the process). */
dxucs_status_t dxu_ep_create(dxucp_worker_h w, const void *addr, dx_ep *e, int peer_errors);
void *dxu_ep_close(dx_ep *e, int force);
void *dxu_ep_flush(dx_ep *e);

dxucs_status_t dxu_mem_map(dxucp_context_h ctx, void *addr, size_t len, int memtype, dxucp_mem_h *memh);
dxucs_status_t dxu_mem_unmap(dxucp_context_h ctx, dxucp_mem_h memh);
dxucs_status_t dxu_rkey_pack(dxucp_context_h ctx, dxucp_mem_h memh, void **buf, size_t *len);
void dxu_rkey_buffer_release(void *buf);
dxucs_status_t dxu_rkey_unpack(dx_ep *e, const void *buf, dxucp_rkey_h *rkey);
void dxu_rkey_destroy(dxucp_rkey_h rkey);

/* memh: the registration holding buf (NULL: UCX looks it up). */
void *dxu_put(dx_ep *e, void *buf, size_t len, uint64_t raddr, dxucp_rkey_h rkey, int memtype, dxucp_mem_h memh);
void *dxu_get(dx_ep *e, void *buf, size_t len, uint64_t raddr, dxucp_rkey_h rkey, int memtype, dxucp_mem_h memh);
void *dxu_am_send(dx_ep *e, unsigned id, const void *buf, size_t len);

/* Writes as active messages, for host memory over endpoints where UCX has
 * no transport doing RMA and would emulate every put with an active
 * message and a completion reply (TCP): one message carries many small
 * blocks of a write, gathered from the sender's blocks and scattered into
 * the receiver's by UCX or, for small eager messages, by the handler, or
 * one large run; the receiver checks the runs against its own region and
 * answers each message with an acknowledgement. */
#define DX_WRITE_MAGIC 0x31575844u /* "DXW1" */

typedef struct {
    uint32_t magic;
    uint32_t nruns;
    uint64_t seq;         /* the writer's id for this message, echoed in the ack */
    uint64_t block_bytes; /* must equal the receiver's */
} dx_whdr;                /* followed by nruns dx_wrun */

typedef struct {
    uint32_t block; /* first block in the receiver's region */
    uint32_t count;
} dx_wrun;

typedef struct {
    uint64_t seq;
    int64_t status; /* DXUCS_OK, or why the write was refused or failed */
} dx_wack;

/* The receiving side: its registered host region (base NULL: none). */
typedef struct {
    dxucp_worker_h worker;
    unsigned ack_id;
    unsigned char *base;
    uint64_t block_bytes, nblocks;
    uint64_t refused; /* writes refused (malformed, outside the region, no reply endpoint) or not received */
    uint64_t unacked; /* acknowledgements that could not be posted */
} dx_wrecv;

dxucs_status_t dxu_set_write_handler(dxucp_worker_h w, unsigned id, dx_wrecv *r);
/* hdr (a dx_whdr and its runs, hlen bytes) and iov must stay valid until
 * the returned request completes. One piece (n == 1) goes as contiguous
 * data, which UCX can move without copying; the receiver likewise
 * receives a message of one run as contiguous data. */
void *dxu_am_write(dx_ep *e, unsigned id, const void *hdr, size_t hlen, const dxucp_dt_iov_t *iov, size_t n);
/* 1: a lane of the endpoint does RMA; 0: none does (UCX emulates puts
 * with active messages); -1: unknown. */
int dxu_ep_has_rma(dx_ep *e);

/* Status of a status-pointer returned by a *_nbx call: DXUCS_OK for NULL,
 * the error for an error pointer, else the request's own status. */
dxucs_status_t dxu_ptr_status(void *p);
int dxu_is_request(void *p);
void dxu_req_free(void *p);

#endif
