//! The warm start: supervised cross-entropy on the environment's worked
//! solutions before RL, from the initial weights (Keel's own, a weights
//! file, or a pretrained checkpoint's), cached by everything it depends on.

use std::fs;
use std::path::PathBuf;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use keel_model::io::{weights_from_bytes, write_weights_atomic};
use keel_model::optim::{self, AdamW, AdamWConfig, Rule};
use keel_model::rng::{fnv, fnv_stream};
use keel_model::sample::left_pad;
use keel_model::transformer::{ModelConfig, Transformer, Weights};

use super::config::RunConfig;
use super::dir::io_error;
use super::{LogLines, RunOptions, bar, say};
use crate::env::WARM_STREAM;
use crate::error::{Coded, Error, Result, codes};
use crate::rollout::encode_prompt;

/// The initial weights: a pretrained checkpoint's, a weights file's
/// (`model.init`), or fresh ones of the seed.
fn initial(setup: &RunConfig, pretrained: Option<Weights>) -> Result<Weights> {
    Ok(match (pretrained, &setup.init_path) {
        (Some(w), _) => w,
        (None, Some(p)) => {
            let seeded = Weights::init(&setup.model);
            let path = PathBuf::from(p);
            let bytes = fs::read(&path).map_err(|e| {
                Error::new(codes::WEIGHTS, format!("cannot read `{p}`: {e}"), "`model.init` names a safetensors file of weights, such as RUN_DIR/final.safetensors of an earlier run").at(p.clone())
            })?;
            weights_from_bytes(&bytes, "", &seeded, &path).coded()?
        }
        (None, None) => Weights::init(&setup.model),
    })
}

/// The weights' layout (names and shapes) and the weights after the warm
/// start (cached by the recipe's model and task settings, the seed and the
/// initial weights).
pub fn warm_weights(
    setup: &RunConfig,
    opts: &RunOptions,
    pretrained: Option<Weights>,
) -> Result<(Weights, Weights)> {
    let init = initial(setup, pretrained)?;
    warm_from(setup, &setup.model, setup.warm_steps, init, opts)
}

/// A built-in teacher's weights: its own model (`model`), fresh from its
/// seed, after its own `steps` of the same warm start, cached the same way.
pub fn teacher_weights(
    setup: &RunConfig,
    model: &ModelConfig,
    steps: u64,
    opts: &RunOptions,
) -> Result<Weights> {
    warm_from(setup, model, steps, Weights::init(model), opts).map(|(_, w)| w)
}

/// `steps` of the warm start of `model` from `init` (the task's worked
/// solutions, `task.warmup_lr` and `task.warmup_batch`), cached by
/// everything they depend on; the layout and the weights.
fn warm_from(
    setup: &RunConfig,
    model: &ModelConfig,
    steps: u64,
    init: Weights,
    opts: &RunOptions,
) -> Result<(Weights, Weights)> {
    let layout = init.layout();
    if steps == 0 {
        return Ok((layout, init));
    }
    // The same FNV-1a as `fnv` over the weights' bytes, streamed (a real
    // model's bytes are not copied to be hashed).
    let init_hash = fnv_stream(init.data.iter().flatten().flat_map(|x| x.to_le_bytes()));
    let key = fnv(format!(
        "{:?}|{}|{}|{}|{}|{:?}|{init_hash:x}",
        model, setup.task_desc, steps, setup.warm_lr, setup.warm_batch, setup.adam
    )
    .as_bytes());
    let cache_file = opts.cache.join(format!("warmstart-{key:016x}.safetensors"));
    if let Some(w) = fs::read(&cache_file)
        .ok()
        .and_then(|b| weights_from_bytes(&b, "", &layout, &cache_file).ok())
    {
        say(
            opts,
            &format!("warm start: reusing {}", cache_file.display()),
        );
        return Ok((layout, w));
    }
    let mut policy = Transformer::new(model.clone(), &init, &opts.device);
    let bar = bar(opts, steps, "warm start");
    let log = LogLines::new(opts);
    let n = steps;
    if log.due(true) {
        eprintln!("warm start: {n} steps");
    }
    warm_start(setup, &mut policy, steps, &|s| {
        bar.set_position(s);
        if log.due(s == n) {
            eprintln!("warm start: step {s}/{n}");
        }
    });
    bar.finish_and_clear();
    let w = policy.weights();
    fs::create_dir_all(&opts.cache).map_err(|e| io_error("create", &opts.cache, e))?;
    write_weights_atomic(&cache_file, &[("", w.view())]).coded()?;
    Ok((layout, w))
}

/// Cross-entropy on worked solutions.
fn warm_start(setup: &RunConfig, policy: &mut Transformer, steps: u64, progress: &dyn Fn(u64)) {
    let dev = policy.device.clone();
    let tok = &setup.tok;
    // The warm start is supervised and always takes AdamW steps; the
    // recipe's `optimizer.name` is the RL update's rule.
    let adamw = AdamWConfig {
        rule: Rule::AdamW,
        ..setup.adam
    };
    let mut opt = AdamW::new(adamw, &policy.params, &dev);
    for step in 0..steps {
        let mut prompts = Vec::new();
        let mut targets = Vec::new();
        for k in 0..setup.warm_batch as u64 {
            let p = setup
                .env
                .problem(WARM_STREAM, step * setup.warm_batch as u64 + k);
            prompts.push(encode_prompt(tok, &p));
            let mut t = tok.encode(&p.solution).unwrap_or_default();
            t.push(tok.eos());
            targets.push(t);
        }
        let (ptoks, pvalid, p) = left_pad(&prompts);
        let t = targets.iter().map(|x| x.len()).max().unwrap_or(1);
        let t = t.min(policy.cfg.context.saturating_sub(p)).max(1);
        let b = prompts.len();
        let mut toks = Vec::new();
        let mut valid = Vec::new();
        let mut tgt = Vec::new();
        let mut w = Vec::new();
        for row in 0..b {
            toks.extend_from_slice(&ptoks[row * p..(row + 1) * p]);
            valid.extend_from_slice(&pvalid[row * p..(row + 1) * p]);
            for j in 0..t {
                let x = targets[row].get(j).copied();
                toks.push(x.unwrap_or(0));
                valid.push(x.is_some());
                tgt.push(x.unwrap_or(0) as i64);
                w.push(if x.is_some() { 1.0f32 } else { 0.0 });
            }
        }
        policy.require_grad();
        let logits = policy.forward(&toks, &valid, b, p + t).narrow(1, p - 1, t);
        let lp = log_softmax(logits, 2);
        let idx = Tensor::<3, Int>::from_data(TensorData::new(tgt, [b, t, 1]), &dev);
        let picked = lp.gather(2, idx).reshape([b, t]);
        let n: f32 = w.iter().sum();
        let wt = Tensor::<2>::from_data(TensorData::new(w, [b, t]), &dev);
        let loss = (picked * wt).sum().div_scalar(-n.max(1.0));
        // A non-finite gradient norm leaves the weights as they are.
        let _ = optim::clipped_step(
            &mut policy.params,
            &mut opt,
            &loss.backward(),
            1.0,
            setup.warm_lr,
        );
        progress(step + 1);
    }
    policy.params = policy.params.iter().map(|p| p.clone().detach()).collect();
}
