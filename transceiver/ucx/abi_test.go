//go:build cgo

package ucx

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// abiChecks pairs each of our declarations with UCX's own.
var abiChecks = []struct{ ours, theirs string }{
	{"dxucp_params_t", "ucp_params_t"},
	{"dxucp_worker_params_t", "ucp_worker_params_t"},
	{"dxucp_worker_attr_t", "ucp_worker_attr_t"},
	{"dxucp_context_attr_t", "ucp_context_attr_t"},
	{"dxucp_ep_params_t", "ucp_ep_params_t"},
	{"dxucp_mem_map_params_t", "ucp_mem_map_params_t"},
	{"dxucp_request_param_t", "ucp_request_param_t"},
	{"dxucp_am_recv_param_t", "ucp_am_recv_param_t"},
	{"dxucp_am_handler_param_t", "ucp_am_handler_param_t"},
	{"dxucp_dt_iov_t", "ucp_dt_iov_t"},
}

var abiFields = map[string][]string{
	"dxucp_params_t":           {"field_mask", "features", "request_size", "request_init", "request_cleanup", "tag_sender_mask", "mt_workers_shared", "estimated_num_eps", "estimated_num_ppn", "name"},
	"dxucp_worker_params_t":    {"field_mask", "thread_mode", "cpu_mask", "events", "user_data", "event_fd", "flags", "name", "am_alignment", "client_id"},
	"dxucp_worker_attr_t":      {"field_mask", "thread_mode", "address_flags", "address", "address_length", "max_am_header", "name", "max_debug_string"},
	"dxucp_context_attr_t":     {"field_mask", "request_size", "thread_mode", "memory_types", "name"},
	"dxucp_ep_params_t":        {"field_mask", "address", "err_mode", "err_handler", "user_data", "flags", "sockaddr", "conn_request", "name", "local_sockaddr"},
	"dxucp_mem_map_params_t":   {"field_mask", "address", "length", "flags", "prot", "memory_type"},
	"dxucp_request_param_t":    {"op_attr_mask", "flags", "request", "cb", "datatype", "user_data", "reply_buffer", "memory_type", "recv_info", "memh"},
	"dxucp_am_recv_param_t":    {"recv_attr", "reply_ep"},
	"dxucp_am_handler_param_t": {"field_mask", "id", "flags", "cb", "arg"},
	"dxucp_dt_iov_t":           {"buffer", "length"},
}

var abiConsts = [][2]string{
	{"DXUCS_OK", "UCS_OK"}, {"DXUCS_INPROGRESS", "UCS_INPROGRESS"}, {"DXUCS_ERR_CANCELED", "UCS_ERR_CANCELED"},
	{"DXUCS_ERR_LAST", "UCS_ERR_LAST"}, {"DXUCS_ERR_BUSY", "UCS_ERR_BUSY"}, {"DXUCS_MEMORY_TYPE_CUDA", "UCS_MEMORY_TYPE_CUDA"},
	{"DXUCS_THREAD_MODE_SINGLE", "UCS_THREAD_MODE_SINGLE"},
	{"DXUCP_FEATURE_RMA", "UCP_FEATURE_RMA"}, {"DXUCP_FEATURE_AM", "UCP_FEATURE_AM"},
	{"DXUCP_FEATURE_WAKEUP", "UCP_FEATURE_WAKEUP"},
	{"DXUCP_PARAM_FIELD_FEATURES", "UCP_PARAM_FIELD_FEATURES"},
	{"DXUCP_PARAM_FIELD_MT_WORKERS_SHARED", "UCP_PARAM_FIELD_MT_WORKERS_SHARED"},
	{"DXUCP_WORKER_PARAM_FIELD_THREAD_MODE", "UCP_WORKER_PARAM_FIELD_THREAD_MODE"},
	{"DXUCP_WORKER_ATTR_FIELD_ADDRESS", "UCP_WORKER_ATTR_FIELD_ADDRESS"},
	{"DXUCP_WORKER_ATTR_FIELD_MAX_AM_HEADER", "UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER"},
	{"DXUCP_ATTR_FIELD_MEMORY_TYPES", "UCP_ATTR_FIELD_MEMORY_TYPES"},
	{"DXUCP_EP_PARAM_FIELD_REMOTE_ADDRESS", "UCP_EP_PARAM_FIELD_REMOTE_ADDRESS"},
	{"DXUCP_EP_PARAM_FIELD_ERR_HANDLING_MODE", "UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE"},
	{"DXUCP_EP_PARAM_FIELD_ERR_HANDLER", "UCP_EP_PARAM_FIELD_ERR_HANDLER"},
	{"DXUCP_ERR_HANDLING_MODE_PEER", "UCP_ERR_HANDLING_MODE_PEER"},
	{"DXUCP_MEM_MAP_PARAM_FIELD_ADDRESS", "UCP_MEM_MAP_PARAM_FIELD_ADDRESS"},
	{"DXUCP_MEM_MAP_PARAM_FIELD_LENGTH", "UCP_MEM_MAP_PARAM_FIELD_LENGTH"},
	{"DXUCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE", "UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE"},
	{"DXUCP_OP_ATTR_FIELD_FLAGS", "UCP_OP_ATTR_FIELD_FLAGS"},
	{"DXUCP_OP_ATTR_FIELD_MEMORY_TYPE", "UCP_OP_ATTR_FIELD_MEMORY_TYPE"},
	{"DXUCP_OP_ATTR_FIELD_MEMH", "UCP_OP_ATTR_FIELD_MEMH"},
	{"DXUCP_EP_CLOSE_FLAG_FORCE", "UCP_EP_CLOSE_FLAG_FORCE"},
	{"DXUCP_AM_SEND_FLAG_EAGER", "UCP_AM_SEND_FLAG_EAGER"},
	{"DXUCP_AM_SEND_FLAG_REPLY", "UCP_AM_SEND_FLAG_REPLY"},
	{"DXUCP_AM_RECV_ATTR_FIELD_REPLY_EP", "UCP_AM_RECV_ATTR_FIELD_REPLY_EP"},
	{"DXUCP_OP_ATTR_FIELD_CALLBACK", "UCP_OP_ATTR_FIELD_CALLBACK"},
	{"DXUCP_OP_ATTR_FIELD_USER_DATA", "UCP_OP_ATTR_FIELD_USER_DATA"},
	{"DXUCP_OP_ATTR_FIELD_DATATYPE", "UCP_OP_ATTR_FIELD_DATATYPE"},
	{"DXUCP_DATATYPE_CONTIG", "UCP_DATATYPE_CONTIG"}, {"DXUCP_DATATYPE_IOV", "UCP_DATATYPE_IOV"},
	{"DXUCS_ERR_INVALID_PARAM", "UCS_ERR_INVALID_PARAM"}, {"DXUCS_ERR_NO_MEMORY", "UCS_ERR_NO_MEMORY"},
	{"DXUCP_AM_RECV_ATTR_FLAG_DATA", "UCP_AM_RECV_ATTR_FLAG_DATA"},
	{"DXUCP_AM_RECV_ATTR_FLAG_RNDV", "UCP_AM_RECV_ATTR_FLAG_RNDV"},
	{"DXUCP_AM_HANDLER_PARAM_FIELD_ID", "UCP_AM_HANDLER_PARAM_FIELD_ID"},
	{"DXUCP_AM_HANDLER_PARAM_FIELD_FLAGS", "UCP_AM_HANDLER_PARAM_FIELD_FLAGS"},
	{"DXUCP_AM_HANDLER_PARAM_FIELD_CB", "UCP_AM_HANDLER_PARAM_FIELD_CB"},
	{"DXUCP_AM_HANDLER_PARAM_FIELD_ARG", "UCP_AM_HANDLER_PARAM_FIELD_ARG"},
	{"DXUCP_AM_FLAG_WHOLE_MSG", "UCP_AM_FLAG_WHOLE_MSG"},
}

// abiFunctions pairs our function pointer types with the entry points.
var abiFunctions = [][2]string{
	{"dxucp_get_version_fn", "ucp_get_version"}, {"dxucp_config_read_fn", "ucp_config_read"},
	{"dxucp_config_modify_fn", "ucp_config_modify"},
	{"dxucp_init_version_fn", "ucp_init_version"}, {"dxucp_context_query_fn", "ucp_context_query"},
	{"dxucp_worker_create_fn", "ucp_worker_create"}, {"dxucp_worker_query_fn", "ucp_worker_query"},
	{"dxucp_worker_progress_fn", "ucp_worker_progress"},
	{"dxucp_worker_set_am_recv_handler_fn", "ucp_worker_set_am_recv_handler"},
	{"dxucp_ep_create_fn", "ucp_ep_create"}, {"dxucp_ep_close_nbx_fn", "ucp_ep_close_nbx"},
	{"dxucp_ep_flush_nbx_fn", "ucp_ep_flush_nbx"}, {"dxucp_mem_map_fn", "ucp_mem_map"},
	{"dxucp_rkey_pack_fn", "ucp_rkey_pack"}, {"dxucp_ep_rkey_unpack_fn", "ucp_ep_rkey_unpack"},
	{"dxucp_put_nbx_fn", "ucp_put_nbx"}, {"dxucp_get_nbx_fn", "ucp_get_nbx"},
	{"dxucp_am_send_nbx_fn", "ucp_am_send_nbx"}, {"dxucp_request_check_status_fn", "ucp_request_check_status"},
	{"dxucs_status_string_fn", "ucs_status_string"},
	{"dxucp_worker_get_efd_fn", "ucp_worker_get_efd"}, {"dxucp_worker_arm_fn", "ucp_worker_arm"},
	{"dxucp_am_recv_data_nbx_fn", "ucp_am_recv_data_nbx"}, {"dxucp_ep_print_info_fn", "ucp_ep_print_info"},
}

// TestABIAgainstSystemHeader compiles a C file that includes both our
// cgo/ucp.h and the system's <ucp/api/ucp.h> and statically asserts equal
// sizes, offsets and values. It runs only where libucx-dev is installed.
func TestABIAgainstSystemHeader(t *testing.T) {
	const sys = "/usr/include/ucp/api/ucp.h"
	if _, err := os.Stat(sys); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s is missing: run scripts/setup-native.sh", sys)
		}
		t.Skipf("%s not installed (apt-get install -y libucx-dev)", sys)
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	var b strings.Builder
	b.WriteString("#include <stddef.h>\n#include <ucp/api/ucp.h>\n#include \"ucp.h\"\n")
	for _, c := range abiChecks {
		fmt.Fprintf(&b, "_Static_assert(sizeof(%s) == sizeof(%s), \"size of %s\");\n", c.ours, c.theirs, c.ours)
		for _, f := range abiFields[c.ours] {
			fmt.Fprintf(&b, "_Static_assert(offsetof(%s, %s) == offsetof(%s, %s), \"offset of %s.%s\");\n", c.ours, f, c.theirs, f, c.ours, f)
			fmt.Fprintf(&b, "_Static_assert(sizeof(((%s*)0)->%s) == sizeof(((%s*)0)->%s), \"size of %s.%s\");\n", c.ours, f, c.theirs, f, c.ours, f)
		}
	}
	for _, c := range abiConsts {
		fmt.Fprintf(&b, "_Static_assert((long long)(%s) == (long long)(%s), \"value of %s\");\n", c[0], c[1], c[0])
	}
	b.WriteString("_Static_assert(sizeof(dxucs_status_t) == sizeof(ucs_status_t), \"ucs_status_t size\");\n")
	b.WriteString("void check_functions(void) {\n")
	for i, f := range abiFunctions {
		fmt.Fprintf(&b, "  %s f%d = (%s)0; (void)f%d; (void)sizeof(%s);\n", f[0], i, f[0], i, f[1])
	}
	b.WriteString("}\n")
	// Function signatures use the dx types, which differ nominally from
	// UCX's; the block above only checks that each entry point is declared
	// by the real header. Their structs are checked field by field above
	// and their behaviour by the transfer tests.
	dir := t.TempDir()
	src := filepath.Join(dir, "abi.c")
	if err := os.WriteFile(src, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(cc, "-std=c11", "-fsyntax-only", "-Wall", "-I"+filepath.Join(wd, "..", "..", "cgo"), src).CombinedOutput()
	if err != nil {
		t.Fatalf("our UCP declarations disagree with %s:\n%s", sys, out)
	}
}
