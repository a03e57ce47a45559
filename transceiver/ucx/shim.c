#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

static struct {
    void *lib;
    dxucp_get_version_fn get_version;
    dxucp_config_read_fn config_read;
    dxucp_config_release_fn config_release;
    dxucp_config_modify_fn config_modify;
    dxucp_init_version_fn init_version;
    dxucp_cleanup_fn cleanup;
    dxucp_context_query_fn context_query;
    dxucp_worker_create_fn worker_create;
    dxucp_worker_destroy_fn worker_destroy;
    dxucp_worker_query_fn worker_query;
    dxucp_worker_release_address_fn worker_release_address;
    dxucp_worker_progress_fn worker_progress;
    dxucp_worker_set_am_recv_handler_fn worker_set_am_recv_handler;
    dxucp_ep_create_fn ep_create;
    dxucp_ep_close_nbx_fn ep_close_nbx;
    dxucp_ep_flush_nbx_fn ep_flush_nbx;
    dxucp_mem_map_fn mem_map;
    dxucp_mem_unmap_fn mem_unmap;
    dxucp_rkey_pack_fn rkey_pack;
    dxucp_rkey_buffer_release_fn rkey_buffer_release;
    dxucp_ep_rkey_unpack_fn ep_rkey_unpack;
    dxucp_rkey_destroy_fn rkey_destroy;
    dxucp_put_nbx_fn put_nbx;
    dxucp_get_nbx_fn get_nbx;
    dxucp_am_send_nbx_fn am_send_nbx;
    dxucp_request_check_status_fn request_check_status;
    dxucp_request_free_fn request_free;
    dxucs_status_string_fn status_string;
    dxucp_worker_get_efd_fn worker_get_efd;
    dxucp_worker_arm_fn worker_arm;
    dxucp_am_recv_data_nbx_fn am_recv_data_nbx;
    dxucp_ep_print_info_fn ep_print_info;
} u;

#define REQUIRE(field, name)                                                  \
    do {                                                                      \
        *(void **)(&u.field) = dlsym(lib, name);                              \
        if (u.field == NULL) {                                                \
            snprintf(err, errlen, "%s: missing symbol %s", path, name);       \
            goto fail;                                                        \
        }                                                                     \
    } while (0)

int dxu_load(const char *path, char *err, size_t errlen) {
    if (u.lib != NULL) {
        return 0;
    }
    /* RTLD_LOCAL: this UCX must never satisfy another library's (NIXL's
     * bundled UCX) symbol lookups. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *e = dlerror();
        snprintf(err, errlen, "%s", e ? e : "dlopen failed");
        return -1;
    }
    REQUIRE(get_version, "ucp_get_version");
    REQUIRE(config_read, "ucp_config_read");
    REQUIRE(config_release, "ucp_config_release");
    REQUIRE(config_modify, "ucp_config_modify");
    REQUIRE(init_version, "ucp_init_version");
    REQUIRE(cleanup, "ucp_cleanup");
    REQUIRE(context_query, "ucp_context_query");
    REQUIRE(worker_create, "ucp_worker_create");
    REQUIRE(worker_destroy, "ucp_worker_destroy");
    REQUIRE(worker_query, "ucp_worker_query");
    REQUIRE(worker_release_address, "ucp_worker_release_address");
    REQUIRE(worker_progress, "ucp_worker_progress");
    REQUIRE(worker_set_am_recv_handler, "ucp_worker_set_am_recv_handler");
    REQUIRE(ep_create, "ucp_ep_create");
    REQUIRE(ep_close_nbx, "ucp_ep_close_nbx");
    REQUIRE(ep_flush_nbx, "ucp_ep_flush_nbx");
    REQUIRE(mem_map, "ucp_mem_map");
    REQUIRE(mem_unmap, "ucp_mem_unmap");
    REQUIRE(rkey_pack, "ucp_rkey_pack");
    REQUIRE(rkey_buffer_release, "ucp_rkey_buffer_release");
    REQUIRE(ep_rkey_unpack, "ucp_ep_rkey_unpack");
    REQUIRE(rkey_destroy, "ucp_rkey_destroy");
    REQUIRE(put_nbx, "ucp_put_nbx");
    REQUIRE(get_nbx, "ucp_get_nbx");
    REQUIRE(am_send_nbx, "ucp_am_send_nbx");
    REQUIRE(request_check_status, "ucp_request_check_status");
    REQUIRE(request_free, "ucp_request_free");
    REQUIRE(status_string, "ucs_status_string");
    REQUIRE(worker_get_efd, "ucp_worker_get_efd");
    REQUIRE(worker_arm, "ucp_worker_arm");
    REQUIRE(am_recv_data_nbx, "ucp_am_recv_data_nbx");
    REQUIRE(ep_print_info, "ucp_ep_print_info");
    u.lib = lib;
    return 0;
fail:
    memset(&u, 0, sizeof(u));
    dlclose(lib);
    return -1;
}

int dxu_loaded(void) { return u.lib != NULL; }

void dxu_version(unsigned *major, unsigned *minor, unsigned *release) { u.get_version(major, minor, release); }

const char *dxu_status_string(dxucs_status_t st) { return u.status_string(st); }

dxucs_status_t dxu_init(uint64_t features, const char *key, const char *value, dxucp_context_h *ctx) {
    dxucp_config_t *cfg = NULL;
    dxucs_status_t st = u.config_read(NULL, NULL, &cfg);
    if (st != DXUCS_OK) {
        return st;
    }
    if (key != NULL && (st = u.config_modify(cfg, key, value)) != DXUCS_OK) {
        u.config_release(cfg);
        return st;
    }
    dxucp_params_t p;
    memset(&p, 0, sizeof(p));
    p.field_mask = DXUCP_PARAM_FIELD_FEATURES | DXUCP_PARAM_FIELD_MT_WORKERS_SHARED;
    p.features = features;
    p.mt_workers_shared = 0;
    st = u.init_version(DXU_API_MAJOR, DXU_API_MINOR, &p, cfg, ctx);
    u.config_release(cfg);
    return st;
}

void dxu_cleanup(dxucp_context_h ctx) { u.cleanup(ctx); }

dxucs_status_t dxu_memory_types(dxucp_context_h ctx, uint64_t *types) {
    dxucp_context_attr_t a;
    memset(&a, 0, sizeof(a));
    a.field_mask = DXUCP_ATTR_FIELD_MEMORY_TYPES;
    dxucs_status_t st = u.context_query(ctx, &a);
    *types = a.memory_types;
    return st;
}

dxucs_status_t dxu_worker_create(dxucp_context_h ctx, dxucp_worker_h *w) {
    dxucp_worker_params_t p;
    memset(&p, 0, sizeof(p));
    p.field_mask = DXUCP_WORKER_PARAM_FIELD_THREAD_MODE;
    p.thread_mode = DXUCS_THREAD_MODE_SINGLE;
    return u.worker_create(ctx, &p, w);
}

void dxu_worker_destroy(dxucp_worker_h w) { u.worker_destroy(w); }

dxucs_status_t dxu_worker_address(dxucp_worker_h w, void **addr, size_t *len) {
    dxucp_worker_attr_t a;
    memset(&a, 0, sizeof(a));
    a.field_mask = DXUCP_WORKER_ATTR_FIELD_ADDRESS;
    dxucs_status_t st = u.worker_query(w, &a);
    *addr = a.address;
    *len = a.address_length;
    return st;
}

void dxu_worker_release_address(dxucp_worker_h w, void *addr) {
    u.worker_release_address(w, (dxucp_address_t *)addr);
}

unsigned dxu_progress(dxucp_worker_h w) { return u.worker_progress(w); }

dx_queue *dxu_queue_new(void) { return calloc(1, sizeof(dx_queue)); }

void dxu_queue_free(dx_queue *q) {
    dx_msg *m;
    while ((m = dxu_queue_pop(q)) != NULL) {
        free(m);
    }
    free(q);
}

dx_msg *dxu_queue_pop(dx_queue *q) {
    dx_msg *m = q->head;
    if (m != NULL) {
        q->head = m->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
    }
    return m;
}

static dxucs_status_t am_recv(void *arg, const void *header, size_t header_length, void *data, size_t length,
                              const dxucp_am_recv_param_t *param) {
    dx_queue *q = arg;
    (void)header;
    (void)header_length;
    /* Notifications are sent eagerly; a rendezvous one cannot be read
     * here and is dropped (the sender's deadline covers it). */
    if (param->recv_attr & DXUCP_AM_RECV_ATTR_FLAG_RNDV) {
        q->dropped++;
        return DXUCS_OK;
    }
    dx_msg *m = malloc(sizeof(dx_msg) + length);
    if (m == NULL) {
        q->dropped++;
        return DXUCS_OK;
    }
    m->next = NULL;
    m->len = length;
    if (length > 0) {
        memcpy(m->data, data, length);
    }
    if (q->tail != NULL) {
        q->tail->next = m;
    } else {
        q->head = m;
    }
    q->tail = m;
    return DXUCS_OK;
}

/* set_handler registers cb(arg, ...) for whole active messages of id. */
static dxucs_status_t set_handler(dxucp_worker_h w, unsigned id, dxucp_am_recv_callback_t cb, void *arg) {
    dxucp_am_handler_param_t p;
    memset(&p, 0, sizeof(p));
    p.field_mask = DXUCP_AM_HANDLER_PARAM_FIELD_ID | DXUCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                   DXUCP_AM_HANDLER_PARAM_FIELD_CB | DXUCP_AM_HANDLER_PARAM_FIELD_ARG;
    p.id = id;
    p.flags = DXUCP_AM_FLAG_WHOLE_MSG;
    p.cb = cb;
    p.arg = arg;
    return u.worker_set_am_recv_handler(w, &p);
}

dxucs_status_t dxu_set_am_handler(dxucp_worker_h w, unsigned id, dx_queue *q) { return set_handler(w, id, am_recv, q); }

dx_ep *dxu_ep_new(void) { return calloc(1, sizeof(dx_ep)); }

static void ep_error(void *arg, dxucp_ep_h ep, dxucs_status_t status) {
    dx_ep *e = arg;
    (void)ep;
    e->failed = status == DXUCS_OK ? -1 : status;
}

dxucs_status_t dxu_ep_create(dxucp_worker_h w, const void *addr, dx_ep *e, int peer_errors) {
    dxucp_ep_params_t p;
    memset(&p, 0, sizeof(p));
    p.field_mask = DXUCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    p.address = addr;
    if (peer_errors) {
        p.field_mask |= DXUCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | DXUCP_EP_PARAM_FIELD_ERR_HANDLER;
        p.err_mode = DXUCP_ERR_HANDLING_MODE_PEER;
        p.err_handler.cb = ep_error;
        p.err_handler.arg = e;
    }
    return u.ep_create(w, &p, &e->ep);
}

void *dxu_ep_close(dx_ep *e, int force) {
    dxucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    p.op_attr_mask = DXUCP_OP_ATTR_FIELD_FLAGS;
    p.flags = force ? DXUCP_EP_CLOSE_FLAG_FORCE : 0;
    void *r = u.ep_close_nbx(e->ep, &p);
    e->ep = NULL;
    return r;
}

void *dxu_ep_flush(dx_ep *e) {
    dxucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    return u.ep_flush_nbx(e->ep, &p);
}

dxucs_status_t dxu_mem_map(dxucp_context_h ctx, void *addr, size_t len, int memtype, dxucp_mem_h *memh) {
    dxucp_mem_map_params_t p;
    memset(&p, 0, sizeof(p));
    p.field_mask = DXUCP_MEM_MAP_PARAM_FIELD_ADDRESS | DXUCP_MEM_MAP_PARAM_FIELD_LENGTH |
                   DXUCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    p.address = addr;
    p.length = len;
    p.memory_type = memtype;
    return u.mem_map(ctx, &p, memh);
}

dxucs_status_t dxu_mem_unmap(dxucp_context_h ctx, dxucp_mem_h memh) { return u.mem_unmap(ctx, memh); }

dxucs_status_t dxu_rkey_pack(dxucp_context_h ctx, dxucp_mem_h memh, void **buf, size_t *len) {
    return u.rkey_pack(ctx, memh, buf, len);
}

void dxu_rkey_buffer_release(void *buf) { u.rkey_buffer_release(buf); }

dxucs_status_t dxu_rkey_unpack(dx_ep *e, const void *buf, dxucp_rkey_h *rkey) {
    return u.ep_rkey_unpack(e->ep, buf, rkey);
}

void dxu_rkey_destroy(dxucp_rkey_h rkey) { u.rkey_destroy(rkey); }

/* The local buffer's memory type and registration, so that UCX need not
 * look either up for every operation. */
static void rma_param(dxucp_request_param_t *p, int memtype, dxucp_mem_h memh) {
    memset(p, 0, sizeof(*p));
    if (memtype != DXUCS_MEMORY_TYPE_HOST) {
        p->op_attr_mask = DXUCP_OP_ATTR_FIELD_MEMORY_TYPE;
        p->memory_type = memtype;
    }
    if (memh != NULL) {
        p->op_attr_mask |= DXUCP_OP_ATTR_FIELD_MEMH;
        p->memh = memh;
    }
}

void *dxu_put(dx_ep *e, void *buf, size_t len, uint64_t raddr, dxucp_rkey_h rkey, int memtype, dxucp_mem_h memh) {
    dxucp_request_param_t p;
    rma_param(&p, memtype, memh);
    return u.put_nbx(e->ep, buf, len, raddr, rkey, &p);
}

void *dxu_get(dx_ep *e, void *buf, size_t len, uint64_t raddr, dxucp_rkey_h rkey, int memtype, dxucp_mem_h memh) {
    dxucp_request_param_t p;
    rma_param(&p, memtype, memh);
    return u.get_nbx(e->ep, buf, len, raddr, rkey, &p);
}

void *dxu_am_send(dx_ep *e, unsigned id, const void *buf, size_t len) {
    dxucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    p.op_attr_mask = DXUCP_OP_ATTR_FIELD_FLAGS;
    p.flags = DXUCP_AM_SEND_FLAG_EAGER;
    return u.am_send_nbx(e->ep, id, NULL, 0, buf, len, &p);
}

int dxu_is_request(void *p) { return DXUCS_PTR_IS_PTR(p); }

dxucs_status_t dxu_ptr_status(void *p) {
    if (p == NULL) {
        return DXUCS_OK;
    }
    if (DXUCS_PTR_IS_ERR(p)) {
        return DXUCS_PTR_RAW_STATUS(p);
    }
    return u.request_check_status(p);
}

void dxu_req_free(void *p) {
    if (DXUCS_PTR_IS_PTR(p)) {
        u.request_free(p);
    }
}

size_t dxu_worker_max_am_header(dxucp_worker_h w) {
    dxucp_worker_attr_t a;
    memset(&a, 0, sizeof(a));
    a.field_mask = DXUCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
    if (u.worker_query(w, &a) != DXUCS_OK) {
        return 0;
    }
    return a.max_am_header;
}

dxucs_status_t dxu_worker_efd(dxucp_worker_h w, int *fd) { return u.worker_get_efd(w, fd); }

dxucs_status_t dxu_worker_arm(dxucp_worker_h w) { return u.worker_arm(w); }

/* --- writes as active messages --- */

static void ack_sent(void *req, dxucs_status_t st, void *user_data) {
    (void)st;
    free(user_data);
    u.request_free(req);
}

static void send_ack(dx_wrecv *r, dxucp_ep_h ep, uint64_t seq, dxucs_status_t st) {
    dx_wack *a = malloc(sizeof(*a));
    if (a == NULL) {
        r->unacked++;
        return;
    }
    a->seq = seq;
    a->status = st;
    dxucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    p.op_attr_mask = DXUCP_OP_ATTR_FIELD_FLAGS | DXUCP_OP_ATTR_FIELD_CALLBACK | DXUCP_OP_ATTR_FIELD_USER_DATA;
    p.flags = DXUCP_AM_SEND_FLAG_EAGER;
    p.cb = (void *)ack_sent;
    p.user_data = a;
    void *q = u.am_send_nbx(ep, r->ack_id, NULL, 0, a, sizeof(*a), &p);
    if (!DXUCS_PTR_IS_PTR(q)) { /* done at once (no callback), or failed */
        if (DXUCS_PTR_IS_ERR(q)) {
            r->unacked++;
        }
        free(a);
    }
}

/* check_write validates a write's header against the receiver's region
 * and the message length; the header may be unaligned. */
static dxucs_status_t check_write(const dx_wrecv *r, const unsigned char *hdr, size_t hlen, size_t length,
                                  dx_whdr *h) {
    if (hlen < sizeof(*h)) {
        return DXUCS_ERR_INVALID_PARAM;
    }
    memcpy(h, hdr, sizeof(*h));
    if (h->magic != DX_WRITE_MAGIC || h->nruns == 0 || hlen != sizeof(*h) + (size_t)h->nruns * sizeof(dx_wrun)) {
        return DXUCS_ERR_INVALID_PARAM;
    }
    if (r->base == NULL || h->block_bytes != r->block_bytes) {
        return DXUCS_ERR_INVALID_PARAM;
    }
    uint64_t blocks = 0;
    for (uint32_t i = 0; i < h->nruns; i++) {
        dx_wrun run;
        memcpy(&run, hdr + sizeof(*h) + i * sizeof(run), sizeof(run));
        if (run.count == 0 || run.block >= r->nblocks || run.count > r->nblocks - run.block) {
            return DXUCS_ERR_INVALID_PARAM;
        }
        blocks += run.count;
    }
    if (blocks > r->nblocks || blocks * r->block_bytes != length) {
        return DXUCS_ERR_INVALID_PARAM;
    }
    return DXUCS_OK;
}

/* refuse counts a refused write and answers it. The acknowledgement is
 * the writer's verdict: a rendezvous is then dropped, which completes the
 * sender's request without error (an error status could arrive before the
 * acknowledgement and hide why). Without a reply endpoint there is no one
 * to acknowledge, and the rendezvous fails the sender's request with st. */
static dxucs_status_t refuse(dx_wrecv *r, dxucp_ep_h ep, uint64_t seq, dxucs_status_t st, int rndv) {
    r->refused++;
    if (ep == NULL) {
        return rndv ? st : DXUCS_OK;
    }
    send_ack(r, ep, seq, st);
    return DXUCS_OK;
}

typedef struct {
    dx_wrecv *r;
    dxucp_ep_h ep;
    uint64_t seq;
    dxucp_dt_iov_t iov[];
} wrecv_op;

static void write_received(void *req, dxucs_status_t st, size_t length, void *user_data) {
    wrecv_op *op = user_data;
    (void)length;
    if (st == DXUCS_OK) {
        send_ack(op->r, op->ep, op->seq, DXUCS_OK);
    } else {
        op->r->refused++; /* the sender's request fails too; its endpoint may be gone */
    }
    free(op);
    u.request_free(req);
}

static dxucs_status_t am_write(void *arg, const void *header, size_t header_length, void *data, size_t length,
                               const dxucp_am_recv_param_t *param) {
    dx_wrecv *r = arg;
    const int rndv = (param->recv_attr & DXUCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    dxucp_ep_h ep = (param->recv_attr & DXUCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : NULL;
    dx_whdr h;
    memset(&h, 0, sizeof(h));
    dxucs_status_t st = check_write(r, header, header_length, length, &h);
    if (st == DXUCS_OK && ep == NULL) {
        st = DXUCS_ERR_INVALID_PARAM;
    }
    if (st != DXUCS_OK) {
        return refuse(r, ep, h.seq, st, rndv);
    }
    const unsigned char *runs = (const unsigned char *)header + sizeof(h);
    if (!rndv) {
        const unsigned char *src = data;
        for (uint32_t i = 0; i < h.nruns; i++) {
            dx_wrun run;
            memcpy(&run, runs + i * sizeof(run), sizeof(run));
            size_t n = (size_t)run.count * r->block_bytes;
            memcpy(r->base + (size_t)run.block * r->block_bytes, src, n);
            src += n;
        }
        send_ack(r, ep, h.seq, DXUCS_OK);
        return DXUCS_OK;
    }
    wrecv_op *op = malloc(sizeof(*op) + h.nruns * sizeof(dxucp_dt_iov_t));
    if (op == NULL) {
        return refuse(r, ep, h.seq, DXUCS_ERR_NO_MEMORY, rndv);
    }
    op->r = r;
    op->ep = ep;
    op->seq = h.seq;
    for (uint32_t i = 0; i < h.nruns; i++) {
        dx_wrun run;
        memcpy(&run, runs + i * sizeof(run), sizeof(run));
        op->iov[i].buffer = r->base + (size_t)run.block * r->block_bytes;
        op->iov[i].length = (size_t)run.count * r->block_bytes;
    }
    dxucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    p.op_attr_mask = DXUCP_OP_ATTR_FIELD_CALLBACK | DXUCP_OP_ATTR_FIELD_USER_DATA;
    p.cb = (void *)write_received;
    p.user_data = op;
    void *q;
    if (h.nruns == 1) { /* contiguous: UCX's zero-copy protocols apply */
        q = u.am_recv_data_nbx(r->worker, data, op->iov[0].buffer, op->iov[0].length, &p);
    } else {
        p.op_attr_mask |= DXUCP_OP_ATTR_FIELD_DATATYPE;
        p.datatype = DXUCP_DATATYPE_IOV;
        q = u.am_recv_data_nbx(r->worker, data, op->iov, h.nruns, &p);
    }
    if (DXUCS_PTR_IS_ERR(q)) {
        r->refused++;
        send_ack(r, ep, h.seq, DXUCS_PTR_RAW_STATUS(q));
        free(op);
    } else if (q == NULL) { /* complete already, without a callback */
        send_ack(r, ep, h.seq, DXUCS_OK);
        free(op);
    } /* else write_received acknowledges and frees */
    return DXUCS_OK;
}

dxucs_status_t dxu_set_write_handler(dxucp_worker_h w, unsigned id, dx_wrecv *r) {
    return set_handler(w, id, am_write, r);
}

void *dxu_am_write(dx_ep *e, unsigned id, const void *hdr, size_t hlen, const dxucp_dt_iov_t *iov, size_t n) {
    dxucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    p.op_attr_mask = DXUCP_OP_ATTR_FIELD_FLAGS;
    p.flags = DXUCP_AM_SEND_FLAG_REPLY;
    if (n == 1) { /* contiguous: UCX's zero-copy protocols apply */
        return u.am_send_nbx(e->ep, id, hdr, hlen, iov[0].buffer, iov[0].length, &p);
    }
    p.op_attr_mask |= DXUCP_OP_ATTR_FIELD_DATATYPE;
    p.datatype = DXUCP_DATATYPE_IOV;
    return u.am_send_nbx(e->ep, id, hdr, hlen, iov, n, &p);
}

int dxu_ep_has_rma(dx_ep *e) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (f == NULL) {
        return -1;
    }
    u.ep_print_info(e->ep, f);
    fclose(f);
    int r = -1;
    if (buf != NULL) {
        if (strstr(buf, " rma_bw#") != NULL || strstr(buf, " rma#") != NULL) {
            r = 1;
        } else if (strstr(buf, "lane[") != NULL) {
            r = 0;
        }
        free(buf);
    }
    return r;
}
