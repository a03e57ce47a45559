/* C side of the NIXL transceiver: dlopen of libnixl_capi.so, the symbol
 * table, and wrappers Go can call. */
#ifndef DISAGG_NIXL_SHIM_H
#define DISAGG_NIXL_SHIM_H

#include "nixl_capi.h"

/* Every symbol we call. Required ones must all be present. */
#define DXN_REQUIRED(X)                                                                   \
    X(create_agent) X(destroy_agent) X(get_local_md) X(load_remote_md)                    \
    X(invalidate_remote_md) X(get_plugin_params) X(destroy_mem_list) X(destroy_params)   \
    X(create_backend) X(destroy_backend) X(create_opt_args) X(destroy_opt_args)          \
    X(opt_args_add_backend) X(opt_args_set_notif_msg) X(opt_args_set_has_notif)          \
    X(register_mem) X(deregister_mem) X(get_notifs) X(create_notif_map)                  \
    X(destroy_notif_map) X(gen_notif) X(post_xfer_req)                \
    X(get_xfer_status) X(release_xfer_req) X(destroy_xfer_req) X(create_xfer_dlist)      \
    X(destroy_xfer_dlist) X(xfer_dlist_add_desc) X(create_reg_dlist) X(destroy_reg_dlist) \
    X(reg_dlist_add_desc) X(notif_map_size) X(notif_map_get_agent_at)                     \
    X(notif_map_get_notifs_size) X(notif_map_get_notif) X(notif_map_clear)              \
    X(prep_xfer_dlist) X(release_xfer_dlist_handle) X(make_xfer_req)

/* Optional ones: used when present. */
#define DXN_OPTIONAL(X)                                                                   \
    X(is_stub) X(get_available_plugins) X(destroy_string_list) X(string_list_size)        \
    X(string_list_get) X(agent_make_connection) X(create_configured_agent)

int dxn_load(const char *path, char *err, size_t errlen);
int dxn_loaded(void);
/* 1 if the library is NIXL's stub build (no real transfers), 0 if not,
 * -1 if it cannot tell. */
int dxn_is_stub(void);
/* 1 if the optional symbol name is present. */
int dxn_has(const char *name);

dxnixl_status_t dxn_create_agent(const char *name, dxnixl_agent_t *agent);
/* An agent without NIXL's own progress thread (prog_thread 0) where the
 * library can create one so; *threaded tells whether the agent has the
 * thread (the plain nixl_capi_create_agent always starts it). */
dxnixl_status_t dxn_create_agent_threads(const char *name, int prog_thread, dxnixl_agent_t *agent, int *threaded);
dxnixl_status_t dxn_destroy_agent(dxnixl_agent_t agent);
/* Comma-separated plugin names into buf (truncated), or an error. */
dxnixl_status_t dxn_plugins(dxnixl_agent_t agent, char *buf, size_t len);
dxnixl_status_t dxn_create_backend(dxnixl_agent_t agent, const char *plugin, dxnixl_backend_t *backend);
dxnixl_status_t dxn_destroy_backend(dxnixl_backend_t backend);
dxnixl_status_t dxn_opt_args(dxnixl_backend_t backend, dxnixl_opt_args_t *args);
dxnixl_status_t dxn_destroy_opt_args(dxnixl_opt_args_t args);
dxnixl_status_t dxn_opt_args_notif(dxnixl_opt_args_t args, const void *data, size_t len);
dxnixl_status_t dxn_register(dxnixl_agent_t agent, dxnixl_mem_type_t mt, void *addr, size_t len,
                             dxnixl_opt_args_t args, dxnixl_reg_dlist_t *dlist);
dxnixl_status_t dxn_deregister(dxnixl_agent_t agent, dxnixl_reg_dlist_t dlist, dxnixl_opt_args_t args);
dxnixl_status_t dxn_get_local_md(dxnixl_agent_t agent, void **data, size_t *len);
dxnixl_status_t dxn_load_remote_md(dxnixl_agent_t agent, const void *data, size_t len, char **name);
dxnixl_status_t dxn_invalidate_remote_md(dxnixl_agent_t agent, const char *name);
dxnixl_status_t dxn_make_connection(dxnixl_agent_t agent, const char *name, dxnixl_opt_args_t args);
dxnixl_status_t dxn_gen_notif(dxnixl_agent_t agent, const char *name, const void *data, size_t len,
                              dxnixl_opt_args_t args);

/* Prepares a descriptor list of n blocks of block_bytes from base, owned
 * by agent_name ("" or NULL: this agent, NIXL_INIT_AGENT). */
dxnixl_status_t dxn_prep_blocks(dxnixl_agent_t agent, const char *agent_name, dxnixl_mem_type_t mt,
                                uintptr_t base, size_t block_bytes, size_t n, dxnixl_opt_args_t args,
                                dxnixl_xfer_dlist_handle_t *h);
dxnixl_status_t dxn_release_dlist(dxnixl_agent_t agent, dxnixl_xfer_dlist_handle_t h);
/* A transfer between prepared lists: one block per index pair. */
dxnixl_status_t dxn_make_xfer(dxnixl_agent_t agent, dxnixl_xfer_op_t op, dxnixl_xfer_dlist_handle_t local,
                              const int *local_idx, dxnixl_xfer_dlist_handle_t remote, const int *remote_idx,
                              size_t n, dxnixl_opt_args_t args, dxnixl_xfer_req_t *req);
dxnixl_status_t dxn_post(dxnixl_agent_t agent, dxnixl_xfer_req_t req, dxnixl_opt_args_t args);
dxnixl_status_t dxn_status(dxnixl_agent_t agent, dxnixl_xfer_req_t req);
/* Releases and destroys the request; on failure it is left alive. */
dxnixl_status_t dxn_release(dxnixl_agent_t agent, dxnixl_xfer_req_t req);

dxnixl_status_t dxn_notif_map(dxnixl_notif_map_t *map);
dxnixl_status_t dxn_destroy_notif_map(dxnixl_notif_map_t map);
dxnixl_status_t dxn_get_notifs(dxnixl_agent_t agent, dxnixl_notif_map_t map);
dxnixl_status_t dxn_notif_map_size(dxnixl_notif_map_t map, size_t *n);
dxnixl_status_t dxn_notif_agent(dxnixl_notif_map_t map, size_t i, const char **name);
dxnixl_status_t dxn_notif_count(dxnixl_notif_map_t map, const char *name, size_t *n);
dxnixl_status_t dxn_notif_get(dxnixl_notif_map_t map, const char *name, size_t i, const void **data, size_t *len);
dxnixl_status_t dxn_notif_clear(dxnixl_notif_map_t map);

#endif
