//! PyTorch's distributed engine, c10d, for tch tensors: the TCPStore rendezvous that torchrun
//! and `torch.distributed` use, and libtorch's own process groups (gloo for CPU tensors, NCCL
//! for CUDA ones). Only what a data-parallel trainer needs: create a group, all-reduce (sum)
//! and broadcast in place, tear down. The collectives are libtorch's; this crate only binds
//! them (shim/c10d.cpp).
//!
//! Every call blocks until its collective is complete on this rank. A peer that dies makes the
//! pending call fail (gloo: its socket closes) or time out after the group's timeout, with
//! c10d's message; it never hangs past that.

// FFI to the C++ shim; each call is wrapped in a safe method below.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;
use std::time::Duration;

mod ffi {
    use super::*;

    #[repr(C)]
    pub struct MlaPg {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        pub fn mla_c10d_has_backend(backend: *const c_char) -> c_int;
        pub fn mla_pg_new(
            backend: *const c_char,
            host: *const c_char,
            port: u16,
            is_server: c_int,
            prefix: *const c_char,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            out: *mut *mut MlaPg,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn mla_pg_allreduce_sum(pg: *mut MlaPg, t: *mut c_void, err: *mut *mut c_char)
        -> c_int;
        pub fn mla_pg_broadcast(
            pg: *mut MlaPg,
            t: *mut c_void,
            root: c_int,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn mla_pg_free(pg: *mut MlaPg);
        pub fn mla_cuda_peak_allocated(device: c_int) -> i64;
        pub fn mla_cuda_reset_peak(device: c_int);
        pub fn mla_cuda_device_name(device: c_int, buf: *mut c_char, len: c_int) -> c_int;
        pub fn mla_c10d_free_string(s: *mut c_char);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum C10dError {
    #[error("this build has no {backend} backend: {}", no_backend_hint(*.backend))]
    NoBackend { backend: Backend },
    #[error("c10d {op}: {message}")]
    Failed { op: &'static str, message: String },
    #[error("{0}")]
    BadArgument(String),
}

fn no_backend_hint(b: Backend) -> &'static str {
    match b {
        Backend::Nccl => {
            "NCCL needs a CUDA libtorch and CUDA's headers; build against the full install \
             (scripts/setup-libtorch.sh without --cpu)"
        }
        Backend::Gloo => "gloo should always be there; the shim was built without it",
    }
}

/// A c10d backend: gloo runs collectives on CPU tensors, NCCL on CUDA ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether this build holds the backend (NCCL only against a CUDA libtorch).
    pub fn available(self) -> bool {
        let name = CString::new(self.name()).expect("no NUL");
        // SAFETY: a NUL-terminated string that outlives the call.
        unsafe { ffi::mla_c10d_has_backend(name.as_ptr()) != 0 }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the group meets: the TCPStore at `host:port`, hosted by this process when
/// `host_store` (rank 0 of a plain launch; under torchrun its agent hosts it and every rank
/// is a client).
#[derive(Clone, Debug)]
pub struct Rendezvous {
    pub host: String,
    pub port: u16,
    pub host_store: bool,
    /// The group's keys in the store live under it: a group restarted on the same store (a
    /// torchrun restart) must not read the keys of the one before.
    pub prefix: String,
    pub rank: usize,
    pub world: usize,
    /// For the rendezvous and for every collective.
    pub timeout: Duration,
}

/// One rank's membership of a process group.
pub struct ProcessGroup {
    raw: NonNull<ffi::MlaPg>,
    backend: Backend,
    rank: usize,
    world: usize,
}

/// Takes a message the shim allocated, and frees it.
fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "failed without a message".into();
    }
    // SAFETY: the shim returns a NUL-terminated string from malloc, owned by the caller.
    let message = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .trim()
        .to_string();
    // SAFETY: freed once, with the shim's own free.
    unsafe { ffi::mla_c10d_free_string(err) };
    message
}

impl ProcessGroup {
    /// Joins the group: blocks until all `world` ranks have joined, or fails after the timeout.
    pub fn new(backend: Backend, rdv: &Rendezvous) -> Result<Self, C10dError> {
        if !backend.available() {
            return Err(C10dError::NoBackend { backend });
        }
        if rdv.rank >= rdv.world {
            return Err(C10dError::BadArgument(format!(
                "rank {} is not below the world size {}",
                rdv.rank, rdv.world
            )));
        }
        let name = CString::new(backend.name()).expect("no NUL");
        let host = CString::new(rdv.host.as_str())
            .map_err(|_| C10dError::BadArgument(format!("host {:?} holds a NUL", rdv.host)))?;
        let prefix = CString::new(rdv.prefix.as_str())
            .map_err(|_| C10dError::BadArgument(format!("prefix {:?} holds a NUL", rdv.prefix)))?;
        let mut raw = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `raw` and `err` are valid out-pointers.
        let rc = unsafe {
            ffi::mla_pg_new(
                name.as_ptr(),
                host.as_ptr(),
                rdv.port,
                c_int::from(rdv.host_store),
                prefix.as_ptr(),
                rdv.rank as c_int,
                rdv.world as c_int,
                rdv.timeout.as_millis().min(i64::MAX as u128) as i64,
                &mut raw,
                &mut err,
            )
        };
        if rc != 0 {
            return Err(C10dError::Failed {
                op: "joining the process group",
                message: take_message(err),
            });
        }
        Ok(ProcessGroup {
            raw: NonNull::new(raw).expect("the shim returns a group on success"),
            backend,
            rank: rdv.rank,
            world: rdv.world,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn check(&self, t: &tch::Tensor) -> Result<(), C10dError> {
        if !t.is_contiguous() {
            return Err(C10dError::BadArgument(
                "collectives take contiguous tensors".into(),
            ));
        }
        let cuda = t.device().is_cuda();
        match (self.backend, cuda) {
            (Backend::Gloo, true) | (Backend::Nccl, false) => Err(C10dError::BadArgument(format!(
                "the {} backend takes {} tensors, got one on {:?}",
                self.backend,
                if cuda { "CPU" } else { "CUDA" },
                t.device()
            ))),
            _ => Ok(()),
        }
    }

    /// Sums `t` over all ranks, in place.
    pub fn all_reduce_sum(&self, t: &mut tch::Tensor) -> Result<(), C10dError> {
        self.check(t)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: the group is live; `t` is a valid at::Tensor for the duration of the call.
        let rc = unsafe {
            ffi::mla_pg_allreduce_sum(self.raw.as_ptr(), t.as_mut_ptr().cast(), &mut err)
        };
        if rc != 0 {
            return Err(C10dError::Failed {
                op: "all-reduce",
                message: take_message(err),
            });
        }
        Ok(())
    }

    /// Overwrites `t` on every rank with rank `root`'s `t`.
    pub fn broadcast(&self, t: &mut tch::Tensor, root: usize) -> Result<(), C10dError> {
        self.check(t)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce_sum`.
        let rc = unsafe {
            ffi::mla_pg_broadcast(
                self.raw.as_ptr(),
                t.as_mut_ptr().cast(),
                root as c_int,
                &mut err,
            )
        };
        if rc != 0 {
            return Err(C10dError::Failed {
                op: "broadcast",
                message: take_message(err),
            });
        }
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: freed once; nothing uses the pointer afterwards.
        unsafe { ffi::mla_pg_free(self.raw.as_ptr()) }
    }
}

/// The CUDA caching allocator's statistics (None in a build without CUDA).
pub mod cuda {
    use super::*;

    /// Peak bytes allocated on `device` since the last `reset_peak`.
    pub fn peak_allocated(device: usize) -> Option<u64> {
        // SAFETY: reads allocator statistics; no memory of ours is touched.
        let v = unsafe { ffi::mla_cuda_peak_allocated(device as c_int) };
        u64::try_from(v).ok()
    }

    pub fn reset_peak(device: usize) {
        // SAFETY: as above.
        unsafe { ffi::mla_cuda_reset_peak(device as c_int) }
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(device: usize) -> Option<String> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the shim writes at most `len` bytes, NUL-terminated.
        let rc = unsafe { ffi::mla_cuda_device_name(device as c_int, buf.as_mut_ptr(), 256) };
        // SAFETY: NUL-terminated on success.
        (rc == 0).then(|| {
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn rendezvous(port: u16, rank: usize, world: usize) -> Rendezvous {
        Rendezvous {
            host: "127.0.0.1".into(),
            port,
            host_store: rank == 0,
            prefix: "test/".into(),
            rank,
            world,
            timeout: Duration::from_secs(30),
        }
    }

    /// Runs `f(rank)` on `world` threads, each a rank of one gloo group.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(ProcessGroup) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let port = free_port();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let f = f.clone();
                std::thread::spawn(move || {
                    f(ProcessGroup::new(Backend::Gloo, &rendezvous(port, rank, world)).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn values(t: &tch::Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn gloo_sums_and_broadcasts_across_ranks() {
        let got = on_ranks(2, |pg| {
            let r = pg.rank() as f32;
            let mut t = tch::Tensor::from_slice(&[1.0 + r, 10.0 * r, -r]);
            pg.all_reduce_sum(&mut t).unwrap();
            let mut b = tch::Tensor::from_slice(&[r, r]);
            pg.broadcast(&mut b, 1).unwrap();
            (values(&t), values(&b))
        });
        for (sum, bcast) in got {
            assert_eq!(sum, vec![3.0, 10.0, -1.0]);
            assert_eq!(bcast, vec![1.0, 1.0]);
        }
    }

    #[test]
    fn a_world_of_one_leaves_tensors_as_they_are() {
        let got = on_ranks(1, |pg| {
            let mut t = tch::Tensor::from_slice(&[1.5f32, -2.0]);
            pg.all_reduce_sum(&mut t).unwrap();
            values(&t)
        });
        assert_eq!(got, vec![vec![1.5, -2.0]]);
    }

    /// A rank that leaves makes its peer's next collective fail, well before the timeout.
    #[test]
    fn a_lost_peer_is_an_error_not_a_hang() {
        let started = std::time::Instant::now();
        let got = on_ranks(2, |pg| {
            if pg.rank() == 1 {
                drop(pg);
                return None;
            }
            let mut t = tch::Tensor::from_slice(&[1.0f32]);
            Some(pg.all_reduce_sum(&mut t).unwrap_err().to_string())
        });
        let message = got[0].clone().unwrap();
        assert!(message.starts_with("c10d all-reduce:"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(25), "{message}");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let e = ProcessGroup::new(Backend::Gloo, &rendezvous(free_port(), 2, 2))
            .err()
            .unwrap();
        assert!(e.to_string().contains("rank 2 is not below"), "{e}");
        if !Backend::Nccl.available() {
            let e = ProcessGroup::new(Backend::Nccl, &rendezvous(free_port(), 0, 1))
                .err()
                .unwrap();
            assert!(e.to_string().contains("needs a CUDA libtorch"), "{e}");
        }
        let got = on_ranks(1, |pg| {
            let mut t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0])
                .reshape([2, 2])
                .transpose(0, 1);
            pg.all_reduce_sum(&mut t).unwrap_err().to_string()
        });
        assert!(got[0].contains("contiguous"), "{}", got[0]);
    }
}
