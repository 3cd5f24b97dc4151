// A thin C shim over PyTorch's c10d: the TCPStore rendezvous and the gloo (CPU) and NCCL (CUDA)
// process groups that libtorch ships, so that the Rust trainer runs the same collectives as
// torchrun-launched PyTorch trainers. Exceptions never cross into Rust: each entry point
// catches them and returns the message.
#include "c10d.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MLA_C10D_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

struct mla_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

namespace {

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// Runs f, turning any exception into a message and a non-zero return.
template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    // what() of a c10::Error carries a C++ backtrace; the message alone is what a user reads.
    *err = dup(e.msg());
  } catch (const std::exception& e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception in c10d");
  }
  return 1;
}

// gloo's transport device: the interface GLOO_SOCKET_IFNAME names (as torch.distributed reads
// it), else the address this host's name resolves to, falling back to loopback.
std::shared_ptr<::gloo::transport::Device> gloo_device() {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

extern "C" {

int mla_c10d_has_backend(const char* backend) {
  std::string b(backend);
  if (b == "gloo") return 1;
#ifdef MLA_C10D_CUDA
  if (b == "nccl") return 1;
#endif
  return 0;
}

int mla_pg_new(const char* backend, const char* host, uint16_t port, int is_server,
               const char* prefix, int rank, int world, int64_t timeout_ms, mla_pg** out,
               char** err) {
  return guarded(err, [&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (prefix != nullptr && *prefix) {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }

    std::string name(backend);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (name == "gloo") {
      auto gopts = c10d::ProcessGroupGloo::Options::create(timeout);
      gopts->devices.push_back(gloo_device());
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gopts);
#ifdef MLA_C10D_CUDA
    } else if (name == "nccl") {
      auto nopts = c10d::ProcessGroupNCCL::Options::create();
      nopts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nopts);
#endif
    } else {
      throw std::runtime_error("this build has no c10d backend \"" + name + "\"");
    }
    *out = new mla_pg{store, pg};
  });
}

int mla_pg_allreduce_sum(mla_pg* pg, void* tensor, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    pg->backend->allreduce(ts, opts)->wait();
  });
}

int mla_pg_broadcast(mla_pg* pg, void* tensor, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    pg->backend->broadcast(ts, opts)->wait();
  });
}

void mla_pg_free(mla_pg* pg) {
  if (pg == nullptr) return;
  try {
    pg->backend->shutdown();
  } catch (...) {
    // A group whose peers are gone may fail to shut down cleanly; it is freed all the same.
  }
  delete pg;
}

int64_t mla_cuda_peak_allocated(int device) {
#ifdef MLA_C10D_CUDA
  try {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
        .peak;
  } catch (...) {
    return -1;
  }
#else
  (void)device;
  return -1;
#endif
}

void mla_cuda_reset_peak(int device) {
#ifdef MLA_C10D_CUDA
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device);
  } catch (...) {
  }
#else
  (void)device;
#endif
}

int mla_cuda_device_name(int device, char* buf, int len) {
#ifdef MLA_C10D_CUDA
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess || len <= 0) return -1;
  std::strncpy(buf, prop.name, static_cast<size_t>(len) - 1);
  buf[len - 1] = '\0';
  return 0;
#else
  (void)device;
  (void)buf;
  (void)len;
  return -1;
#endif
}

void mla_c10d_free_string(char* s) { std::free(s); }

}  // extern "C"
