/*
 * Our own declarations of the part of NIXL's experimental C API
 * (libnixl_capi.so) that transceiver/nixl uses, dlopen'ed at run time.
 *
 * Facts are from src/api/c/nixl_capi.h of ai-dynamo/nixl at commit
 * 6f33f074 (the release line of the nixl-cu13 1.5.1 wheel: its exported
 * nixl_capi_* names match `nm -D libnixl_capi.so` of that wheel exactly).
 * The C API has changed between releases: check the header of the wheel's
 * release before moving to another wheel. Names carry a dx prefix; all
 * handles are opaque pointers.
 */
#ifndef DISAGG_CGO_NIXL_CAPI_H
#define DISAGG_CGO_NIXL_CAPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* nixl_capi_status_t (a plain C enum: int) */
typedef int dxnixl_status_t;
#define DXNIXL_SUCCESS 0
#define DXNIXL_IN_PROG 1
#define DXNIXL_ERROR_INVALID_PARAM (-1)
#define DXNIXL_ERROR_BACKEND (-2)
#define DXNIXL_ERROR_INVALID_STATE (-3)
#define DXNIXL_ERROR_EXCEPTION (-4)
#define DXNIXL_ERROR_NO_TELEMETRY (-5)
#define DXNIXL_ERROR_NOT_FOUND (-6)

/* nixl_capi_mem_type_t */
typedef int dxnixl_mem_type_t;
#define DXNIXL_MEM_DRAM 0
#define DXNIXL_MEM_VRAM 1

/* nixl_capi_xfer_op_t */
typedef int dxnixl_xfer_op_t;
#define DXNIXL_XFER_OP_READ 0
#define DXNIXL_XFER_OP_WRITE 1

typedef struct dxnixl_agent_s *dxnixl_agent_t;
typedef struct dxnixl_params_s *dxnixl_params_t;
typedef struct dxnixl_mem_list_s *dxnixl_mem_list_t;
typedef struct dxnixl_string_list_s *dxnixl_string_list_t;
typedef struct dxnixl_backend_s *dxnixl_backend_t;
typedef struct dxnixl_opt_args_s *dxnixl_opt_args_t;
typedef struct dxnixl_xfer_dlist_s *dxnixl_xfer_dlist_t;
typedef struct dxnixl_reg_dlist_s *dxnixl_reg_dlist_t;
typedef struct dxnixl_xfer_req_s *dxnixl_xfer_req_t;
typedef struct dxnixl_notif_map_s *dxnixl_notif_map_t;
typedef struct dxnixl_xfer_dlist_handle_s *dxnixl_xfer_dlist_handle_t;

/* nixl_capi_agent_config_t: what an agent is created with
 * (nixl_capi_create_configured_agent). thread_sync is
 * nixl_capi_thread_sync_t (0 none, 1 strict, 2 rw); num_workers is not
 * read by that release. */
typedef struct {
    bool enable_prog_thread;
    bool enable_listen_thread;
    int listen_port;
    int thread_sync;
    unsigned int num_workers;
    uint64_t pthr_delay_us;
    uint64_t lthr_delay_us;
    bool capture_telemetry;
} dxnixl_agent_config_t;

/* Entry points, as function pointer types for dlsym. */
typedef dxnixl_status_t (*dxnixl_create_agent_fn)(const char *name, dxnixl_agent_t *agent);
typedef dxnixl_status_t (*dxnixl_create_configured_agent_fn)(const char *name, const dxnixl_agent_config_t *cfg,
                                                            dxnixl_agent_t *agent);
typedef dxnixl_status_t (*dxnixl_destroy_agent_fn)(dxnixl_agent_t agent);
typedef dxnixl_status_t (*dxnixl_get_local_md_fn)(dxnixl_agent_t agent, void **data, size_t *len);
typedef dxnixl_status_t (*dxnixl_load_remote_md_fn)(dxnixl_agent_t agent, const void *data, size_t len,
                                                    char **agent_name);
typedef dxnixl_status_t (*dxnixl_invalidate_remote_md_fn)(dxnixl_agent_t agent, const char *remote_agent);
typedef dxnixl_status_t (*dxnixl_get_available_plugins_fn)(dxnixl_agent_t agent, dxnixl_string_list_t *plugins);
typedef dxnixl_status_t (*dxnixl_destroy_string_list_fn)(dxnixl_string_list_t list);
typedef dxnixl_status_t (*dxnixl_string_list_size_fn)(dxnixl_string_list_t list, size_t *size);
typedef dxnixl_status_t (*dxnixl_string_list_get_fn)(dxnixl_string_list_t list, size_t index, const char **str);
typedef dxnixl_status_t (*dxnixl_get_plugin_params_fn)(dxnixl_agent_t agent, const char *plugin_name,
                                                       dxnixl_mem_list_t *mems, dxnixl_params_t *params);
typedef dxnixl_status_t (*dxnixl_destroy_mem_list_fn)(dxnixl_mem_list_t list);
typedef dxnixl_status_t (*dxnixl_destroy_params_fn)(dxnixl_params_t params);
typedef dxnixl_status_t (*dxnixl_create_backend_fn)(dxnixl_agent_t agent, const char *plugin_name,
                                                    dxnixl_params_t params, dxnixl_backend_t *backend);
typedef dxnixl_status_t (*dxnixl_destroy_backend_fn)(dxnixl_backend_t backend);
typedef dxnixl_status_t (*dxnixl_create_opt_args_fn)(dxnixl_opt_args_t *args);
typedef dxnixl_status_t (*dxnixl_destroy_opt_args_fn)(dxnixl_opt_args_t args);
typedef dxnixl_status_t (*dxnixl_opt_args_add_backend_fn)(dxnixl_opt_args_t args, dxnixl_backend_t backend);
typedef dxnixl_status_t (*dxnixl_opt_args_set_notif_msg_fn)(dxnixl_opt_args_t args, const void *data, size_t len);
typedef dxnixl_status_t (*dxnixl_opt_args_set_has_notif_fn)(dxnixl_opt_args_t args, bool has_notif);
typedef dxnixl_status_t (*dxnixl_register_mem_fn)(dxnixl_agent_t agent, dxnixl_reg_dlist_t dlist,
                                                  dxnixl_opt_args_t opt_args);
typedef dxnixl_status_t (*dxnixl_deregister_mem_fn)(dxnixl_agent_t agent, dxnixl_reg_dlist_t dlist,
                                                    dxnixl_opt_args_t opt_args);
typedef dxnixl_status_t (*dxnixl_agent_make_connection_fn)(dxnixl_agent_t agent, const char *remote_agent,
                                                           dxnixl_opt_args_t opt_args);
typedef dxnixl_status_t (*dxnixl_get_notifs_fn)(dxnixl_agent_t agent, dxnixl_notif_map_t notif_map,
                                                dxnixl_opt_args_t opt_args);
typedef dxnixl_status_t (*dxnixl_create_notif_map_fn)(dxnixl_notif_map_t *notif_map);
typedef dxnixl_status_t (*dxnixl_destroy_notif_map_fn)(dxnixl_notif_map_t notif_map);
typedef dxnixl_status_t (*dxnixl_gen_notif_fn)(dxnixl_agent_t agent, const char *remote_agent, const void *data,
                                               size_t len, dxnixl_opt_args_t opt_args);
typedef dxnixl_status_t (*dxnixl_post_xfer_req_fn)(dxnixl_agent_t agent, dxnixl_xfer_req_t req_hndl,
                                                   dxnixl_opt_args_t opt_args);
typedef dxnixl_status_t (*dxnixl_get_xfer_status_fn)(dxnixl_agent_t agent, dxnixl_xfer_req_t req_hndl);
typedef dxnixl_status_t (*dxnixl_release_xfer_req_fn)(dxnixl_agent_t agent, dxnixl_xfer_req_t req);
typedef dxnixl_status_t (*dxnixl_destroy_xfer_req_fn)(dxnixl_xfer_req_t req);
typedef dxnixl_status_t (*dxnixl_create_xfer_dlist_fn)(dxnixl_mem_type_t mem_type, dxnixl_xfer_dlist_t *dlist);
typedef dxnixl_status_t (*dxnixl_destroy_xfer_dlist_fn)(dxnixl_xfer_dlist_t dlist);
typedef dxnixl_status_t (*dxnixl_xfer_dlist_add_desc_fn)(dxnixl_xfer_dlist_t dlist, uintptr_t addr, size_t len,
                                                         uint64_t dev_id);
typedef dxnixl_status_t (*dxnixl_create_reg_dlist_fn)(dxnixl_mem_type_t mem_type, dxnixl_reg_dlist_t *dlist);
typedef dxnixl_status_t (*dxnixl_destroy_reg_dlist_fn)(dxnixl_reg_dlist_t dlist);
typedef dxnixl_status_t (*dxnixl_reg_dlist_add_desc_fn)(dxnixl_reg_dlist_t dlist, uintptr_t addr, size_t len,
                                                        uint64_t dev_id, const void *metadata,
                                                        size_t metadata_len);
typedef dxnixl_status_t (*dxnixl_notif_map_size_fn)(dxnixl_notif_map_t map, size_t *size);
typedef dxnixl_status_t (*dxnixl_notif_map_get_agent_at_fn)(dxnixl_notif_map_t map, size_t index,
                                                            const char **agent_name);
typedef dxnixl_status_t (*dxnixl_notif_map_get_notifs_size_fn)(dxnixl_notif_map_t map, const char *agent_name,
                                                               size_t *size);
typedef dxnixl_status_t (*dxnixl_notif_map_get_notif_fn)(dxnixl_notif_map_t map, const char *agent_name,
                                                         size_t index, const void **data, size_t *len);
typedef dxnixl_status_t (*dxnixl_notif_map_clear_fn)(dxnixl_notif_map_t map);
typedef dxnixl_status_t (*dxnixl_prep_xfer_dlist_fn)(dxnixl_agent_t agent, const char *agent_name,
                                                     dxnixl_xfer_dlist_t descs,
                                                     dxnixl_xfer_dlist_handle_t *dlist_hndl,
                                                     dxnixl_opt_args_t opt_args);
typedef dxnixl_status_t (*dxnixl_release_xfer_dlist_handle_fn)(dxnixl_agent_t agent,
                                                               dxnixl_xfer_dlist_handle_t dlist_handle);
typedef dxnixl_status_t (*dxnixl_make_xfer_req_fn)(dxnixl_agent_t agent, dxnixl_xfer_op_t operation,
                                                   dxnixl_xfer_dlist_handle_t local_descs, const int *local_indices,
                                                   size_t local_indices_count,
                                                   dxnixl_xfer_dlist_handle_t remote_descs,
                                                   const int *remote_indices, size_t remote_indices_count,
                                                   dxnixl_xfer_req_t *req_hndl, dxnixl_opt_args_t opt_args);
typedef bool (*dxnixl_is_stub_fn)(void);

#endif
