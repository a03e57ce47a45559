/* dcu_status.h: filling a dcu_status from a CUDA call or an invalid
 * argument, shared by the library's .cu files (internal, not part of the C
 * API). CK(call) and INVALID(...) return 0 from the enclosing function,
 * which must have a dcu_status *st in scope. */
#ifndef DCU_STATUS_H
#define DCU_STATUS_H

#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>

#include "dcu.h"

static inline void set_status(dcu_status *st, int kind, int code, const char *name, const char *fmt, ...) {
	if (!st) return;
	st->kind = kind;
	st->code = code;
	snprintf(st->name, sizeof st->name, "%s", name);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(st->msg, sizeof st->msg, fmt, ap);
	va_end(ap);
}

#define CK(call)                                                                              \
	do {                                                                                      \
		cudaError_t e_ = (call);                                                              \
		if (e_ != cudaSuccess) {                                                              \
			set_status(st, DCU_ERR_CUDA, (int)e_, cudaGetErrorName(e_), "%s (%s at %s:%d)", \
			           cudaGetErrorString(e_), #call, __FILE__, __LINE__);                    \
			return 0;                                                                         \
		}                                                                                     \
	} while (0)

#define INVALID(...)                                                          \
	do {                                                                      \
		set_status(st, DCU_ERR_INVALID, 0, "dcuInvalidArgument", __VA_ARGS__); \
		return 0;                                                             \
	} while (0)

#endif
