//! A user's data: a JSONL file of `{"prompt": ..., "answer": ...}`
//! records (`task.path`), every tenth held out for evaluation, judged by
//! `task.verifier` (`exact`, `numeric`, or `regex`: each record's answer is
//! its own pattern).

use std::collections::HashMap;
use std::fs;

use keel_model::chat::Message;
use keel_model::rng::fnv;

use super::{Context, EVAL_STREAM, Environment, Problem, Verdict};
use crate::error::{Error, Result, codes};

/// How a response is compared with a record's answer.
#[derive(Clone, Debug)]
pub enum Verifier {
    Exact,
    Numeric,
    /// Each record's answer is a regular expression the response must
    /// match (compiled once per distinct pattern).
    Regex(HashMap<String, regex::Regex>),
}

/// The records of a JSONL file and their verifier.
#[derive(Clone, Debug)]
pub struct Jsonl {
    pub problems: Vec<Problem>,
    pub verifier: Verifier,
    /// `jsonl PATH HASH`: the file and its contents.
    desc: String,
}

impl Jsonl {
    pub fn new(problems: Vec<Problem>, verifier: Verifier, desc: String) -> Jsonl {
        Jsonl {
            problems,
            verifier,
            desc,
        }
    }
}

/// `task.name = jsonl`: reads `task.path`, checks that every prompt and
/// solution encodes (and a conversation has a chat template to render it),
/// and compiles `regex` answers.
pub fn open(cx: &Context) -> Result<Box<dyn Environment>> {
    let s = cx.settings;
    let Some(path) = s.path("task", "path") else {
        let mut e = Error::new(
            codes::TASK_SETTING,
            "task `jsonl` needs `task.path`",
            "add `task { name = jsonl, path = \"data.jsonl\" }`",
        )
        .at("task.path");
        e.diagnostics = s.located("task", "name", &e);
        return Err(e);
    };
    let (problems, places, hash) = if path.ends_with(".parquet") {
        load_parquet(&path)?
    } else {
        let text = fs::read_to_string(&path).map_err(|e| {
            Error::new(
                codes::DATA_UNREADABLE,
                format!("cannot read `{path}`: {e}"),
                "check the path in `task.path` (relative to the working directory)",
            )
            .at(path.clone())
        })?;
        let problems = load_jsonl(&path, &text)?;
        let places = (1..=problems.len())
            .map(|k| format!("{path}:{k}"))
            .collect();
        (problems, places, fnv(text.as_bytes()))
    };
    let chat = cx.tok.chat().is_some();
    // With `task.chat = off` a conversation's last message is the prompt.
    let plain = s.sym("task", "chat").as_deref() == Some("off");
    for (p, at) in problems.iter().zip(&places) {
        let at = at.clone();
        if p.messages.is_some() && !chat && !plain {
            return Err(Error::new(
                codes::DATA_RECORD,
                "the prompt is a conversation, but the run has no chat template to render it",
                "give the prompt as one string, or load an instruct checkpoint with a chat template (`model.init`) and leave `task.chat` on `auto`",
            )
            .at(at));
        }
        if let Err(c) = p.prompt_ids(cx.tok).and(cx.tok.encode(&p.solution)) {
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
        Some("regex") => Verifier::Regex(patterns(&path, &problems)?),
        _ => Verifier::Exact,
    };
    let desc = format!("jsonl {path} {hash:x}");
    Ok(Box::new(Jsonl::new(problems, verifier, desc)))
}

/// verl's parquet layout (`super::parquet`): the problems, where each came
/// from (`PATH: row N`), and a hash of the file.
fn load_parquet(path: &str) -> Result<(Vec<Problem>, Vec<String>, u64)> {
    let rows = super::parquet::records(path)?;
    if rows.is_empty() {
        return Err(Error::new(
            codes::DATA_RECORD,
            "the file has no rows",
            "write the dataset's rows (verl's `examples/data_preprocess` scripts write `train.parquet`)",
        )
        .at(path.to_string()));
    }
    let bytes = fs::read(path).unwrap_or_default();
    let mut problems = Vec::new();
    let mut places = Vec::new();
    for (at, v) in rows {
        problems.push(record(&v, &at)?);
        places.push(at);
    }
    Ok((problems, places, fnv(&bytes)))
}

/// Each record's answer compiled as a regular expression; the first that
/// does not compile is an error at its line.
fn patterns(path: &str, problems: &[Problem]) -> Result<HashMap<String, regex::Regex>> {
    let mut out = HashMap::new();
    for (k, p) in problems.iter().enumerate() {
        if out.contains_key(&p.answer) {
            continue;
        }
        let re = regex::Regex::new(&p.answer).map_err(|e| {
            Error::new(
                codes::TASK_SETTING,
                format!("the answer of record {} is not a regex: {e}", k + 1),
                "with `verifier = regex` every answer is a regular expression",
            )
            .at(format!("{path}:{}", k + 1))
        })?;
        out.insert(p.answer.clone(), re);
    }
    Ok(out)
}

impl Environment for Jsonl {
    /// Held-out problems: every tenth record; training: the rest.
    fn problem(&self, stream: u64, i: u64) -> Problem {
        let problems = &self.problems;
        let n = problems.len().max(1) as u64;
        let held: Vec<usize> = (0..problems.len()).filter(|k| k % 10 == 9).collect();
        let train: Vec<usize> = (0..problems.len()).filter(|k| k % 10 != 9).collect();
        let pool = if stream == EVAL_STREAM && !held.is_empty() {
            &held
        } else if !train.is_empty() {
            &train
        } else {
            return problems.get((i % n) as usize).cloned().unwrap_or_default();
        };
        let k = pool[(i % pool.len() as u64) as usize];
        problems.get(k).cloned().unwrap_or_default()
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        let got = response.trim();
        let correct = match &self.verifier {
            Verifier::Exact => got == problem.answer.trim(),
            Verifier::Numeric => match (got.parse::<f64>(), problem.answer.trim().parse::<f64>()) {
                (Ok(a), Ok(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                _ => false,
            },
            Verifier::Regex(res) => res.get(&problem.answer).is_some_and(|re| re.is_match(got)),
        };
        Verdict {
            correct,
            format_ok: !got.is_empty(),
            steps: Vec::new(),
            judge: None,
        }
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn problems(&self) -> Option<&[Problem]> {
        Some(&self.problems)
    }
}

/// A record's `prompt` given as messages: objects with a string `role` and
/// a string `content` (other fields pass to the template as they are).
fn conversation(list: &[serde_json::Value], at: &str) -> Result<Vec<Message>> {
    let bad = |k: usize, what: &str| {
        Error::new(
            codes::DATA_RECORD,
            format!("message {k} of `prompt` {what}"),
            "write the conversation as [{\"role\": \"user\", \"content\": \"...\"}, ...], or the prompt as one string",
        )
        .at(at.to_string())
    };
    if list.is_empty() {
        return Err(bad(0, "is missing: the conversation is empty"));
    }
    for (k, m) in list.iter().enumerate() {
        if !m.is_object() {
            return Err(bad(k, "is not an object"));
        }
        if !m.get("role").is_some_and(serde_json::Value::is_string) {
            return Err(bad(k, "has no string `role`"));
        }
        if !m.get("content").is_some_and(serde_json::Value::is_string) {
            return Err(bad(k, "has no string `content`"));
        }
    }
    Ok(list.to_vec())
}

/// Read a JSONL file of `{"prompt": ..., "answer": ...}` records (an optional
/// `"solution"` is the warm-start target; the answer otherwise). A prompt is
/// a string, or a conversation (a list of `{"role", "content"}` messages)
/// for a checkpoint's chat template.
pub fn load_jsonl(path: &str, text: &str) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{path}:{}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Error::new(
                codes::DATA_RECORD,
                format!("line is not JSON: {e}"),
                "each line must be one JSON object such as {\"prompt\": \"2+2=\", \"answer\": \"4\"}",
            )
            .at(at.clone())
        })?;
        out.push(record(&v, &at)?);
    }
    if out.is_empty() {
        return Err(Error::new(
            codes::DATA_RECORD,
            "the file has no records",
            "add one JSON object per line with `prompt` and `answer` fields",
        )
        .at(path.to_string()));
    }
    Ok(out)
}

/// One record (`at`: where it is, for errors) as a problem.
pub fn record(v: &serde_json::Value, at: &str) -> Result<Problem> {
    let at = at.to_string();
    {
        let field = |name: &str| -> Result<Option<String>> {
            match v.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(x)) => Ok(Some(x.to_string())),
                Some(other) => Err(Error::new(
                    codes::DATA_RECORD,
                    format!("field `{name}` must be a string, found {other}"),
                    format!("write `\"{name}\": \"...\"`"),
                )
                .at(at.clone())),
            }
        };
        if !v.is_object() {
            return Err(Error::new(
                codes::DATA_RECORD,
                "line is not a JSON object",
                "each line must be one JSON object such as {\"prompt\": \"2+2=\", \"answer\": \"4\"}",
            )
            .at(at));
        }
        // A conversation: TRL's and verl's chat format.
        let messages = match v.get("prompt") {
            Some(serde_json::Value::Array(list)) => Some(conversation(list, &at)?),
            _ => None,
        };
        let prompt = match &messages {
            Some(m) => m
                .last()
                .and_then(|m| m.get("content"))
                .and_then(serde_json::Value::as_str)
                .map(String::from),
            None => field("prompt")?,
        }
        .ok_or_else(|| {
            Error::new(
                codes::DATA_RECORD,
                "record has no `prompt` field",
                "add `\"prompt\": \"...\"` to the record",
            )
            .at(at.clone())
        })?;
        let answer = field("answer")?.ok_or_else(|| {
            Error::new(
                codes::DATA_RECORD,
                "record has no `answer` field",
                "add `\"answer\": \"...\"` to the record",
            )
            .at(at.clone())
        })?;
        let solution = field("solution")?.unwrap_or_else(|| answer.clone());
        let difficulty = v.get("difficulty").and_then(|d| d.as_f64()).unwrap_or(0.5);
        // verl's fields, passed to a judge as they are.
        let data_source = v
            .get("data_source")
            .and_then(serde_json::Value::as_str)
            .map(String::from);
        let extra_info = v.get("extra_info").cloned();
        Ok(Problem {
            messages,
            prompt,
            answer,
            solution,
            difficulty,
            data_source,
            extra_info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_the_line() {
        let ok = load_jsonl(
            "d.jsonl",
            "{\"prompt\":\"1+1=\",\"answer\":\"2\"}\n\n{\"prompt\":\"2+2=\",\"answer\":4}\n",
        )
        .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].answer, "4");
        let e = load_jsonl(
            "d.jsonl",
            "{\"prompt\":\"1+1=\",\"answer\":\"2\"}\n{\"prompt\":\"x\"}\n",
        )
        .expect_err("missing answer");
        assert_eq!(e.location.as_deref(), Some("d.jsonl:2"));
        assert_eq!(e.code, codes::DATA_RECORD);
        let e = load_jsonl("d.jsonl", "not json\n").expect_err("bad line");
        assert_eq!(e.location.as_deref(), Some("d.jsonl:1"));
        let e =
            load_jsonl("d.jsonl", "{\"prompt\":[1],\"answer\":\"2\"}\n").expect_err("bad field");
        assert!(e.message.contains("`prompt`"), "{e}");
    }

    #[test]
    fn conversations_in_jsonl() {
        let ok = load_jsonl(
            "c.jsonl",
            "{\"prompt\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"1+1?\"}],\"answer\":\"2\"}\n",
        )
        .expect("valid");
        assert_eq!(ok[0].prompt, "1+1?");
        assert_eq!(ok[0].messages.as_ref().map(Vec::len), Some(2));
        for (line, what) in [
            ("{\"prompt\":[],\"answer\":\"2\"}", "empty"),
            (
                "{\"prompt\":[{\"content\":\"x\"}],\"answer\":\"2\"}",
                "`role`",
            ),
            (
                "{\"prompt\":[{\"role\":\"user\",\"content\":3}],\"answer\":\"2\"}",
                "`content`",
            ),
            ("{\"prompt\":[\"hi\"],\"answer\":\"2\"}", "not an object"),
        ] {
            let e = load_jsonl(
                "c.jsonl",
                &format!("{{}}\n{line}\n").replacen(
                    "{}\n",
                    "{\"prompt\":\"a\",\"answer\":\"b\"}\n",
                    1,
                ),
            )
            .expect_err(what);
            assert_eq!(e.location.as_deref(), Some("c.jsonl:2"), "{what}");
            assert!(e.message.contains(what), "{what}: {e}");
        }
    }

    /// `verifier = regex`: each record's answer is its own pattern (it was
    /// the first record's for every record).
    #[test]
    fn each_record_is_judged_by_its_own_pattern() {
        let problems = load_jsonl(
            "r.jsonl",
            "{\"prompt\":\"a\",\"answer\":\"^4$\"}\n{\"prompt\":\"b\",\"answer\":\"^(7|seven)$\"}\n",
        )
        .expect("valid");
        let env = Jsonl::new(
            problems.clone(),
            Verifier::Regex(patterns("r.jsonl", &problems).expect("patterns")),
            String::new(),
        );
        assert!(env.verify(&problems[0], "4").correct);
        assert!(!env.verify(&problems[0], "seven").correct);
        assert!(env.verify(&problems[1], "seven").correct);
        assert!(env.verify(&problems[1], " 7 ").correct);
        assert!(!env.verify(&problems[1], "4").correct);
        let bad = load_jsonl(
            "r.jsonl",
            "{\"prompt\":\"a\",\"answer\":\"4\"}\n{\"prompt\":\"b\",\"answer\":\"(\"}\n",
        )
        .expect("valid");
        let e = patterns("r.jsonl", &bad).expect_err("not a regex");
        assert_eq!(e.location.as_deref(), Some("r.jsonl:2"));
        assert_eq!(e.code, codes::TASK_SETTING);
    }
}
