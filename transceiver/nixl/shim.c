#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

#define FIELD(name) dxnixl_##name##_fn name;
static struct {
    void *lib;
    DXN_REQUIRED(FIELD)
    DXN_OPTIONAL(FIELD)
} n;
#undef FIELD

int dxn_load(const char *path, char *err, size_t errlen) {
    if (n.lib != NULL) {
        return 0;
    }
    /* RTLD_LOCAL: NIXL's bundled UCX must not meet another libucp. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *e = dlerror();
        snprintf(err, errlen, "%s", e ? e : "dlopen failed");
        return -1;
    }
    size_t used = 0;
    err[0] = 0;
#define REQUIRE(name)                                                                          \
    *(void **)(&n.name) = dlsym(lib, "nixl_capi_" #name);                                     \
    if (n.name == NULL && used < errlen) {                                                     \
        used += snprintf(err + used, errlen - used, "%snixl_capi_" #name, used ? ", " : "");   \
    }
    DXN_REQUIRED(REQUIRE)
#undef REQUIRE
    if (used > 0) {
        memset(&n, 0, sizeof(n));
        dlclose(lib);
        return -1;
    }
#define OPTIONAL(name) *(void **)(&n.name) = dlsym(lib, "nixl_capi_" #name);
    DXN_OPTIONAL(OPTIONAL)
#undef OPTIONAL
    n.lib = lib;
    return 0;
}

int dxn_loaded(void) { return n.lib != NULL; }

int dxn_is_stub(void) { return n.is_stub ? (n.is_stub() ? 1 : 0) : -1; }

int dxn_has(const char *name) {
#define HAS(sym)                                                                               \
    if (strcmp(name, #sym) == 0) {                                                             \
        return n.sym != NULL;                                                                  \
    }
    DXN_OPTIONAL(HAS)
#undef HAS
    return 0;
}

dxnixl_status_t dxn_create_agent(const char *name, dxnixl_agent_t *agent) { return n.create_agent(name, agent); }

dxnixl_status_t dxn_create_agent_threads(const char *name, int prog_thread, dxnixl_agent_t *agent, int *threaded) {
    if (n.create_configured_agent == NULL) {
        *threaded = 1;
        return n.create_agent(name, agent);
    }
    dxnixl_agent_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.enable_prog_thread = prog_thread != 0;
    cfg.thread_sync = 0;          /* every call comes from the agent's one loop thread */
    cfg.lthr_delay_us = 100000;   /* NIXL's default; no listener thread anyway */
    *threaded = prog_thread != 0;
    return n.create_configured_agent(name, &cfg, agent);
}

dxnixl_status_t dxn_destroy_agent(dxnixl_agent_t agent) { return n.destroy_agent(agent); }

dxnixl_status_t dxn_plugins(dxnixl_agent_t agent, char *buf, size_t len) {
    buf[0] = 0;
    if (!n.get_available_plugins || !n.string_list_size || !n.string_list_get || !n.destroy_string_list) {
        return DXNIXL_ERROR_NOT_FOUND;
    }
    dxnixl_string_list_t list = NULL;
    dxnixl_status_t st = n.get_available_plugins(agent, &list);
    if (st != DXNIXL_SUCCESS) {
        return st;
    }
    size_t cnt = 0, used = 0;
    n.string_list_size(list, &cnt);
    for (size_t i = 0; i < cnt && used < len; i++) {
        const char *s = NULL;
        if (n.string_list_get(list, i, &s) == DXNIXL_SUCCESS && s) {
            used += snprintf(buf + used, len - used, "%s%s", used ? "," : "", s);
        }
    }
    n.destroy_string_list(list);
    return DXNIXL_SUCCESS;
}

dxnixl_status_t dxn_create_backend(dxnixl_agent_t agent, const char *plugin, dxnixl_backend_t *backend) {
    dxnixl_mem_list_t mems = NULL;
    dxnixl_params_t params = NULL;
    dxnixl_status_t st = n.get_plugin_params(agent, plugin, &mems, &params);
    if (st != DXNIXL_SUCCESS) {
        return st;
    }
    st = n.create_backend(agent, plugin, params, backend);
    n.destroy_mem_list(mems);
    n.destroy_params(params);
    return st;
}

dxnixl_status_t dxn_destroy_backend(dxnixl_backend_t backend) { return n.destroy_backend(backend); }

dxnixl_status_t dxn_opt_args(dxnixl_backend_t backend, dxnixl_opt_args_t *args) {
    dxnixl_status_t st = n.create_opt_args(args);
    if (st != DXNIXL_SUCCESS) {
        return st;
    }
    st = n.opt_args_add_backend(*args, backend);
    if (st != DXNIXL_SUCCESS) {
        n.destroy_opt_args(*args);
        *args = NULL;
    }
    return st;
}

dxnixl_status_t dxn_destroy_opt_args(dxnixl_opt_args_t args) { return n.destroy_opt_args(args); }

dxnixl_status_t dxn_opt_args_notif(dxnixl_opt_args_t args, const void *data, size_t len) {
    dxnixl_status_t st = n.opt_args_set_notif_msg(args, data, len);
    if (st != DXNIXL_SUCCESS) {
        return st;
    }
    return n.opt_args_set_has_notif(args, true);
}

dxnixl_status_t dxn_register(dxnixl_agent_t agent, dxnixl_mem_type_t mt, void *addr, size_t len,
                             dxnixl_opt_args_t args, dxnixl_reg_dlist_t *dlist) {
    dxnixl_status_t st = n.create_reg_dlist(mt, dlist);
    if (st != DXNIXL_SUCCESS) {
        return st;
    }
    st = n.reg_dlist_add_desc(*dlist, (uintptr_t)addr, len, 0, NULL, 0);
    if (st == DXNIXL_SUCCESS) {
        st = n.register_mem(agent, *dlist, args);
    }
    if (st != DXNIXL_SUCCESS) {
        n.destroy_reg_dlist(*dlist);
        *dlist = NULL;
    }
    return st;
}

dxnixl_status_t dxn_deregister(dxnixl_agent_t agent, dxnixl_reg_dlist_t dlist, dxnixl_opt_args_t args) {
    dxnixl_status_t st = n.deregister_mem(agent, dlist, args);
    n.destroy_reg_dlist(dlist);
    return st;
}

dxnixl_status_t dxn_get_local_md(dxnixl_agent_t agent, void **data, size_t *len) {
    return n.get_local_md(agent, data, len);
}

dxnixl_status_t dxn_load_remote_md(dxnixl_agent_t agent, const void *data, size_t len, char **name) {
    return n.load_remote_md(agent, data, len, name);
}

dxnixl_status_t dxn_invalidate_remote_md(dxnixl_agent_t agent, const char *name) {
    return n.invalidate_remote_md(agent, name);
}

dxnixl_status_t dxn_make_connection(dxnixl_agent_t agent, const char *name, dxnixl_opt_args_t args) {
    if (!n.agent_make_connection) {
        return DXNIXL_SUCCESS; /* connections are then made on first use */
    }
    return n.agent_make_connection(agent, name, args);
}

dxnixl_status_t dxn_gen_notif(dxnixl_agent_t agent, const char *name, const void *data, size_t len,
                              dxnixl_opt_args_t args) {
    return n.gen_notif(agent, name, data, len, args);
}

dxnixl_status_t dxn_post(dxnixl_agent_t agent, dxnixl_xfer_req_t req, dxnixl_opt_args_t args) {
    return n.post_xfer_req(agent, req, args);
}

dxnixl_status_t dxn_status(dxnixl_agent_t agent, dxnixl_xfer_req_t req) { return n.get_xfer_status(agent, req); }

dxnixl_status_t dxn_release(dxnixl_agent_t agent, dxnixl_xfer_req_t req) {
    dxnixl_status_t st = n.release_xfer_req(agent, req);
    if (st != DXNIXL_SUCCESS) {
        return st;
    }
    return n.destroy_xfer_req(req);
}

dxnixl_status_t dxn_notif_map(dxnixl_notif_map_t *map) { return n.create_notif_map(map); }
dxnixl_status_t dxn_destroy_notif_map(dxnixl_notif_map_t map) { return n.destroy_notif_map(map); }
dxnixl_status_t dxn_get_notifs(dxnixl_agent_t agent, dxnixl_notif_map_t map) {
    return n.get_notifs(agent, map, NULL);
}
dxnixl_status_t dxn_notif_map_size(dxnixl_notif_map_t map, size_t *cnt) { return n.notif_map_size(map, cnt); }
dxnixl_status_t dxn_notif_agent(dxnixl_notif_map_t map, size_t i, const char **name) {
    return n.notif_map_get_agent_at(map, i, name);
}
dxnixl_status_t dxn_notif_count(dxnixl_notif_map_t map, const char *name, size_t *cnt) {
    return n.notif_map_get_notifs_size(map, name, cnt);
}
dxnixl_status_t dxn_notif_get(dxnixl_notif_map_t map, const char *name, size_t i, const void **data, size_t *len) {
    return n.notif_map_get_notif(map, name, i, data, len);
}
dxnixl_status_t dxn_notif_clear(dxnixl_notif_map_t map) { return n.notif_map_clear(map); }

dxnixl_status_t dxn_prep_blocks(dxnixl_agent_t agent, const char *agent_name, dxnixl_mem_type_t mt,
                                uintptr_t base, size_t block_bytes, size_t cnt, dxnixl_opt_args_t args,
                                dxnixl_xfer_dlist_handle_t *h) {
    dxnixl_xfer_dlist_t l = NULL;
    dxnixl_status_t st = n.create_xfer_dlist(mt, &l);
    if (st != DXNIXL_SUCCESS) {
        return st;
    }
    for (size_t i = 0; i < cnt && st == DXNIXL_SUCCESS; i++) {
        st = n.xfer_dlist_add_desc(l, base + i * block_bytes, block_bytes, 0);
    }
    if (st == DXNIXL_SUCCESS) {
        /* NIXL_INIT_AGENT, the name NIXL gives the local side, is "". */
        st = n.prep_xfer_dlist(agent, agent_name ? agent_name : "", l, h, args);
    }
    n.destroy_xfer_dlist(l);
    return st;
}

dxnixl_status_t dxn_release_dlist(dxnixl_agent_t agent, dxnixl_xfer_dlist_handle_t h) {
    return n.release_xfer_dlist_handle(agent, h);
}

dxnixl_status_t dxn_make_xfer(dxnixl_agent_t agent, dxnixl_xfer_op_t op, dxnixl_xfer_dlist_handle_t local,
                              const int *local_idx, dxnixl_xfer_dlist_handle_t remote, const int *remote_idx,
                              size_t cnt, dxnixl_opt_args_t args, dxnixl_xfer_req_t *req) {
    return n.make_xfer_req(agent, op, local, local_idx, cnt, remote, remote_idx, cnt, req, args);
}
