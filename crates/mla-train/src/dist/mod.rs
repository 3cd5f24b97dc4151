//! Data parallelism across processes and machines on PyTorch's c10d (gloo for `tch-cpu`, NCCL
//! for `cuda`), launched by torchrun: one process per device, each a rank of one group.
//!
//! What is shared, and how (the trainer calls these):
//! - the config: rank 0's resolved config is broadcast and every rank compares it with its own;
//! - the initial weights: broadcast from rank 0;
//! - the gradients: summed once per optimizer step in a few flat buckets ([`buckets`]), each
//!   rank having scaled its loss by 1 / (world x accumulation), so the sum is the mean;
//! - the micro-batch losses and the stop flag, in the first bucket;
//! - the validation loss: each rank evaluates every world-th batch; sums are reduced.
//!
//! Without torchrun's variables a run is a world of one, and none of this runs.

pub mod buckets;

use std::time::Duration;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use mla_model::Lm;

use crate::device::DeviceSpec;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("torchrun variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error(
        "{world} ranks need collectives, which this `mla` lacks: it was built without the `tch` \
         feature. Build with `--features mla-train/tch` (see README, libtorch) and use device = \
         \"tch-cpu\" (gloo) or \"cuda\" (NCCL)"
    )]
    NotBuilt { world: usize },
    #[error("{0}")]
    Device(String),
    #[error("{what} failed: {message}")]
    Collective {
        rank: usize,
        what: &'static str,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
}

/// What torchrun (or a SLURM script that sets the same variables) says about this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: torchrun's agent hosts the TCPStore and every rank
    /// is a client; otherwise rank 0 hosts it.
    pub agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT`: how often torchrun has restarted the group (0 at first).
    pub restart: usize,
}

impl Launch {
    /// `None` when no torchrun variable is set, or the world is one process.
    pub fn from_env() -> Result<Option<Launch>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
        let num = |var: &'static str| -> Result<Option<usize>, DistError> {
            get(var)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| DistError::Env {
                        var,
                        message: format!("{v:?} is not a non-negative integer"),
                    })
                })
                .transpose()
        };
        let (rank, world) = match (num("RANK")?, num("WORLD_SIZE")?) {
            (None, None) => return Ok(None),
            (Some(r), Some(w)) => (r, w),
            (None, Some(_)) => return Err(missing("RANK")),
            (Some(_), None) => return Err(missing("WORLD_SIZE")),
        };
        if world == 0 || rank >= world {
            return Err(DistError::Env {
                var: "RANK",
                message: format!("rank {rank} is not below WORLD_SIZE {world}"),
            });
        }
        if world == 1 {
            return Ok(None);
        }
        let master_addr = get("MASTER_ADDR").ok_or_else(|| missing("MASTER_ADDR"))?;
        let port = get("MASTER_PORT").ok_or_else(|| missing("MASTER_PORT"))?;
        let master_port = port.trim().parse().map_err(|_| DistError::Env {
            var: "MASTER_PORT",
            message: format!("{port:?} is not a port number"),
        })?;
        Ok(Some(Launch {
            rank,
            world,
            local_rank: num("LOCAL_RANK")?.unwrap_or(rank),
            master_addr,
            master_port,
            agent_store: get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
            restart: num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
        }))
    }

    /// The device this rank trains on: `tch-cpu` for every rank, or `cuda` as
    /// `cuda:LOCAL_RANK`. flex has no collectives, and an explicit `cuda:N` would put every
    /// rank on one GPU.
    pub fn rank_device(&self, configured: &str) -> Result<DeviceSpec, DistError> {
        match configured {
            "tch-cpu" => Ok(DeviceSpec::TchCpu),
            "cuda" => Ok(DeviceSpec::Cuda(self.local_rank)),
            "cpu" => Err(DistError::Device(format!(
                "train.device = \"cpu\" (burn's flex backend) has no collectives, so it cannot \
                 train on {} ranks: use \"tch-cpu\" (libtorch on CPU, gloo between ranks)",
                self.world
            ))),
            other => Err(DistError::Device(format!(
                "train.device = {other:?} under torchrun: use \"cuda\" (rank r trains on \
                 cuda:LOCAL_RANK) or \"tch-cpu\""
            ))),
        }
    }
}

fn missing(var: &'static str) -> DistError {
    DistError::Env {
        var,
        message: "not set; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and \
                  MASTER_PORT together (with none of them a run is one process)"
            .into(),
    }
}

/// This process's place in the data-parallel group; a world of one runs no collective.
pub struct World {
    rank: usize,
    size: usize,
    #[cfg(feature = "tch")]
    group: Option<group::Group>,
}

impl World {
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            #[cfg(feature = "tch")]
            group: None,
        }
    }

    /// Joins the group `launch` describes, on `device`; blocks until every rank has joined
    /// (or the timeout).
    pub fn join(
        launch: &Launch,
        device: DeviceSpec,
        timeout: Duration,
    ) -> Result<World, DistError> {
        #[cfg(feature = "tch")]
        {
            let group = group::Group::join(launch, device, timeout)?;
            Ok(World {
                rank: launch.rank,
                size: launch.world,
                group: Some(group),
            })
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = (device, timeout);
            Err(DistError::NotBuilt {
                world: launch.world,
            })
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0 writes the run directory; the others only compute.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Sums every gradient over the ranks (in buckets) and `extras` with them.
    pub fn reduce_gradients(
        &self,
        model: &Lm,
        grads: &mut GradientsParams,
        extras: &mut [f32],
        device: &Device,
    ) -> Result<(), DistError> {
        if self.size == 1 {
            return Ok(());
        }
        buckets::reduce_gradients(
            model,
            grads,
            extras,
            device,
            buckets::BUCKET_BYTES / 4,
            |b| self.all_reduce_tensor(b, "the gradient all-reduce"),
        )
    }

    /// Sums `values` over the ranks, in place (f64, for loss sums and counts).
    pub fn all_reduce_f64(&self, values: &mut [f64], what: &'static str) -> Result<(), DistError> {
        if self.size == 1 {
            return Ok(());
        }
        #[cfg(feature = "tch")]
        {
            self.group().all_reduce_f64(values, what, self.rank)
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = (values, what);
            unreachable!("a world of more than one needs the tch feature")
        }
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&self, what: &'static str) -> Result<(), DistError> {
        self.all_reduce_f64(&mut [0.0], what)
    }

    /// Rank 0's `bytes`, on every rank.
    pub fn broadcast_bytes(&self, bytes: &[u8], what: &'static str) -> Result<Vec<u8>, DistError> {
        if self.size == 1 {
            return Ok(bytes.to_vec());
        }
        #[cfg(feature = "tch")]
        {
            self.group().broadcast_bytes(bytes, what, self.rank)
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = what;
            unreachable!("a world of more than one needs the tch feature")
        }
    }

    /// Every rank continues from rank 0's weights (one broadcast per parameter, once).
    pub fn broadcast_model(&self, model: Lm) -> Result<Lm, DistError> {
        if self.size == 1 {
            return Ok(model);
        }
        struct FromRankZero<'a> {
            world: &'a World,
            failed: Option<DistError>,
        }
        impl ModuleMapper for FromRankZero<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                if self.failed.is_some() {
                    return param;
                }
                param.map(|t| {
                    let require_grad = t.is_require_grad();
                    let dims = t.dims();
                    let n: usize = dims.iter().product();
                    let flat = t.inner().reshape([n]); // [n]
                    match self
                        .world
                        .broadcast_tensor(flat.clone(), "the weight broadcast")
                    {
                        Ok(b) => Tensor::from_inner(b.reshape(dims)).set_require_grad(require_grad),
                        Err(e) => {
                            self.failed = Some(e);
                            Tensor::from_inner(flat.reshape(dims)).set_require_grad(require_grad)
                        }
                    }
                })
            }
        }
        let mut mapper = FromRankZero {
            world: self,
            failed: None,
        };
        let model = model.map(&mut mapper);
        match mapper.failed {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    /// Every rank checks that it holds rank 0's config; all refuse to start where any differs.
    pub fn check_same_config(&self, config_toml: &str) -> Result<(), DistError> {
        if self.size == 1 {
            return Ok(());
        }
        let theirs = self.broadcast_bytes(config_toml.as_bytes(), "the config check")?;
        let differs = theirs != config_toml.as_bytes();
        // One slot per rank, so every rank learns which ones differ.
        let mut flags = vec![0.0; self.size];
        flags[self.rank] = f64::from(u8::from(differs));
        self.all_reduce_f64(&mut flags, "the config check")?;
        let bad: Vec<String> = (0..self.size)
            .filter(|&r| flags[r] > 0.0)
            .map(|r| r.to_string())
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        let detail = if differs {
            let rank0 = String::from_utf8_lossy(&theirs);
            format!(": here {}", first_difference(config_toml, &rank0))
        } else {
            String::new()
        };
        Err(DistError::Setup(format!(
            "rank(s) {} hold a different resolved config from rank 0's{detail}; every rank \
             must be started with the same config and --set flags",
            bad.join(", ")
        )))
    }

    fn all_reduce_tensor(&self, t: Tensor<1>, what: &'static str) -> Result<Tensor<1>, DistError> {
        #[cfg(feature = "tch")]
        {
            self.group().all_reduce_tensor(t, what, self.rank)
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = what;
            Ok(t)
        }
    }

    fn broadcast_tensor(&self, t: Tensor<1>, what: &'static str) -> Result<Tensor<1>, DistError> {
        #[cfg(feature = "tch")]
        {
            self.group().broadcast_tensor(t, what, self.rank)
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = what;
            Ok(t)
        }
    }

    #[cfg(feature = "tch")]
    fn group(&self) -> &group::Group {
        self.group
            .as_ref()
            .expect("a world of more than one has a group")
    }
}

/// The first line where two resolved configs differ, as `line (here) vs line (rank 0)`.
fn first_difference(ours: &str, rank0: &str) -> String {
    let mut a = ours.lines();
    let mut b = rank0.lines();
    let mut section = String::new();
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => {
                if x.starts_with('[') {
                    section = x.to_string();
                }
            }
            (x, y) => {
                return format!(
                    "{section} `{}` vs rank 0's `{}`",
                    x.unwrap_or("(end)"),
                    y.unwrap_or("(end)")
                );
            }
        }
    }
}

// burn 0.22 marks its libtorch backend deprecated in favour of CubeCL; it is the one whose
// tensors are libtorch's, which c10d needs (see device.rs).
#[cfg(feature = "tch")]
#[allow(deprecated)]
mod group {
    //! The c10d group behind a [`World`](super::World), and the moves between burn's libtorch
    //! tensors and the tch tensors c10d takes.
    use std::time::Duration;

    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use burn::tensor::Tensor;
    use mla_c10d::{Backend, ProcessGroup, Rendezvous};

    use super::{DistError, Launch};
    use crate::device::DeviceSpec;

    pub struct Group {
        pg: ProcessGroup,
        /// Where small host values go for a collective (NCCL reduces CUDA tensors only).
        device: tch::Device,
    }

    fn failed(rank: usize, what: &'static str) -> impl FnOnce(mla_c10d::C10dError) -> DistError {
        move |e| DistError::Collective {
            rank,
            what,
            message: e.to_string(),
        }
    }

    impl Group {
        pub fn join(
            launch: &Launch,
            device: DeviceSpec,
            timeout: Duration,
        ) -> Result<Self, DistError> {
            let (backend, device) = match device {
                DeviceSpec::TchCpu => (Backend::Gloo, tch::Device::Cpu),
                DeviceSpec::Cuda(i) => (Backend::Nccl, tch::Device::Cuda(i)),
                DeviceSpec::Cpu => {
                    return Err(DistError::Device("flex has no collectives".into()));
                }
            };
            let rdv = Rendezvous {
                host: launch.master_addr.clone(),
                port: launch.master_port,
                host_store: !launch.agent_store && launch.rank == 0,
                // torchrun's agent keeps its store across restarts: each attempt's group keys
                // its addresses apart, as torch.distributed does.
                prefix: format!("mla/attempt_{}/", launch.restart),
                rank: launch.rank,
                world: launch.world,
                timeout,
            };
            let pg = ProcessGroup::new(backend, &rdv).map_err(|e| {
                DistError::Setup(format!(
                    "rank {}: cannot join the {} group at {}:{}: {e}",
                    launch.rank, backend, launch.master_addr, launch.master_port
                ))
            })?;
            Ok(Group { pg, device })
        }

        fn tch(t: Tensor<1>) -> tch::Tensor {
            let prim: TchTensor = t
                .try_into_primitive::<LibTorch>()
                .expect("a world of more than one trains on libtorch");
            prim.tensor
        }

        fn burn(t: tch::Tensor) -> Tensor<1> {
            Tensor::from_primitive::<LibTorch>(TchTensor::new(t))
        }

        pub fn all_reduce_tensor(
            &self,
            t: Tensor<1>,
            what: &'static str,
            rank: usize,
        ) -> Result<Tensor<1>, DistError> {
            // A fresh contiguous tensor (a bucket), so reducing it in place changes nothing else.
            let mut t = Self::tch(t).contiguous();
            self.pg.all_reduce_sum(&mut t).map_err(failed(rank, what))?;
            Ok(Self::burn(t))
        }

        pub fn broadcast_tensor(
            &self,
            t: Tensor<1>,
            what: &'static str,
            rank: usize,
        ) -> Result<Tensor<1>, DistError> {
            // A copy: the parameter's own storage stays untouched until the result replaces it.
            let mut t = Self::tch(t).copy();
            self.pg.broadcast(&mut t, 0).map_err(failed(rank, what))?;
            Ok(Self::burn(t))
        }

        pub fn all_reduce_f64(
            &self,
            values: &mut [f64],
            what: &'static str,
            rank: usize,
        ) -> Result<(), DistError> {
            let mut t = tch::Tensor::from_slice(values).to_device(self.device);
            self.pg.all_reduce_sum(&mut t).map_err(failed(rank, what))?;
            let host = Vec::<f64>::try_from(t.to_device(tch::Device::Cpu))
                .expect("an f64 vector comes back");
            values.copy_from_slice(&host);
            Ok(())
        }

        pub fn broadcast_bytes(
            &self,
            bytes: &[u8],
            what: &'static str,
            rank: usize,
        ) -> Result<Vec<u8>, DistError> {
            let mut len = tch::Tensor::from_slice(&[bytes.len() as i64]).to_device(self.device);
            self.pg.broadcast(&mut len, 0).map_err(failed(rank, what))?;
            let n = len.int64_value(&[0]) as usize;
            let mut buf = if rank == 0 {
                tch::Tensor::from_slice(bytes)
            } else {
                tch::Tensor::zeros([n as i64], (tch::Kind::Uint8, tch::Device::Cpu))
            }
            .to_device(self.device);
            self.pg.broadcast(&mut buf, 0).map_err(failed(rank, what))?;
            Ok(Vec::<u8>::try_from(buf.to_device(tch::Device::Cpu)).expect("bytes come back"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    const TORCHRUN: [(&str, &str); 6] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ];

    #[test]
    fn reads_what_torchrun_sets() {
        assert_eq!(launch(&[]).unwrap(), None, "no variables: one process");
        assert_eq!(
            launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(),
            None,
            "a world of one is one process"
        );
        let l = launch(&TORCHRUN).unwrap().unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (1, 2, 1));
        assert_eq!(
            (l.master_addr.as_str(), l.master_port),
            ("127.0.0.1", 29500)
        );
        assert!(l.agent_store);
        assert_eq!(l.restart, 0);
        let mut restarted = TORCHRUN.to_vec();
        restarted.push(("TORCHELASTIC_RESTART_COUNT", "2"));
        assert_eq!(launch(&restarted).unwrap().unwrap().restart, 2);
        let plain = launch(&TORCHRUN[..5]).unwrap().unwrap();
        assert!(
            !plain.agent_store,
            "without the agent, rank 0 hosts the store"
        );
    }

    #[test]
    fn bad_launch_variables_name_the_variable() {
        let e = launch(&[("RANK", "0")]).unwrap_err().to_string();
        assert!(e.contains("WORLD_SIZE: not set"), "{e}");
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 2 is not below WORLD_SIZE 2"), "{e}");
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("RANK: \"x\" is not a non-negative integer"),
            "{e}"
        );
        let e = launch(&TORCHRUN[..3]).unwrap_err().to_string();
        assert!(e.contains("MASTER_ADDR: not set"), "{e}");
        let mut v = TORCHRUN.to_vec();
        v[4] = ("MASTER_PORT", "99999");
        let e = launch(&v).unwrap_err().to_string();
        assert!(
            e.contains("MASTER_PORT: \"99999\" is not a port number"),
            "{e}"
        );
    }

    #[test]
    fn each_rank_takes_its_own_device() {
        let l = launch(&TORCHRUN).unwrap().unwrap();
        assert_eq!(l.rank_device("cuda").unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(l.rank_device("tch-cpu").unwrap(), DeviceSpec::TchCpu);
        let e = l.rank_device("cpu").unwrap_err().to_string();
        assert!(
            e.contains("has no collectives") && e.contains("tch-cpu"),
            "{e}"
        );
        let e = l.rank_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("cuda:LOCAL_RANK"), "{e}");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn a_flex_build_says_how_to_build_for_several_ranks() {
        let l = launch(&TORCHRUN).unwrap().unwrap();
        let e = World::join(&l, DeviceSpec::TchCpu, Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--features mla-train/tch"), "{e}");
    }

    #[test]
    fn a_config_difference_is_named() {
        let a = "name = \"x\"\n[train]\nmicro_batch = 4\nseed = 1\n";
        let b = "name = \"x\"\n[train]\nmicro_batch = 8\nseed = 1\n";
        assert_eq!(
            first_difference(a, b),
            "[train] `micro_batch = 4` vs rank 0's `micro_batch = 8`"
        );
    }
}
