//! Device kernels on cubecl. The fused logits kernel: one plane per row
//! (several rows per cube, [`rows_per_cube`]); each unit strides over the
//! vocabulary once, four entries at a time, keeping an online maximum with
//! Σ exp(z − max) and Σ exp(z − max)·z, and plane reductions combine the
//! units'. Logits are f32 or bf16 (read as 32-bit words and
//! widened in the kernel, so every runtime takes them).

pub mod plan;

use cubecl::prelude::*;
use keel_kernel::logits::{Bf16, Forward};

/// A compute client on the first device this build can use: the first CUDA
/// GPU when built with the `cuda` feature and one answers, else Vulkan
/// through wgpu (Mesa's lavapipe on a machine without a GPU).
pub fn client() -> Result<cubecl::client::Client, String> {
    Ok(client_named()?.0)
}

/// [`client`] and the name of the runtime it found (`cuda`, `vulkan`).
pub fn client_named() -> Result<(cubecl::client::Client, &'static str), String> {
    #[cfg(feature = "cuda")]
    if let Ok(device) = cubecl::Device::cuda(0) {
        return Ok((device.client(), "cuda"));
    }
    let device = cubecl::Device::vulkan(Default::default()).map_err(|e| e.to_string())?;
    Ok((device.client(), "vulkan"))
}

/// Logit `k` of the flat [N, V] logits: f32 bits, or bf16 (two per 32-bit
/// word, the lower half first) widened to f32 exactly.
#[cube]
fn logit(z: &Tensor<u32>, k: usize, #[comptime] bf16: bool) -> f32 {
    // Only the branch for the logits' type is generated (`bf16` is known
    // when the kernel compiles): an f32 read of word k would be past the
    // end of bf16 logits.
    let bits = if bf16 {
        ((z[k / 2] >> (((k % 2) * 16) as u32)) & 0xffff) << 16
    } else {
        z[k]
    };
    f32::reinterpret(bits)
}

/// The row of a plane-per-row kernel: cubes of `CUBE_DIM_Y` planes, one row
/// each (see [`rows_per_cube`]).
#[cube]
fn plane_row() -> usize {
    CUBE_POS * CUBE_DIM_Y as usize + UNIT_POS_Y as usize
}

#[cube(launch_unchecked)]
fn logits_forward_kernel(
    z: &Tensor<u32>,
    tokens: &Tensor<u32>,
    stats: &mut Tensor<f32>,
    #[comptime] v: usize,
    #[comptime] bf16: bool,
) {
    let row = plane_row();
    let n = tokens.len();
    let base = row * v;
    let step = CUBE_DIM_X as usize;
    // One pass over the row: each unit keeps its running maximum m and
    // Σ e^(z−m), Σ e^(z−m)·z, rescaled when m grows; the plane combines
    // them at the plane's maximum. Four logits per iteration: four loads in
    // flight per unit (one would leave a GPU's memory mostly idle).
    let mut m = f32::new(-3.0e38);
    let mut s = f32::new(0.0);
    let mut sz = f32::new(0.0);
    if row < n {
        let mut i = UNIT_POS_X as usize;
        while i + 3 * step < v {
            let x0 = logit(z, base + i, bf16);
            let x1 = logit(z, base + i + step, bf16);
            let x2 = logit(z, base + i + 2 * step, bf16);
            let x3 = logit(z, base + i + 3 * step, bf16);
            let xm = f32::max(f32::max(x0, x1), f32::max(x2, x3));
            if xm > m {
                let r = f32::exp(m - xm);
                s *= r;
                sz *= r;
                m = xm;
            }
            let e0 = f32::exp(x0 - m);
            let e1 = f32::exp(x1 - m);
            let e2 = f32::exp(x2 - m);
            let e3 = f32::exp(x3 - m);
            s += (e0 + e1) + (e2 + e3);
            sz += (e0 * x0 + e1 * x1) + (e2 * x2 + e3 * x3);
            i += 4 * step;
        }
        while i < v {
            let x = logit(z, base + i, bf16);
            if x > m {
                let r = f32::exp(m - x);
                s *= r;
                sz *= r;
                m = x;
            }
            let e = f32::exp(x - m);
            s += e;
            sz += e * x;
            i += step;
        }
    }
    let mm = plane_max(m);
    let r = f32::exp(m - mm);
    let ss = plane_sum(s * r);
    let ssz = plane_sum(sz * r);
    if UNIT_POS_X == 0 && row < n {
        let lse = mm + f32::ln(ss);
        let mean_z = ssz / ss;
        let tok = tokens[row] as usize;
        stats[row * 4] = logit(z, base + tok, bf16) - lse;
        stats[row * 4 + 1] = lse - mean_z;
        stats[row * 4 + 2] = lse;
        stats[row * 4 + 3] = mean_z;
    }
}

/// d_logits of one entry.
#[cube]
fn d_logit(x: f32, lse: f32, ez: f32, gl: f32, ge: f32, hit: bool) -> f32 {
    let p = f32::exp(x - lse);
    let mut g = -gl * p - ge * p * (x - ez);
    if hit {
        g += gl;
    }
    g
}

#[cube(launch_unchecked)]
fn logits_backward_kernel(
    z: &Tensor<u32>,
    tokens: &Tensor<u32>,
    stats: &Tensor<f32>,
    grads: &Tensor<f32>,
    d: &mut Tensor<f32>,
    #[comptime] v: usize,
    #[comptime] bf16: bool,
) {
    let row = plane_row();
    if row < tokens.len() {
        let base = row * v;
        let step = CUBE_DIM_X as usize;
        let lse = stats[row * 4 + 2];
        let ez = stats[row * 4 + 3];
        let gl = grads[row * 2];
        let ge = grads[row * 2 + 1];
        let tok = tokens[row] as usize;
        let mut i = UNIT_POS_X as usize;
        // Four entries per iteration, as in the forward pass.
        while i + 3 * step < v {
            let x0 = logit(z, base + i, bf16);
            let x1 = logit(z, base + i + step, bf16);
            let x2 = logit(z, base + i + 2 * step, bf16);
            let x3 = logit(z, base + i + 3 * step, bf16);
            d[base + i] = d_logit(x0, lse, ez, gl, ge, i == tok);
            d[base + i + step] = d_logit(x1, lse, ez, gl, ge, i + step == tok);
            d[base + i + 2 * step] = d_logit(x2, lse, ez, gl, ge, i + 2 * step == tok);
            d[base + i + 3 * step] = d_logit(x3, lse, ez, gl, ge, i + 3 * step == tok);
            i += 4 * step;
        }
        while i < v {
            let x = logit(z, base + i, bf16);
            d[base + i] = d_logit(x, lse, ez, gl, ge, i == tok);
            i += step;
        }
    }
}

/// Logits handed to the device kernel: f32, or bf16 (half the bytes).
#[derive(Clone, Copy)]
pub enum Logits<'a> {
    F32(&'a [f32]),
    Bf16(&'a [Bf16]),
}

impl Logits<'_> {
    pub fn len(&self) -> usize {
        match self {
            Logits::F32(z) => z.len(),
            Logits::Bf16(z) => z.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_bf16(&self) -> bool {
        matches!(self, Logits::Bf16(_))
    }
    /// Bytes per logit.
    pub fn elem_bytes(&self) -> usize {
        if self.is_bf16() { 2 } else { 4 }
    }
    /// The first `n` logits on the device, as 32-bit words (bf16: two per
    /// word, the lower half first; an odd count padded with a zero half).
    fn upload(&self, client: &Client, n: usize) -> OnDevice {
        let (handle, words) = match self {
            Logits::F32(z) => (client.create_from_slice(f32::as_bytes(&z[..n])), n),
            Logits::Bf16(z) => {
                let words: Vec<u32> = z[..n]
                    .chunks(2)
                    .map(|p| p[0].0 as u32 | (p.get(1).map_or(0, |h| h.0) as u32) << 16)
                    .collect();
                (client.create_from_slice(u32::as_bytes(&words)), words.len())
            }
        };
        OnDevice {
            handle,
            words,
            bf16: self.is_bf16(),
        }
    }
    /// The first `n` logits.
    pub fn head(&self, n: usize) -> Logits<'_> {
        match self {
            Logits::F32(z) => Logits::F32(&z[..n.min(z.len())]),
            Logits::Bf16(z) => Logits::Bf16(&z[..n.min(z.len())]),
        }
    }
    /// The CPU kernel's forward pass on the same logits.
    pub fn cpu_forward(&self, tokens: &[u32], v: usize) -> Forward {
        match self {
            Logits::F32(z) => keel_kernel::logits::forward(z, tokens, v),
            Logits::Bf16(z) => keel_kernel::logits::forward(z, tokens, v),
        }
    }
    /// The CPU kernel's backward pass on the same logits.
    pub fn cpu_backward(
        &self,
        tokens: &[u32],
        v: usize,
        fwd: &Forward,
        d_logp: &[f32],
        d_entropy: &[f32],
    ) -> Vec<f32> {
        let mut d = vec![0.0f32; (self.len() / v.max(1)) * v];
        match self {
            Logits::F32(z) => {
                keel_kernel::logits::backward(z, tokens, v, fwd, d_logp, d_entropy, &mut d)
            }
            Logits::Bf16(z) => {
                keel_kernel::logits::backward(z, tokens, v, fwd, d_logp, d_entropy, &mut d)
            }
        }
        d
    }
}

/// Logits on the device: the buffer, its length in 32-bit words, and
/// whether they are bf16.
struct OnDevice {
    handle: Handle,
    words: usize,
    bf16: bool,
}

/// What to do about logits too big for one device buffer.
const FEWER: &str = "use fewer tokens";

/// [d_logp, d_entropy] per row on the device.
fn upload_grads(client: &Client, n: usize, d_logp: &[f32], d_entropy: &[f32]) -> Handle {
    let grads: Vec<f32> = (0..n)
        .flat_map(|i| {
            [
                d_logp.get(i).copied().unwrap_or(0.0),
                d_entropy.get(i).copied().unwrap_or(0.0),
            ]
        })
        .collect();
    client.create_from_slice(f32::as_bytes(&grads))
}

/// A cubecl compute client.
pub type Client = cubecl::client::Client;

/// Refuse a buffer larger than the runtime allocates at once (cubecl would
/// fail later, and silently for a launch); `help` says what to do instead.
pub(crate) fn fits(client: &Client, bytes: usize, what: &str, help: &str) -> Result<(), String> {
    let limit = client.properties().memory.max_page_size;
    if bytes as u64 > limit {
        return Err(format!(
            "{what} needs one device buffer of {:.1} MB and this device allocates at most {:.1} MB at once; {help}",
            bytes as f64 / 1e6,
            limit as f64 / 1e6
        ));
    }
    Ok(())
}

/// The cube width of the plane-reduction kernels: one plane. The smallest
/// plane size the runtime may pick, so a cube never spans two planes (a
/// plane reduction would then see half the cube).
pub fn width(client: &Client) -> u32 {
    let hw = &client.properties().hardware;
    hw.plane_size_min.max(1).min(hw.max_units_per_cube.max(1))
}

/// Rows per cube of the plane-per-row kernels (the logits kernel, the
/// plan's token and vocabulary loops): as many planes as fill 256 units when
/// the runtime's plane size is fixed — each plane then is one row — else
/// one. A one-plane cube (32 units on CUDA) caps a GPU at half its threads
/// (an SM holds 32 cubes), too few loads in flight for its memory.
pub fn rows_per_cube(client: &Client) -> u32 {
    planes_per_cube(client, 256)
}

/// How many planes a cube of at most `units` units holds, when the
/// runtime's plane size is fixed (each plane then is a known group of
/// units); else one.
pub fn planes_per_cube(client: &Client, units: u32) -> u32 {
    let hw = &client.properties().hardware;
    let plane = width(client);
    if hw.plane_size_min != hw.plane_size_max {
        return 1;
    }
    (units / plane).clamp(1, (hw.max_units_per_cube / plane).max(1))
}

/// The cube of a plane-per-row kernel: one plane wide, `rows_per_cube` high.
pub fn row_dim(client: &Client) -> CubeDim {
    CubeDim::new_2d(width(client), rows_per_cube(client))
}

/// Cubes covering `rows` rows of a plane-per-row kernel (two dimensions
/// past 65,535 cubes).
pub fn row_cubes(client: &Client, rows: usize) -> CubeCount {
    let cubes = rows.div_ceil(rows_per_cube(client) as usize) as u32;
    CubeCount::Static(cubes.min(65_535), cubes.div_ceil(65_535), 1)
}

type Handle = cubecl::server::Handle;

fn raw(h: &Handle, n: usize) -> TensorArg {
    // SAFETY (for every launch below): the kernels index below the lengths
    // given here, which are the lengths the buffers were created with.
    unsafe { TensorArg::from_raw_parts(h.clone(), [1].into(), [n].into()) }
}

/// Launch the forward kernel: `stats` [n, 4] from `z` [n, v] and `tokens`.
fn launch_forward(
    client: &Client,
    z: &OnDevice,
    tokens: &Handle,
    stats: &Handle,
    n: usize,
    v: usize,
) {
    // SAFETY: see `raw`.
    unsafe {
        logits_forward_kernel::launch_unchecked(
            client,
            row_cubes(client, n),
            row_dim(client),
            raw(&z.handle, z.words),
            raw(tokens, n),
            raw(stats, n * 4),
            v,
            z.bf16,
        )
    };
}

/// Launch the backward kernel: `d` [n, v] from the statistics and `grads`
/// [n, 2] (d_logp, d_entropy).
#[allow(clippy::too_many_arguments)]
fn launch_backward(
    client: &Client,
    z: &OnDevice,
    tokens: &Handle,
    stats: &Handle,
    grads: &Handle,
    d: &Handle,
    n: usize,
    v: usize,
) {
    // SAFETY: see `raw`.
    unsafe {
        logits_backward_kernel::launch_unchecked(
            client,
            row_cubes(client, n),
            row_dim(client),
            raw(&z.handle, z.words),
            raw(tokens, n),
            raw(stats, n * 4),
            raw(grads, n * 2),
            raw(d, n * v),
            v,
            z.bf16,
        )
    };
}

/// logp, entropy (and the statistics of the backward pass) of every row.
pub fn logits_forward(
    client: &Client,
    z: Logits,
    tokens: &[u32],
    v: usize,
) -> Result<Forward, String> {
    let n = tokens.len().min(z.len() / v.max(1));
    if n == 0 {
        return Ok(Forward::default());
    }
    fits(client, n * v * z.elem_bytes(), "storing the logits", FEWER)?;
    let zd = z.upload(client, n * v);
    let th = client.create_from_slice(u32::as_bytes(&tokens[..n]));
    let sh = client.empty(n * 4 * 4);
    launch_forward(client, &zd, &th, &sh, n, v);
    let s = f32::from_bytes(&client.read_one_unchecked(sh)).to_vec();
    let col = |k: usize| (0..n).map(|i| s[i * 4 + k]).collect::<Vec<f32>>();
    Ok(Forward {
        logp: col(0),
        entropy: col(1),
        lse: col(2),
        mean_z: col(3),
    })
}

/// d_logits [n, v] from d_logp and d_entropy.
pub fn logits_backward(
    client: &Client,
    z: Logits,
    tokens: &[u32],
    v: usize,
    fwd: &Forward,
    d_logp: &[f32],
    d_entropy: &[f32],
) -> Result<Vec<f32>, String> {
    let n = tokens.len().min(z.len() / v.max(1));
    if n == 0 {
        return Ok(Vec::new());
    }
    fits(client, n * v * 4, "storing d_logits", FEWER)?;
    let stats: Vec<f32> = (0..n)
        .flat_map(|i| [fwd.logp[i], fwd.entropy[i], fwd.lse[i], fwd.mean_z[i]])
        .collect();
    let zd = z.upload(client, n * v);
    let th = client.create_from_slice(u32::as_bytes(&tokens[..n]));
    let sh = client.create_from_slice(f32::as_bytes(&stats));
    let gh = upload_grads(client, n, d_logp, d_entropy);
    let dh = client.empty(n * v * 4);
    launch_backward(client, &zd, &th, &sh, &gh, &dh, n, v);
    Ok(f32::from_bytes(&client.read_one_unchecked(dh)).to_vec())
}

/// Timings of the logits kernel with everything already on the device.
#[derive(Clone, Copy, Debug)]
pub struct LogitsTimes {
    pub forward_s: f64,
    pub backward_s: f64,
    /// Device bytes this run allocated: logits, one [N, V] gradient, O(N).
    pub bytes: usize,
}

/// Upload `z` [n, v] once, then time the forward and backward kernels
/// (launch + sync), median of `iters`; returns the times and checks the
/// result against nothing (callers compare with the CPU kernel).
pub fn logits_bench(
    client: &Client,
    z: Logits,
    tokens: &[u32],
    v: usize,
    d_logp: &[f32],
    d_entropy: &[f32],
    iters: usize,
) -> Result<LogitsTimes, String> {
    let n = tokens.len().min(z.len() / v.max(1));
    if n == 0 {
        return Err("no rows".into());
    }
    fits(client, n * v * z.elem_bytes(), "storing the logits", FEWER)?;
    fits(client, n * v * 4, "storing d_logits", FEWER)?;
    let zd = z.upload(client, n * v);
    let th = client.create_from_slice(u32::as_bytes(&tokens[..n]));
    let sh = client.empty(n * 4 * 4);
    let gh = upload_grads(client, n, d_logp, d_entropy);
    let dh = client.empty(n * v * 4);
    let sync = || cubecl::future::block_on(client.sync()).map_err(|e| e.to_string());
    sync()?;
    let (mut tf, mut tb) = (Vec::new(), Vec::new());
    for k in 0..iters.max(1) + 1 {
        let start = std::time::Instant::now();
        launch_forward(client, &zd, &th, &sh, n, v);
        sync()?;
        let f = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        launch_backward(client, &zd, &th, &sh, &gh, &dh, n, v);
        sync()?;
        let b = start.elapsed().as_secs_f64();
        // The first iteration compiles the kernels.
        if k > 0 {
            tf.push(f);
            tb.push(b);
        }
    }
    tf.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    Ok(LogitsTimes {
        forward_s: tf[tf.len() / 2],
        backward_s: tb[tb.len() / 2],
        bytes: n * v * (z.elem_bytes() + 4) + n * (4 + 16 + 8),
    })
}

/// Evaluate a compiled loss program on a prepared batch with the device
/// kernels: plan, lower, upload, run, download.
/// A batch whose arena exceeds the device's largest allocation is refused
/// as an E0606 [`keel_ir::Error`] before anything is uploaded.
pub fn run_graph(
    client: &Client,
    graph: &keel_ir::ir::Graph,
    prepared: &keel_ir::batch::Prepared,
) -> Result<keel_ir::Outputs, keel_ir::Error> {
    let dp = plan::DevicePlan::of_graph(graph).map_err(keel_ir::plan_error)?;
    let need = dp.arena_bytes(&prepared.shape);
    let limit = client.properties().memory.max_page_size;
    if need as u64 > limit {
        return Err(keel_ir::Error::new(
            keel_check::codes::TOO_LARGE,
            format!(
                "the batch needs one device buffer of {}; this device allocates at most {} at once",
                keel_ir::human_bytes(need),
                keel_ir::human_bytes(usize::try_from(limit).unwrap_or(usize::MAX))
            ),
            "evaluate fewer sequences at once (split the batch), or use `--backend kernel`",
        ));
    }
    dp.run(client, &prepared.shape, prepared).map_err(|e| {
        keel_ir::Error::new(
            keel_check::codes::DEVICE,
            format!("the device failed to run the kernels: {e}"),
            "`--backend kernel` runs the same kernels on the CPU",
        )
    })
}

/// The source the device runtime compiles for every kernel of `graph`
/// (WGSL on Vulkan, CUDA C++ on NVIDIA), captured from cubecl's compilation
/// log while the plan runs once on `prepared`. Must run before any other
/// client is created in the process (cubecl's configuration is global).
pub fn kernel_sources(
    graph: &keel_ir::ir::Graph,
    prepared: &keel_ir::batch::Prepared,
) -> Result<(String, &'static str), String> {
    use cubecl::config::compilation::CompilationLogLevel;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let path = std::env::temp_dir().join(format!("keel-kernels-{}.log", std::process::id()));
    let mut cfg = CubeClRuntimeConfig::default();
    cfg.compilation.logger.level = CompilationLogLevel::Full;
    cfg.compilation.logger.file = Some(path.clone());
    cfg.compilation.logger.append = false;
    if !CubeClRuntimeConfig::try_set(cfg) {
        return Err(
            "the device runtime was configured before the kernels could be captured".into(),
        );
    }
    let (client, name) = client_named()?;
    run_graph(&client, graph, prepared).map_err(|e| e.message)?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("no compilation log: {e}"))?;
    let _ = std::fs::remove_file(&path);
    Ok((text, name))
}

/// The device kernels as an [`Executor`](keel_ir::Executor): plan, lower,
/// upload, run and download each evaluation ([`run_graph`]).
pub struct Device {
    pub client: Client,
}

impl keel_ir::Executor for Device {
    fn run(
        &mut self,
        g: &keel_ir::ir::Graph,
        p: &keel_ir::batch::Prepared,
    ) -> Result<keel_ir::Outputs, keel_ir::Error> {
        run_graph(&self.client, g, p)
    }
}
