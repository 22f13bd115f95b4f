//! Environments: where a run's problems come from and how a response is
//! judged. One trait, [`Environment`], one registry, [`ENVIRONMENTS`]
//! (`task.name` → how to open it), and one file per environment:
//! [`arithmetic`] (with checkable steps, compact or in a chat model's
//! words), [`countdown`], and [`jsonl`] (a user's data with a verifier).
//! A new task is one file and one row of the registry. Beside them: the
//! external judges ([`judge`]) and the one module that runs external
//! programs ([`process`]).
//!
//! May import: `crate::error`, `crate::settings` and `keel-model`
//! (tokenizers, the RNG); nothing else of the runtime.

pub mod arithmetic;
pub mod countdown;
pub mod jsonl;
pub mod judge;
pub mod parquet;
pub mod process;

use keel_model::tokenizer::Tokenizer;

use crate::error::Result;
use crate::settings::Settings;

/// One problem.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Problem {
    /// The prompt text (for a conversation, its last message's content).
    pub prompt: String,
    /// A JSONL record's conversation (`"prompt": [{"role": ..., "content":
    /// ...}, ...]`), put through the checkpoint's chat template; `None` for
    /// a plain prompt.
    pub messages: Option<Vec<keel_model::chat::Message>>,
    /// The reference answer (the verifier's target).
    pub answer: String,
    /// A worked solution, the supervised target of the warm start.
    pub solution: String,
    /// A difficulty in [0, 1], for curricula.
    pub difficulty: f64,
    /// verl's `data_source` and `extra_info` of the row, passed to judges.
    pub data_source: Option<String>,
    pub extra_info: Option<serde_json::Value>,
}

/// The verdict on one response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub correct: bool,
    /// The response has the task's answer format.
    pub format_ok: bool,
    /// Process rewards: (character offset in the response of the character
    /// that closes a step, 1 if the step is right else 0).
    pub steps: Vec<(usize, f64)>,
    /// The task's rule judge (`judge` without `--judge`), where it has one.
    pub judge: Option<f64>,
}

impl Problem {
    /// The prompt's ids: its text or conversation through `tok` (and the
    /// chat template the tokenizer carries, if any).
    pub fn prompt_ids(&self, tok: &Tokenizer) -> std::result::Result<Vec<u32>, String> {
        tok.prompt(&self.prompt, self.messages.as_deref())
    }
}

/// Held-out problems come from a different stream of the same seed.
pub const EVAL_STREAM: u64 = 1;
pub const TRAIN_STREAM: u64 = 0;
/// The warm start's supervised problems.
pub const WARM_STREAM: u64 = 2;
/// The problem stream rehearsal samples are drawn from.
pub const REHEARSAL_STREAM: u64 = 3;

/// A source of problems and a judge of responses (single-turn).
pub trait Environment: Send + Sync {
    /// Problem `i` of `stream` (a pure function of the environment's
    /// settings, the stream and `i`).
    fn problem(&self, stream: u64, i: u64) -> Problem;
    /// The verdict on one response to `problem`.
    fn verify(&self, problem: &Problem, response: &str) -> Verdict;
    /// What identifies the environment's problems (the warm-start cache key).
    fn describe(&self) -> String;
    /// Every problem, where the environment is a finite dataset (`None`:
    /// generated without end).
    fn problems(&self) -> Option<&[Problem]> {
        None
    }
    /// Whether its verdicts carry a rule judge's score (`Verdict::judge`),
    /// used where a recipe reads `judge` and no `--judge` is given.
    fn has_rule_judge(&self) -> bool {
        false
    }
}

/// What opening an environment may read: the recipe's settings, the run's
/// tokenizer (a JSONL file's prompts are checked against it), and whether
/// the model is a pretrained checkpoint (problems then read in words).
pub struct Context<'a> {
    pub settings: &'a Settings<'a>,
    pub tok: &'a Tokenizer,
    pub pretrained: bool,
}

type Open = fn(&Context) -> Result<Box<dyn Environment>>;

/// `task.name` → the environment's constructor. The first row is the
/// default.
pub const ENVIRONMENTS: &[(&str, Open)] = &[
    ("arithmetic", arithmetic::open),
    ("countdown", countdown::open),
    ("jsonl", jsonl::open),
];

/// The environment `task.name` names (the checker allows only the
/// registry's names; anything else opens the default).
pub fn open(cx: &Context) -> Result<Box<dyn Environment>> {
    let name = cx.settings.sym("task", "name");
    let open = ENVIRONMENTS
        .iter()
        .find(|(n, _)| Some(*n) == name.as_deref())
        .map_or(ENVIRONMENTS[0].1, |(_, f)| *f);
    open(cx)
}
