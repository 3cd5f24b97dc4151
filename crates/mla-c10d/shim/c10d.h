// The C interface of the c10d shim: only what the trainer needs. Every function that can fail
// returns 0 on success and non-zero on failure, with a message in *err that the caller frees
// with mla_c10d_free_string. Tensors are passed as the at::Tensor behind a tch tensor.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mla_pg mla_pg;

// Which backends this build holds: "gloo" always; "nccl" only when built against a CUDA
// libtorch with NCCL's headers.
int mla_c10d_has_backend(const char* backend);

// Connect to (or, with is_server, host) the TCPStore at host:port and create the process group,
// its keys under `prefix` (so that a restarted group does not read a dead one's addresses).
int mla_pg_new(const char* backend, const char* host, uint16_t port, int is_server,
               const char* prefix, int rank, int world, int64_t timeout_ms, mla_pg** out,
               char** err);
// In place, summed over the ranks.
int mla_pg_allreduce_sum(mla_pg* pg, void* tensor, char** err);
// In place, from rank `root`.
int mla_pg_broadcast(mla_pg* pg, void* tensor, int root, char** err);
// Shut the group down (NCCL's communicators are aborted) and free it.
void mla_pg_free(mla_pg* pg);

// The CUDA caching allocator's peak of allocated bytes on `device` since the last reset, or -1
// in a build without CUDA.
int64_t mla_cuda_peak_allocated(int device);
void mla_cuda_reset_peak(int device);
// The device's name into buf (NUL-terminated); 0 on success, -1 without CUDA.
int mla_cuda_device_name(int device, char* buf, int len);

void mla_c10d_free_string(char* s);

#ifdef __cplusplus
}
#endif
