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

dxucs_status_t dxu_init(uint64_t features, dxucp_context_h *ctx) {
    dxucp_config_t *cfg = NULL;
    dxucs_status_t st = u.config_read(NULL, NULL, &cfg);
    if (st != DXUCS_OK) {
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

dxucs_status_t dxu_set_am_handler(dxucp_worker_h w, unsigned id, dx_queue *q) {
    dxucp_am_handler_param_t p;
    memset(&p, 0, sizeof(p));
    p.field_mask = DXUCP_AM_HANDLER_PARAM_FIELD_ID | DXUCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                   DXUCP_AM_HANDLER_PARAM_FIELD_CB | DXUCP_AM_HANDLER_PARAM_FIELD_ARG;
    p.id = id;
    p.flags = DXUCP_AM_FLAG_WHOLE_MSG;
    p.cb = am_recv;
    p.arg = q;
    return u.worker_set_am_recv_handler(w, &p);
}

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

dxucs_status_t dxu_worker_efd(dxucp_worker_h w, int *fd) { return u.worker_get_efd(w, fd); }

dxucs_status_t dxu_worker_arm(dxucp_worker_h w) { return u.worker_arm(w); }
