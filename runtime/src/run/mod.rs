//! A run: [`run`] sets up a [`Trainer`] (the run directory, the loss and
//! host programs checked on a one-token batch, the warm start, the roles,
//! the state fresh or from a checkpoint), evaluates after the warm start,
//! then takes one [`Trainer::step`] per step: prompts in curriculum order →
//! group rollouts → rewards and guards (host code) → roles fill their
//! columns → the update through the [`update::LossStep`] seam → metrics,
//! evaluation, checkpoints.
//!
//! May import every other room of the runtime (`env`, `batch`, `rollout`,
//! `roles`, `settings`) and `keel-model`; nothing imports it but `report`
//! (for the run directory's layout, [`dir`]) and the CLI.

pub mod checkpoint;
pub mod config;
pub mod curriculum;
pub mod dir;
pub mod eval;
pub mod guards;
pub mod host;
pub mod update;
pub mod warm;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use keel_compiler::{Checked, CheckedGuard};
use keel_model::optim::AdamW;
use keel_model::rng::Rng;
use keel_model::transformer::{Params, Transformer, Weights};
use serde_json::{Map, Value, json};

use self::checkpoint::{TrainState, bits, unbits};
use self::config::RunConfig;
use self::dir::{RunDir, io_error, metric, write_line};
use self::guards::{Decision, current_params};
use self::host::HostProgram;
use self::update::{CpuLoss, LossStep, UpdatePlan};
use crate::batch::{Rollouts, StepInputs};
use crate::env::judge::{JudgeConfig, Judges, Request};
use crate::error::{Coded, Error, Result, codes};
use crate::roles::critic::Critic;
use crate::roles::reference::Reference;
use crate::roles::teacher::Teacher;

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
    /// Trajectories a step written to `samples.jsonl` (0: none).
    pub log_samples: usize,
    /// Set (by the CLI's Ctrl-C handler) to stop after the step in
    /// progress, with a checkpoint.
    pub interrupt: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The external judge (`--judge`), where one is given.
    pub judge: Option<JudgeConfig>,
}

/// What a finished run reports.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: u64,
    pub pass_at_1_warm: Option<f64>,
    pub pass_at_1_final: Option<f64>,
    pub pass_at_k_final: Option<f64>,
    pub warm_s: f64,
    /// The run took warm-start steps (`task.warmup_steps` > 0).
    pub warm_start: bool,
    pub rl_s: f64,
    pub stopped_by_guard: bool,
    /// Stopped by an interrupt (Ctrl-C) after a step, with a checkpoint.
    pub interrupted: bool,
    pub events: Vec<String>,
}

/// The run directory's description of the run, for `--resume`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RunFile {
    pub recipe_path: String,
    pub recipe: Option<String>,
    pub set: Vec<(String, String)>,
    pub fingerprint: String,
    /// The external judge the run started with (`--resume` uses it).
    #[serde(default)]
    pub judge: Option<JudgeConfig>,
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
    let interrupted = || opts.interrupt.load(std::sync::atomic::Ordering::SeqCst);
    while t.st.step < t.setup.steps && !stop && !interrupted() {
        stop = t.step(&bar)?;
    }
    bar.finish_and_clear();
    t.summary.steps = t.st.step;
    t.summary.rl_s = rl_start.elapsed().as_secs_f64();
    if t.st.step < t.setup.steps && !stop {
        // Interrupted: the last finished step's checkpoint, to resume from.
        if checkpoint::list(&t.dir.checkpoints())
            .last()
            .is_none_or(|(s, _)| *s != t.st.step)
        {
            t.save()?;
        }
        t.summary.interrupted = true;
        return Ok(t.summary);
    }
    t.write_final()?;
    Ok(t.summary)
}

/// What the schedules say for one step, after guard adjustments.
struct Knobs {
    scalars: HashMap<String, f64>,
    lr: f64,
    temperature: f64,
    max_tokens: usize,
    grad_clip: f64,
    /// The critic's learning rate (`critic.lr`, after guard adjustments).
    critic_lr: f64,
    max_difficulty: Option<f64>,
}

impl Knobs {
    fn get(&self, name: &str, or: f64) -> f64 {
        self.scalars.get(name).copied().unwrap_or(or)
    }
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
    loss: Box<dyn LossStep>,
    host: HostProgram,
    guards: Vec<CheckedGuard>,
    /// The weights' names and shapes (checkpoints are read against them).
    init: Weights,
    /// The frozen policy after the warm start (`ref_logp`, rehearsal), where
    /// the recipe reads it.
    reference: Option<Reference>,
    /// Correct responses of the initial policy, when the recipe reads `source`.
    rehearsal: Option<Rollouts>,
    /// The value model, where the recipe reads `values` or `vpred`.
    critic: Option<Critic>,
    /// The frozen teacher, where the recipe reads `teacher_logits` or
    /// `teacher_logp`.
    teacher: Option<Teacher>,
    /// The external judges (`--judge`), where the recipe reads `judge`.
    judges: Option<Judges>,
    /// Rows sent to the judge so far in this step (its requests' `ROW`,
    /// counted across dynamic-sampling rounds).
    judged: usize,
    reads_judge: bool,
    policy: Transformer,
    opt: AdamW,
    st: TrainState,
    dir: RunDir,
    metrics_file: fs::File,
    /// `samples.jsonl`, where `--log-samples` asks for it.
    samples_file: Option<fs::File>,
    /// Progress lines without a terminal.
    log_lines: LogLines,
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
        let mut setup = config::run_config(checked, index)?;
        let pretrained = setup.pretrained_weights.take();
        let mut loss: Box<dyn LossStep> =
            Box::new(CpuLoss::compile(checked, index, &|n| setup.produces(n))?);
        let v = setup.model.vocab;
        let tok = &setup.tok;
        loss.accepts(
            &Rollouts::dry(tok.bos().unwrap_or(tok.eos()), tok.eos(), v),
            StepInputs {
                step: 1.0,
                total_steps: setup.steps as f64,
                epoch: 0.0,
            },
        )?;
        let reads_judge = checked
            .recipes
            .get(index)
            .is_some_and(|r| r.inputs.contains_key("judge"));
        check_judge(checked, index, &setup, opts, reads_judge)?;
        // The run directory exists once the recipe passed every check: a
        // run refused before training leaves nothing behind.
        let dir = RunDir::new(&opts.out);
        fs::create_dir_all(&dir.root).map_err(|e| io_error("create", &dir.root, e))?;
        if !opts.resume {
            let json = serde_json::to_vec_pretty(&run_file).map_err(|e| {
                Error::new(codes::CHECKPOINT, e.to_string(), "this is a runtime bug")
            })?;
            keel_model::io::write_atomic(&dir.run_file(), &json).coded()?;
        }
        let base_params = loss.params();
        let guards = checked
            .recipes
            .get(index)
            .map(|r| r.guards.clone())
            .unwrap_or_default();
        let mut summary = Summary::default();
        let t0 = Instant::now();
        let (init, warm) = warm::warm_weights(&setup, opts, pretrained)?;
        summary.warm_s = t0.elapsed().as_secs_f64();
        summary.warm_start = setup.warm_steps > 0;
        let policy = Transformer::new(setup.model.clone(), &warm, &opts.device);
        drop(warm);
        let reference = (setup.reads_ref || setup.reads_source || setup.reads_novelty)
            .then(|| Reference::of(&policy));
        let rehearsal = match (&reference, setup.reads_source) {
            (Some(r), true) => Some(rehearsal_pool(&setup, r, opts)),
            _ => None,
        };
        // The critic starts from the policy's trunk after the warm start.
        let critic = setup.critic.map(|cfg| {
            Critic::new(
                &setup.model,
                &policy.weights(),
                cfg,
                setup.adam,
                setup.seed,
                &opts.device,
            )
        });
        let teacher = teacher_of(&mut setup, opts)?;
        let (policy, opt, st, critic) =
            restore(&setup, opts, &dir, &init, &base_params, policy, critic)?;
        let judges = match (&opts.judge, reads_judge) {
            (Some(cfg), true) => Some(Judges::open(cfg.clone(), &dir.judge_record(), opts.resume)?),
            _ => None,
        };
        let metrics_file = append(&dir.metrics())?;
        let samples_file = match opts.log_samples {
            0 => None,
            _ => Some(append(&dir.samples())?),
        };
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
            critic,
            teacher,
            judges,
            judged: 0,
            reads_judge,
            policy,
            opt,
            st,
            dir,
            metrics_file,
            samples_file,
            log_lines: LogLines::new(opts),
            summary,
        })
    }

    fn save(&self) -> Result<PathBuf> {
        let p = &self.policy;
        let critic = self.critic.as_ref().map(|c| {
            let m = &c.model;
            (
                m.view(),
                Params::live(&m.names, &m.shapes, &c.opt.m),
                Params::live(&m.names, &m.shapes, &c.opt.v),
            )
        });
        checkpoint::save(
            &self.dir.checkpoints(),
            &self.st,
            (
                p.view(),
                Params::live(&p.names, &p.shapes, &self.opt.m),
                Params::live(&p.names, &p.shapes, &self.opt.v),
            ),
            critic,
            self.setup.ck_keep,
        )
    }

    fn write_line(&mut self, line: &Map<String, Value>) -> Result<()> {
        write_line(&mut self.metrics_file, line, &self.dir.metrics())?;
        self.st.metrics_lines += 1;
        Ok(())
    }

    /// The final weights: the last step's checkpoint holds them already, so
    /// `final.safetensors` is a hard link to it where the file system
    /// allows, else written from the policy's tensors, one at a time. A
    /// pretrained model goes back in its users' format too: a directory
    /// transformers loads (config.json, model.safetensors).
    fn write_final(&self) -> Result<()> {
        let last = self.policy.view();
        let final_path = self.dir.final_weights();
        let linked = checkpoint::list(&self.dir.checkpoints())
            .pop()
            .filter(|(step, _)| *step == self.st.step)
            .is_some_and(|(_, dir)| {
                let _ = fs::remove_file(&final_path);
                fs::hard_link(dir.join("weights.safetensors"), &final_path).is_ok()
            });
        if !linked {
            keel_model::io::write_weights_atomic(&final_path, &[("", last)]).coded()?;
        }
        if let Some(meta) = &self.setup.pretrained {
            let setup = &self.setup;
            let tokenizer = setup
                .tok
                .to_json()
                .map(|json| keel_model::hf::TokenizerFiles {
                    json,
                    bos: setup.special.0.clone(),
                    eos: setup.special.1.clone(),
                    add_bos: setup.tok.bos().is_some(),
                    chat_template: setup.chat_source.clone(),
                });
            keel_model::hf::write_dir(
                &self.dir.final_hf(),
                &setup.model,
                last,
                meta,
                tokenizer.as_ref(),
            )
            .coded()?;
        }
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
        let (p1, pk) = eval::evaluate(setup, &self.policy, k.temperature, k.max_tokens, 0);
        self.summary.pass_at_1_warm = Some(p1);
        let mut line = Map::new();
        line.insert(metric::STEP.into(), json!(0));
        line.insert(metric::PHASE.into(), json!("warm_start"));
        line.insert(metric::PASS_AT_1.into(), json!(p1));
        line.insert(metric::pass_at(setup.eval_k), json!(pk));
        line.insert(metric::WARM_S.into(), json!(self.summary.warm_s));
        // A distillation run measures its teacher once, on the same problems.
        if let Some(teacher) = &self.teacher {
            let (t1, _) = eval::evaluate(setup, &teacher.model, k.temperature, k.max_tokens, 0);
            line.insert(metric::TEACHER_PASS_AT_1.into(), json!(t1));
            say(self.opts, &format!("teacher: pass@1 {t1:.3}"));
        }
        let when = if setup.warm_steps > 0 {
            format!("after warm start ({:.1}s)", self.summary.warm_s)
        } else {
            "before RL (no warm start)".to_string()
        };
        say(
            self.opts,
            &format!("{when}: pass@1 {p1:.3}, pass@{} {pk:.3}", setup.eval_k),
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
        let n_tokens: usize = batch.rows.iter().map(|r| r.response.len()).sum();
        let n_samples = batch.len();
        let mut log = StepLog {
            line: Map::new(),
            events: Vec::new(),
        };
        log.line.insert(metric::STEP.into(), json!(step));
        if self.reads_judge {
            let skipped = batch.rows.iter().filter(|r| r.judge_skipped).count();
            log.line
                .insert(metric::JUDGE_SKIPPED.into(), json!(skipped));
        }
        let (mut d, rewards) = self.score_and_guard(&batch, step_in, n_tokens, &mut log)?;
        self.log_samples(&batch, &rewards, step)?;
        log.line.insert(metric::LR.into(), json!(k.lr));
        let t_train = Instant::now();
        self.add_rehearsal(&mut batch, step, k.temperature);
        if !d.skip && d.rollback.is_none() {
            d.skip = self.update(&batch, &k, step_in, &mut log)?;
        }
        let train_s = t_train.elapsed().as_secs_f64();
        if d.skip {
            log.line.insert(metric::SKIPPED.into(), json!(true));
        }
        self.st.step = step;
        if let Some(n) = d.rollback {
            self.roll_back(step, n, &mut log)?;
        }
        let last = step == self.setup.steps || d.stop;
        if (self.setup.eval_every > 0 && step.is_multiple_of(self.setup.eval_every)) || last {
            self.evaluate(&k, step, last, &mut log.line);
        }
        let StepLog { mut line, events } = log;
        if !events.is_empty() {
            line.insert(metric::EVENTS.into(), json!(events));
            for e in &events {
                bar.println(format!("step {step}: {e}"));
            }
            self.summary
                .events
                .extend(events.iter().map(|e| format!("step {step}: {e}")));
        }
        line.insert(metric::SAMPLES.into(), json!(n_samples));
        line.insert(metric::TOKENS.into(), json!(n_tokens));
        line.insert(metric::ROLLOUT_S.into(), json!(rollout_s));
        line.insert(metric::TRAIN_S.into(), json!(train_s));
        line.insert(
            metric::TOKENS_PER_S.into(),
            json!(n_tokens as f64 / (rollout_s + train_s).max(1e-9)),
        );
        self.write_line(&line)?;
        self.st.adam_t = self.opt.t;
        self.st.critic_adam_t = self.critic.as_ref().map_or(0, |c| c.opt.t);
        self.report_progress(bar, step, last, &line);
        if step.is_multiple_of(self.setup.ck_every) || last {
            self.save()?;
        }
        Ok(d.stop)
    }

    /// Held-out evaluation at `step` into the metrics line (and, at the
    /// last step, the summary).
    fn evaluate(&mut self, k: &Knobs, step: u64, last: bool, line: &mut Map<String, Value>) {
        let (p1, pk) = eval::evaluate(&self.setup, &self.policy, k.temperature, k.max_tokens, step);
        line.insert(metric::PASS_AT_1.into(), json!(p1));
        line.insert(metric::pass_at(self.setup.eval_k), json!(pk));
        if last {
            self.summary.pass_at_1_final = Some(p1);
            self.summary.pass_at_k_final = Some(pk);
        }
    }

    /// The progress bar's position and message (or, without a bar, a line
    /// every ten steps).
    fn report_progress(
        &self,
        bar: &indicatif::ProgressBar,
        step: u64,
        last: bool,
        line: &Map<String, Value>,
    ) {
        bar.set_position(step);
        let num = |key: &str| line.get(key).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        bar.set_message(format!(
            "reward {:.3} entropy {:.3}",
            num(metric::REWARD),
            num(metric::ENTROPY)
        ));
        if self.log_lines.due(step.is_multiple_of(10) || last) {
            eprintln!("step {step}/{}: {}", self.setup.steps, bar.message());
        }
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
        // A value the recipe does not compute is its setting (the schema's
        // default where it writes none).
        let settings = crate::settings::Settings {
            checked: self.checked,
            index: self.index,
        };
        let adjusted = |name: &str| -> f64 {
            let or = name
                .split_once('.')
                .map_or(f64::NAN, |(sec, key)| settings.num(sec, key));
            let v = scalars.get(name).copied().unwrap_or(or);
            match self.st.adjust.get(name) {
                Some((a, b)) => v * unbits(*a) + unbits(*b),
                None => v,
            }
        };
        Ok(Knobs {
            lr: adjusted("optimizer.lr"),
            temperature: adjusted("rollout.temperature"),
            max_tokens: adjusted("rollout.max_tokens").max(1.0) as usize,
            grad_clip: adjusted("optimizer.grad_clip"),
            critic_lr: adjusted("critic.lr"),
            max_difficulty: scalars.get("curriculum.max_difficulty").copied(),
            scalars,
        })
    }

    /// The step's rollouts: prompts in curriculum order, sampled in groups
    /// (or branched), refilled by dynamic sampling, with the reference
    /// policy's log-probs when the recipe reads them.
    fn rollouts(&mut self, k: &Knobs, step_in: StepInputs) -> Result<Rollouts> {
        let mut rng = Rng(self.st.rng);
        let model = self.policy.detached();
        let mut batch = Rollouts::default();
        let mut rounds = 0;
        self.judged = 0;
        loop {
            let want = self.setup.prompts.saturating_sub(batch.n_groups());
            let problems =
                curriculum::next_problems(&self.setup, &mut self.st, want, k.max_difficulty);
            let sampler = self.setup.sampler(
                &model,
                k.temperature,
                k.max_tokens,
                self.setup.reads_old_logits,
            );
            let branch_first = k.get("rollout.branch_first", 0.0);
            let mut r = if !self.setup.budgets.is_empty() {
                sampler.budgeted(&problems, self.setup.group, &self.setup.budgets, &mut rng)
            } else if branch_first >= 1.0 {
                let b = (
                    branch_first as usize,
                    k.get("rollout.branch_samples", 3.0).max(0.0) as usize,
                    k.get("rollout.branch_top_k", 20.0).max(1.0) as usize,
                );
                sampler.branched(&problems, b, &mut rng)
            } else {
                sampler.groups(&problems, self.setup.group, &mut rng)
            };
            self.judge(&mut r, step_in.step as u64)?;
            if let Some(reference) = self.reference.as_ref().filter(|_| self.setup.reads_novelty) {
                reference.fill_novelty(&mut r);
            }
            if self.setup.dynamic_sampling {
                r = groups_with_signal(&self.host, r, step_in)?;
            }
            batch.extend(r);
            rounds += 1;
            let setup = &self.setup;
            if !setup.dynamic_sampling || batch.n_groups() >= setup.prompts || rounds >= 4 {
                break;
            }
        }
        self.st.rng = rng.0;
        batch.assign_bundles(self.setup.bundle);
        curriculum::count_passes(&mut self.st, &batch);
        if let Some(reference) = &self.reference
            && self.setup.reads_ref
            && !batch.is_empty()
        {
            reference.fill(&mut batch, k.temperature);
        }
        if let Some(critic) = &self.critic {
            critic.fill(&mut batch);
        }
        if let Some(teacher) = &self.teacher {
            teacher.fill(&mut batch, k.temperature);
        }
        Ok(batch)
    }

    /// The external judge's scores of a round of rollouts of step `step`
    /// (requests numbered across the step's rounds); without one, the rows
    /// keep the task's rule judge.
    fn judge(&mut self, r: &mut Rollouts, step: u64) -> Result<()> {
        let offset = self.judged;
        self.judged += r.len();
        let Some(judges) = self.judges.as_mut() else {
            return Ok(());
        };
        let tok = &self.setup.tok;
        let requests: Vec<Request> = r
            .rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let p = &row.problem;
                Request {
                    id: format!("{step}/{}", offset + i),
                    prompt: match &p.messages {
                        Some(m) => serde_json::Value::Array(m.clone()),
                        None => json!(p.prompt),
                    },
                    response: tok.decode(&row.response),
                    answer: Some(p.answer.clone()),
                    data_source: p.data_source.clone(),
                    extra_info: p.extra_info.clone(),
                }
            })
            .collect();
        let scores = judges.score(&requests)?;
        for (row, s) in r.rows.iter_mut().zip(scores) {
            row.judge = s.score;
            row.judge_skipped = s.skipped;
        }
        Ok(())
    }

    /// Rewards and the batch's metrics, the recipe's state updates, and the
    /// guards: which fired, and what they change or decide.
    fn score_and_guard(
        &mut self,
        batch: &Rollouts,
        step_in: StepInputs,
        n_tokens: usize,
        log: &mut StepLog,
    ) -> Result<(Decision, Vec<f64>)> {
        let mut d = Decision {
            skip: batch.is_empty(),
            ..Default::default()
        };
        if batch.is_empty() {
            log.events.push(
                "no group with differing rewards after dynamic sampling; step skipped".into(),
            );
            return Ok((d, Vec::new()));
        }
        let rewards = rewards_of(&self.host, batch, step_in)?;
        batch_metrics(batch, &rewards, n_tokens, &mut log.line);
        let hs = batch.with_host_view(step_in, |view| self.host.scalars(view))?;
        // state updates
        for (k, v) in &hs {
            if let Some(s) = k.strip_prefix("state.") {
                self.st.host_state.insert(s.to_string(), bits(*v));
            }
        }
        let events = guards::apply(&self.guards, &hs, &self.base_params, &mut self.st, &mut d);
        if d.stop {
            self.summary.stopped_by_guard = true;
        }
        log.events.extend(events);
        Ok((d, rewards))
    }

    /// `--log-samples N`: the step's first N trajectories into
    /// `samples.jsonl` (the step, the group, the prompt as the model read
    /// it, the reward, correctness, and the turns: here the policy's one).
    fn log_samples(&mut self, batch: &Rollouts, rewards: &[f64], step: u64) -> Result<()> {
        let Some(f) = self.samples_file.as_mut() else {
            return Ok(());
        };
        let tok = &self.setup.tok;
        for (row, reward) in batch.rows.iter().zip(rewards).take(self.opts.log_samples) {
            let mut line = Map::new();
            line.insert("step".into(), json!(step));
            line.insert("group".into(), json!(row.group));
            line.insert("prompt".into(), json!(tok.decode(&row.prompt)));
            line.insert("reward".into(), dir::json_num(*reward));
            line.insert("correct".into(), json!(row.verdict.correct));
            line.insert(
                "turns".into(),
                json!([{"role": "policy", "text": tok.decode(&row.response), "trained": true}]),
            );
            write_line(f, &line, &self.dir.samples())?;
            self.st.samples_lines += 1;
        }
        Ok(())
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
        for row in &mut r.rows {
            row.group = 0;
            row.source = 1.0;
        }
        r.difficulty = vec![0.0];
        if let Some(reference) = &self.reference
            && self.setup.reads_ref
        {
            reference.fill(&mut r, temperature);
        }
        if let Some(critic) = &self.critic {
            critic.fill(&mut r);
        }
        if let Some(teacher) = &self.teacher {
            teacher.fill(&mut r, temperature);
        }
        batch.extend(r);
    }

    /// The update (`update::update`) with the step's knobs; its metrics
    /// into the line. Returns whether the step was skipped (a non-finite
    /// loss or gradient).
    fn update(
        &mut self,
        batch: &Rollouts,
        k: &Knobs,
        step_in: StepInputs,
        log: &mut StepLog,
    ) -> Result<bool> {
        let setup = &self.setup;
        let param = |name: &str| self.host_params.get(name).copied().unwrap_or(0.2);
        let plan = UpdatePlan {
            temperature: k.temperature,
            lr: k.lr,
            grad_clip: k.grad_clip,
            epochs: setup.epochs,
            minibatches: setup.minibatches,
            micro_batches: setup.micro_batches,
            z_loss: setup.z_loss,
            eps: (param("clip.eps_low"), param("clip.eps_high")),
            critic_lr: k.critic_lr,
            // `critic.warmup`: the first steps train the critic alone.
            actor: self
                .critic
                .as_ref()
                .is_none_or(|c| step_in.step as u64 > c.cfg.warmup),
        };
        let models = update::Models {
            policy: &mut self.policy,
            opt: &mut self.opt,
            critic: self.critic.as_mut(),
            teacher: self.teacher.as_ref(),
        };
        let mut out = update::update(models, self.loss.as_mut(), batch, &plan, step_in)?;
        let skipped = out.skipped.take();
        out.write(&mut log.line);
        Ok(match skipped {
            Some(why) => {
                log.events.push(why);
                true
            }
            None => false,
        })
    }

    /// A guard's `rollback N`: weights, optimizer and the recipe's state go
    /// back to the newest checkpoint at or before step − N; the step
    /// counter, data cursor, RNG and guard changes go on.
    fn roll_back(&mut self, step: u64, n: u64, log: &mut StepLog) -> Result<()> {
        let target = step.saturating_sub(n);
        let cks = checkpoint::list(&self.dir.checkpoints());
        let pick = cks
            .iter()
            .rev()
            .find(|(s, _)| *s <= target)
            .or(cks.first())
            .cloned();
        if let Some((s, dir)) = pick {
            let ck = checkpoint::load(&dir, &self.init)?;
            self.policy =
                Transformer::new(self.setup.model.clone(), &ck.weights, &self.opts.device);
            self.opt
                .load(&ck.m, &ck.v, ck.state.adam_t, &self.opts.device);
            if let Some(c) = self.critic.take() {
                self.critic = Some(restore_critic(
                    &self.setup,
                    &dir,
                    c,
                    ck.state.critic_adam_t,
                    &self.opts.device,
                )?);
            }
            self.st.host_state = ck.state.host_state;
            self.st.guard_run.clear();
            log.events
                .push(format!("rolled back to the checkpoint of step {s}"));
            log.line.insert(metric::ROLLED_BACK_TO.into(), json!(s));
        }
        Ok(())
    }
}

/// The frozen teacher of a distillation recipe: a checkpoint's weights
/// (taken from the setup), or a built-in one after its own warm start
/// (cached like the policy's); with its held-out pass@1 reported.
fn teacher_of(setup: &mut RunConfig, opts: &RunOptions) -> Result<Option<Teacher>> {
    let Some(spec) = setup.teacher.as_mut() else {
        return Ok(None);
    };
    let (model_cfg, steps, given) = (spec.model.clone(), spec.warm_steps, spec.weights.take());
    let (reads_logits, reads_logp) = (spec.reads_logits, spec.reads_logp);
    let weights = match given {
        Some(w) => w,
        None => warm::teacher_weights(setup, &model_cfg, steps, opts)?,
    };
    let model = Transformer::new(model_cfg, &weights, &opts.device);
    drop(weights);
    Ok(Some(Teacher {
        model,
        reads_logits,
        reads_logp,
    }))
}

/// The critic `c` as the checkpoint in `dir` holds it (weights, moments,
/// and its update count `t`).
fn restore_critic(
    setup: &RunConfig,
    dir: &std::path::Path,
    c: Critic,
    t: u64,
    device: &Device,
) -> Result<Critic> {
    let (w, m, v) = checkpoint::load_critic(dir, &c.layout())?;
    let mut c = Critic::from_weights(&setup.model, &w, c.cfg, c.opt.cfg, device);
    c.opt.load(&m, &v, t, device);
    Ok(c)
}

/// The state a run starts a step from.
type Restored = (Transformer, AdamW, TrainState, Option<Critic>);

/// The policy, its optimizer, the training state and the critic: from the
/// newest checkpoint (`--resume`, `metrics.jsonl` cut back to it), or fresh
/// (the run directory's old metrics and checkpoints removed).
fn restore(
    setup: &RunConfig,
    opts: &RunOptions,
    dir: &RunDir,
    init: &Weights,
    base_params: &HashMap<String, f64>,
    policy: Transformer,
    critic: Option<Critic>,
) -> Result<Restored> {
    let mut opt = AdamW::new(setup.adam, &policy.params, &opts.device);
    let mut st = TrainState {
        rng: Rng::new(setup.seed ^ 0xA11CE).0,
        pass_counts: vec![(0, 0); 4],
        ..Default::default()
    };
    for (name, v) in base_params {
        if let Some(s) = name.strip_prefix("state.") {
            st.host_state.insert(s.to_string(), bits(*v));
        }
    }
    let metrics_path = dir.metrics();
    if !opts.resume {
        let _ = fs::remove_file(&metrics_path);
        let _ = fs::remove_file(dir.samples());
        let _ = fs::remove_dir_all(dir.checkpoints());
        return Ok((policy, opt, st, critic));
    }
    let Some((_, ck_dir)) = checkpoint::list(&dir.checkpoints()).pop() else {
        return Err(Error::new(
            codes::CHECKPOINT,
            format!("`{}` has no checkpoint to resume from", opts.out.display()),
            "start the run again without --resume",
        )
        .at(opts.out.display().to_string()));
    };
    let ck = checkpoint::load(&ck_dir, init)?;
    let policy = Transformer::new(setup.model.clone(), &ck.weights, &opts.device);
    opt.load(&ck.m, &ck.v, ck.state.adam_t, &opts.device);
    let critic = match critic {
        Some(c) => Some(restore_critic(
            setup,
            &ck_dir,
            c,
            ck.state.critic_adam_t,
            &opts.device,
        )?),
        None => None,
    };
    st = ck.state;
    dir::truncate_lines(&metrics_path, st.metrics_lines)?;
    if dir.samples().exists() {
        dir::truncate_lines(&dir.samples(), st.samples_lines)?;
    }
    say(
        opts,
        &format!("resuming {} at step {}", opts.out.display(), st.step),
    );
    Ok((policy, opt, st, critic))
}

/// The batch's metrics before the update: rewards, correctness, format,
/// entropy, length, and the k3 estimate of KL(π‖π_ref) where the
/// reference filled `ref_logp`.
fn batch_metrics(
    batch: &Rollouts,
    rewards: &[f64],
    n_tokens: usize,
    line: &mut Map<String, Value>,
) {
    let n = batch.len() as f64;
    let share = |f: &dyn Fn(&crate::batch::Row) -> bool| {
        batch.rows.iter().filter(|r| f(r)).count() as f64 / n
    };
    line.insert(
        metric::REWARD.into(),
        json!(rewards.iter().sum::<f64>() / n),
    );
    line.insert(metric::CORRECT.into(), json!(share(&|r| r.verdict.correct)));
    line.insert(
        metric::FORMAT_OK.into(),
        json!(share(&|r| r.verdict.format_ok)),
    );
    let ent: Vec<f64> = batch
        .rows
        .iter()
        .flat_map(|r| r.entropy.iter().copied())
        .collect();
    line.insert(
        metric::ENTROPY.into(),
        json!(ent.iter().sum::<f64>() / ent.len().max(1) as f64),
    );
    line.insert(metric::RESPONSE_LEN.into(), json!(n_tokens as f64 / n));
    if batch.rows.iter().any(|r| r.extra.contains_key("ref_logp")) {
        let (mut s, mut c) = (0.0, 0.0);
        for row in &batch.rows {
            let rl = row.extra.get("ref_logp").map_or(&[][..], Vec::as_slice);
            for (a, b) in row.old_logp.iter().zip(rl) {
                let d = b - a;
                s += d.exp() - d - 1.0;
                c += 1.0;
            }
        }
        line.insert(metric::KL_REF.into(), json!(s / f64::max(c, 1.0)));
    }
}

/// Dynamic sampling: keep the groups whose rewards differ (they carry a
/// signal).
fn groups_with_signal(host: &HostProgram, r: Rollouts, step_in: StepInputs) -> Result<Rollouts> {
    let rewards = rewards_of(host, &r, step_in)?;
    let keep: Vec<usize> = (0..r.n_groups())
        .filter(|&g| {
            let v: Vec<f64> = r.rows_of(g).into_iter().map(|i| rewards[i]).collect();
            v.iter().any(|x| (x - v[0]).abs() > 1e-12)
        })
        .collect();
    Ok(r.select_groups(&keep))
}

/// A recipe that reads `judge` needs `--judge` unless its task has a rule
/// judge (E0706, at the read, naming the flag); `--judge` for a recipe that
/// does not read it is said and ignored.
fn check_judge(
    checked: &Checked,
    index: usize,
    setup: &RunConfig,
    opts: &RunOptions,
    reads_judge: bool,
) -> Result<()> {
    if !reads_judge {
        if opts.judge.is_some() {
            say(
                opts,
                "note: the recipe does not read `judge`; --judge is not used",
            );
        }
        return Ok(());
    }
    if opts.judge.is_some() || setup.env.has_rule_judge() {
        return Ok(());
    }
    Err(config::refused_read(
        checked.recipes.get(index),
        "judge",
        format!(
            "the recipe reads `judge`, but no judge was given and the task ({}) has no rule judge",
            setup.env.describe()
        ),
        "run with --judge 'COMMAND' (a program that scores one JSON request a line; docs/runtime.md)",
    ))
}

/// Rehearsal samples (DPH-RL, retain sets): correct responses of the
/// initial policy, sampled once from their own problem stream.
fn rehearsal_pool(setup: &RunConfig, reference: &Reference, opts: &RunOptions) -> Rollouts {
    let sampler = setup.sampler(
        &reference.model,
        1.0,
        setup.model.context / 2,
        setup.reads_old_logits,
    );
    let pool = reference.rehearsal_pool(sampler, setup.prompts, setup.group, setup.seed);
    say(
        opts,
        &format!(
            "rehearsal pool: {} correct responses of the initial policy",
            pool.len()
        ),
    );
    pool
}

/// Progress lines for a log (no terminal, not quiet): at the points a
/// caller marks (every ten steps, the last), and whenever ten seconds have
/// passed without one, so a slow step or a long warm start is not silent.
pub(crate) struct LogLines {
    on: bool,
    last: std::cell::Cell<Instant>,
}

impl LogLines {
    pub(crate) fn new(opts: &RunOptions) -> LogLines {
        LogLines {
            on: !opts.progress && !opts.quiet,
            last: std::cell::Cell::new(Instant::now()),
        }
    }

    /// Whether to print a line now (`marked`: a point that always gets one).
    pub(crate) fn due(&self, marked: bool) -> bool {
        if !self.on || !(marked || self.last.get().elapsed().as_secs_f64() >= 10.0) {
            return false;
        }
        self.last.set(Instant::now());
        true
    }
}

/// A file opened for appending (created if missing).
fn append(path: &std::path::Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_error("open", path, e))
}

/// A line for the user, unless the run is quiet.
fn say(opts: &RunOptions, line: &str) {
    if !opts.quiet {
        eprintln!("{line}");
    }
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
