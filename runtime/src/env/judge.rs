//! External judges: a program given on the command line (`keel run R
//! --judge 'python3 judge.py'`) scores each response, one JSON line in, one
//! line out (a number, or an object with a numeric `score`), through
//! [`process`](super::process). `--judge-workers N` runs N copies and
//! spreads a step's requests over them. A judge that exits, hangs past the
//! timeout, or answers something that is not a finite number fails the run
//! (E0711, naming the step and row and quoting the answer or the judge's
//! last stderr lines), or with `--judge-failures skip` scores the sample 0
//! and flags it, as verl's reward manager does (the program is started
//! again for the next request). Every answer is recorded in the run
//! directory (`judge.jsonl`), and a resumed run replays the record instead
//! of asking again.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::process::{Failure, LineProcess};
use crate::error::{Error, Result, codes};

/// What to do when the judge fails on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop the run with E0711 (the default).
    Error,
    /// Score the sample 0 and flag it (`judge_skipped`), as verl does.
    Skip,
}

/// `--judge`, `--judge-workers`, `--judge-timeout`, `--judge-failures`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeConfig {
    pub command: String,
    pub workers: usize,
    /// Seconds to wait for one answer.
    pub timeout_s: f64,
    pub on_failure: OnFailure,
}

/// One response to score.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `STEP/ROW`.
    pub id: String,
    /// The prompt's text, or its conversation (a list of messages).
    pub prompt: Value,
    pub response: String,
    pub answer: Option<String>,
    pub data_source: Option<String>,
    pub extra_info: Option<Value>,
}

impl Request {
    fn line(&self) -> String {
        json!({
            "id": self.id,
            "prompt": self.prompt,
            "response": self.response,
            "answer": self.answer,
            "data_source": self.data_source,
            "extra_info": self.extra_info,
        })
        .to_string()
    }
}

/// A judge's score of one response.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    pub score: f64,
    /// The judge failed on it (`--judge-failures skip`): scored 0.
    pub skipped: bool,
}

/// A recorded answer: the request it scored (a hash of its prompt, answer
/// and response) and the
/// score, also as its bit pattern (`bits`: what a replay reads, so it is
/// the answer to the last bit whatever a JSON parser rounds).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Recorded {
    id: String,
    hash: String,
    score: f64,
    bits: u64,
    skipped: bool,
}

/// The judge processes and the record of their answers.
pub struct Judges {
    pub cfg: JudgeConfig,
    workers: Vec<Option<LineProcess>>,
    record: HashMap<String, Recorded>,
    record_path: PathBuf,
}

/// What a recorded answer must match to be replayed: the request's prompt,
/// answer and response (FNV-1a).
fn hash(r: &Request) -> String {
    let key = json!([r.prompt, r.answer, r.response]).to_string();
    format!("{:016x}", keel_model::rng::fnv(key.as_bytes()))
}

impl Judges {
    /// Start `cfg.workers` judges; the record at `record_path` is read
    /// (`resume`) or started afresh.
    pub fn open(cfg: JudgeConfig, record_path: &Path, resume: bool) -> Result<Judges> {
        let mut record = HashMap::new();
        if resume && let Ok(text) = fs::read_to_string(record_path) {
            for line in text.lines() {
                if let Ok(r) = serde_json::from_str::<Recorded>(line) {
                    record.insert(r.id.clone(), r);
                }
            }
        } else {
            let _ = fs::remove_file(record_path);
        }
        let mut workers = Vec::new();
        for _ in 0..cfg.workers.max(1) {
            workers.push(Some(spawn(&cfg.command)?));
        }
        Ok(Judges {
            cfg,
            workers,
            record,
            record_path: record_path.to_path_buf(),
        })
    }

    /// Score every request: from the record where it holds the same
    /// response, else by the judges (spread over the workers, each asked
    /// in turn); new answers are appended to the record.
    pub fn score(&mut self, requests: &[Request]) -> Result<Vec<Score>> {
        let mut out: Vec<Option<Score>> = requests
            .iter()
            .map(|r| {
                self.record
                    .get(&r.id)
                    .filter(|x| x.hash == hash(r))
                    .map(|x| Score {
                        score: f64::from_bits(x.bits),
                        skipped: x.skipped,
                    })
            })
            .collect();
        let todo: Vec<usize> = (0..requests.len()).filter(|&i| out[i].is_none()).collect();
        let n = self.workers.len().max(1);
        let timeout = Duration::from_secs_f64(self.cfg.timeout_s.max(0.001));
        let (cfg, workers) = (&self.cfg, &mut self.workers);
        let results: Vec<Vec<(usize, Result<Score>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter_mut()
                .enumerate()
                .map(|(w, slot)| {
                    let mine: Vec<usize> = todo.iter().copied().skip(w).step_by(n).collect();
                    s.spawn(move || ask_all(cfg, slot, &mine, requests, timeout))
                })
                .collect();
            handles
                .into_iter()
                .zip(0..)
                .map(|(h, w)| {
                    h.join().unwrap_or_else(|_| {
                        // A worker that panicked: its requests fail.
                        todo.iter()
                            .copied()
                            .skip(w)
                            .step_by(n)
                            .map(|i| {
                                let f = Failure::Io("the judge's worker thread failed".into());
                                (i, Err(judge_error(&cfg.command, &requests[i].id, &f, None)))
                            })
                            .collect()
                    })
                })
                .collect()
        });
        let mut first_error = None;
        for (i, r) in results.into_iter().flatten() {
            match r {
                Ok(s) => out[i] = Some(s),
                Err(e) => {
                    // The earliest request's error.
                    if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_error = Some((i, e));
                    }
                }
            }
        }
        let mut lines = String::new();
        for &i in &todo {
            if let Some(s) = out[i] {
                let r = Recorded {
                    id: requests[i].id.clone(),
                    hash: hash(&requests[i]),
                    score: s.score,
                    bits: s.score.to_bits(),
                    skipped: s.skipped,
                };
                lines.push_str(&serde_json::to_string(&r).unwrap_or_default());
                lines.push('\n');
                self.record.insert(r.id.clone(), r);
            }
        }
        self.append(&lines)?;
        if let Some((_, e)) = first_error {
            return Err(e);
        }
        Ok(out
            .into_iter()
            .map(|s| {
                s.unwrap_or(Score {
                    score: 0.0,
                    skipped: true,
                })
            })
            .collect())
    }

    fn append(&self, lines: &str) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.record_path)
            .and_then(|mut f| f.write_all(lines.as_bytes()).map(|_| f))
            .map_err(|e| {
                Error::new(
                    codes::CHECKPOINT,
                    format!("cannot write `{}`: {e}", self.record_path.display()),
                    "check the run directory's permissions and free space",
                )
            })?;
        let _ = f.flush();
        Ok(())
    }
}

fn spawn(command: &str) -> Result<LineProcess> {
    LineProcess::spawn(command).map_err(|f| judge_error(command, "start", &f, None))
}

/// One worker's requests, in turn. With `skip`, a failed request scores
/// 0 (flagged) and the judge is started again; otherwise the worker stops
/// at its first failure.
fn ask_all(
    cfg: &JudgeConfig,
    slot: &mut Option<LineProcess>,
    mine: &[usize],
    requests: &[Request],
    timeout: Duration,
) -> Vec<(usize, Result<Score>)> {
    let mut out = Vec::new();
    for &i in mine {
        let r = &requests[i];
        let proc = match slot {
            Some(p) => p,
            None => match spawn(&cfg.command) {
                Ok(p) => slot.insert(p),
                Err(e) => {
                    out.push((i, Err(e)));
                    return out;
                }
            },
        };
        let failed = match proc.ask(&r.line(), timeout) {
            Ok(answer) => match parse_score(&answer) {
                Some(score) => {
                    out.push((
                        i,
                        Ok(Score {
                            score,
                            skipped: false,
                        }),
                    ));
                    continue;
                }
                None => judge_error(
                    &cfg.command,
                    &r.id,
                    &Failure::Io(String::new()),
                    Some(&answer),
                ),
            },
            Err(f) => judge_error(&cfg.command, &r.id, &f, None),
        };
        // The judge is in an unknown state: a fresh one for what follows.
        *slot = None;
        match cfg.on_failure {
            OnFailure::Skip => out.push((
                i,
                Ok(Score {
                    score: 0.0,
                    skipped: true,
                }),
            )),
            OnFailure::Error => {
                out.push((i, Err(failed)));
                return out;
            }
        }
    }
    out
}

/// A judge's answer as a score: a number, or an object with a numeric
/// `score`; finite.
pub fn parse_score(answer: &str) -> Option<f64> {
    let t = answer.trim();
    let x = match t.parse::<f64>() {
        Ok(x) => x,
        Err(_) => match serde_json::from_str::<Value>(t).ok()? {
            Value::Number(n) => n.as_f64()?,
            Value::Object(o) => o.get("score")?.as_f64()?,
            _ => return None,
        },
    };
    x.is_finite().then_some(x)
}

/// E0711 for request `id` (`STEP/ROW`, or what was being done).
fn judge_error(command: &str, id: &str, f: &Failure, answer: Option<&str>) -> Error {
    let at = match id.split_once('/') {
        Some((step, row)) => format!("at step {step}, row {row}"),
        None => format!("while trying to {id} it"),
    };
    let (what, detail) = match (answer, f) {
        (Some(a), _) => (
            "answered something that is not a finite number".to_string(),
            format!("its answer: `{}`", a.chars().take(200).collect::<String>()),
        ),
        (None, Failure::Timeout) => (
            "did not answer within the timeout (--judge-timeout)".to_string(),
            String::new(),
        ),
        (None, Failure::Exited(stderr)) => (
            "exited".to_string(),
            if stderr.is_empty() {
                "it wrote nothing to stderr".to_string()
            } else {
                format!("its last stderr lines:\n{stderr}")
            },
        ),
        (None, Failure::Io(e)) => ("could not be used".to_string(), e.clone()),
    };
    let mut message = format!("the judge `{command}` {what} {at}");
    if !detail.is_empty() {
        message.push_str(&format!("; {detail}"));
    }
    Error::new(
        codes::JUDGE,
        message,
        "a judge reads one JSON object per line and writes one line per request: a number, or {\"score\": N} (docs/runtime.md); fix the judge and `keel run --resume RUN_DIR` from the last checkpoint (a resumed run keeps the command and --judge-* settings it started with), or start the run with --judge-failures skip to score failures 0",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_numbers_or_objects_with_a_numeric_score() {
        assert_eq!(parse_score(" 0.75\n"), Some(0.75));
        assert_eq!(parse_score("{\"score\": 1, \"why\": \"ok\"}"), Some(1.0));
        assert_eq!(parse_score("banana"), None);
        assert_eq!(parse_score("nan"), None);
        assert_eq!(parse_score("{\"score\": \"high\"}"), None);
        assert_eq!(parse_score("[1]"), None);
    }
}
