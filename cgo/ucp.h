/*
 * Our own declarations of the part of the UCP API (libucp, UCX >= 1.10)
 * that transceiver/ucx uses. The library is dlopen'ed at run time, so the
 * build needs neither libucx-dev nor libucp. Every name carries a dx prefix
 * so that a test can include this file beside the real <ucp/api/ucp.h> and
 * check sizes, offsets and values against it (transceiver/ucx/abi_test.go).
 *
 * Facts (signatures, struct fields, enum values) are from UCX's public
 * headers ucp.h, ucp_def.h, ucs/type/status.h and ucs/memory/memory_type.h.
 * UCP structs only ever grow at the end and are read through field_mask,
 * so declaring the fields of an older release is safe with newer ones.
 */
#ifndef DISAGG_CGO_UCP_H
#define DISAGG_CGO_UCP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/* ucs_status_t is a packed enum: one signed byte. */
typedef int8_t dxucs_status_t;
typedef void *dxucs_status_ptr_t;

#define DXUCS_OK 0
#define DXUCS_INPROGRESS 1
#define DXUCS_ERR_NO_MESSAGE (-1)
#define DXUCS_ERR_NO_MEMORY (-4)
#define DXUCS_ERR_INVALID_PARAM (-5)
#define DXUCS_ERR_BUSY (-15)
#define DXUCS_ERR_CANCELED (-16)
#define DXUCS_ERR_TIMED_OUT (-20)
#define DXUCS_ERR_UNSUPPORTED (-22)
#define DXUCS_ERR_LAST (-100)

#define DXUCS_PTR_IS_ERR(p) (((uintptr_t)(p)) >= ((uintptr_t)DXUCS_ERR_LAST))
#define DXUCS_PTR_IS_PTR(p) (((uintptr_t)(p) - 1) < ((uintptr_t)DXUCS_ERR_LAST - 1))
#define DXUCS_PTR_RAW_STATUS(p) ((dxucs_status_t)(intptr_t)(p))

/* ucs_memory_type_t */
#define DXUCS_MEMORY_TYPE_HOST 0
#define DXUCS_MEMORY_TYPE_CUDA 1
#define DXUCS_MEMORY_TYPE_CUDA_MANAGED 2
#define DXUCS_MEMORY_TYPE_ROCM 3
#define DXUCS_MEMORY_TYPE_ROCM_MANAGED 4

/* ucs_thread_mode_t */
#define DXUCS_THREAD_MODE_SINGLE 0

typedef struct dxucp_context *dxucp_context_h;
typedef struct dxucp_worker *dxucp_worker_h;
typedef struct dxucp_ep *dxucp_ep_h;
typedef struct dxucp_mem *dxucp_mem_h;
typedef struct dxucp_rkey *dxucp_rkey_h;
typedef struct dxucp_config dxucp_config_t;
typedef struct dxucp_address dxucp_address_t;

/* enum ucp_feature */
#define DXUCP_FEATURE_TAG (1ull << 0)
#define DXUCP_FEATURE_RMA (1ull << 1)
#define DXUCP_FEATURE_WAKEUP (1ull << 4)
#define DXUCP_FEATURE_AM (1ull << 6)

/* enum ucp_params_field */
#define DXUCP_PARAM_FIELD_FEATURES (1ull << 0)
#define DXUCP_PARAM_FIELD_MT_WORKERS_SHARED (1ull << 5)

typedef struct {
    uint64_t field_mask;
    uint64_t features;
    size_t request_size;
    void (*request_init)(void *request);
    void (*request_cleanup)(void *request);
    uint64_t tag_sender_mask;
    int mt_workers_shared;
    size_t estimated_num_eps;
    size_t estimated_num_ppn;
    const char *name;
} dxucp_params_t;

/* enum ucp_worker_params_field */
#define DXUCP_WORKER_PARAM_FIELD_THREAD_MODE (1ull << 0)

typedef struct {
    unsigned long ucs_bits[1024 / (8 * sizeof(unsigned long))];
} dxucs_cpu_set_t;

typedef struct {
    uint64_t field_mask;
    int thread_mode;
    dxucs_cpu_set_t cpu_mask;
    unsigned events;
    void *user_data;
    int event_fd;
    uint64_t flags;
    const char *name;
    size_t am_alignment;
    uint64_t client_id;
} dxucp_worker_params_t;

/* enum ucp_worker_attr_field */
#define DXUCP_WORKER_ATTR_FIELD_ADDRESS (1ull << 1)
#define DXUCP_WORKER_ATTR_FIELD_MAX_AM_HEADER (1ull << 3)

typedef struct {
    uint64_t field_mask;
    int thread_mode;
    uint32_t address_flags;
    dxucp_address_t *address;
    size_t address_length;
    size_t max_am_header;
    char name[32];
    size_t max_debug_string;
} dxucp_worker_attr_t;

/* enum ucp_context_attr_field */
#define DXUCP_ATTR_FIELD_MEMORY_TYPES (1ull << 2)

typedef struct {
    uint64_t field_mask;
    size_t request_size;
    int thread_mode;
    uint64_t memory_types;
    char name[32];
} dxucp_context_attr_t;

typedef void (*dxucp_err_handler_cb_t)(void *arg, dxucp_ep_h ep, dxucs_status_t status);

typedef struct {
    dxucp_err_handler_cb_t cb;
    void *arg;
} dxucp_err_handler_t;

typedef struct {
    const struct sockaddr *addr;
    socklen_t addrlen;
} dxucs_sock_addr_t;

/* enum ucp_ep_params_field, ucp_err_handling_mode_t */
#define DXUCP_EP_PARAM_FIELD_REMOTE_ADDRESS (1ull << 0)
#define DXUCP_EP_PARAM_FIELD_ERR_HANDLING_MODE (1ull << 1)
#define DXUCP_EP_PARAM_FIELD_ERR_HANDLER (1ull << 2)
#define DXUCP_ERR_HANDLING_MODE_PEER 1

typedef struct {
    uint64_t field_mask;
    const dxucp_address_t *address;
    int err_mode;
    dxucp_err_handler_t err_handler;
    void *user_data;
    unsigned flags;
    dxucs_sock_addr_t sockaddr;
    void *conn_request;
    const char *name;
    dxucs_sock_addr_t local_sockaddr;
} dxucp_ep_params_t;

/* enum ucp_mem_map_params_field */
#define DXUCP_MEM_MAP_PARAM_FIELD_ADDRESS (1ull << 0)
#define DXUCP_MEM_MAP_PARAM_FIELD_LENGTH (1ull << 1)
#define DXUCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE (1ull << 4)

typedef struct {
    uint64_t field_mask;
    void *address;
    size_t length;
    unsigned flags;
    unsigned prot;
    int memory_type;
} dxucp_mem_map_params_t;

/* ucp_op_attr_t, ucp_ep_close_flags_t, enum ucp_send_am_flags */
#define DXUCP_OP_ATTR_FIELD_CALLBACK (1u << 1)
#define DXUCP_OP_ATTR_FIELD_USER_DATA (1u << 2)
#define DXUCP_OP_ATTR_FIELD_DATATYPE (1u << 3)
#define DXUCP_OP_ATTR_FIELD_FLAGS (1u << 4)
#define DXUCP_OP_ATTR_FIELD_MEMORY_TYPE (1u << 6)
#define DXUCP_OP_ATTR_FIELD_MEMH (1u << 8)
#define DXUCP_EP_CLOSE_FLAG_FORCE (1u << 0)
#define DXUCP_AM_SEND_FLAG_REPLY (1u << 0)
#define DXUCP_AM_SEND_FLAG_EAGER (1u << 1)

/* ucp_dt_type: the class of a ucp_datatype_t (a uint64_t) */
#define DXUCP_DATATYPE_CONTIG 0
#define DXUCP_DATATYPE_IOV 2

typedef struct {
    void *buffer;
    size_t length;
} dxucp_dt_iov_t;

/* ucp_send_nbx_callback_t and ucp_am_recv_data_nbx_callback_t */
typedef void (*dxucp_send_nbx_callback_t)(void *request, dxucs_status_t status, void *user_data);
typedef void (*dxucp_am_recv_data_nbx_callback_t)(void *request, dxucs_status_t status, size_t length,
                                                  void *user_data);

typedef struct {
    uint32_t op_attr_mask;
    uint32_t flags;
    void *request;
    void *cb;
    uint64_t datatype;
    void *user_data;
    void *reply_buffer;
    int memory_type;
    void *recv_info;
    dxucp_mem_h memh;
} dxucp_request_param_t;

typedef struct {
    uint64_t recv_attr;
    dxucp_ep_h reply_ep;
} dxucp_am_recv_param_t;

/* ucp_am_recv_attr_t */
#define DXUCP_AM_RECV_ATTR_FIELD_REPLY_EP (1ull << 0)
#define DXUCP_AM_RECV_ATTR_FLAG_DATA (1ull << 16)
#define DXUCP_AM_RECV_ATTR_FLAG_RNDV (1ull << 17)

typedef dxucs_status_t (*dxucp_am_recv_callback_t)(void *arg, const void *header, size_t header_length,
                                                   void *data, size_t length,
                                                   const dxucp_am_recv_param_t *param);

/* enum ucp_am_handler_param_field, enum ucp_am_cb_flags */
#define DXUCP_AM_HANDLER_PARAM_FIELD_ID (1ull << 0)
#define DXUCP_AM_HANDLER_PARAM_FIELD_FLAGS (1ull << 1)
#define DXUCP_AM_HANDLER_PARAM_FIELD_CB (1ull << 2)
#define DXUCP_AM_HANDLER_PARAM_FIELD_ARG (1ull << 3)
#define DXUCP_AM_FLAG_WHOLE_MSG (1u << 0)

typedef struct {
    uint64_t field_mask;
    unsigned id;
    uint32_t flags;
    dxucp_am_recv_callback_t cb;
    void *arg;
} dxucp_am_handler_param_t;

/* The entry points, as function pointer types for dlsym. */
typedef void (*dxucp_get_version_fn)(unsigned *major, unsigned *minor, unsigned *release);
typedef dxucs_status_t (*dxucp_config_read_fn)(const char *env_prefix, const char *filename, dxucp_config_t **config_p);
typedef void (*dxucp_config_release_fn)(dxucp_config_t *config);
typedef dxucs_status_t (*dxucp_config_modify_fn)(dxucp_config_t *config, const char *name, const char *value);
typedef dxucs_status_t (*dxucp_init_version_fn)(unsigned api_major, unsigned api_minor, const dxucp_params_t *params,
                                                const dxucp_config_t *config, dxucp_context_h *context_p);
typedef void (*dxucp_cleanup_fn)(dxucp_context_h context);
typedef dxucs_status_t (*dxucp_context_query_fn)(dxucp_context_h context, dxucp_context_attr_t *attr);
typedef dxucs_status_t (*dxucp_worker_create_fn)(dxucp_context_h context, const dxucp_worker_params_t *params,
                                                 dxucp_worker_h *worker_p);
typedef void (*dxucp_worker_destroy_fn)(dxucp_worker_h worker);
typedef dxucs_status_t (*dxucp_worker_query_fn)(dxucp_worker_h worker, dxucp_worker_attr_t *attr);
typedef void (*dxucp_worker_release_address_fn)(dxucp_worker_h worker, dxucp_address_t *address);
typedef unsigned (*dxucp_worker_progress_fn)(dxucp_worker_h worker);
typedef dxucs_status_t (*dxucp_worker_set_am_recv_handler_fn)(dxucp_worker_h worker,
                                                              const dxucp_am_handler_param_t *param);
typedef dxucs_status_t (*dxucp_ep_create_fn)(dxucp_worker_h worker, const dxucp_ep_params_t *params, dxucp_ep_h *ep_p);
typedef dxucs_status_ptr_t (*dxucp_ep_close_nbx_fn)(dxucp_ep_h ep, const dxucp_request_param_t *param);
typedef dxucs_status_ptr_t (*dxucp_ep_flush_nbx_fn)(dxucp_ep_h ep, const dxucp_request_param_t *param);
typedef dxucs_status_t (*dxucp_mem_map_fn)(dxucp_context_h context, const dxucp_mem_map_params_t *params,
                                           dxucp_mem_h *memh_p);
typedef dxucs_status_t (*dxucp_mem_unmap_fn)(dxucp_context_h context, dxucp_mem_h memh);
typedef dxucs_status_t (*dxucp_rkey_pack_fn)(dxucp_context_h context, dxucp_mem_h memh, void **rkey_buffer_p,
                                             size_t *size_p);
typedef void (*dxucp_rkey_buffer_release_fn)(void *rkey_buffer);
typedef dxucs_status_t (*dxucp_ep_rkey_unpack_fn)(dxucp_ep_h ep, const void *rkey_buffer, dxucp_rkey_h *rkey_p);
typedef void (*dxucp_rkey_destroy_fn)(dxucp_rkey_h rkey);
typedef dxucs_status_ptr_t (*dxucp_put_nbx_fn)(dxucp_ep_h ep, const void *buffer, size_t count, uint64_t remote_addr,
                                               dxucp_rkey_h rkey, const dxucp_request_param_t *param);
typedef dxucs_status_ptr_t (*dxucp_get_nbx_fn)(dxucp_ep_h ep, void *buffer, size_t count, uint64_t remote_addr,
                                               dxucp_rkey_h rkey, const dxucp_request_param_t *param);
typedef dxucs_status_ptr_t (*dxucp_am_send_nbx_fn)(dxucp_ep_h ep, unsigned id, const void *header,
                                                   size_t header_length, const void *buffer, size_t count,
                                                   const dxucp_request_param_t *param);
typedef dxucs_status_ptr_t (*dxucp_am_recv_data_nbx_fn)(dxucp_worker_h worker, void *data_desc, void *buffer,
                                                        size_t count, const dxucp_request_param_t *param);
typedef void (*dxucp_ep_print_info_fn)(dxucp_ep_h ep, FILE *stream);
typedef dxucs_status_t (*dxucp_request_check_status_fn)(void *request);
typedef void (*dxucp_request_free_fn)(void *request);
typedef const char *(*dxucs_status_string_fn)(dxucs_status_t status);
typedef dxucs_status_t (*dxucp_worker_get_efd_fn)(dxucp_worker_h worker, int *fd);
typedef dxucs_status_t (*dxucp_worker_arm_fn)(dxucp_worker_h worker);

#endif
