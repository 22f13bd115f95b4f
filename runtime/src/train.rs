//! The training loop: warm start, then per step: prompts (curriculum) → group
//! rollouts → verification and reward (host code) → guards → the recipe's
//! loss and gradient (compiled program) injected into burn's autodiff →
//! AdamW → metrics, evaluation, checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use keel_compiler::batch::{self, Batch, Values};
use keel_compiler::{Checked, Diagnostic, Executor, LogitsPath, LossOutput, LossProgram, logits};
use keel_compiler::{CheckedGuard, GuardAction as Action, GuardOp};
use serde_json::{Map, Value, json};

use crate::checkpoint::{self, TrainState, bits, unbits};
use crate::error::{Error, Result, codes};
use crate::hostprog::{HostProgram, params_of, set_params};
use crate::model::{ModelConfig, Params, Policy, Weights, to_vec};
use crate::optim::{self, AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::rollout::{Rollouts, StepInputs, provided};
use crate::sample::{self, SampleConfig, left_pad};
use crate::settings::Settings;
use crate::tasks::{self, EVAL_STREAM, Prm, Problem, TRAIN_STREAM, Task, Verifier};

/// The problem stream rehearsal samples are drawn from.
const REHEARSAL_STREAM: u64 = 3;
use crate::tokenizer::{CharTokenizer, Tokenizer};

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    /// Draw a progress bar (else a line every few steps).
    pub progress: bool,
    /// Directory of cached warm starts (shared between runs).
    pub cache: PathBuf,
    pub device: Device,
    /// Quiet: no progress output at all (tests).
    pub quiet: bool,
}

/// What a finished run reports.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: u64,
    pub pass_at_1_warm: Option<f64>,
    pub pass_at_1_final: Option<f64>,
    pub pass_at_k_final: Option<f64>,
    pub warm_s: f64,
    pub rl_s: f64,
    pub stopped_by_guard: bool,
    pub events: Vec<String>,
}

/// The settings a run reads once.
struct RunConfig {
    tok: Tokenizer,
    z_loss: f64,
    init_path: Option<String>,
    /// `model.init` names a pretrained checkpoint (a Hugging Face directory
    /// or a GGUF file): its metadata, to write the final weights back.
    pretrained: Option<crate::hf::Meta>,
    /// Its weights in the runtime's layout, until the warm start takes
    /// them (one copy fewer of a real model held for the whole run).
    pretrained_weights: Option<Weights>,
    model: ModelConfig,
    task: Task,
    task_desc: String,
    seed: u64,
    steps: u64,
    warm_steps: u64,
    warm_lr: f64,
    warm_batch: usize,
    prompts: usize,
    group: usize,
    top_p: f64,
    epochs: usize,
    minibatches: usize,
    /// Micro-batches per minibatch, their gradients accumulated into one step.
    micro_batches: usize,
    dynamic_sampling: bool,
    order: String,
    eval_every: u64,
    eval_problems: usize,
    eval_k: usize,
    ck_every: u64,
    ck_keep: usize,
    adam: AdamWConfig,
    reads_ref: bool,
    /// The recipe reads the behaviour policy's distribution (`old_logits`,
    /// `mean_logp`, …): rollouts keep every sampled position's logits
    /// ([B, T, V]); otherwise they keep none.
    reads_old_logits: bool,
    /// The recipe mixes in rehearsal samples of the initial policy (`source` 1).
    reads_source: bool,
}

fn run_config(checked: &Checked, index: usize) -> Result<RunConfig> {
    let s = Settings { checked, index };
    // An error at `section.key` of the recipe.
    let at_key = |section: &str, key: &str, e: Error| -> Error {
        let mut e = e.at(format!("{section}.{key}"));
        e.diagnostics = located(checked, index, section, key, &e);
        e
    };
    // A checkpoint's error, shown at the recipe's `model.init`; the message
    // keeps the checkpoint's file and key.
    let at_init = |mut e: Error| -> Error {
        if let Some(at) = &e.location {
            e.message = format!("{at}: {}", e.message);
        }
        e.diagnostics = located(checked, index, "model", "init", &e);
        e
    };
    let recipe = checked.recipes.get(index).ok_or_else(|| {
        Error::new(
            codes::LOSS_PROGRAM,
            "no recipe to run",
            "name a recipe with --recipe",
        )
    })?;
    let tok_path = s.sym("task", "tokenizer");
    let given_tok = match &tok_path {
        Some(path) => Some(Tokenizer::from_file(path).map_err(|e| {
            Error::new(
                codes::TASK_SETTING,
                format!("cannot load the tokenizer `{path}`: {e}"),
                "`task.tokenizer` names a Hugging Face tokenizer.json with an end-of-sequence token",
            )
            .at(path.clone())
        })?),
        None => None,
    };
    let init_path = s.sym("model", "init");
    let seed_model = s.int("model", "seed", 0) as u64;
    // A pretrained checkpoint brings its architecture and tokenizer; the
    // `model` section then sets only the context.
    let pretrained = match init_path.as_deref().map(Path::new) {
        Some(p) if crate::pretrained::is_pretrained(p) => {
            Some(crate::pretrained::open(p, seed_model).map_err(at_init)?)
        }
        _ => None,
    };
    let chat_mode = s.sym("task", "chat").unwrap_or_else(|| "auto".into());
    let mut template = None;
    let (tok, model, pretrained) = match pretrained {
        Some(p) => {
            if chat_mode != "off" {
                template = p.chat().map_err(at_init)?;
            }
            let tok = match (given_tok, p.tokenizer) {
                (Some(t), _) | (None, Some(t)) => t,
                (None, None) => {
                    return Err(at_key(
                        "model",
                        "init",
                        Error::new(
                            codes::CHECKPOINT_FORMAT,
                            "the checkpoint has no tokenizer (tokenizer.json)",
                            "put the model's tokenizer.json in the directory, or name one with `task.tokenizer`",
                        ),
                    ));
                }
            };
            let mut cfg = p.cfg;
            cfg.context = s.int("model", "context", p.meta.max_positions.min(512));
            (tok, cfg, Some((p.weights, p.meta)))
        }
        None => {
            let tok = given_tok.unwrap_or_else(|| Tokenizer::Char(CharTokenizer::default()));
            let model = ModelConfig::small(
                tok.vocab_size(),
                s.int("model", "d_model", 64),
                s.int("model", "layers", 2),
                s.int("model", "heads", 4),
                s.int("model", "context", 128),
                s.num("model", "qk_norm", 0.0) != 0.0,
                seed_model,
            );
            (tok, model, None)
        }
    };
    if pretrained.is_none()
        && let Err(mut e) = model.validate()
    {
        e.diagnostics = located(checked, index, "model", "heads", &e);
        return Err(e);
    }
    // Prompts go through the checkpoint's chat template (`task.chat`:
    // `auto` where there is one, `on` insists, `off` never).
    let tok = match template {
        Some(template) if matches!(tok, Tokenizer::Hf { .. }) => tok.with_chat(crate::chat::Chat {
            template,
            system: s.sym("task", "system"),
        }),
        _ if chat_mode == "on" => {
            return Err(at_key(
                "task",
                "chat",
                Error::new(
                    codes::TASK_SETTING,
                    "`task.chat = on`, but the model has no chat template",
                    "load an instruct checkpoint with a chat template (chat_template.jinja, or `chat_template` in tokenizer_config.json), or set `task.chat = auto`",
                ),
            ));
        }
        _ => tok,
    };
    let chat = tok.chat().is_some();
    let seed = s.int("task", "seed", 0) as u64;
    let difficulty = s.num("task", "difficulty", 1.0);
    let name = s.sym("task", "name").unwrap_or_else(|| "arithmetic".into());
    let (task, task_desc) = match name.as_str() {
        "countdown" => (
            Task::Countdown { seed, difficulty },
            format!("countdown seed={seed} difficulty={difficulty}"),
        ),
        "jsonl" => {
            let Some(path) = s.sym("task", "path") else {
                let mut e = Error::new(
                    codes::TASK_SETTING,
                    "task `jsonl` needs `task.path`",
                    "add `task { name = jsonl, path = \"data.jsonl\" }`",
                )
                .at("task.path");
                e.diagnostics = located(checked, index, "task", "name", &e);
                return Err(e);
            };
            let text = fs::read_to_string(&path).map_err(|e| {
                Error::new(
                    codes::DATA_UNREADABLE,
                    format!("cannot read `{path}`: {e}"),
                    "check the path in `task.path` (relative to the working directory)",
                )
                .at(path.clone())
            })?;
            let problems = tasks::load_jsonl(&path, &text)?;
            for (k, p) in problems.iter().enumerate() {
                let at = format!("{path}:{}", k + 1);
                if p.messages.is_some() && !chat {
                    return Err(Error::new(
                        codes::DATA_RECORD,
                        "the prompt is a conversation, but the run has no chat template to render it",
                        "give the prompt as one string, or load an instruct checkpoint with a chat template (`model.init`) and leave `task.chat` on `auto`",
                    )
                    .at(at));
                }
                if let Err(c) = tok.prompt(p).and(tok.encode(&p.solution)) {
                    return Err(Error::new(
                        codes::TASK_SETTING,
                        c,
                        if chat {
                            "give the conversation the roles and order the chat template expects, or set `task.chat = off`"
                        } else {
                            "use ASCII digits, letters and punctuation, remove the character, or set `task.tokenizer` to a tokenizer.json"
                        },
                    )
                    .at(at));
                }
            }
            let verifier = match s.sym("task", "verifier").as_deref() {
                Some("numeric") => Verifier::Numeric,
                Some("regex") => {
                    let pat = problems
                        .first()
                        .map(|p| p.answer.clone())
                        .unwrap_or_default();
                    Verifier::Regex(regex::Regex::new(&pat).map_err(|e| {
                        Error::new(
                            codes::TASK_SETTING,
                            format!("the answer of the first record is not a regex: {e}"),
                            "with `verifier = regex` every answer is a regular expression",
                        )
                        .at(format!("{path}:1"))
                    })?)
                }
                _ => Verifier::Exact,
            };
            let hash = fnv(text.as_bytes());
            (
                Task::Data { problems, verifier },
                format!("jsonl {path} {hash:x}"),
            )
        }
        _ => {
            // A pretrained model reads the problem in words and answers as
            // a chat model does.
            let natural = pretrained.is_some();
            let task = Task::Arithmetic {
                seed,
                difficulty,
                prm: match s.sym("task", "prm").as_deref() {
                    Some("format") => Prm::Format,
                    Some("noisy") => Prm::Noisy(s.num("task", "prm_false_positive", 0.5)),
                    _ => Prm::Exact,
                },
                natural,
            };
            // The template must take a problem (a refusal shows here, not
            // mid-run).
            if let Err(e) = tok.prompt(&task.problem(TRAIN_STREAM, 0)) {
                return Err(at_key(
                    "model",
                    "init",
                    Error::new(
                        codes::CHECKPOINT_FORMAT,
                        format!("the chat template cannot render a prompt: {e}"),
                        "fix the checkpoint's chat template, or set `task.chat = off`",
                    ),
                ));
            }
            (
                task,
                format!(
                    "arithmetic seed={seed} difficulty={difficulty}{}",
                    if natural { " natural" } else { "" }
                ),
            )
        }
    };
    let task_desc = if chat {
        format!("{task_desc} chat")
    } else {
        task_desc
    };
    // A prompt that fills the context leaves no room for a response.
    let len = |p: &Problem| tok.prompt(p).map_or(0, |v| v.len());
    let longest = match &task {
        Task::Data { problems, .. } => problems.iter().map(len).max().unwrap_or(0),
        _ => (0..16)
            .map(|i| len(&task.problem(TRAIN_STREAM, i)))
            .max()
            .unwrap_or(0),
    };
    if longest >= model.context {
        return Err(at_key(
            "model",
            "context",
            Error::new(
                codes::MODEL_SETTING,
                format!(
                    "prompts take up to {longest} tokens{}, which fills `model.context` = {}: no room for a response",
                    if chat {
                        " (with the chat template)"
                    } else {
                        ""
                    },
                    model.context
                ),
                format!(
                    "raise `model.context` to at least {} (the prompt and `rollout.max_tokens`), or shorten the prompts",
                    longest + 32
                ),
            ),
        ));
    }
    let prompts = s.int("rollout", "prompts", 8).max(1);
    let group = s.int("rollout", "group", 8).max(1);
    let minibatches = s.int("rollout", "minibatches", 1).max(1);
    // What a step needs at the least: the weights with their gradient and
    // AdamW's two moments (f32), and for each minibatch's samples the
    // logits with their gradient and one activation per layer kept for the
    // backward pass. An absurd rollout or model is refused here instead of
    // being killed mid-step.
    let micro_batches = s.int("rollout", "micro_batches", 1).max(1);
    let reads_ref = recipe.inputs.contains_key("ref_logp");
    let reads_source = recipe.inputs.contains_key("source");
    let need = step_memory(
        &model,
        prompts.saturating_mul(group),
        minibatches,
        micro_batches,
        reads_ref || reads_source,
    );
    if let Err(e) = keel_compiler::check_memory(
        "the model and one training step",
        need,
        keel_compiler::available_memory(),
        "lower `rollout.prompts` or `rollout.group`, raise `rollout.minibatches` or `rollout.micro_batches`, or lower the model's context; KEEL_MEMORY_LIMIT=BYTES sets the limit",
    ) {
        let diagnostics = located(checked, index, "rollout", "prompts", &e);
        return Err(e.with_diagnostics(diagnostics));
    }
    let (pretrained_weights, pretrained) = match pretrained {
        Some((w, m)) => (Some(w), Some(m)),
        None => (None, None),
    };
    Ok(RunConfig {
        tok,
        z_loss: s.num("model", "z_loss", 0.0),
        init_path,
        pretrained_weights,
        pretrained,
        model,
        task,
        task_desc,
        seed,
        steps: s.int("optimizer", "steps", 100) as u64,
        warm_steps: s.int("task", "warmup_steps", 0) as u64,
        warm_lr: s.num("task", "warmup_lr", 1e-3),
        warm_batch: s.int("task", "warmup_batch", 32).max(1),
        prompts,
        group,
        top_p: s.num("rollout", "top_p", 1.0),
        epochs: s.int("rollout", "epochs", 1).max(1),
        minibatches,
        micro_batches,
        dynamic_sampling: s.num("rollout", "dynamic_sampling", 0.0) != 0.0,
        order: s
            .sym("curriculum", "order")
            .unwrap_or_else(|| "random".into()),
        eval_every: s.int("eval", "every", 25) as u64,
        eval_problems: s.int("eval", "problems", 64).max(1),
        eval_k: s.int("eval", "k", 4).max(1),
        ck_every: s.int("checkpoint", "every", 10).max(1) as u64,
        ck_keep: s.int("checkpoint", "keep", 8).max(1),
        adam: AdamWConfig {
            beta1: s.num("optimizer", "beta1", 0.9),
            beta2: s.num("optimizer", "beta2", 0.999),
            eps: s.num("optimizer", "eps", 1e-8),
            weight_decay: s.num("optimizer", "weight_decay", 0.01),
        },
        reads_ref,
        reads_old_logits: Rollouts::VOCAB_INPUTS
            .iter()
            .any(|n| recipe.inputs.contains_key(*n)),
        reads_source,
    })
}

/// What one training step needs at the least, in bytes: the weights with
/// their gradient and AdamW's two moments (16 bytes a parameter, f32), the
/// frozen reference where the recipe reads it (4 more); for a minibatch's
/// samples at `model.context` positions, the logits and their gradient on
/// the host (8 bytes × vocabulary); and for a micro-batch's samples, what
/// autodiff keeps: the logits, the injected gradient and the logits'
/// gradient (12 bytes × vocabulary) and one activation per layer (16 bytes
/// × d_model × layers).
pub fn step_memory(
    model: &ModelConfig,
    samples: usize,
    minibatches: usize,
    micro_batches: usize,
    reference: bool,
) -> usize {
    let per_minibatch = samples.div_ceil(minibatches.max(1));
    let per_micro = per_minibatch.div_ceil(micro_batches.max(1));
    let host = model.vocab.saturating_mul(8);
    let graph = model.vocab.saturating_mul(12).saturating_add(
        model
            .d_model
            .saturating_mul(model.layers)
            .saturating_mul(16),
    );
    model
        .parameters()
        .saturating_mul(if reference { 20 } else { 16 })
        .saturating_add(
            per_minibatch
                .saturating_mul(model.context)
                .saturating_mul(host),
        )
        .saturating_add(
            per_micro
                .saturating_mul(model.context)
                .saturating_mul(graph),
        )
}

/// A diagnostic at `section.key` of the recipe (or its name), for an error
/// the runtime finds in a setting.
fn located(
    checked: &Checked,
    index: usize,
    section: &str,
    key: &str,
    e: &Error,
) -> Vec<Diagnostic> {
    let Some(r) = checked.recipes.get(index) else {
        return Vec::new();
    };
    let (file, span) = r
        .value(section, key)
        .map(|v| (v.file, v.name_span))
        .unwrap_or((r.file, r.name_span));
    vec![
        Diagnostic::error(
            e.code,
            e.message.clone(),
            keel_compiler::Label::new(file, span, format!("`{section}.{key}`")),
        )
        .with_help(e.help.clone()),
    ]
}

/// FNV-1a, for cache keys.
pub fn fnv(bytes: &[u8]) -> u64 {
    fnv_stream(bytes.iter().copied())
}

/// FNV-1a over bytes as they come.
pub fn fnv_stream(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A problem's prompt ids (every JSONL prompt, and the first generated one,
/// were encoded and rendered once in [`run_config`], so this cannot fail).
fn encode_prompt(tok: &Tokenizer, p: &Problem) -> Vec<u32> {
    tok.prompt(p).unwrap_or_default()
}

/// The loss program, compiled once through the one loss driver
/// ([`LossProgram`]), and the CPU kernel plan that runs it; hyperparameter
/// values are set per step.
struct Loss {
    program: LossProgram,
    exec: keel_compiler::kernel::Cpu,
}

impl Loss {
    fn compile(checked: &Checked, index: usize, has_ref: bool) -> Result<Loss> {
        let recipe = checked.recipes.get(index).ok_or_else(|| {
            Error::new(
                codes::LOSS_PROGRAM,
                "no recipe",
                "name a recipe with --recipe",
            )
        })?;
        // The runtime's batch: the tempered logits and what `provided` says.
        // A recipe that reads the distribution only through `logp` and
        // `entropy` takes the fused logits kernel.
        let has = |n: &str| provided(n, has_ref);
        let path = LogitsPath::of(recipe, &has);
        let mut program = LossProgram::compile(checked, index, path, &has).map_err(|d| {
            diag_error(
                d,
                "the recipe's loss cannot be compiled for the runtime's batch",
            )
        })?;
        // A training step reads the loss, gradients and metrics only.
        program.graph.keep_training_outputs();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut exec = keel_compiler::kernel::Cpu::new(threads, None).refusing_with(
            "the values of one step's loss",
            "lower `rollout.prompts`, `rollout.group` or `rollout.max_tokens`; KEEL_MEMORY_LIMIT=BYTES sets the limit",
        );
        exec.prepare(&program.graph)?;
        Ok(Loss { program, exec })
    }

    /// New hyperparameter values: the graph's and the plan's.
    fn set_params(&mut self, params: &HashMap<String, f64>) -> Result<()> {
        set_params(&mut self.program.graph, params);
        self.exec.prepare(&self.program.graph)
    }

    /// (loss, gradients, metrics) on the loss batch of some rollouts
    /// ([`Rollouts::loss_batch`], with the current tempered logits).
    fn run(&mut self, batch: &Batch) -> Result<LossOutput> {
        self.exec.memory = keel_compiler::available_memory();
        let mut out = self
            .program
            .run(&mut self.exec, batch, "rollout batch")
            .map_err(|d| match d.first() {
                Some(e) if e.code == keel_compiler::codes::TOO_LARGE => Error::new(
                    codes::TOO_LARGE,
                    e.message.clone(),
                    e.help.clone().unwrap_or_default(),
                ),
                _ => diag_error(d, "the runtime's batch does not fit the recipe's loss"),
            })?;
        self.exec.recycle(std::mem::take(&mut out.rest));
        Ok(out)
    }
}

fn diag_error(d: Vec<Diagnostic>, what: &str) -> Error {
    let first = d.first().map(|x| x.message.clone()).unwrap_or_default();
    let mut e = Error::new(
        codes::LOSS_PROGRAM,
        format!("{what}: {first}"),
        "see the located errors above; `docs/runtime.md` lists the inputs the runtime provides",
    );
    e.diagnostics = d;
    e
}

/// Each problem's encoded prompt `k` times, with the problem index of each.
fn replicate_prompts(
    tok: &Tokenizer,
    problems: &[Problem],
    k: usize,
) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut prompts = Vec::new();
    let mut owner = Vec::new();
    for (g, p) in problems.iter().enumerate() {
        let enc = encode_prompt(tok, p);
        for _ in 0..k {
            prompts.push(enc.clone());
            owner.push(g);
        }
    }
    (prompts, owner)
}

/// Sample `group` responses for each problem.
fn rollouts(
    policy: &Policy,
    task: &Task,
    problems: &[Problem],
    group: usize,
    cfg: SampleConfig,
    rng: &mut Rng,
    tok: &Tokenizer,
) -> Rollouts {
    let (prompts, groups) = replicate_prompts(tok, problems, group);
    let samples = sample::sample(policy, &prompts, cfg, rng);
    assemble(policy, task, problems, samples, prompts, groups, tok)
}

/// CURE's branching: `first` responses per problem; each is cut at one of
/// its `top_k` highest-entropy tokens (never the first; chosen uniformly) and
/// `samples` continuations are drawn from the prompt and that prefix. A
/// problem's group holds its first responses and their continuations
/// (prefix + continuation, with the prefix's recorded log-probs).
fn branched_rollouts(
    policy: &Policy,
    task: &Task,
    problems: &[Problem],
    (first, samples, top_k): (usize, usize, usize),
    cfg: SampleConfig,
    rng: &mut Rng,
    tok: &Tokenizer,
) -> Rollouts {
    let (prompts, owner) = replicate_prompts(tok, problems, first);
    let firsts = sample::sample(policy, &prompts, cfg, rng);
    let v = policy.cfg.vocab;
    let mut cont_prompts = Vec::new();
    let mut limits = Vec::new();
    let mut cuts = Vec::new();
    for (i, s) in firsts.iter().enumerate() {
        let n = s.response.len();
        if n < 2 {
            cuts.push(None);
            continue;
        }
        let mut pos: Vec<usize> = (1..n).collect();
        pos.sort_by(|&a, &b| s.entropy[b].total_cmp(&s.entropy[a]).then(a.cmp(&b)));
        pos.truncate(top_k.max(1));
        let cut = pos[(rng.next_u64() % pos.len() as u64) as usize];
        cuts.push(Some(cut));
        let mut pr = prompts[i].clone();
        pr.extend_from_slice(&s.response[..cut]);
        for _ in 0..samples {
            cont_prompts.push(pr.clone());
            limits.push(cfg.max_tokens.saturating_sub(cut).max(1));
        }
    }
    let mut conts = sample::sample_limited(policy, &cont_prompts, cfg, &limits, rng).into_iter();
    let (mut all, mut all_prompts, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in firsts.into_iter().enumerate() {
        if let Some(cut) = cuts[i] {
            for _ in 0..samples {
                let Some(c) = conts.next() else { break };
                let mut joined = sample::Sample {
                    response: s.response[..cut].to_vec(),
                    old_logp: s.old_logp[..cut].to_vec(),
                    entropy: s.entropy[..cut].to_vec(),
                    // Empty unless the recipe reads the distribution.
                    logits: s.logits.get(..cut * v).unwrap_or_default().to_vec(),
                    truncated: c.truncated,
                };
                joined.response.extend(c.response);
                joined.old_logp.extend(c.old_logp);
                joined.entropy.extend(c.entropy);
                joined.logits.extend(c.logits);
                all.push(joined);
                all_prompts.push(prompts[i].clone());
                groups.push(owner[i]);
            }
        }
        all.push(s);
        all_prompts.push(prompts[i].clone());
        groups.push(owner[i]);
    }
    assemble(policy, task, problems, all, all_prompts, groups, tok)
}

/// Verify samples and lay them out as rollouts.
fn assemble(
    policy: &Policy,
    task: &Task,
    problems: &[Problem],
    samples: Vec<sample::Sample>,
    prompts: Vec<Vec<u32>>,
    groups: Vec<usize>,
    tok: &Tokenizer,
) -> Rollouts {
    let mut out = Rollouts {
        vocab: policy.cfg.vocab,
        difficulty: problems.iter().map(|p| p.difficulty).collect(),
        ..Default::default()
    };
    for ((s, pr), g) in samples.into_iter().zip(prompts).zip(groups) {
        let text = tok.decode(&s.response);
        let mut verdict = task.verify(&problems[g], &text);
        // Steps end at byte offsets of the text; the rewards sit on the
        // tokens that hold those bytes.
        for step in &mut verdict.steps {
            step.0 = tok.token_at_byte(&s.response, step.0);
        }
        if s.truncated {
            verdict.format_ok = false;
        }
        out.prompts.push(pr);
        out.responses.push(s.response);
        out.old_logp.push(s.old_logp);
        out.entropy.push(s.entropy);
        out.old_logits.push(s.logits);
        out.group.push(g);
        out.verdicts.push(verdict);
        out.truncated.push(s.truncated);
    }
    out
}

/// Forward the policy over prompt + response rows; the logits that predict
/// each response token, [B, T, V], divided by `temperature`.
fn response_logits(policy: &Policy, r: &Rollouts, temperature: f64) -> Tensor<3> {
    let (ptoks, pvalid, p) = left_pad(&r.prompts);
    let t = r.t();
    let b = r.len();
    let resp = r.tokens();
    let mask = r.mask();
    let mut toks = Vec::with_capacity(b * (p + t));
    let mut valid = Vec::with_capacity(b * (p + t));
    for row in 0..b {
        toks.extend_from_slice(&ptoks[row * p..(row + 1) * p]);
        valid.extend_from_slice(&pvalid[row * p..(row + 1) * p]);
        toks.extend_from_slice(&resp[row * t..(row + 1) * t]);
        valid.extend(mask[row * t..(row + 1) * t].iter().map(|&m| m > 0.0));
    }
    let logits = policy.forward(&toks, &valid, b, p + t);
    logits.narrow(1, p - 1, t).div_scalar(temperature)
}

/// Rows `0..n` in `k` contiguous chunks of near-equal size (at most `n`).
fn micro_chunks(n: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.clamp(1, n.max(1));
    (0..k)
        .map(|j| (j * n / k..(j + 1) * n / k).collect())
        .filter(|c: &Vec<usize>| !c.is_empty())
        .collect()
}

/// log-probs of the response tokens under a (frozen) policy.
fn token_logp(policy: &Policy, r: &Rollouts, temperature: f64) -> Vec<Vec<f64>> {
    let z = response_logits(policy, r, temperature);
    let [b, t, v] = z.dims();
    let lp = to_vec(&log_softmax(z, 2));
    (0..b)
        .map(|row| {
            r.responses[row]
                .iter()
                .enumerate()
                .map(|(j, &tkn)| lp[(row * t + j) * v + tkn as usize] as f64)
                .collect()
        })
        .collect()
}

/// Cross-entropy on worked solutions.
fn warm_start(setup: &RunConfig, policy: &mut Policy, tok: &Tokenizer, progress: &dyn Fn(u64)) {
    let dev = policy.device.clone();
    let mut opt = AdamW::new(setup.adam, &policy.params, &dev);
    let warm_stream = 2;
    for step in 0..setup.warm_steps {
        let mut prompts = Vec::new();
        let mut targets = Vec::new();
        for k in 0..setup.warm_batch as u64 {
            let p = setup
                .task
                .problem(warm_stream, step * setup.warm_batch as u64 + k);
            prompts.push(encode_prompt(tok, &p));
            let mut t = tok.encode(&p.solution).unwrap_or_default();
            t.push(tok.eos());
            targets.push(t);
        }
        let (ptoks, pvalid, p) = left_pad(&prompts);
        let t = targets.iter().map(|x| x.len()).max().unwrap_or(1);
        let t = t.min(setup.model.context.saturating_sub(p)).max(1);
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
        let _ = optim::clipped_step(policy, &mut opt, &loss.backward(), 1.0, setup.warm_lr);
        progress(step + 1);
    }
    policy.params = policy.params.iter().map(|p| p.clone().detach()).collect();
}

/// Held-out evaluation: pass@1 (mean correctness over k samples) and pass@k.
fn evaluate(
    setup: &RunConfig,
    policy: &Policy,
    temperature: f64,
    max_tokens: usize,
    step: u64,
    tok: &Tokenizer,
) -> (f64, f64) {
    let problems: Vec<Problem> = (0..setup.eval_problems as u64)
        .map(|i| setup.task.problem(EVAL_STREAM, i))
        .collect();
    let mut rng = Rng::derive(setup.seed, 7, step);
    let cfg = SampleConfig {
        temperature,
        top_p: setup.top_p,
        max_tokens,
        eos: tok.eos(),
        keep_logits: false,
        draw_limit: tok.vocab_size(),
    };
    let r = rollouts(
        &policy.detached(),
        &setup.task,
        &problems,
        setup.eval_k,
        cfg,
        &mut rng,
        tok,
    );
    let mut per = vec![(0usize, 0usize); problems.len()];
    for (g, v) in r.group.iter().zip(&r.verdicts) {
        per[*g].0 += usize::from(v.correct);
        per[*g].1 += 1;
    }
    let n = per.len().max(1) as f64;
    let p1 = per
        .iter()
        .map(|(c, k)| *c as f64 / (*k).max(1) as f64)
        .sum::<f64>()
        / n;
    let pk = per.iter().filter(|(c, _)| *c > 0).count() as f64 / n;
    (p1, pk)
}

/// The run directory's description of the run, for `--resume`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RunFile {
    pub recipe_path: String,
    pub recipe: Option<String>,
    pub set: Vec<(String, String)>,
    pub fingerprint: String,
}

/// Run (or resume) a recipe: set up (the programs, the warm start, the
/// state), evaluate after the warm start, then one [`Trainer::step`] per
/// step, and write the final weights.
pub fn run(
    checked: &Checked,
    index: usize,
    run_file: RunFile,
    opts: &RunOptions,
) -> Result<Summary> {
    let mut t = Trainer::start(checked, index, run_file, opts)?;
    t.evaluate_warm_start()?;
    let bar = bar(opts, t.setup.steps, "RL");
    bar.set_position(t.st.step);
    let rl_start = Instant::now();
    let mut stop = false;
    while t.st.step < t.setup.steps && !stop {
        stop = t.step(&bar)?;
    }
    bar.finish_and_clear();
    t.summary.steps = t.st.step;
    t.summary.rl_s = rl_start.elapsed().as_secs_f64();
    // The last step's checkpoint holds these weights already: the final file
    // is a hard link to it where the file system allows, else written from
    // the policy's tensors, one at a time.
    let last = t.policy.view();
    let final_path = opts.out.join("final.safetensors");
    let linked = checkpoint::list(&t.ck_dir)
        .pop()
        .filter(|(step, _)| *step == t.st.step)
        .is_some_and(|(_, dir)| {
            let _ = fs::remove_file(&final_path);
            fs::hard_link(dir.join("weights.safetensors"), &final_path).is_ok()
        });
    if !linked {
        checkpoint::write_weights_atomic(&final_path, &[("", last)])?;
    }
    // A pretrained model goes back in its users' format too: a directory
    // transformers loads (config.json, model.safetensors).
    if let Some(meta) = &t.setup.pretrained {
        crate::hf::write_dir(
            &opts.out.join("final-hf"),
            &t.setup.model,
            last,
            meta,
            t.setup.tok.to_json().as_deref(),
        )?;
    }
    Ok(t.summary)
}

/// An IO error on the run directory or the cache.
fn io_error(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::new(
        codes::CHECKPOINT,
        format!("cannot {what} `{}`: {e}", p.display()),
        "check that the run directory is writable",
    )
    .at(p.display().to_string())
}

/// The hyperparameter values now: the recipe's, guard overrides, and the
/// recipe's state.
fn current_params(base: &HashMap<String, f64>, st: &TrainState) -> HashMap<String, f64> {
    let mut p = base.clone();
    for (k, v) in &st.overrides {
        p.insert(k.clone(), unbits(*v));
    }
    for (k, v) in &st.host_state {
        p.insert(format!("state.{k}"), unbits(*v));
    }
    p
}

/// What the schedules say for one step, after guard adjustments.
struct Knobs {
    scalars: HashMap<String, f64>,
    lr: f64,
    temperature: f64,
    max_tokens: usize,
    grad_clip: f64,
    max_difficulty: Option<f64>,
}

/// What the guards decided for one step.
#[derive(Default)]
struct Decision {
    skip: bool,
    rollback: Option<u64>,
    stop: bool,
}

/// One step's line of `metrics.jsonl` and the events it reports.
struct StepLog {
    line: Map<String, Value>,
    events: Vec<String>,
}

/// A run in progress: what [`Trainer::start`] sets up once, and the state
/// each step reads and updates.
struct Trainer<'a> {
    checked: &'a Checked,
    index: usize,
    opts: &'a RunOptions,
    setup: RunConfig,
    /// The recipe's hyperparameters as written (`--set` included).
    base_params: HashMap<String, f64>,
    /// The values the host program and the loss were last compiled with.
    host_params: HashMap<String, f64>,
    loss: Loss,
    host: HostProgram,
    guards: Vec<CheckedGuard>,
    /// The weights' names and shapes (checkpoints are read against them).
    init: Weights,
    /// The frozen policy after the warm start (`ref_logp`, rehearsal), where
    /// the recipe reads it.
    reference: Option<Policy>,
    /// Correct responses of the initial policy, when the recipe reads `source`.
    rehearsal: Option<Rollouts>,
    policy: Policy,
    opt: AdamW,
    st: TrainState,
    ck_dir: PathBuf,
    metrics_path: PathBuf,
    metrics_file: fs::File,
    summary: Summary,
}

impl<'a> Trainer<'a> {
    /// Everything before the first step: the run directory, the loss and
    /// host programs (checked on a one-token batch), the warm start, the
    /// reference policy and rehearsal pool, and the state, fresh or from the
    /// newest checkpoint.
    fn start(
        checked: &'a Checked,
        index: usize,
        run_file: RunFile,
        opts: &'a RunOptions,
    ) -> Result<Trainer<'a>> {
        let mut setup = run_config(checked, index)?;
        let pretrained = setup.pretrained_weights.take();
        let out = &opts.out;
        fs::create_dir_all(out).map_err(|e| io_error("create", out, e))?;
        if !opts.resume {
            let json = serde_json::to_vec_pretty(&run_file).map_err(|e| {
                Error::new(codes::CHECKPOINT, e.to_string(), "this is a runtime bug")
            })?;
            checkpoint::write_atomic(&out.join("run.json"), &json)?;
        }
        let mut loss = Loss::compile(checked, index, setup.reads_ref)?;
        loss_accepts_the_runtime_batch(&mut loss, &setup)?;
        let base_params = params_of(&loss.program.graph);
        let guards = checked
            .recipes
            .get(index)
            .map(|r| r.guards.clone())
            .unwrap_or_default();
        let mut summary = Summary::default();
        let t0 = Instant::now();
        let (init, warm) = warm_weights(&setup, opts, pretrained)?;
        summary.warm_s = t0.elapsed().as_secs_f64();
        let mut policy = Policy::new(setup.model.clone(), &warm, &opts.device);
        drop(warm);
        // The frozen reference, only where the recipe reads it: it shares
        // the policy's tensors (burn's tensors are values; an update makes
        // the policy new ones and leaves these as they were), so until the
        // first update, and for every tensor an update leaves alone, the
        // two hold one copy.
        let reference = (setup.reads_ref || setup.reads_source).then(|| policy.detached());
        let rehearsal = match (&reference, setup.reads_source) {
            (Some(r), true) => Some(rehearsal_pool(&setup, r, opts)),
            _ => None,
        };
        let ck_dir = out.join("checkpoints");
        let metrics_path = out.join("metrics.jsonl");
        let mut opt = AdamW::new(setup.adam, &policy.params, &opts.device);
        let mut st = TrainState {
            rng: Rng::new(setup.seed ^ 0xA11CE).0,
            pass_counts: vec![(0, 0); 4],
            ..Default::default()
        };
        for (name, v) in &base_params {
            if let Some(s) = name.strip_prefix("state.") {
                st.host_state.insert(s.to_string(), bits(*v));
            }
        }
        if opts.resume {
            let Some((_, dir)) = checkpoint::list(&ck_dir).pop() else {
                return Err(Error::new(
                    codes::CHECKPOINT,
                    format!("`{}` has no checkpoint to resume from", out.display()),
                    "start the run again without --resume",
                )
                .at(out.display().to_string()));
            };
            let ck = checkpoint::load(&dir, &init)?;
            policy = Policy::new(setup.model.clone(), &ck.weights, &opts.device);
            opt.load(&ck.m, &ck.v, ck.state.adam_t, &opts.device);
            st = ck.state;
            truncate_lines(&metrics_path, st.metrics_lines)?;
            say(
                opts,
                &format!("resuming {} at step {}", out.display(), st.step),
            );
        } else {
            let _ = fs::remove_file(&metrics_path);
            let _ = fs::remove_dir_all(&ck_dir);
        }
        let metrics_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| io_error("open", &metrics_path, e))?;
        let host_params = current_params(&base_params, &st);
        let host = HostProgram::compile(checked, index, &host_params)?;
        Ok(Trainer {
            checked,
            index,
            opts,
            setup,
            base_params,
            host_params,
            loss,
            host,
            guards,
            init,
            reference,
            rehearsal,
            policy,
            opt,
            st,
            ck_dir,
            metrics_path,
            metrics_file,
            summary,
        })
    }

    fn save(&self) -> Result<PathBuf> {
        let p = &self.policy;
        checkpoint::save(
            &self.ck_dir,
            &self.st,
            (
                p.view(),
                Params::live(&p.names, &p.shapes, &self.opt.m),
                Params::live(&p.names, &p.shapes, &self.opt.v),
            ),
            self.setup.ck_keep,
        )
    }

    fn write_line(&mut self, line: &Map<String, Value>) -> Result<()> {
        write_line(&mut self.metrics_file, line, &self.metrics_path)?;
        self.st.metrics_lines += 1;
        Ok(())
    }

    /// The evaluation before RL (after the warm start), on a fresh run:
    /// metrics line 0 and the first checkpoint.
    fn evaluate_warm_start(&mut self) -> Result<()> {
        if self.st.step != 0 {
            return Ok(());
        }
        let k = self.knobs()?;
        let setup = &self.setup;
        let (p1, pk) = evaluate(
            setup,
            &self.policy,
            k.scalars.get("rollout.temperature").copied().unwrap_or(1.0),
            k.scalars.get("rollout.max_tokens").copied().unwrap_or(32.0) as usize,
            0,
            &setup.tok,
        );
        self.summary.pass_at_1_warm = Some(p1);
        let mut line = Map::new();
        line.insert("step".into(), json!(0));
        line.insert("phase".into(), json!("warm_start"));
        line.insert("pass_at_1".into(), json!(p1));
        line.insert(format!("pass_at_{}", setup.eval_k), json!(pk));
        line.insert("warm_s".into(), json!(self.summary.warm_s));
        say(
            self.opts,
            &format!(
                "after warm start ({:.1}s): pass@1 {:.3}, pass@{} {:.3}",
                self.summary.warm_s, p1, setup.eval_k, pk
            ),
        );
        self.write_line(&line)?;
        self.save()?;
        Ok(())
    }

    /// One RL step: rollouts, scoring and guards, the update, a rollback if
    /// a guard asked for one, then logging, evaluation and the checkpoint.
    /// Returns whether a guard stopped the run.
    fn step(&mut self, bar: &indicatif::ProgressBar) -> Result<bool> {
        let step = self.st.step + 1;
        self.refresh_params()?;
        let k = self.knobs()?;
        let step_in = StepInputs {
            step: step as f64,
            total_steps: self.setup.steps as f64,
            epoch: 0.0,
        };
        let t_roll = Instant::now();
        let mut batch = self.rollouts(&k, step_in)?;
        let rollout_s = t_roll.elapsed().as_secs_f64();
        let n_tokens: usize = batch.responses.iter().map(|r| r.len()).sum();
        let n_samples = batch.len();

        let mut log = StepLog {
            line: Map::new(),
            events: Vec::new(),
        };
        log.line.insert("step".into(), json!(step));
        let mut d = self.score_and_guard(&batch, step_in, n_tokens, &mut log)?;
        log.line.insert("lr".into(), json!(k.lr));

        let t_train = Instant::now();
        self.add_rehearsal(&mut batch, step, k.temperature);
        if !d.skip && d.rollback.is_none() {
            d.skip = self.update(&batch, &k, step_in, &mut log)?;
        }
        let train_s = t_train.elapsed().as_secs_f64();
        if d.skip {
            log.line.insert("skipped".into(), json!(true));
        }
        self.st.step = step;
        if let Some(n) = d.rollback {
            self.roll_back(step, n, &mut log)?;
        }

        let last = step == self.setup.steps || d.stop;
        if (self.setup.eval_every > 0 && step.is_multiple_of(self.setup.eval_every)) || last {
            let (p1, pk) = evaluate(
                &self.setup,
                &self.policy,
                k.temperature,
                k.max_tokens,
                step,
                &self.setup.tok,
            );
            log.line.insert("pass_at_1".into(), json!(p1));
            log.line
                .insert(format!("pass_at_{}", self.setup.eval_k), json!(pk));
            if last {
                self.summary.pass_at_1_final = Some(p1);
                self.summary.pass_at_k_final = Some(pk);
            }
        }
        let StepLog { mut line, events } = log;
        if !events.is_empty() {
            line.insert("events".into(), json!(events));
            for e in &events {
                bar.println(format!("step {step}: {e}"));
            }
            self.summary
                .events
                .extend(events.iter().map(|e| format!("step {step}: {e}")));
        }
        line.insert("samples".into(), json!(n_samples));
        line.insert("tokens".into(), json!(n_tokens));
        // Wall-clock figures (the only fields that differ between identical runs).
        line.insert("rollout_s".into(), json!(rollout_s));
        line.insert("train_s".into(), json!(train_s));
        line.insert(
            "tokens_per_s".into(),
            json!(n_tokens as f64 / (rollout_s + train_s).max(1e-9)),
        );
        self.write_line(&line)?;
        self.st.adam_t = self.opt.t;
        bar.set_position(step);
        bar.set_message(format!(
            "reward {:.3} entropy {:.3}",
            line.get("reward_mean")
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN),
            line.get("entropy_mean")
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN)
        ));
        let opts = self.opts;
        if !opts.progress && !opts.quiet && (step.is_multiple_of(10) || last) {
            eprintln!("step {step}/{}: {}", self.setup.steps, bar.message());
        }
        if step.is_multiple_of(self.setup.ck_every) || last {
            self.save()?;
        }
        Ok(d.stop)
    }

    /// Recompile the host program and reset the loss's parameters when a
    /// guard or the recipe's state changed a hyperparameter.
    fn refresh_params(&mut self) -> Result<()> {
        let params = current_params(&self.base_params, &self.st);
        if params != self.host_params {
            self.host = HostProgram::compile(self.checked, self.index, &params)?;
            self.loss.set_params(&params)?;
            self.host_params = params;
        }
        Ok(())
    }

    /// The schedules' values at the next step, with guard adjustments.
    fn knobs(&self) -> Result<Knobs> {
        let scalars = step_scalars(&self.host, &self.st, self.setup.steps)?;
        let adjusted = |name: &str, or: f64| -> f64 {
            let v = scalars.get(name).copied().unwrap_or(or);
            match self.st.adjust.get(name) {
                Some((a, b)) => v * unbits(*a) + unbits(*b),
                None => v,
            }
        };
        Ok(Knobs {
            lr: adjusted("optimizer.lr", 1e-3),
            temperature: adjusted("rollout.temperature", 1.0),
            max_tokens: adjusted("rollout.max_tokens", 32.0).max(1.0) as usize,
            grad_clip: adjusted("optimizer.grad_clip", 1.0),
            max_difficulty: scalars.get("curriculum.max_difficulty").copied(),
            scalars,
        })
    }

    /// The step's rollouts: prompts in curriculum order, sampled in groups
    /// (or branched), refilled by dynamic sampling, with the reference
    /// policy's log-probs when the recipe reads them.
    fn rollouts(&mut self, k: &Knobs, step_in: StepInputs) -> Result<Rollouts> {
        let setup = &self.setup;
        let tok = &setup.tok;
        let cfg = SampleConfig {
            temperature: k.temperature,
            top_p: setup.top_p,
            max_tokens: k.max_tokens,
            eos: tok.eos(),
            keep_logits: setup.reads_old_logits,
            draw_limit: tok.vocab_size(),
        };
        let mut rng = Rng(self.st.rng);
        let sampler = self.policy.detached();
        let mut batch = Rollouts::default();
        let mut rounds = 0;
        loop {
            let problems = next_problems(
                setup,
                &mut self.st,
                setup.prompts.saturating_sub(batch.n_groups()),
                k.max_difficulty,
            );
            let knob = |name: &str, or: f64| k.scalars.get(name).copied().unwrap_or(or);
            let branch_first = knob("rollout.branch_first", 0.0);
            let mut r = if branch_first >= 1.0 {
                let b = (
                    branch_first as usize,
                    knob("rollout.branch_samples", 3.0).max(0.0) as usize,
                    knob("rollout.branch_top_k", 20.0).max(1.0) as usize,
                );
                branched_rollouts(&sampler, &setup.task, &problems, b, cfg, &mut rng, tok)
            } else {
                rollouts(
                    &sampler,
                    &setup.task,
                    &problems,
                    setup.group,
                    cfg,
                    &mut rng,
                    tok,
                )
            };
            if setup.dynamic_sampling {
                // Keep groups whose rewards differ (they carry a signal).
                let rewards = rewards_of(&self.host, &r, step_in)?;
                let keep: Vec<usize> = (0..r.n_groups())
                    .filter(|&g| {
                        let v: Vec<f64> = (0..r.len())
                            .filter(|&i| r.group[i] == g)
                            .map(|i| rewards[i])
                            .collect();
                        v.iter().any(|x| (x - v[0]).abs() > 1e-12)
                    })
                    .collect();
                r = r.select_groups(&keep);
            }
            batch.extend(r);
            rounds += 1;
            if !setup.dynamic_sampling || batch.n_groups() >= setup.prompts || rounds >= 4 {
                break;
            }
        }
        self.st.rng = rng.0;
        for (g, d) in batch.difficulty.iter().enumerate() {
            let bucket = ((d * 3.999) as usize).min(3);
            let rows: Vec<usize> = (0..batch.len()).filter(|&i| batch.group[i] == g).collect();
            let c = rows.iter().filter(|&&i| batch.verdicts[i].correct).count() as u64;
            if let Some(pc) = self.st.pass_counts.get_mut(bucket) {
                pc.0 += c;
                pc.1 += rows.len() as u64;
            }
        }
        if let Some(reference) = &self.reference
            && setup.reads_ref
            && !batch.is_empty()
        {
            batch.ref_logp = Some(token_logp(reference, &batch, k.temperature));
        }
        Ok(batch)
    }

    /// Rewards and the batch's metrics, the recipe's state updates, and the
    /// guards: which fired, and what they change or decide.
    fn score_and_guard(
        &mut self,
        batch: &Rollouts,
        step_in: StepInputs,
        n_tokens: usize,
        log: &mut StepLog,
    ) -> Result<Decision> {
        let mut d = Decision {
            skip: batch.is_empty(),
            ..Default::default()
        };
        if batch.is_empty() {
            log.events.push(
                "no group with differing rewards after dynamic sampling; step skipped".into(),
            );
            return Ok(d);
        }
        let line = &mut log.line;
        let rewards = rewards_of(&self.host, batch, step_in)?;
        let n = batch.len() as f64;
        line.insert("reward_mean".into(), json!(rewards.iter().sum::<f64>() / n));
        line.insert(
            "correct_mean".into(),
            json!(batch.verdicts.iter().filter(|v| v.correct).count() as f64 / n),
        );
        line.insert(
            "format_ok".into(),
            json!(batch.verdicts.iter().filter(|v| v.format_ok).count() as f64 / n),
        );
        let ent: Vec<f64> = batch.entropy.iter().flatten().copied().collect();
        line.insert(
            "entropy_mean".into(),
            json!(ent.iter().sum::<f64>() / ent.len().max(1) as f64),
        );
        line.insert("response_len".into(), json!(n_tokens as f64 / n));
        if let Some(rl) = &batch.ref_logp {
            // k3 estimate of KL(π‖π_ref) on the sampled tokens.
            let (mut s, mut c) = (0.0, 0.0);
            for (a, b) in batch.old_logp.iter().flatten().zip(rl.iter().flatten()) {
                let d = b - a;
                s += d.exp() - d - 1.0;
                c += 1.0;
            }
            line.insert("kl_ref".into(), json!(s / f64::max(c, 1.0)));
        }
        let hs = batch.with_host_view(step_in, |view| self.host.scalars(view))?;
        // state updates
        for (k, v) in &hs {
            if let Some(s) = k.strip_prefix("state.") {
                self.st.host_state.insert(s.to_string(), bits(*v));
            }
        }
        for g in &self.guards {
            let fired = hs.get(&format!("guard.{}", g.name)).copied().unwrap_or(0.0) != 0.0;
            let run = self.st.guard_run.entry(g.name.clone()).or_insert(0);
            *run = if fired { *run + 1 } else { 0 };
            if *run < g.window {
                continue;
            }
            *run = 0;
            let mut what = vec![format!("guard `{}`", g.name)];
            for a in &g.actions {
                match a {
                    Action::Warn(m) => what.push(format!("warn: {m}")),
                    Action::Stop => {
                        d.stop = true;
                        self.summary.stopped_by_guard = true;
                        what.push("stop".into());
                    }
                    Action::Skip => {
                        d.skip = true;
                        what.push("skip".into());
                    }
                    Action::Rollback(n) => {
                        d.rollback = Some(*n);
                        what.push(format!("rollback {n}"));
                    }
                    Action::Assign { target, op, value } => {
                        what.push(assign(&self.base_params, &mut self.st, target, *op, *value));
                    }
                }
            }
            log.events.push(what.join("; "));
        }
        Ok(d)
    }

    /// Rehearsal samples of the initial policy join the batch (`source` 1),
    /// a group's worth per step, in turn.
    fn add_rehearsal(&self, batch: &mut Rollouts, step: u64, temperature: f64) {
        let Some(pool) = self.rehearsal.as_ref().filter(|p| !p.is_empty()) else {
            return;
        };
        let rows: Vec<usize> = (0..self.setup.group)
            .map(|k| ((step as usize - 1) * self.setup.group + k) % pool.len())
            .collect();
        let mut r = pool.select_rows(&rows);
        r.group = vec![0; r.len()];
        r.difficulty = vec![0.0];
        r.source = vec![1.0; r.len()];
        if let Some(reference) = &self.reference
            && self.setup.reads_ref
        {
            r.ref_logp = Some(token_logp(reference, &r, temperature));
        }
        batch.extend(r);
    }

    /// The update: for each epoch and minibatch, the policy's tempered
    /// logits, the recipe's loss and its gradient w.r.t. the logits (the
    /// compiled program), injected into burn's autodiff, one clipped AdamW
    /// step. Returns whether the step was skipped (a non-finite loss or
    /// gradient).
    fn update(
        &mut self,
        batch: &Rollouts,
        k: &Knobs,
        step_in: StepInputs,
        log: &mut StepLog,
    ) -> Result<bool> {
        let dev = self.opts.device.clone();
        let setup = &self.setup;
        let mut skip = false;
        let mut losses = Vec::new();
        let mut norms = Vec::new();
        let mut clip_fracs = Vec::new();
        let mut z_losses: Vec<f64> = Vec::new();
        let mut monitors: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let eps = (
            self.host_params.get("clip.eps_low").copied().unwrap_or(0.2),
            self.host_params
                .get("clip.eps_high")
                .copied()
                .unwrap_or(0.2),
        );
        let n_groups = batch.n_groups();
        let mb = setup.minibatches.min(n_groups).max(1);
        'epochs: for epoch in 0..setup.epochs {
            for part_k in 0..mb {
                let groups: Vec<usize> = (0..n_groups).filter(|g| g % mb == part_k).collect();
                let part = if mb == 1 {
                    batch.clone()
                } else {
                    batch.select_groups(&groups)
                };
                // Gradient accumulation (`rollout.micro_batches`): the
                // logits of every micro-batch without a graph, the loss and
                // its gradient on the whole minibatch (exactly as unsplit),
                // then each micro-batch's forward again with a graph and its
                // share of the gradient, summed into one step.
                let chunks = micro_chunks(part.len(), setup.micro_batches);
                let (b, t, v) = (part.len(), part.t(), self.policy.cfg.vocab);
                let mut kept = None;
                let zf: Vec<f32> = if chunks.len() == 1 {
                    self.policy.require_grad();
                    let z = response_logits(&self.policy, &part, k.temperature);
                    let zf = to_vec(&z);
                    kept = Some(z);
                    zf
                } else {
                    let mut zf = vec![0f32; b * t * v];
                    for rows in &chunks {
                        let z =
                            response_logits(&self.policy, &part.select_rows(rows), k.temperature);
                        let ts = z.dims()[1];
                        let zs = to_vec(&z);
                        for (i, &r) in rows.iter().enumerate() {
                            for j in 0..ts {
                                zf[(r * t + j) * v..(r * t + j + 1) * v]
                                    .copy_from_slice(&zs[(i * ts + j) * v..(i * ts + j + 1) * v]);
                            }
                        }
                    }
                    zf
                };
                let si = StepInputs {
                    epoch: epoch as f64,
                    ..step_in
                };
                let lb = part.loss_batch(Some(zf), v, si);
                let mut out = self.loss.run(&lb)?;
                let l = out.loss;
                let d_logits: Vec<f32> = match out.d_logits.take() {
                    Some(Values::F32(d)) => d,
                    Some(d) => d.iter().map(|x| x as f32).collect(),
                    None => Vec::new(),
                };
                // The current log-probs: the fused kernel's, or the
                // same kernel's forward pass on the batch's logits.
                let logp = match (out.logp.take(), lb.tensors.get("logits")) {
                    (Some(lp), _) => lp,
                    (
                        None,
                        Some(batch::Tensor {
                            data: Values::F32(z),
                            ..
                        }),
                    ) => logits::forward(z, &part.tokens(), v).logp,
                    _ => Vec::new(),
                };
                drop(lb);
                // clip fraction on the current ratios
                let (mut cf, mut cn) = (0.0, 0.0);
                for (row, resp) in part.responses.iter().enumerate() {
                    for j in 0..resp.len() {
                        let ratio = (logp.get(row * t + j).map_or(f64::NAN, |&x| x as f64)
                            - part.old_logp[row][j])
                            .exp();
                        cf += f64::from(u8::from(ratio < 1.0 - eps.0 || ratio > 1.0 + eps.1));
                        cn += 1.0;
                    }
                }
                clip_fracs.push(cf / f64::max(cn, 1.0));
                for (name, x) in out.metrics {
                    monitors.entry(name).or_default().push(x);
                }
                if !l.is_finite()
                    || d_logits.len() != b * t * v
                    || d_logits.iter().any(|x| !x.is_finite())
                {
                    log.events.push(format!(
                        "non-finite loss or gradient (loss = {l}); step skipped"
                    ));
                    skip = true;
                    break 'epochs;
                }
                let mask = part.mask();
                // z_loss's mean runs over the minibatch's response tokens.
                let n_mask = mask.iter().sum::<f64>().max(1.0) as f32;
                let mut acc: Option<Vec<Tensor<2>>> = None;
                let mut zl_sum = 0.0;
                for rows in &chunks {
                    let (z, ts) = match kept.take() {
                        Some(z) => (z, t),
                        None => {
                            self.policy.require_grad();
                            let z = response_logits(
                                &self.policy,
                                &part.select_rows(rows),
                                k.temperature,
                            );
                            let ts = z.dims()[1];
                            (z, ts)
                        }
                    };
                    let bs = rows.len();
                    let mut ds = vec![0f32; bs * ts * v];
                    let mut ms = vec![0f32; bs * ts];
                    for (i, &r) in rows.iter().enumerate() {
                        for j in 0..ts {
                            ds[(i * ts + j) * v..(i * ts + j + 1) * v]
                                .copy_from_slice(&d_logits[(r * t + j) * v..(r * t + j + 1) * v]);
                            ms[i * ts + j] = mask[r * t + j] as f32;
                        }
                    }
                    let d = Tensor::<3>::from_data(TensorData::new(ds, [bs, ts, v]), &dev);
                    // The recipe's gradient w.r.t. the logits enters burn's
                    // autodiff as the linear term <z, D>, whose derivative is D.
                    let mut surrogate = (z.clone() * d).sum();
                    if setup.z_loss > 0.0 {
                        // model.z_loss: coef · mean over response tokens of logsumexp(z)².
                        let m = z.clone().max_dim(2).detach();
                        let lse = (z - m.clone()).exp().sum_dim(2).log() + m;
                        let mt = Tensor::<3>::from_data(TensorData::new(ms, [bs, ts, 1]), &dev);
                        let zl = (lse.powf_scalar(2.0) * mt).sum().div_scalar(n_mask);
                        zl_sum += to_vec(&zl).first().copied().unwrap_or(f32::NAN) as f64;
                        surrogate = surrogate + zl.mul_scalar(setup.z_loss);
                    }
                    let grads = surrogate.backward();
                    let g = optim::param_grads(&self.policy, &grads);
                    acc = Some(match acc {
                        None => g,
                        Some(a) => a.into_iter().zip(g).map(|(a, g)| a + g).collect(),
                    });
                }
                if setup.z_loss > 0.0 {
                    z_losses.push(zl_sum);
                }
                let Some(norm) = optim::step_with(
                    &mut self.policy,
                    &mut self.opt,
                    acc.unwrap_or_default(),
                    k.grad_clip,
                    k.lr,
                ) else {
                    log.events
                        .push("non-finite gradient norm; step skipped".into());
                    skip = true;
                    break 'epochs;
                };
                losses.push(l);
                norms.push(norm);
            }
        }
        self.policy.params = self
            .policy
            .params
            .iter()
            .map(|p| p.clone().detach())
            .collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let line = &mut log.line;
        if !losses.is_empty() {
            line.insert("loss".into(), json!(mean(&losses)));
            line.insert("grad_norm".into(), json!(mean(&norms)));
            line.insert("clip_frac".into(), json!(mean(&clip_fracs)));
            if !z_losses.is_empty() {
                line.insert("z_loss".into(), json_num(mean(&z_losses)));
            }
        }
        for (k, v) in monitors {
            line.insert(format!("monitor.{k}"), json_num(mean(&v)));
        }
        Ok(skip)
    }

    /// A guard's `rollback N`: weights, optimizer and the recipe's state go
    /// back to the newest checkpoint at or before step − N; the step
    /// counter, data cursor, RNG and guard changes go on.
    fn roll_back(&mut self, step: u64, n: u64, log: &mut StepLog) -> Result<()> {
        let target = step.saturating_sub(n);
        let cks = checkpoint::list(&self.ck_dir);
        let pick = cks
            .iter()
            .rev()
            .find(|(s, _)| *s <= target)
            .or(cks.first())
            .cloned();
        if let Some((s, dir)) = pick {
            let ck = checkpoint::load(&dir, &self.init)?;
            self.policy = Policy::new(self.setup.model.clone(), &ck.weights, &self.opts.device);
            self.opt
                .load(&ck.m, &ck.v, ck.state.adam_t, &self.opts.device);
            self.st.host_state = ck.state.host_state;
            self.st.guard_run.clear();
            log.events
                .push(format!("rolled back to the checkpoint of step {s}"));
            log.line.insert("rolled_back_to".into(), json!(s));
        }
        Ok(())
    }
}

/// A guard's assignment `target op= value`. A hyperparameter or a state
/// variable takes its new value; a computed value (a schedule) is scaled or
/// shifted from now on. Returns the event's text.
fn assign(
    base: &HashMap<String, f64>,
    st: &mut TrainState,
    target: &str,
    op: GuardOp,
    value: f64,
) -> String {
    if base.contains_key(target) || target.starts_with("state.") {
        let cur = current_params(base, st).get(target).copied().unwrap_or(0.0);
        let new = op.apply(cur, value);
        if let Some(s) = target.strip_prefix("state.") {
            st.host_state.insert(s.to_string(), bits(new));
        } else {
            st.overrides.insert(target.to_string(), bits(new));
        }
        format!("{target} = {new}")
    } else {
        let (a, b) = st
            .adjust
            .get(target)
            .map(|(a, b)| (unbits(*a), unbits(*b)))
            .unwrap_or((1.0, 0.0));
        let (a, b) = match op {
            GuardOp::Mul => (a * value, b * value),
            GuardOp::Div => (a / value, b / value),
            GuardOp::Add => (a, b + value),
            GuardOp::Sub => (a, b - value),
            GuardOp::Set => (0.0, value),
        };
        st.adjust.insert(target.to_string(), (bits(a), bits(b)));
        format!("{target} {} {value}", op.text())
    }
}

/// A dry run on a one-token batch: an input the runtime does not produce is
/// reported now, not after the warm start.
fn loss_accepts_the_runtime_batch(loss: &mut Loss, setup: &RunConfig) -> Result<()> {
    let tok = &setup.tok;
    let v = setup.model.vocab;
    let dry = Rollouts {
        prompts: vec![vec![tok.bos().unwrap_or(tok.eos())]],
        responses: vec![vec![tok.eos()]],
        old_logp: vec![vec![0.0]],
        entropy: vec![vec![0.0]],
        old_logits: vec![vec![0.0; v]],
        vocab: v,
        ref_logp: setup.reads_ref.then(|| vec![vec![0.0]]),
        group: vec![0],
        verdicts: vec![Default::default()],
        truncated: vec![false],
        source: vec![0.0],
        difficulty: vec![0.0],
    };
    let si = StepInputs {
        step: 1.0,
        total_steps: setup.steps as f64,
        epoch: 0.0,
    };
    match loss.run(&dry.loss_batch(Some(vec![0.0f32; v]), v, si)) {
        Err(e) if !e.diagnostics.is_empty() => Err(e),
        _ => Ok(()),
    }
}

/// The weights' layout (names and shapes) and the weights after the warm start (cached by the recipe's
/// model and task settings, the seed and the initial weights).
fn warm_weights(
    setup: &RunConfig,
    opts: &RunOptions,
    pretrained: Option<Weights>,
) -> Result<(Weights, Weights)> {
    let init = match (pretrained, &setup.init_path) {
        (Some(w), _) => w,
        (None, Some(p)) => {
            let seeded = Weights::init(&setup.model);
            let path = PathBuf::from(p);
            let bytes = fs::read(&path).map_err(|e| {
                Error::new(codes::WEIGHTS, format!("cannot read `{p}`: {e}"), "`model.init` names a safetensors file of weights, such as RUN_DIR/final.safetensors of an earlier run").at(p.clone())
            })?;
            checkpoint::weights_from_bytes(&bytes, "", &seeded, &path)?
        }
        (None, None) => Weights::init(&setup.model),
    };
    let layout = init.layout();
    if setup.warm_steps == 0 {
        return Ok((layout, init));
    }
    // The same FNV-1a as `fnv` over the weights' bytes, streamed (a real
    // model's bytes are not copied to be hashed).
    let init_hash = fnv_stream(init.data.iter().flatten().flat_map(|x| x.to_le_bytes()));
    let key = fnv(format!(
        "{:?}|{}|{}|{}|{}|{:?}|{init_hash:x}",
        setup.model, setup.task_desc, setup.warm_steps, setup.warm_lr, setup.warm_batch, setup.adam
    )
    .as_bytes());
    let cache_file = opts.cache.join(format!("warmstart-{key:016x}.safetensors"));
    let warm = if let Some(w) = fs::read(&cache_file)
        .ok()
        .and_then(|b| checkpoint::weights_from_bytes(&b, "", &layout, &cache_file).ok())
    {
        say(
            opts,
            &format!("warm start: reusing {}", cache_file.display()),
        );
        w
    } else {
        let mut policy = Policy::new(setup.model.clone(), &init, &opts.device);
        let bar = bar(opts, setup.warm_steps, "warm start");
        warm_start(setup, &mut policy, &setup.tok, &|s| bar.set_position(s));
        bar.finish_and_clear();
        let w = policy.weights();
        fs::create_dir_all(&opts.cache).map_err(|e| io_error("create", &opts.cache, e))?;
        checkpoint::write_weights_atomic(&cache_file, &[("", w.view())])?;
        w
    };
    Ok((layout, warm))
}

/// Rehearsal samples (DPH-RL, retain sets): correct responses of the
/// initial policy, sampled once from their own problem stream.
fn rehearsal_pool(setup: &RunConfig, reference: &Policy, opts: &RunOptions) -> Rollouts {
    let tok = &setup.tok;
    let problems: Vec<Problem> = (0..(4 * setup.prompts) as u64)
        .map(|i| setup.task.problem(REHEARSAL_STREAM, i))
        .collect();
    let mut rng = Rng::derive(setup.seed, REHEARSAL_STREAM, 0);
    let cfg = SampleConfig {
        temperature: 1.0,
        top_p: setup.top_p,
        max_tokens: setup.model.context / 2,
        eos: tok.eos(),
        keep_logits: setup.reads_old_logits,
        draw_limit: tok.vocab_size(),
    };
    let pool = rollouts(
        reference,
        &setup.task,
        &problems,
        setup.group,
        cfg,
        &mut rng,
        tok,
    );
    let rows: Vec<usize> = (0..pool.len())
        .filter(|&i| pool.verdicts[i].correct)
        .collect();
    say(
        opts,
        &format!(
            "rehearsal pool: {} correct responses of the initial policy",
            rows.len()
        ),
    );
    pool.select_rows(&rows)
}

/// A line for the user, unless the run is quiet.
fn say(opts: &RunOptions, line: &str) {
    if !opts.quiet {
        eprintln!("{line}");
    }
}

fn json_num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

fn write_line(f: &mut fs::File, line: &Map<String, Value>, path: &Path) -> Result<()> {
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    f.write_all(s.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(|e| {
            Error::new(
                codes::CHECKPOINT,
                format!("cannot write `{}`: {e}", path.display()),
                "check that the run directory is writable",
            )
            .at(path.display().to_string())
        })
}

/// Keep the first `n` lines of a file.
fn truncate_lines(path: &Path, n: u64) -> Result<()> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .take(n as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    checkpoint::write_atomic(path, kept.as_bytes())
}

/// Step-level host values at the next step (no batch statistics: those
/// guards read are NaN here; only schedules are used).
fn step_scalars(host: &HostProgram, st: &TrainState, total: u64) -> Result<HashMap<String, f64>> {
    let step = StepInputs {
        step: (st.step + 1) as f64,
        total_steps: total as f64,
        epoch: 0.0,
    };
    Rollouts::default().with_host_view(step, |view| host.scalars(view))
}

fn rewards_of(host: &HostProgram, r: &Rollouts, s: StepInputs) -> Result<Vec<f64>> {
    r.with_host_view(s, |view| {
        Ok(host
            .reward(view)?
            .unwrap_or_else(|| view.inputs["reward"].clone()))
    })
}

/// The next prompts of the training stream, in curriculum order.
fn next_problems(
    setup: &RunConfig,
    st: &mut TrainState,
    n: usize,
    max_difficulty: Option<f64>,
) -> Vec<Problem> {
    let window = if setup.order == "random" { n } else { 4 * n };
    let mut cands: Vec<(u64, Problem)> = Vec::new();
    let mut i = st.cursor;
    let mut tries = 0;
    while cands.len() < window && tries < 50 * window.max(1) {
        let p = setup.task.problem(TRAIN_STREAM, i);
        i += 1;
        tries += 1;
        if max_difficulty.is_some_and(|m| m.is_finite() && p.difficulty > m + 1e-12) {
            continue;
        }
        cands.push((i - 1, p));
    }
    let rate = |d: f64| {
        let b = ((d * 3.999) as usize).min(3);
        let (c, a) = st.pass_counts.get(b).copied().unwrap_or((0, 0));
        (c as f64 + 1.0) / (a as f64 + 2.0)
    };
    match setup.order.as_str() {
        // Easiest first: the highest online pass rate.
        "difficulty" => cands.sort_by(|a, b| {
            rate(b.1.difficulty)
                .total_cmp(&rate(a.1.difficulty))
                .then(a.0.cmp(&b.0))
        }),
        "reverse_difficulty" => cands.sort_by(|a, b| {
            rate(a.1.difficulty)
                .total_cmp(&rate(b.1.difficulty))
                .then(a.0.cmp(&b.0))
        }),
        _ => {}
    }
    cands.truncate(n);
    st.cursor = i;
    cands.into_iter().map(|c| c.1).collect()
}

fn bar(opts: &RunOptions, len: u64, what: &str) -> indicatif::ProgressBar {
    if opts.quiet || !opts.progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    b.set_style(style);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Branched groups: every continuation starts with a prefix of its first
    /// response, cut at one of that response's highest-entropy tokens, and
    /// carries the prefix's recorded log-probs.
    #[test]
    fn branching_cuts_at_high_entropy_tokens_and_keeps_prefixes() {
        let cfg = ModelConfig::small(88, 16, 1, 2, 48, false, 5);
        let policy = Policy::new(cfg.clone(), &Weights::init(&cfg), &Device::flex());
        let task = Task::Arithmetic {
            seed: 1,
            difficulty: 0.5,
            prm: Prm::Exact,
            natural: false,
        };
        let problems: Vec<Problem> = (0..2).map(|i| task.problem(TRAIN_STREAM, i)).collect();
        let tok = Tokenizer::Char(CharTokenizer::default());
        let sc = SampleConfig {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 10,
            eos: tok.eos(),
            keep_logits: true,
            draw_limit: usize::MAX,
        };
        let mut rng = Rng::new(9);
        let (first, samples, top_k) = (3, 2, 2);
        let r = branched_rollouts(
            &policy,
            &task,
            &problems,
            (first, samples, top_k),
            sc,
            &mut rng,
            &tok,
        );
        // With these seeds every first response has at least two tokens, so
        // each first response comes with its continuations: rows in blocks of
        // [continuation × samples, first].
        assert_eq!(r.len(), 2 * first * (1 + samples));
        let mut checked = 0;
        for block in (0..r.len()).collect::<Vec<_>>().chunks(samples + 1) {
            let fi = block[samples];
            let f = &r.responses[fi];
            let mut order: Vec<usize> = (1..f.len()).collect();
            order.sort_by(|&a, &b| {
                r.entropy[fi][b]
                    .total_cmp(&r.entropy[fi][a])
                    .then(a.cmp(&b))
            });
            order.truncate(top_k);
            for &c in &block[..samples] {
                assert_eq!(r.group[c], r.group[fi]);
                // The cut is one of the top-k positions: the continuation
                // shares exactly that prefix (and its recorded log-probs).
                let ok = order.iter().any(|&cut| {
                    r.responses[c].len() > cut
                        && r.responses[c][..cut] == f[..cut]
                        && r.old_logp[c][..cut] == r.old_logp[fi][..cut]
                });
                assert!(ok, "row {c} does not continue row {fi} at {order:?}");
                assert!(
                    r.responses[c].len() <= 10,
                    "continuation over the token limit"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * first * samples);
        assert_eq!(r.n_groups(), 2);
    }

    /// The sizing of docs/models.md: Qwen2.5-0.5B (494 M parameters, a
    /// 151,936-row vocabulary) with a KL reference, 8 prompts × 8 samples at
    /// 256 positions, does not fit 22 GB as one minibatch, nor as 4
    /// minibatches unsplit, and fits as 4 minibatches of 4 micro-batches.
    #[test]
    fn qwen_half_billion_fits_24_gb_with_minibatches_and_micro_batches() {
        let mut qwen = ModelConfig::small(151_936, 896, 24, 14, 256, false, 0);
        qwen.kv_heads = 2;
        qwen.head_dim = 64;
        qwen.hidden = 4864;
        qwen.qkv_bias = true;
        qwen.tied = true;
        let params = qwen.parameters();
        assert!((params as f64 - 494.0e6).abs() < 0.5e6, "{params}");
        let gb = |m: usize, k: usize| step_memory(&qwen, 64, m, k, true) as f64 / 1e9;
        assert!(gb(1, 1) > 60.0, "{}", gb(1, 1));
        assert!(gb(4, 1) > 22.0, "{}", gb(4, 1));
        assert!((gb(4, 4) - 17.09).abs() < 0.05, "{}", gb(4, 4));
        // No reference: 4 bytes a parameter fewer.
        let without = step_memory(&qwen, 64, 4, 4, false) as f64 / 1e9;
        assert!((gb(4, 4) - without - 4.0 * params as f64 / 1e9).abs() < 1e-6);
        assert_eq!(
            micro_chunks(12, 3),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11]]
        );
        assert_eq!(micro_chunks(2, 4), vec![vec![0], vec![1]]);
        assert_eq!(micro_chunks(5, 2), vec![vec![0, 1], vec![2, 3, 4]]);
    }
}
