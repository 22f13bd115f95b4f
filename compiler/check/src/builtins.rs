//! What the language knows without being told: levels, built-in inputs,
//! built-in functions and the schema of each section.
//!
//! These are tables, not code: the checker, the language server's hover and
//! completion, and the documentation all read them. No method lives here —
//! methods are recipes in `stdlib/`.

use std::fmt;

/// Where a value lives. Coarser levels broadcast to finer ones; going coarser
/// needs an explicit reduction (`mean(x) over group`). Ordered coarse → fine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// A scalar on the host: hyperparameters, schedules, state, `step`.
    Step,
    /// A scalar per training batch, on the device.
    Batch,
    /// One value per group of sequences sharing a prompt.
    Group,
    /// One value per sequence.
    Seq,
    /// One value per response token.
    Token,
    /// One value per token and vocabulary entry (only with `logits`).
    Vocab,
}

impl Level {
    /// Every level, coarse to fine.
    pub const ALL: [Level; 6] = [
        Level::Step,
        Level::Batch,
        Level::Group,
        Level::Seq,
        Level::Token,
        Level::Vocab,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Step => "step",
            Level::Batch => "batch",
            Level::Group => "group",
            Level::Seq => "seq",
            Level::Token => "token",
            Level::Vocab => "vocab",
        }
    }
    /// The level named after `over`.
    pub fn from_over(name: &str) -> Option<Level> {
        Some(match name {
            "batch" => Level::Batch,
            "group" => Level::Group,
            "seq" => Level::Seq,
            "token" | "vocab" => Level::Token,
            _ => return None,
        })
    }
    pub const OVER_NAMES: &'static [&'static str] = &["token", "seq", "group", "batch", "vocab"];
    /// A noun phrase for messages: "token-level".
    pub fn adj(self) -> String {
        match self {
            Level::Step => "step-level (host)".to_string(),
            Level::Seq => "sequence-level".to_string(),
            l => format!("{}-level", l.name()),
        }
    }
    pub fn join(self, other: Level) -> Level {
        self.max(other)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a value.
#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    Num,
    Int,
    Bool,
    Str,
    /// A named option value such as `token_mean` or `adamw`.
    Sym(String),
    List(Box<Ty>),
    /// Produced after an error; compatible with everything, so one mistake
    /// is reported once.
    Unknown,
}

impl Ty {
    pub fn name(&self) -> String {
        match self {
            Ty::Num => "number".into(),
            Ty::Int => "int".into(),
            Ty::Bool => "bool".into(),
            Ty::Str => "string".into(),
            Ty::Sym(s) => format!("option `{s}`"),
            Ty::List(t) => format!("list of {}", t.name()),
            Ty::Unknown => "unknown".into(),
        }
    }
    pub fn is_numeric(&self) -> bool {
        matches!(self, Ty::Num | Ty::Int | Ty::Unknown)
    }
    pub fn is_bool(&self) -> bool {
        matches!(self, Ty::Bool | Ty::Unknown)
    }
}

/// A built-in input, read by recipes and provided by the runtime or a batch.
pub struct Input {
    pub name: &'static str,
    pub level: Level,
    pub ty: Ty0,
    pub differentiable: bool,
    pub doc: &'static str,
}

/// A `const`-friendly subset of [`Ty`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ty0 {
    Num,
    Int,
    Bool,
}

impl Ty0 {
    pub fn ty(self) -> Ty {
        match self {
            Ty0::Num => Ty::Num,
            Ty0::Int => Ty::Int,
            Ty0::Bool => Ty::Bool,
        }
    }
}

macro_rules! inputs {
    ($($name:literal : $level:ident $ty:ident $diff:literal $doc:literal;)*) => {
        pub const INPUTS: &[Input] = &[$(Input {
            name: $name, level: Level::$level, ty: Ty0::$ty, differentiable: $diff, doc: $doc,
        }),*];
    };
}

inputs! {
    "logits": Vocab Num true "current-policy logits [B, T, V]; the full next-token distribution";
    "teacher_logits": Vocab Num false "teacher logits [B, T, V], for distillation";
    "old_logits": Vocab Num false "behaviour-policy logits [B, T, V]";
    "logp": Token Num true "log-prob of each sampled token under the current policy (differentiable)";
    "old_logp": Token Num false "log-prob under the behaviour policy that sampled the batch";
    "ref_logp": Token Num false "log-prob under the reference (initial) policy";
    "entropy": Token Num true "entropy of the next-token distribution (from logits when present)";
    "mask": Token Num false "1 for response tokens that count, 0 for padding";
    "step_reward": Token Num false "process reward, non-zero only at step ends";
    "step_end": Token Bool false "true at the last token of each reasoning step";
    "values": Token Num false "the critic's value of each token at rollout time (the prediction GAE reads)";
    "vpred": Token Num true "the critic's value of each token during the update (differentiable; read by `critic.loss`)";
    "teacher_logp": Token Num false "log-prob of each sampled token under the frozen teacher";
    "advantages": Token Num false "given advantages, replacing the recipe's credit";
    "tokens": Token Int false "sampled token ids";
    "position": Token Int false "index of the token in its response, from 0";
    "vocab_index": Vocab Int false "the vocabulary id of each entry of a [B, T, V] value";
    "reward": Seq Num false "outcome reward of each sequence";
    "length": Seq Int false "number of valid response tokens of each sequence";
    "group": Seq Int false "id of the prompt a sequence answers; equal ids form a group";
    "bundle": Seq Int false "id of the bundle of prompts a sequence belongs to (RiskPO)";
    "index": Seq Int false "the row of the sequence in the batch, from 0";
    "correct": Seq Bool false "whether the sequence's answer verified as correct";
    "truncated": Seq Bool false "whether generation hit the token limit";
    "budget": Seq Num false "token budget assigned to the sequence";
    "novelty": Seq Num false "novelty score of the sequence within its group";
    "source": Seq Int false "where a sample comes from: 0 on-policy, 1 a second data source (rehearsal samples of the initial policy, a retain set)";
    "format_ok": Seq Bool false "whether the response has the required format";
    "judge": Seq Num false "a score from an external judge of the response";
    "void": Seq Bool false "the trajectory had a turn with neither a tool call nor an answer";
    "mean_logp": Token Num false "mean over the vocabulary of the current policy's log-probs at the position (from logits when present)";
    "old_mean_logp": Token Num false "mean over the vocabulary of the behaviour policy's log-probs at the position";
    "step": Step Int false "the training step, from 1";
    "progress": Step Num false "step / total steps, in [0, 1]";
    "epoch": Step Int false "the pass over the data, from 0";
    "total_steps": Step Int false "the number of training steps";
}

pub fn input(name: &str) -> Option<&'static Input> {
    INPUTS.iter().find(|i| i.name == name)
}

/// How a built-in function treats levels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FnKind {
    /// Pointwise: the result has the finest level of its arguments.
    Elementwise,
    /// Needs `over L`; the result is at level L.
    Reduce,
    /// Needs `over L`; statistics are taken over each L-unit but the result
    /// keeps the level of its first argument (`whiten`, `softmax`, `topk`).
    Normalize,
    /// Along the time axis of each sequence; token-level in and out.
    Scan,
    /// Elementwise if called without `over`, a reduction with it (`min`, `max`).
    ElementwiseOrReduce,
    /// Reads the sampled token's entry of a vocabulary-level value.
    Pick,
}

/// What a function returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ret {
    Num,
    Bool,
    /// The type of the first argument (after int → number for most math).
    Same,
    /// The common type of arguments 2 and 3 (`where`).
    Branches,
}

pub struct Builtin {
    pub name: &'static str,
    /// Parameter names; a trailing `?` marks an optional one.
    pub params: &'static [&'static str],
    pub kind: FnKind,
    pub ret: Ret,
    /// Whether the first argument must be bool (`where`, `float`, `any`).
    pub bool_first: bool,
    pub doc: &'static str,
}

macro_rules! builtins {
    ($($name:literal ($($p:literal),*) $kind:ident $ret:ident $b:literal $doc:literal;)*) => {
        pub const BUILTINS: &[Builtin] = &[$(Builtin {
            name: $name, params: &[$($p),*], kind: FnKind::$kind, ret: Ret::$ret, bool_first: $b, doc: $doc,
        }),*];
    };
}

builtins! {
    "exp"("x") Elementwise Num false "e^x";
    "log"("x") Elementwise Num false "natural logarithm";
    "log1p"("x") Elementwise Num false "log(1 + x), accurate near 0";
    "expm1"("x") Elementwise Num false "e^x - 1, accurate near 0";
    "sqrt"("x") Elementwise Num false "square root";
    "abs"("x") Elementwise Same false "absolute value";
    "sign"("x") Elementwise Num false "-1, 0 or 1";
    "sigmoid"("x") Elementwise Num false "1 / (1 + e^-x)";
    "softplus"("x") Elementwise Num false "log(1 + e^x)";
    "tanh"("x") Elementwise Num false "hyperbolic tangent";
    "relu"("x") Elementwise Num false "max(x, 0)";
    "cos"("x") Elementwise Num false "cosine (radians)";
    "sin"("x") Elementwise Num false "sine (radians)";
    "floor"("x") Elementwise Num false "largest integer <= x";
    "ceil"("x") Elementwise Num false "smallest integer >= x";
    "round"("x") Elementwise Num false "nearest integer, ties away from zero";
    "pow"("x", "y") Elementwise Num false "x^y";
    "clamp"("x", "lo", "hi") Elementwise Num false "min(max(x, lo), hi); the gradient flows only where x is inside";
    "where"("cond", "then", "else") Elementwise Branches true "`then` where cond holds, else `else`; the gradient follows the chosen branch";
    "float"("b") Elementwise Num true "1 for true, 0 for false";
    "stopgrad"("x") Elementwise Same false "x, with no gradient flowing through it";
    "broadcast"("x") Elementwise Same false "x; spells out a broadcast to a finer level";
    "min"("x", "y?") ElementwiseOrReduce Same false "min(a, b) elementwise, or min(x) over L";
    "max"("x", "y?") ElementwiseOrReduce Same false "max(a, b) elementwise, or max(x) over L";
    "sum"("x") Reduce Num false "masked sum over each unit of the level";
    "mean"("x") Reduce Num false "masked mean over each unit of the level";
    "std"("x") Reduce Num false "unbiased standard deviation; a one-member unit gets 1";
    "var"("x") Reduce Num false "unbiased variance";
    "count"("x?") Reduce Num false "number of valid members (where x holds, if given)";
    "logsumexp"("x") Reduce Num false "log of the sum of e^x, computed stably";
    "any"("cond") Reduce Bool true "whether cond holds for some member";
    "all"("cond") Reduce Bool true "whether cond holds for every member";
    "quantile"("x", "q") Reduce Num false "q-quantile with linear interpolation";
    "whiten"("x", "eps?") Normalize Num false "(x - mean) / sqrt(var + eps), token-weighted, unbiased";
    "softmax"("x") Normalize Num false "e^x / sum(e^x) within each unit";
    "log_softmax"("x") Normalize Num false "x - logsumexp(x) within each unit";
    "topk"("x", "k") Normalize Bool false "true for the k largest values in each unit (ties: lower index first)";
    "top_frac"("x", "frac") Normalize Bool false "true for the largest ceil(frac * n) values in each unit";
    "rank"("x") Normalize Num false "0-based rank of x within its unit (ties: lower index first)";
    "sum_by"("x", "key", "member?") Elementwise Num false "for each element, the sum of x over the elements sharing its key (where member holds); a grouping beside `group`";
    "min_by"("x", "key", "member?") Elementwise Num false "for each element, the minimum of x over the elements sharing its key (where member holds)";
    "max_by"("x", "key", "member?") Elementwise Num false "for each element, the maximum of x over the elements sharing its key (where member holds)";
    "quantile_by"("x", "q", "key", "member?") Elementwise Num false "for each element, the q-quantile (linear) of x over the elements sharing its key (where member holds)";
    "cumsum_by"("x", "key") Normalize Num false "running sum of x within each unit, in descending order of key (ties: lower index first), inclusive";
    "rcumsum_by"("x", "key") Normalize Num false "the reverse: sum of x over the members ranked at or after each one in that order (a suffix sum, without the cancellation of `sum - cumsum_by + x`)";
    "rscan"("x", "gamma") Scan Num false "reverse discounted sum: y_t = x_t + gamma * y_{t+1}";
    "rscan_min"("x") Scan Num false "reverse running minimum: y_t = min(x_t, y_{t+1})";
    "cumsum"("x") Scan Num false "running sum from the first token";
    "latest"("x", "cond", "fill?") Scan Num false "the value of x at the most recent token (this one included) where cond held; `fill` (0) before the first";
    "next"("x", "fill?") Scan Same false "the value at the next token; `fill` (0) after the last";
    "prev"("x", "fill?") Scan Same false "the value at the previous token; `fill` (0) before the first";
    "search"("f", "lo", "hi", "step") Elementwise Num false "the first c in lo, lo + step, …, hi where the function f(c, args...) holds (else hi); extra arguments after step go to f; the grid must be constant";
    "pick"("x") Pick Num false "the sampled token's entry of a vocabulary-level value";
    "rand"("like", "seed") Elementwise Num false "a uniform [0, 1) number per element of `like`'s level, a pure function of `seed` and the element's position";
}

pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The type a key's value must have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyTy {
    Num,
    Int,
    Bool,
    Str,
    /// One of the named options.
    Sym(&'static [&'static str]),
    Any,
}

/// A range check on a constant hyperparameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Range {
    None,
    /// lo < x < hi
    Open(f64, f64),
    /// lo < x <= hi
    OpenClosed(f64, f64),
    /// x > lo
    Above(f64),
    /// x >= lo
    AtLeast(f64),
    /// lo <= x < hi
    ClosedOpen(f64, f64),
    /// lo <= x <= hi
    Closed(f64, f64),
}

impl Range {
    pub fn holds(self, x: f64) -> bool {
        match self {
            Range::None => true,
            Range::Open(a, b) => x > a && x < b,
            Range::OpenClosed(a, b) => x > a && x <= b,
            Range::Above(a) => x > a,
            Range::AtLeast(a) => x >= a,
            Range::ClosedOpen(a, b) => x >= a && x < b,
            Range::Closed(a, b) => x >= a && x <= b,
        }
    }
    pub fn describe(self) -> String {
        match self {
            Range::None => "any value".into(),
            Range::Open(a, b) => format!("in ({a}, {b})"),
            Range::OpenClosed(a, b) => format!("in ({a}, {b}]"),
            Range::Above(a) => format!("greater than {a}"),
            Range::AtLeast(a) => format!("at least {a}"),
            Range::ClosedOpen(a, b) => format!("in [{a}, {b})"),
            Range::Closed(a, b) => format!("in [{a}, {b}]"),
        }
    }
}

pub struct KeySchema {
    pub name: &'static str,
    pub ty: KeyTy,
    /// The finest level the value may have.
    pub level: Level,
    pub range: Range,
    /// Out-of-range is an error (true) or a warning (false).
    pub strict: bool,
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

pub struct SectionSchema {
    pub name: &'static str,
    /// The key `section = expr` sets.
    pub principal: Option<&'static str>,
    /// Whether keys other than the listed ones are errors.
    pub closed: bool,
    /// The finest level any value in the section may have.
    pub level: Level,
    pub keys: &'static [KeySchema],
    pub doc: &'static str,
}

impl SectionSchema {
    pub fn key(&self, name: &str) -> Option<&'static KeySchema> {
        self.keys.iter().find(|k| k.name == name)
    }
}

const fn key(
    name: &'static str,
    ty: KeyTy,
    level: Level,
    range: Range,
    strict: bool,
    default: Option<&'static str>,
    doc: &'static str,
) -> KeySchema {
    KeySchema {
        name,
        ty,
        level,
        range,
        strict,
        default,
        doc,
    }
}

use KeyTy as K;
use Level as L;
use Range as R;

pub const REDUCTIONS: &[&str] = &[
    "token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
];

pub const SECTIONS: &[SectionSchema] = &[
    SectionSchema {
        name: "model",
        principal: None,
        closed: true,
        level: L::Step,
        doc: "the policy: a decoder-only transformer and its size",
        keys: &[
            key(
                "d_model",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("64"),
                "width of the residual stream",
            ),
            key(
                "layers",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("2"),
                "number of transformer blocks",
            ),
            key(
                "heads",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("4"),
                "attention heads per block",
            ),
            key(
                "context",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("128"),
                "maximum sequence length",
            ),
            key(
                "qk_norm",
                K::Bool,
                L::Step,
                R::None,
                true,
                Some("false"),
                "RMS-normalise queries and keys",
            ),
            key(
                "z_loss",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "coefficient of the z-loss on logits",
            ),
            key(
                "init",
                K::Str,
                L::Step,
                R::None,
                true,
                None,
                "initial weights: a Hugging Face checkpoint directory, a .gguf file, or a .safetensors file written by `keel run`",
            ),
            key(
                "seed",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "seed of the initial weights",
            ),
        ],
    },
    SectionSchema {
        name: "task",
        principal: None,
        closed: true,
        level: L::Step,
        doc: "the data: a built-in verifiable task or a JSONL file",
        keys: &[
            key(
                "name",
                K::Sym(&["arithmetic", "countdown", "jsonl"]),
                L::Step,
                R::None,
                true,
                Some("arithmetic"),
                "which task",
            ),
            key(
                "path",
                K::Str,
                L::Step,
                R::None,
                true,
                None,
                "JSONL file with prompt/answer fields",
            ),
            key(
                "verifier",
                K::Sym(&["exact", "numeric", "regex"]),
                L::Step,
                R::None,
                true,
                Some("exact"),
                "how answers are checked",
            ),
            key(
                "chat",
                K::Sym(&["auto", "on", "off"]),
                L::Step,
                R::None,
                true,
                Some("auto"),
                "prompts through the checkpoint's chat template: `auto` where it has one, `on` requires one, `off` uses prompts as they are",
            ),
            key(
                "system",
                K::Str,
                L::Step,
                R::None,
                true,
                None,
                "a system message put before every prompt's conversation (with a chat template)",
            ),
            key(
                "prm",
                K::Sym(&["exact", "format", "noisy"]),
                L::Step,
                R::None,
                true,
                Some("exact"),
                "the arithmetic task's process reward: `exact` rewards right steps, `format` every well-formed step (hackable on purpose), `noisy` right steps and wrong well-formed ones at `prm_false_positive`",
            ),
            key(
                "prm_false_positive",
                K::Num,
                L::Step,
                R::Closed(0.0, 1.0),
                true,
                Some("0.5"),
                "with `prm = noisy`: the chance a wrong but well-formed step is rewarded",
            ),
            key(
                "difficulty",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("1"),
                "difficulty knob of built-in tasks",
            ),
            key(
                "seed",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "seed of the generated problems",
            ),
            key(
                "warmup_steps",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "supervised steps before RL",
            ),
            key(
                "tokenizer",
                K::Str,
                L::Step,
                R::None,
                true,
                None,
                "a Hugging Face tokenizer.json for `jsonl` data (default: characters)",
            ),
            key(
                "warmup_lr",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("1e-3"),
                "learning rate of the supervised warm start",
            ),
            key(
                "warmup_batch",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("32"),
                "worked solutions per supervised step",
            ),
        ],
    },
    SectionSchema {
        name: "eval",
        principal: None,
        closed: true,
        level: L::Step,
        doc: "held-out evaluation during training: pass@1 and pass@k",
        keys: &[
            key(
                "every",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("25"),
                "evaluate every N steps (0: only before and after RL)",
            ),
            key(
                "problems",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("64"),
                "held-out problems per evaluation",
            ),
            key(
                "k",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("4"),
                "samples per problem (pass@k)",
            ),
        ],
    },
    SectionSchema {
        name: "checkpoint",
        principal: None,
        closed: true,
        level: L::Step,
        doc: "how often training state is saved, and how many saves are kept",
        keys: &[
            key(
                "every",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("10"),
                "save every N steps (and at the end)",
            ),
            key(
                "keep",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("8"),
                "checkpoints kept (older ones are deleted)",
            ),
        ],
    },
    SectionSchema {
        name: "rollout",
        principal: None,
        closed: true,
        level: L::Step,
        doc: "sampling: prompts per batch, group size, temperature, limits",
        keys: &[
            key(
                "group",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("8"),
                "responses sampled per prompt",
            ),
            key(
                "prompts",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("16"),
                "prompts per batch",
            ),
            key(
                "temperature",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("1.0"),
                "sampling temperature",
            ),
            key(
                "top_p",
                K::Num,
                L::Step,
                R::OpenClosed(0.0, 1.0),
                true,
                Some("1.0"),
                "nucleus sampling mass",
            ),
            key(
                "max_tokens",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("32"),
                "response length limit",
            ),
            key(
                "epochs",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("1"),
                "updates per rollout batch (PPO epochs)",
            ),
            key(
                "minibatches",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("1"),
                "mini-batches per epoch (one optimizer step each)",
            ),
            key(
                "micro_batches",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("1"),
                "micro-batches per mini-batch, their gradients accumulated into one step (the same step as unsplit, in less memory)",
            ),
            key(
                "dynamic_sampling",
                K::Bool,
                L::Step,
                R::None,
                true,
                Some("false"),
                "drop groups whose rewards are all equal and resample",
            ),
            key(
                "overlong_buffer",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "soft length-penalty window before max_tokens",
            ),
            key(
                "overlong_penalty",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("1.0"),
                "penalty at max_tokens within the buffer",
            ),
            key(
                "max_turns",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("1"),
                "interaction turns per episode (agent tasks); may follow a schedule",
            ),
            key(
                "budgets",
                K::Any,
                L::Step,
                R::None,
                true,
                None,
                "token budgets (a list, HBPO): each group is split into equal subgroups, one per budget, whose prompts say the budget and whose responses stop at it (capped by `max_tokens`); the `budget` input",
            ),
            key(
                "bundle",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("1"),
                "prompts per bundle: each step's prompts, in order, form bundles of this many (the `bundle` input; RiskPO)",
            ),
            key(
                "branch_first",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "re-concatenation: responses sampled before branching at critical tokens (0: off)",
            ),
            key(
                "branch_samples",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("3"),
                "re-concatenation: continuations sampled from each branch point",
            ),
            key(
                "branch_top_k",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("20"),
                "re-concatenation: branch points drawn among the k highest-entropy tokens",
            ),
        ],
    },
    SectionSchema {
        name: "reward",
        principal: Some("value"),
        closed: false,
        level: L::Seq,
        doc: "the reward of each sequence, from sample fields",
        keys: &[key(
            "value",
            K::Num,
            L::Seq,
            R::None,
            true,
            None,
            "the reward",
        )],
    },
    SectionSchema {
        name: "credit",
        principal: Some("value"),
        closed: false,
        level: L::Token,
        doc: "the advantage of each sequence or token",
        keys: &[key(
            "value",
            K::Num,
            L::Token,
            R::None,
            true,
            None,
            "the credit (advantage)",
        )],
    },
    SectionSchema {
        name: "objective",
        principal: Some("loss"),
        closed: false,
        level: L::Token,
        doc: "the per-token surrogate loss and how it is reduced",
        keys: &[
            key(
                "loss",
                K::Num,
                L::Token,
                R::None,
                true,
                None,
                "the per-token loss",
            ),
            key(
                "reduce",
                K::Sym(REDUCTIONS),
                L::Step,
                R::None,
                true,
                Some("token_mean"),
                "how per-token losses become one number",
            ),
            key(
                "norm",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                None,
                "the constant of `seq_mean_token_sum_norm` (default: padded length)",
            ),
            key(
                "mask",
                K::Any,
                L::Token,
                R::None,
                true,
                None,
                "extra token mask of the loss: tokens where it is 0 or false leave every reduction (numerator and count)",
            ),
        ],
    },
    SectionSchema {
        name: "critic",
        principal: Some("loss"),
        closed: false,
        level: L::Token,
        doc: "the value model (PPO's critic): its per-token loss on `vpred` and its optimizer; a copy of the policy's trunk with a fresh scalar head",
        keys: &[
            key(
                "loss",
                K::Num,
                L::Token,
                R::None,
                true,
                None,
                "the critic's per-token loss; its gradient w.r.t. `vpred` trains the critic",
            ),
            key(
                "reduce",
                K::Sym(REDUCTIONS),
                L::Step,
                R::None,
                true,
                Some("token_mean"),
                "how per-token critic losses become one number",
            ),
            key(
                "lr",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("1e-5"),
                "the critic's learning rate (verl `critic.optim.lr`)",
            ),
            key(
                "weight_decay",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0.01"),
                "the critic's decoupled weight decay",
            ),
            key(
                "grad_clip",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("1.0"),
                "the critic's global gradient-norm clip",
            ),
            key(
                "warmup",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "RL steps at the start during which only the critic trains (verl `trainer.critic_warmup`)",
            ),
        ],
    },
    SectionSchema {
        name: "teacher",
        principal: None,
        closed: true,
        level: L::Step,
        doc: "the frozen teacher of a distillation recipe (`teacher_logits`, `teacher_logp`)",
        keys: &[
            key(
                "init",
                K::Str,
                L::Step,
                R::None,
                true,
                None,
                "the teacher's checkpoint: a Hugging Face directory or a .gguf file with the student's tokenizer (default, for built-in tasks: a larger model of Keel's own trained by its own warm start)",
            ),
            key(
                "d_model",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                None,
                "a built-in teacher's width (default: twice the student's)",
            ),
            key(
                "layers",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                None,
                "a built-in teacher's blocks (default: twice the student's)",
            ),
            key(
                "heads",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                None,
                "a built-in teacher's attention heads (default: the student's)",
            ),
            key(
                "warmup_steps",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                None,
                "a built-in teacher's supervised steps (default: three times `task.warmup_steps`, at least 1000)",
            ),
            key(
                "seed",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                None,
                "a built-in teacher's initial weights' seed (default: `model.seed` + 1)",
            ),
        ],
    },
    SectionSchema {
        name: "clip",
        principal: None,
        closed: false,
        level: L::Token,
        doc: "ratio clipping bounds",
        keys: &[
            key(
                "eps_low",
                K::Num,
                L::Step,
                R::OpenClosed(0.0, 1.0),
                true,
                Some("0.2"),
                "lower clip: ratios below 1 - eps_low are clipped",
            ),
            key(
                "eps_high",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("0.2"),
                "upper clip: ratios above 1 + eps_high are clipped",
            ),
            key(
                "dual",
                K::Num,
                L::Step,
                R::Above(1.0),
                true,
                Some("3.0"),
                "dual-clip bound c for negative advantages",
            ),
            key(
                "log_ratio_bound",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("20"),
                "log-ratios are clamped to [-b, b] before exp",
            ),
        ],
    },
    SectionSchema {
        name: "divergence",
        principal: Some("value"),
        closed: false,
        level: L::Token,
        doc: "a divergence penalty per token, added to the loss times `coef`",
        keys: &[
            key(
                "value",
                K::Num,
                L::Token,
                R::None,
                true,
                None,
                "the per-token divergence",
            ),
            key(
                "coef",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("1"),
                "weight of the divergence in the loss",
            ),
            key(
                "mask",
                K::Any,
                L::Token,
                R::None,
                true,
                None,
                "token mask of the divergence term (default: `objective.mask`)",
            ),
        ],
    },
    SectionSchema {
        name: "entropy",
        principal: Some("value"),
        closed: false,
        level: L::Token,
        doc: "entropy controls: a bonus or a regulariser per token",
        keys: &[
            key(
                "value",
                K::Num,
                L::Token,
                R::None,
                true,
                None,
                "the per-token entropy term",
            ),
            key(
                "coef",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                false,
                Some("1"),
                "weight of the entropy term added to the loss (write `value = -entropy` for a bonus)",
            ),
            key(
                "mask",
                K::Any,
                L::Token,
                R::None,
                true,
                None,
                "token mask of the entropy term (default: `objective.mask`)",
            ),
        ],
    },
    SectionSchema {
        name: "curriculum",
        principal: None,
        closed: false,
        level: L::Step,
        doc: "data order, stages, horizon and budget schedules",
        keys: &[
            key(
                "order",
                K::Sym(&["random", "difficulty", "reverse_difficulty", "given"]),
                L::Step,
                R::None,
                true,
                Some("random"),
                "order of prompts",
            ),
            key(
                "stage",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "the current stage",
            ),
            key(
                "max_difficulty",
                K::Num,
                L::Step,
                R::None,
                true,
                None,
                "train only on prompts at most this difficult (may follow a schedule)",
            ),
        ],
    },
    SectionSchema {
        name: "optimizer",
        principal: None,
        closed: true,
        level: L::Step,
        doc: "optimizer, learning-rate schedule and gradient clipping",
        keys: &[
            key(
                "name",
                K::Sym(&["adamw", "adam", "sgd"]),
                L::Step,
                R::None,
                true,
                Some("adamw"),
                "the optimizer",
            ),
            key(
                "lr",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("1e-3"),
                "learning rate (may be a schedule of `step`)",
            ),
            key(
                "weight_decay",
                K::Num,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0.01"),
                "decoupled weight decay",
            ),
            key(
                "beta1",
                K::Num,
                L::Step,
                R::ClosedOpen(0.0, 1.0),
                true,
                Some("0.9"),
                "first-moment decay",
            ),
            key(
                "beta2",
                K::Num,
                L::Step,
                R::ClosedOpen(0.0, 1.0),
                true,
                Some("0.999"),
                "second-moment decay",
            ),
            key(
                "eps",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("1e-8"),
                "denominator epsilon",
            ),
            key(
                "grad_clip",
                K::Num,
                L::Step,
                R::Above(0.0),
                true,
                Some("1.0"),
                "global gradient-norm clip",
            ),
            key(
                "warmup",
                K::Int,
                L::Step,
                R::AtLeast(0.0),
                true,
                Some("0"),
                "linear warm-up steps",
            ),
            key(
                "schedule",
                K::Sym(&["constant", "cosine", "linear"]),
                L::Step,
                R::None,
                true,
                Some("constant"),
                "learning-rate decay after warm-up",
            ),
            key(
                "steps",
                K::Int,
                L::Step,
                R::AtLeast(1.0),
                true,
                Some("100"),
                "training steps",
            ),
        ],
    },
    SectionSchema {
        name: "state",
        principal: None,
        closed: false,
        level: L::Step,
        doc: "host-side variables and their initial values, updated by `update`",
        keys: &[],
    },
    SectionSchema {
        name: "update",
        principal: None,
        closed: false,
        level: L::Batch,
        doc: "new values of state variables after each step",
        keys: &[],
    },
    SectionSchema {
        name: "monitor",
        principal: None,
        closed: false,
        level: L::Batch,
        doc: "metrics to log every step",
        keys: &[],
    },
];

pub fn section(name: &str) -> Option<&'static SectionSchema> {
    SECTIONS.iter().find(|s| s.name == name)
}

/// Guard actions: `name`, whether it takes an argument, its description.
pub const ACTIONS: &[(&str, Option<Ty0>, &str)] = &[
    (
        "warn",
        None,
        "log a warning (optionally with a message string)",
    ),
    ("stop", None, "stop training and write a final checkpoint"),
    (
        "rollback",
        Some(Ty0::Int),
        "restore the checkpoint from N steps ago",
    ),
    ("skip", None, "skip the optimizer step of this batch"),
];
