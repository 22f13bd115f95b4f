//! The settings a run reads once ([`RunConfig`]): the model and its
//! tokenizer (Keel's own, or a pretrained checkpoint's, with its chat
//! template), the environment, the rollout's and the optimizer's sizes;
//! and the refusals that belong before anything runs (a prompt that fills
//! the context, a step that cannot fit in memory). Every default is the
//! schema's (`Settings`); nothing here repeats one.

use std::path::Path;

use keel_compiler::Checked;
use keel_model::chat::Chat;
use keel_model::family::Meta;
use keel_model::optim::{AdamWConfig, Rule};
use keel_model::pretrained;
use keel_model::sample::SampleConfig;
use keel_model::tokenizer::{CharTokenizer, Tokenizer};
use keel_model::transformer::{ModelConfig, Transformer, Weights};

use crate::batch::inputs::{VOCAB_INPUTS, vocab_columns_always};
use crate::env::{self, Environment, TRAIN_STREAM};
use crate::error::{Error, Result, codes};
use crate::roles::critic::CriticConfig;
use crate::rollout::Sampler;
use crate::settings::Settings;

/// The settings a run reads once.
pub struct RunConfig {
    pub tok: Tokenizer,
    pub z_loss: f64,
    pub init_path: Option<String>,
    /// `model.init` names a pretrained checkpoint (a Hugging Face directory
    /// or a GGUF file): its metadata, to write the final weights back.
    pub pretrained: Option<Meta>,
    /// Its tokenizer's special tokens and chat template, written back with
    /// the final weights (`final-hf/`).
    pub chat_source: Option<String>,
    pub special: (Option<String>, Option<String>),
    /// Its weights in the runtime's layout, until the warm start takes
    /// them (one copy fewer of a real model held for the whole run).
    pub pretrained_weights: Option<Weights>,
    pub model: ModelConfig,
    pub env: Box<dyn Environment>,
    /// The environment and the chat template, for the warm-start cache key.
    pub task_desc: String,
    pub seed: u64,
    pub steps: u64,
    pub warm_steps: u64,
    pub warm_lr: f64,
    pub warm_batch: usize,
    pub prompts: usize,
    pub group: usize,
    pub top_p: f64,
    pub epochs: usize,
    pub minibatches: usize,
    /// Micro-batches per minibatch, their gradients accumulated into one step.
    pub micro_batches: usize,
    pub dynamic_sampling: bool,
    /// Prompts per bundle (`rollout.bundle`).
    pub bundle: usize,
    /// Token budgets of each group's subgroups (`rollout.budgets`; empty:
    /// none).
    pub budgets: Vec<usize>,
    pub order: String,
    pub eval_every: u64,
    pub eval_problems: usize,
    pub eval_k: usize,
    pub ck_every: u64,
    pub ck_keep: usize,
    pub adam: AdamWConfig,
    pub reads_ref: bool,
    /// The critic's settings, where the recipe reads `values` or `vpred`.
    pub critic: Option<CriticConfig>,
    /// The teacher, where the recipe reads `teacher_logits` or
    /// `teacher_logp`.
    pub teacher: Option<TeacherSpec>,
    /// The recipe reads the behaviour policy's distribution (`old_logits`,
    /// `mean_logp`, …): rollouts keep every sampled position's logits
    /// ([B, T, V]); otherwise they keep none.
    pub reads_old_logits: bool,
    /// The recipe mixes in rehearsal samples of the initial policy (`source` 1).
    pub reads_source: bool,
    /// The recipe reads `novelty` (the reference embeds the responses).
    pub reads_novelty: bool,
}

impl RunConfig {
    /// Whether the run has the role that produces `name` (a row of the
    /// input table filled only where its role exists): `ref_logp` from the
    /// reference, `values` and `vpred` from the critic.
    pub fn produces(&self, name: &str) -> bool {
        match name {
            "ref_logp" => self.reads_ref,
            "values" | "vpred" => self.critic.is_some(),
            "teacher_logits" | "teacher_logp" => self.teacher.is_some(),
            _ => false,
        }
    }

    /// The sampler over `model` at `temperature` and `max_tokens`, keeping
    /// each position's logits where `keep_logits`; the recipe's top-p, the
    /// tokenizer's EOS and ids, the environment's verifier.
    pub fn sampler<'a>(
        &'a self,
        model: &'a Transformer,
        temperature: f64,
        max_tokens: usize,
        keep_logits: bool,
    ) -> Sampler<'a> {
        let tok = &self.tok;
        Sampler {
            model,
            env: self.env.as_ref(),
            tok,
            cfg: SampleConfig {
                temperature,
                top_p: self.top_p,
                max_tokens,
                eos: tok.eos(),
                keep_logits,
                draw_limit: tok.vocab_size(),
            },
        }
    }
}

/// The model, its tokenizer, and a pretrained checkpoint's weights and
/// metadata (none for Keel's own model).
struct Model {
    tok: Tokenizer,
    cfg: ModelConfig,
    pretrained: Option<(Weights, Meta)>,
    /// A pretrained checkpoint's chat template source and special tokens.
    chat_source: Option<String>,
    special: (Option<String>, Option<String>),
}

/// A checkpoint's error, shown at the recipe's `model.init`; the message
/// keeps the checkpoint's file and key.
fn at_init(s: &Settings, e: keel_model::Error) -> Error {
    let mut e = crate::error::from_model(e);
    if let Some(at) = &e.location {
        e.message = format!("{at}: {}", e.message);
    }
    e.diagnostics = s.located("model", "init", &e);
    e
}

/// `task.tokenizer`, where the recipe names one.
fn given_tokenizer(s: &Settings) -> Result<Option<Tokenizer>> {
    let Some(path) = s.path("task", "tokenizer") else {
        return Ok(None);
    };
    Tokenizer::from_file(&path).map(Some).map_err(|e| {
        Error::new(
            codes::TASK_SETTING,
            format!("cannot load the tokenizer `{path}`: {e}"),
            "`task.tokenizer` names a Hugging Face tokenizer.json with an end-of-sequence token",
        )
        .at(path.clone())
    })
}

/// A pretrained checkpoint (`model.init`) brings its architecture,
/// tokenizer and chat template; the `model` section then sets only the
/// context (its `max_position_embeddings` capped at 512 unless the recipe
/// sets `model.context`). Otherwise Keel's own model of the `model`
/// section, with the characters or `task.tokenizer`.
fn model(s: &Settings) -> Result<Model> {
    let given_tok = given_tokenizer(s)?;
    let seed_model = s.int("model", "seed") as u64;
    let pretrained = match s.path("model", "init") {
        Some(p) if pretrained::is_pretrained(Path::new(&p)) => {
            Some(pretrained::open(Path::new(&p), seed_model).map_err(|e| at_init(s, e))?)
        }
        _ => None,
    };
    let chat_mode = s.sym("task", "chat").unwrap_or_else(|| "auto".into());
    let Some(p) = pretrained else {
        let tok = given_tok.unwrap_or_else(|| Tokenizer::Char(CharTokenizer::default()));
        let cfg = ModelConfig::small(
            tok.vocab_size(),
            s.int("model", "d_model"),
            s.int("model", "layers"),
            s.int("model", "heads"),
            s.int("model", "context"),
            s.flag("model", "qk_norm"),
            seed_model,
        );
        if let Err(e) = cfg.validate() {
            let mut e = crate::error::from_model(e);
            e.diagnostics = s.located("model", "heads", &e);
            return Err(e);
        }
        return with_chat(s, &chat_mode, None, tok).map(|tok| Model {
            tok,
            cfg,
            pretrained: None,
            chat_source: None,
            special: (None, None),
        });
    };
    let template = if chat_mode != "off" {
        p.chat().map_err(|e| at_init(s, e))?
    } else {
        None
    };
    let tok = match (given_tok, p.tokenizer) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(s.locate(
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
    cfg.context = if s.defined("model", "context") {
        s.int("model", "context")
    } else {
        p.meta.max_positions.min(512)
    };
    let tok = with_chat(s, &chat_mode, template, tok)?;
    Ok(Model {
        tok,
        cfg,
        pretrained: Some((p.weights, p.meta)),
        chat_source: p.chat_template,
        special: p.special,
    })
}

/// Prompts go through the checkpoint's chat template (`task.chat`: `auto`
/// where there is one, `on` insists, `off` never).
fn with_chat(
    s: &Settings,
    chat_mode: &str,
    template: Option<keel_model::chat::ChatTemplate>,
    tok: Tokenizer,
) -> Result<Tokenizer> {
    match template {
        Some(template) if matches!(tok, Tokenizer::Hf { .. }) => Ok(tok.with_chat(Chat {
            template,
            system: s.sym("task", "system"),
        })),
        _ if chat_mode == "on" => Err(s.locate(
            "task",
            "chat",
            Error::new(
                codes::TASK_SETTING,
                "`task.chat = on`, but the model has no chat template",
                "load an instruct checkpoint with a chat template (chat_template.jinja, or `chat_template` in tokenizer_config.json), or set `task.chat = auto`",
            ),
        )),
        _ => Ok(tok),
    }
}

/// A prompt that fills the context leaves no room for a response.
fn check_context(
    s: &Settings,
    env: &dyn Environment,
    tok: &Tokenizer,
    context: usize,
) -> Result<()> {
    // With budgets, the longest budget's sentence ends every prompt.
    let budget = s.get("rollout", "budgets").and_then(|b| match b {
        keel_compiler::Setting::List(l) => l.iter().map(|x| x.max(0.0) as usize).max(),
        _ => None,
    });
    let len = |p: &env::Problem| {
        let p = match budget {
            Some(b) => crate::rollout::with_budget(p, b),
            None => p.clone(),
        };
        p.prompt_ids(tok).map_or(0, |v| v.len())
    };
    let longest = match env.problems() {
        Some(problems) => problems.iter().map(len).max().unwrap_or(0),
        None => (0..16)
            .map(|i| len(&env.problem(TRAIN_STREAM, i)))
            .max()
            .unwrap_or(0),
    };
    if longest < context {
        return Ok(());
    }
    Err(s.locate(
        "model",
        "context",
        Error::new(
            codes::MODEL_SETTING,
            format!(
                "prompts take up to {longest} tokens{}, which fills `model.context` = {context}: no room for a response",
                if tok.chat().is_some() {
                    " (with the chat template)"
                } else {
                    ""
                },
            ),
            format!(
                "raise `model.context` to at least {} (the prompt and `rollout.max_tokens`), or shorten the prompts",
                longest + 32
            ),
        ),
    ))
}

/// What one training step needs at the least, in bytes: the weights with
/// their gradient and AdamW's two moments (16 bytes a parameter, f32), the
/// frozen reference where the recipe reads it (4 more); for a minibatch's
/// samples at `model.context` positions, the loss batch's vocabulary-level
/// tensors and the logits' gradient on the host (4 bytes each ×
/// vocabulary); and for a micro-batch's samples, what autodiff keeps: the
/// logits, the injected gradient and the logits' gradient (12 bytes ×
/// vocabulary) and one activation per layer (16 bytes × d_model × layers).
pub fn step_memory(
    model: &ModelConfig,
    samples: usize,
    minibatches: usize,
    micro_batches: usize,
    reference: bool,
    critic: bool,
) -> usize {
    let per_minibatch = samples.div_ceil(minibatches.max(1));
    let per_micro = per_minibatch.div_ceil(micro_batches.max(1));
    let host = model.vocab.saturating_mul(4 * (vocab_columns_always() + 1));
    let graph = model.vocab.saturating_mul(12).saturating_add(
        model
            .d_model
            .saturating_mul(model.layers)
            .saturating_mul(16),
    );
    // A critic: its weights, gradients and moments (16 bytes a parameter)
    // and its trunk's graph of one minibatch.
    let critic_graph = if critic {
        model
            .d_model
            .saturating_mul(model.layers)
            .saturating_mul(16)
    } else {
        0
    };
    model
        .parameters()
        .saturating_mul(16 + if reference { 4 } else { 0 } + if critic { 16 } else { 0 })
        // The critic predicts the whole minibatch with a graph.
        .saturating_add(
            per_minibatch
                .saturating_mul(model.context)
                .saturating_mul(critic_graph),
        )
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

/// An absurd rollout or model is refused before the run, not killed
/// mid-step.
fn check_step_memory(
    s: &Settings,
    model: &ModelConfig,
    reference: bool,
    critic: bool,
    teacher: Option<&TeacherSpec>,
) -> Result<()> {
    let samples = s
        .int("rollout", "prompts")
        .max(1)
        .saturating_mul(s.int("rollout", "group").max(1));
    // A teacher: its weights, and one minibatch's [B, T, V] logits (f32)
    // where the recipe reads them.
    let teacher_bytes = teacher.map_or(0, |t| {
        let logits = if t.reads_logits {
            samples
                .div_ceil(s.int("rollout", "minibatches").max(1))
                .saturating_mul(model.context)
                .saturating_mul(model.vocab)
                .saturating_mul(4)
        } else {
            0
        };
        t.model
            .parameters()
            .saturating_mul(4)
            .saturating_add(logits)
    });
    let need = teacher_bytes.saturating_add(step_memory(
        model,
        s.int("rollout", "prompts")
            .max(1)
            .saturating_mul(s.int("rollout", "group").max(1)),
        s.int("rollout", "minibatches").max(1),
        s.int("rollout", "micro_batches").max(1),
        reference,
        critic,
    ));
    keel_compiler::check_memory(
        "the model and one training step",
        need,
        keel_compiler::available_memory(),
        "lower `rollout.prompts` or `rollout.group`, raise `rollout.minibatches` or `rollout.micro_batches`, or lower the model's context; KEEL_MEMORY_LIMIT=BYTES sets the limit",
    )
    .map_err(|e| {
        let diagnostics = s.located("rollout", "prompts", &e);
        e.with_diagnostics(diagnostics)
    })
}

/// The teacher of a distillation recipe: a pretrained checkpoint's model
/// and weights (`teacher.init`), or a larger model of Keel's own trained by
/// its own warm start (`warm_steps`).
pub struct TeacherSpec {
    pub model: ModelConfig,
    /// A checkpoint's weights (`None`: a built-in teacher, warm-started).
    pub weights: Option<Weights>,
    pub warm_steps: u64,
    pub reads_logits: bool,
    pub reads_logp: bool,
}

/// The teacher where the recipe reads one. A checkpoint's tokenizer must
/// be the student's (E0703 at `teacher.init`, naming both); without
/// `teacher.init` a built-in teacher needs a built-in student.
fn teacher_config(
    s: &Settings,
    recipe: &keel_compiler::CheckedRecipe,
    student: &Model,
) -> Result<Option<TeacherSpec>> {
    let reads_logits = recipe.inputs.contains_key("teacher_logits");
    let reads_logp = recipe.inputs.contains_key("teacher_logp");
    if !reads_logits && !reads_logp {
        return Ok(None);
    }
    let seed = if s.defined("teacher", "seed") {
        s.int("teacher", "seed") as u64
    } else {
        s.int("model", "seed") as u64 + 1
    };
    if let Some(p) = s.path("teacher", "init") {
        return pretrained_teacher(s, &p, seed, student, (reads_logits, reads_logp)).map(Some);
    }
    if student.pretrained.is_some() {
        return Err(s.locate(
            "model",
            "init",
            Error::new(
                codes::MODEL_SETTING,
                "a pretrained student needs a pretrained teacher: the recipe reads the teacher but sets no `teacher.init`",
                "add `teacher { init = \"DIR\" }`: a checkpoint with the student's tokenizer",
            ),
        ));
    }
    let st = &student.cfg;
    let or = |key: &str, default: usize| {
        if s.defined("teacher", key) {
            s.int("teacher", key)
        } else {
            default
        }
    };
    let model = ModelConfig::small(
        st.vocab,
        or("d_model", 2 * st.d_model),
        or("layers", 2 * st.layers),
        or("heads", st.heads),
        st.context,
        s.flag("model", "qk_norm"),
        seed,
    );
    if let Err(e) = model.validate() {
        let mut e = crate::error::from_model(e);
        e.diagnostics = s.located("teacher", "heads", &e);
        return Err(e);
    }
    let warm_steps = or(
        "warmup_steps",
        (3 * s.int("task", "warmup_steps")).max(1000),
    ) as u64;
    Ok(Some(TeacherSpec {
        model,
        weights: None,
        warm_steps,
        reads_logits,
        reads_logp,
    }))
}

/// A teacher from a checkpoint (`teacher.init` = `p`), refused unless its
/// tokenizer is the (pretrained) student's.
fn pretrained_teacher(
    s: &Settings,
    p: &str,
    seed: u64,
    student: &Model,
    (reads_logits, reads_logp): (bool, bool),
) -> Result<TeacherSpec> {
    let path = Path::new(p);
    if !pretrained::is_pretrained(path) {
        return Err(s.locate(
            "teacher",
            "init",
            Error::new(
                codes::MODEL_SETTING,
                format!("`{p}` is not a checkpoint (a Hugging Face directory or a .gguf file)"),
                "name the teacher's checkpoint directory or .gguf file",
            ),
        ));
    }
    let t = pretrained::open(path, seed).map_err(|e| {
        let mut e = crate::error::from_model(e);
        e.diagnostics = s.located("teacher", "init", &e);
        e
    })?;
    let same = match (&t.tokenizer, student.pretrained.is_some()) {
        (Some(tt), true) => {
            tt.vocab_size() == student.tok.vocab_size()
                && t.cfg.vocab == student.cfg.vocab
                && tt.to_json() == student.tok.to_json()
        }
        _ => false,
    };
    if !same {
        let theirs = t
            .tokenizer
            .as_ref()
            .map_or("missing (no tokenizer.json)".to_string(), |x| {
                format!(
                    "{} ({} entries)",
                    keel_model::tokenizer::describe(x),
                    t.cfg.vocab
                )
            });
        let ours = format!(
            "{} ({} entries)",
            keel_model::tokenizer::describe(&student.tok),
            student.cfg.vocab
        );
        return Err(s.locate(
            "teacher",
            "init",
            Error::new(
                codes::MODEL_SETTING,
                format!("the teacher's tokenizer is {theirs}, the student's is {ours}: distillation over the vocabulary needs one tokenizer"),
                "choose a teacher of the student's family (the same tokenizer.json), or a student of the teacher's",
            ),
        ));
    }
    let mut model = t.cfg;
    model.context = student.cfg.context;
    Ok(TeacherSpec {
        model,
        weights: Some(t.weights),
        warm_steps: 0,
        reads_logits,
        reads_logp,
    })
}

/// `rollout.budgets`: positive whole numbers that divide `rollout.group`
/// into equal subgroups (E0702 at the setting otherwise).
fn budgets(s: &Settings) -> Result<Vec<usize>> {
    let list = match s.get("rollout", "budgets") {
        None => return Ok(Vec::new()),
        Some(keel_compiler::Setting::List(l)) => l,
        Some(_) => Vec::new(),
    };
    let group = s.int("rollout", "group").max(1);
    let bad = |why: String| {
        s.locate(
            "rollout",
            "budgets",
            Error::new(
                codes::TASK_SETTING,
                why,
                "write the budgets as a list of token counts whose number divides `rollout.group`, e.g. `budgets = [512, 1024, 2048, 2560]` with `group = 16`",
            ),
        )
    };
    if list.is_empty() {
        return Err(bad(
            "`rollout.budgets` must be a non-empty list of numbers".into()
        ));
    }
    if let Some(b) = list.iter().find(|b| !(b.fract() == 0.0 && **b >= 1.0)) {
        return Err(bad(format!(
            "a budget must be a whole number of tokens, found {b}"
        )));
    }
    if !group.is_multiple_of(list.len()) {
        return Err(bad(format!(
            "{} budgets do not split a group of {group} into equal subgroups",
            list.len()
        )));
    }
    Ok(list.iter().map(|b| *b as usize).collect())
}

/// Input `input` of `recipe` that the run cannot give it (E0706), located
/// at the recipe's read of it.
pub fn refused_read(
    recipe: Option<&keel_compiler::CheckedRecipe>,
    input: &str,
    message: String,
    help: &str,
) -> Error {
    let diagnostics = recipe
        .and_then(|r| r.inputs.get(input))
        .map(|&(file, span)| {
            keel_compiler::Diagnostic::error(
                keel_compiler::codes::RUNTIME_INPUT,
                message.clone(),
                keel_compiler::Label::new(file, span, "read here"),
            )
            .with_help(help)
        })
        .into_iter()
        .collect();
    Error::new(codes::LOSS_PROGRAM, message, help).with_diagnostics(diagnostics)
}

/// The critic's settings where the recipe reads `values` or `vpred`; a
/// recipe that reads them without a `critic.loss` is refused (E0706): its
/// critic would never learn.
fn critic_config(
    s: &Settings,
    recipe: &keel_compiler::CheckedRecipe,
) -> Result<Option<CriticConfig>> {
    let Some(name) = ["values", "vpred"]
        .into_iter()
        .find(|n| recipe.inputs.contains_key(*n))
    else {
        return Ok(None);
    };
    if recipe.value("critic", "loss").is_none() {
        return Err(refused_read(
            Some(recipe),
            name,
            format!(
                "the recipe reads `{name}` but has no `critic.loss`: its critic would never learn"
            ),
            "add `critic { loss = ... }` (std/ppo's `clipped_value_loss` is verl's), or extend std/ppo",
        ));
    }
    Ok(Some(CriticConfig {
        lr: s.num("critic", "lr"),
        grad_clip: s.num("critic", "grad_clip"),
        weight_decay: s.num("critic", "weight_decay"),
        warmup: s.int("critic", "warmup") as u64,
    }))
}

/// Read recipe `index`'s settings, open its model and environment, and
/// refuse what cannot run.
pub fn run_config(checked: &Checked, index: usize) -> Result<RunConfig> {
    let s = Settings { checked, index };
    let recipe = checked.recipes.get(index).ok_or_else(|| {
        Error::new(
            codes::LOSS_PROGRAM,
            "no recipe to run",
            "name a recipe with --recipe",
        )
    })?;
    let student = model(&s)?;
    let teacher = teacher_config(&s, recipe, &student)?;
    let Model {
        tok,
        cfg: model,
        pretrained,
        chat_source,
        special,
    } = student;
    let env = env::open(&env::Context {
        settings: &s,
        tok: &tok,
        pretrained: pretrained.is_some(),
    })?;
    let task_desc = if tok.chat().is_some() {
        format!("{} chat", env.describe())
    } else {
        env.describe()
    };
    check_context(&s, env.as_ref(), &tok, model.context)?;
    let reads_ref = recipe.inputs.contains_key("ref_logp");
    let reads_source = recipe.inputs.contains_key("source");
    let critic = critic_config(&s, recipe)?;
    check_step_memory(
        &s,
        &model,
        reads_ref || reads_source || recipe.inputs.contains_key("novelty"),
        critic.is_some(),
        teacher.as_ref(),
    )?;
    let (pretrained_weights, pretrained) = match pretrained {
        Some((w, m)) => (Some(w), Some(m)),
        None => (None, None),
    };
    Ok(RunConfig {
        tok,
        z_loss: s.num("model", "z_loss"),
        init_path: s.path("model", "init"),
        pretrained_weights,
        pretrained,
        chat_source,
        special,
        model,
        env,
        task_desc,
        seed: s.int("task", "seed") as u64,
        steps: s.int("optimizer", "steps") as u64,
        warm_steps: s.int("task", "warmup_steps") as u64,
        warm_lr: s.num("task", "warmup_lr"),
        warm_batch: s.int("task", "warmup_batch").max(1),
        prompts: s.int("rollout", "prompts").max(1),
        group: s.int("rollout", "group").max(1),
        top_p: s.num("rollout", "top_p"),
        epochs: s.int("rollout", "epochs").max(1),
        minibatches: s.int("rollout", "minibatches").max(1),
        micro_batches: s.int("rollout", "micro_batches").max(1),
        dynamic_sampling: s.flag("rollout", "dynamic_sampling"),
        bundle: s.int("rollout", "bundle").max(1),
        budgets: budgets(&s)?,
        order: s
            .sym("curriculum", "order")
            .unwrap_or_else(|| "random".into()),
        eval_every: s.int("eval", "every") as u64,
        eval_problems: s.int("eval", "problems").max(1),
        eval_k: s.int("eval", "k").max(1),
        ck_every: s.int("checkpoint", "every").max(1) as u64,
        ck_keep: s.int("checkpoint", "keep").max(1),
        adam: AdamWConfig {
            rule: s
                .sym("optimizer", "name")
                .and_then(|n| Rule::named(&n))
                .unwrap_or_default(),
            beta1: s.num("optimizer", "beta1"),
            beta2: s.num("optimizer", "beta2"),
            eps: s.num("optimizer", "eps"),
            weight_decay: s.num("optimizer", "weight_decay"),
        },
        reads_ref,
        critic,
        teacher,
        reads_old_logits: VOCAB_INPUTS.iter().any(|n| recipe.inputs.contains_key(*n)),
        reads_source,
        reads_novelty: recipe.inputs.contains_key("novelty"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizing of docs/models.md: Qwen2.5-0.5B (494 M parameters, a
    /// 151,936-row vocabulary) with a KL reference, 8 prompts × 8 samples at
    /// 256 positions, does not fit 22 GB as one minibatch, nor as 4
    /// minibatches unsplit, and fits as 4 minibatches of 4 micro-batches
    /// (`run::update::tests` checks the micro-batches' rows).
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
        let gb = |m: usize, k: usize| step_memory(&qwen, 64, m, k, true, false) as f64 / 1e9;
        assert!(gb(1, 1) > 60.0, "{}", gb(1, 1));
        assert!(gb(4, 1) > 22.0, "{}", gb(4, 1));
        assert!((gb(4, 4) - 17.09).abs() < 0.05, "{}", gb(4, 4));
        // No reference: 4 bytes a parameter fewer.
        let without = step_memory(&qwen, 64, 4, 4, false, false) as f64 / 1e9;
        assert!((gb(4, 4) - without - 4.0 * params as f64 / 1e9).abs() < 1e-6);
    }

    /// A pretrained model's `model.context` is its `max_position_embeddings`
    /// capped at 512, unless the recipe sets it (it was the schema's 128).
    #[test]
    fn a_pretrained_context_defaults_to_its_positions_capped_at_512() {
        let dir = std::env::temp_dir().join(format!("keel-context-{}", std::process::id()));
        let ck = dir.join("ck");
        std::fs::create_dir_all(&ck).expect("dir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf/qwen2");
        for f in ["model.safetensors", "generation_config.json"] {
            std::fs::copy(src.join(f), ck.join(f)).expect("copy");
        }
        // A word-level tokenizer of four words ("two", "four", `</s>`, unk).
        std::fs::copy(
            src.join("../wordlevel_tokenizer.json"),
            ck.join("tokenizer.json"),
        )
        .expect("copy");
        let data = dir.join("d.jsonl");
        std::fs::write(&data, "{\"prompt\":\"two\",\"answer\":\"four\"}\n").expect("write");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).expect("config"))
                .expect("json");
        let context = |positions: u64, set: &str| {
            let mut c = config.clone();
            c["max_position_embeddings"] = positions.into();
            std::fs::write(ck.join("config.json"), c.to_string()).expect("write");
            let text = format!(
                "import std/grpo\nrecipe r extends grpo {{\n    model {{ init = \"{}\"{set} }}\n    task {{ name = jsonl, path = \"{}\" }}\n}}\n",
                ck.display(),
                data.display()
            );
            let checked = keel_compiler::check_source(&keel_compiler::NoFiles, "r.recipe", &text);
            assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
            let index = checked.main_recipe(None).expect("a recipe");
            run_config(&checked, index).map(|c| c.model.context)
        };
        assert_eq!(context(256, "").ok(), Some(256));
        assert_eq!(context(32768, "").ok(), Some(512));
        assert_eq!(context(32768, ", context = 48").ok(), Some(48));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
