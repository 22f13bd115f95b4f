//! Verifiable tasks: procedurally generated arithmetic and countdown problems
//! (a pure function of the seed and the problem index), and JSONL files with a
//! verifier.

use crate::error::{Error, codes};
use crate::rng::Rng;

/// One problem.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Problem {
    /// The prompt text (for a conversation, its last message's content).
    pub prompt: String,
    /// A JSONL record's conversation (`"prompt": [{"role": ..., "content":
    /// ...}, ...]`), put through the checkpoint's chat template; `None` for
    /// a plain prompt.
    pub messages: Option<Vec<crate::chat::Message>>,
    /// The reference answer (the verifier's target).
    pub answer: String,
    /// A worked solution, the supervised target of the warm start.
    pub solution: String,
    /// A difficulty in [0, 1], for curricula.
    pub difficulty: f64,
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
}

#[derive(Clone, Debug)]
pub enum Verifier {
    Exact,
    Numeric,
    Regex(regex::Regex),
}

/// What the arithmetic task's process reward (`step_reward`) rewards.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Prm {
    /// 1 for a step whose operands, operator and result are right.
    #[default]
    Exact,
    /// 1 for every well-formed step `a+b=c`, right or wrong: an imperfect
    /// PRM that a policy can hack on purpose (PURE's failure mode).
    Format,
    /// 1 for a right step, and for a well-formed wrong one with this
    /// probability (a PRM's false-positive rate): imperfect but informative,
    /// like a learned PRM. The draw is a hash of the problem, the step's
    /// place and its text, so the same step always gets the same score.
    Noisy(f64),
}

#[derive(Clone, Debug)]
pub enum Task {
    Arithmetic {
        seed: u64,
        difficulty: f64,
        prm: Prm,
        /// The problem in words and an answer in a chat model's style
        /// (`\boxed{N}`, "the answer is N", or the last number), for a
        /// pretrained tokenizer; otherwise the compact form `a+b=` →
        /// `a+b=c|c` of the character-level models.
        natural: bool,
    },
    Countdown {
        seed: u64,
        difficulty: f64,
    },
    Data {
        problems: Vec<Problem>,
        verifier: Verifier,
    },
}

/// Held-out problems come from a different stream of the same seed.
pub const EVAL_STREAM: u64 = 1;
pub const TRAIN_STREAM: u64 = 0;

impl Task {
    /// Problem `i` of `stream`.
    pub fn problem(&self, stream: u64, i: u64) -> Problem {
        match self {
            Task::Arithmetic {
                seed,
                difficulty,
                natural,
                ..
            } => {
                let p = arithmetic(&mut Rng::derive(*seed, stream, i), *difficulty);
                if *natural { in_words(p) } else { p }
            }
            Task::Countdown { seed, difficulty } => {
                countdown(&mut Rng::derive(*seed, stream, i), *difficulty)
            }
            Task::Data { problems, .. } => {
                // Held-out problems: every tenth record; training: the rest.
                let n = problems.len().max(1) as u64;
                let held: Vec<usize> = (0..problems.len()).filter(|k| k % 10 == 9).collect();
                let train: Vec<usize> = (0..problems.len()).filter(|k| k % 10 != 9).collect();
                let pool = if stream == EVAL_STREAM && !held.is_empty() {
                    &held
                } else if !train.is_empty() {
                    &train
                } else {
                    return problems
                        .get((i % n) as usize)
                        .cloned()
                        .unwrap_or_else(empty);
                };
                let k = pool[(i % pool.len() as u64) as usize];
                problems.get(k).cloned().unwrap_or_else(empty)
            }
        }
    }

    pub fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        match self {
            Task::Arithmetic {
                prm, natural: true, ..
            } => verify_natural(problem, response, *prm),
            Task::Arithmetic { prm, .. } => verify_arithmetic(problem, response, *prm),
            Task::Countdown { .. } => verify_countdown(problem, response),
            Task::Data { verifier, .. } => {
                let got = response.trim();
                let correct = match verifier {
                    Verifier::Exact => got == problem.answer.trim(),
                    Verifier::Numeric => {
                        match (got.parse::<f64>(), problem.answer.trim().parse::<f64>()) {
                            (Ok(a), Ok(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                            _ => false,
                        }
                    }
                    Verifier::Regex(re) => re.is_match(got),
                };
                Verdict {
                    correct,
                    format_ok: !got.is_empty(),
                    steps: Vec::new(),
                }
            }
        }
    }
}

fn empty() -> Problem {
    Problem::default()
}

/// `a+b-c=` → `a+b=s,s-c=t|t`: left to right, every step written out.
fn arithmetic(r: &mut Rng, difficulty: f64) -> Problem {
    let max_ops = 1 + (difficulty.max(0.0) * 2.0).round() as i64; // 3 at difficulty 1
    let n_ops = r.range(1, max_ops.max(1));
    let top = (10.0 + 10.0 * difficulty.max(0.0)).round() as i64;
    let mut acc = r.range(0, top);
    let mut prompt = acc.to_string();
    let mut steps = Vec::new();
    for _ in 0..n_ops {
        let b = r.range(0, top);
        let plus = r.next_u64().is_multiple_of(2);
        let (op, next) = if plus { ('+', acc + b) } else { ('-', acc - b) };
        prompt.push(op);
        prompt.push_str(&b.to_string());
        steps.push(format!("{acc}{op}{b}={next}"));
        acc = next;
    }
    prompt.push('=');
    let answer = acc.to_string();
    let solution = format!("{}|{}", steps.join(","), answer);
    Problem {
        messages: None,
        prompt,
        answer,
        solution,
        difficulty: n_ops as f64 / max_ops.max(1) as f64,
    }
}

/// Parse a signed integer at the start of `s`; returns (value, bytes used).
fn int_prefix(s: &str) -> Option<(i64, usize)> {
    let b = s.as_bytes();
    let mut k = 0;
    if b.first() == Some(&b'-') {
        k = 1;
    }
    let start = k;
    while k < b.len() && b[k].is_ascii_digit() {
        k += 1;
    }
    if k == start || k - start > 12 {
        return None;
    }
    s[..k].parse().ok().map(|v| (v, k))
}

fn verify_arithmetic(p: &Problem, response: &str, prm: Prm) -> Verdict {
    let (work, final_answer) = match response.rsplit_once('|') {
        Some((w, a)) => (w, Some(a)),
        None => (response, None),
    };
    let correct = final_answer.map(|a| a == p.answer).unwrap_or(false);
    // The operands of the prompt, in order.
    let (operands, ops) = operands_of(p.prompt.trim_end_matches('='));
    let mut steps = Vec::new();
    let mut acc = operands.first().copied();
    let mut offset = 0;
    let mut well_formed = final_answer.is_some();
    let pieces: Vec<&str> = if work.is_empty() {
        Vec::new()
    } else {
        work.split(',').collect()
    };
    for (k, step) in pieces.iter().enumerate() {
        let end = offset + step.len(); // the ',' or '|' after the step
        let parsed = parse_step(step);
        let formed = parsed.is_some();
        let right = match (parsed, acc, operands.get(k + 1), ops.get(k)) {
            (Some((a, op, b, c)), Some(x), Some(&y), Some(&o)) => {
                let truth = if o == '+' { x + y } else { x - y };
                let ok = a == x && op == o && b == y && c == truth;
                acc = Some(truth);
                ok
            }
            (None, ..) => {
                well_formed = false;
                false
            }
            _ => false,
        };
        let rewarded = match prm {
            Prm::Exact => right,
            Prm::Format => formed,
            // FNV's high bits barely depend on the last bytes: SplitMix mixes
            // the hash before it becomes a uniform number.
            Prm::Noisy(fp) => {
                right
                    || (formed && {
                        let h = crate::train::fnv(format!("{}|{k}|{step}", p.prompt).as_bytes());
                        Rng::new(h).uniform() < fp
                    })
            }
        };
        steps.push((end, if rewarded { 1.0 } else { 0.0 }));
        offset = end + 1;
    }
    Verdict {
        correct,
        format_ok: well_formed && pieces.len() == ops.len(),
        steps,
    }
}

/// `a+b=c` or `a-b=c`.
fn parse_step(s: &str) -> Option<(i64, char, i64, i64)> {
    let (a, k) = int_prefix(s)?;
    let op = s[k..].chars().next()?;
    if op != '+' && op != '-' {
        return None;
    }
    let rest = &s[k + 1..];
    let (b, k2) = int_prefix(rest)?;
    let rest = rest[k2..].strip_prefix('=')?;
    let (c, k3) = int_prefix(rest)?;
    (k3 == rest.len()).then_some((a, op, b, c))
}

/// The compact problem in words, with a worked solution in a chat model's
/// style: `17+25-8=` → "What is 17 + 25 - 8? …" and
/// "17 + 25 = 42\n42 - 8 = 34\nThe answer is \boxed{34}."
fn in_words(p: Problem) -> Problem {
    let spaced = |e: &str| {
        let mut out = String::new();
        for (i, c) in e.char_indices() {
            if (c == '+' || c == '-') && i > 0 {
                out.push_str(&format!(" {c} "));
            } else {
                out.push(c);
            }
        }
        out
    };
    let expr = p.prompt.trim_end_matches('=');
    let (work, answer) = p.solution.rsplit_once('|').unwrap_or(("", &p.answer));
    let mut solution: Vec<String> = work
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((l, r)) => format!("{} = {r}", spaced(l)),
            None => s.to_string(),
        })
        .collect();
    solution.push(format!("The answer is \\boxed{{{answer}}}."));
    Problem {
        prompt: format!(
            "What is {}? Work it out step by step, then give the final answer as \\boxed{{N}}.",
            spaced(expr)
        ),
        solution: solution.join("\n"),
        ..p
    }
}

/// A piece of a natural-language response for [`verify_natural`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lex {
    /// An integer; its last byte's offset.
    Int(i64, usize),
    Op(char),
    Eq,
    /// Anything else (words, punctuation, line breaks): equations do not
    /// run across it.
    Other,
}

fn lex(s: &str) -> Vec<Lex> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut k = 0;
    while k < b.len() {
        let c = b[k];
        let prev_int = matches!(out.last(), Some(Lex::Int(..)));
        if c == b' ' || c == b'\t' {
            k += 1;
            continue;
        }
        let negative = c == b'-' && !prev_int && b.get(k + 1).is_some_and(u8::is_ascii_digit);
        if c.is_ascii_digit() || negative {
            match int_prefix(&s[k..]) {
                Some((v, n)) => {
                    out.push(Lex::Int(v, k + n - 1));
                    k += n;
                }
                None => {
                    // An absurdly long number.
                    while k < b.len() && (b[k].is_ascii_digit() || b[k] == b'-') {
                        k += 1;
                    }
                    out.push(Lex::Other);
                }
            }
            continue;
        }
        out.push(match c {
            b'+' => Lex::Op('+'),
            b'-' => Lex::Op('-'),
            b'=' => Lex::Eq,
            _ => Lex::Other,
        });
        k += 1;
    }
    out
}

/// The final answer of a chat-style response: the last `\boxed{N}`, else the
/// number after the last "answer is" / "answer:", else the last number. The
/// second value says whether the answer was marked (boxed or announced).
fn final_answer(response: &str) -> (Option<i64>, bool) {
    let lower = response.to_ascii_lowercase();
    let first_int = |s: &str| {
        lex(s).into_iter().find_map(|l| match l {
            Lex::Int(v, _) => Some(v),
            _ => None,
        })
    };
    if let Some(k) = lower.rfind("\\boxed{") {
        let inner = &response[k + 7..];
        let inner = inner.split('}').next().unwrap_or("");
        return (first_int(inner), true);
    }
    for marker in ["answer is", "answer:"] {
        if let Some(k) = lower.rfind(marker) {
            let v = first_int(&response[k + marker.len()..]);
            if v.is_some() {
                return (v, true);
            }
        }
    }
    let last = lex(response).into_iter().rev().find_map(|l| match l {
        Lex::Int(v, _) => Some(v),
        _ => None,
    });
    (last, false)
}

/// The arithmetic task answered in a chat model's style: correct when the
/// final answer ([`final_answer`]) is right; each equation `a ± b = c` in
/// the text (spaces allowed; not part of a longer expression) is a step,
/// checked in order against the left-to-right solution, its reward at the
/// result's last byte.
fn verify_natural(p: &Problem, response: &str, prm: Prm) -> Verdict {
    let (answer, marked) = final_answer(response);
    let correct = answer.is_some_and(|a| Some(a) == p.answer.parse().ok());
    // The operands and operators of the question.
    let expr: String = p
        .prompt
        .strip_prefix("What is ")
        .and_then(|s| s.split('?').next())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (operands, ops) = operands_of(&expr);
    let toks = lex(response);
    let mut steps = Vec::new();
    let mut acc = operands.first().copied();
    let mut k = 0;
    for w in 0..toks.len().saturating_sub(4) {
        let (Lex::Int(a, _), Lex::Op(op), Lex::Int(b, _), Lex::Eq, Lex::Int(c, end)) =
            (toks[w], toks[w + 1], toks[w + 2], toks[w + 3], toks[w + 4])
        else {
            continue;
        };
        // `17 + 25 - 8 = 34`: the tail of a longer expression is no step.
        if w > 0 && matches!(toks[w - 1], Lex::Op(_)) {
            continue;
        }
        if toks.get(w + 5).is_some_and(|t| matches!(t, Lex::Op(_))) {
            continue;
        }
        let right = match (acc, operands.get(k + 1), ops.get(k)) {
            (Some(x), Some(&y), Some(&o)) => {
                let truth = if o == '+' { x + y } else { x - y };
                acc = Some(truth);
                a == x && op == o && b == y && c == truth
            }
            _ => false,
        };
        let rewarded = match prm {
            Prm::Exact => right,
            Prm::Format => true,
            Prm::Noisy(fp) => {
                right || {
                    let h =
                        crate::train::fnv(format!("{}|{k}|{a}{op}{b}={c}", p.prompt).as_bytes());
                    Rng::new(h).uniform() < fp
                }
            }
        };
        steps.push((end, if rewarded { 1.0 } else { 0.0 }));
        k += 1;
    }
    Verdict {
        correct,
        format_ok: marked,
        steps,
    }
}

/// `17+25-8` → ([17, 25, 8], ['+', '-']).
fn operands_of(body: &str) -> (Vec<i64>, Vec<char>) {
    let mut operands = Vec::new();
    let mut ops = Vec::new();
    let mut rest = body;
    if let Some((v, k)) = int_prefix(rest) {
        operands.push(v);
        rest = &rest[k..];
    }
    while let Some(c) = rest.chars().next() {
        ops.push(c);
        rest = &rest[c.len_utf8()..];
        match int_prefix(rest) {
            Some((v, k)) => {
                operands.push(v);
                rest = &rest[k..];
            }
            None => break,
        }
    }
    (operands, ops)
}

/// Numbers and a target: `3,5,7:22=` → an expression such as `3*5+7`.
fn countdown(r: &mut Rng, difficulty: f64) -> Problem {
    let n = (3 + (difficulty.max(0.0)).round() as i64).clamp(3, 5) as usize;
    let nums: Vec<i64> = (0..n).map(|_| r.range(1, 9)).collect();
    // Combine a random subset (at least two) left to right with random ops.
    let used = r.range(2, n as i64) as usize;
    let mut expr = nums[0].to_string();
    let mut value = nums[0];
    for &x in &nums[1..used] {
        let op = match r.next_u64() % 3 {
            0 => '+',
            1 if value - x >= 0 => '-',
            _ => '*',
        };
        value = match op {
            '+' => value + x,
            '-' => value - x,
            _ => value * x,
        };
        // Left to right: parenthesise a product of a sum.
        expr = if op == '*' && (expr.contains('+') || expr.contains('-')) {
            format!("({expr})*{x}")
        } else {
            format!("{expr}{op}{x}")
        };
    }
    let list: Vec<String> = nums.iter().map(|x| x.to_string()).collect();
    Problem {
        messages: None,
        prompt: format!("{}:{}=", list.join(","), value),
        answer: value.to_string(),
        solution: expr,
        difficulty: used as f64 / n as f64,
    }
}

fn verify_countdown(p: &Problem, response: &str) -> Verdict {
    let Some((list, _)) = p.prompt.split_once(':') else {
        return Verdict::default();
    };
    let mut avail: Vec<i64> = list.split(',').filter_map(|x| x.parse().ok()).collect();
    let target: Option<i64> = p.answer.parse().ok();
    let mut parser = Expr {
        s: response.as_bytes(),
        k: 0,
        used: Vec::new(),
    };
    let value = parser.sum();
    let format_ok = value.is_some() && parser.k == response.len();
    let mut numbers_ok = true;
    for u in &parser.used {
        match avail.iter().position(|a| a == u) {
            Some(i) => {
                avail.swap_remove(i);
            }
            None => numbers_ok = false,
        }
    }
    Verdict {
        correct: format_ok && numbers_ok && value.is_some() && value == target,
        format_ok,
        steps: Vec::new(),
    }
}

/// Integer expressions with + - * / (exact division) and parentheses.
struct Expr<'a> {
    s: &'a [u8],
    k: usize,
    used: Vec<i64>,
}

impl Expr<'_> {
    fn sum(&mut self) -> Option<i64> {
        let mut v = self.product()?;
        while let Some(&c) = self.s.get(self.k) {
            if c != b'+' && c != b'-' {
                break;
            }
            self.k += 1;
            let w = self.product()?;
            v = if c == b'+' {
                v.checked_add(w)?
            } else {
                v.checked_sub(w)?
            };
        }
        Some(v)
    }

    fn product(&mut self) -> Option<i64> {
        let mut v = self.atom()?;
        while let Some(&c) = self.s.get(self.k) {
            if c != b'*' && c != b'/' {
                break;
            }
            self.k += 1;
            let w = self.atom()?;
            v = if c == b'*' {
                v.checked_mul(w)?
            } else if w != 0 && v % w == 0 {
                v / w
            } else {
                return None;
            };
        }
        Some(v)
    }

    fn atom(&mut self) -> Option<i64> {
        if self.s.get(self.k) == Some(&b'(') {
            self.k += 1;
            let v = self.sum()?;
            if self.s.get(self.k) != Some(&b')') {
                return None;
            }
            self.k += 1;
            return Some(v);
        }
        let start = self.k;
        while self.s.get(self.k).is_some_and(|c| c.is_ascii_digit()) && self.k - start < 6 {
            self.k += 1;
        }
        if self.k == start {
            return None;
        }
        let v: i64 = std::str::from_utf8(&self.s[start..self.k])
            .ok()?
            .parse()
            .ok()?;
        self.used.push(v);
        Some(v)
    }
}

/// A record's `prompt` given as messages: objects with a string `role` and
/// a string `content` (other fields pass to the template as they are).
fn conversation(list: &[serde_json::Value], at: &str) -> Result<Vec<crate::chat::Message>, Error> {
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
pub fn load_jsonl(path: &str, text: &str) -> Result<Vec<Problem>, Error> {
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
        let field = |name: &str| -> Result<Option<String>, Error> {
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
        out.push(Problem {
            messages,
            prompt,
            answer,
            solution,
            difficulty,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_reproducible_and_its_solutions_verify() {
        let t = Task::Arithmetic {
            seed: 7,
            difficulty: 1.0,
            prm: Prm::Exact,
            natural: false,
        };
        assert_eq!(t.problem(TRAIN_STREAM, 3), t.problem(TRAIN_STREAM, 3));
        assert_ne!(t.problem(TRAIN_STREAM, 3), t.problem(EVAL_STREAM, 3));
        for i in 0..200 {
            let p = t.problem(TRAIN_STREAM, i);
            let v = t.verify(&p, &p.solution);
            assert!(v.correct && v.format_ok, "{p:?} {v:?}");
            assert!(v.steps.iter().all(|s| s.1 == 1.0));
        }
    }

    #[test]
    fn arithmetic_steps_are_checked_one_by_one() {
        let p = Problem {
            messages: None,
            prompt: "7+12-5=".into(),
            answer: "14".into(),
            solution: "7+12=19,19-5=14|14".into(),
            difficulty: 1.0,
        };
        let t = Task::Arithmetic {
            seed: 0,
            difficulty: 1.0,
            prm: Prm::Exact,
            natural: false,
        };
        let v = t.verify(&p, "7+12=18,18-5=13|13");
        assert!(!v.correct && v.format_ok);
        assert_eq!(v.steps, vec![(7, 0.0), (15, 0.0)]);
        // The hackable PRM rewards the same wrong steps for their form
        // alone, and still not a malformed one; correctness is unchanged.
        let hackable = Task::Arithmetic {
            seed: 0,
            difficulty: 1.0,
            prm: Prm::Format,
            natural: false,
        };
        let v = hackable.verify(&p, "7+12=18,18-5=13|13");
        assert!(!v.correct && v.format_ok);
        assert_eq!(v.steps, vec![(7, 1.0), (15, 1.0)]);
        let v = hackable.verify(&p, "7+12=18,oops|13");
        assert_eq!(v.steps, vec![(7, 1.0), (12, 0.0)]);
        assert!(!v.correct);
        // The noisy PRM: right steps always 1; wrong well-formed steps 1 at
        // its false-positive rate (0 and 1 are `exact` and `format`), the
        // same score for the same step every time.
        let noisy = |fp| Task::Arithmetic {
            seed: 0,
            difficulty: 1.0,
            prm: Prm::Noisy(fp),
            natural: false,
        };
        assert_eq!(
            noisy(0.0).verify(&p, "7+12=18,18-5=13|13").steps,
            vec![(7, 0.0), (15, 0.0)]
        );
        assert_eq!(
            noisy(1.0).verify(&p, "7+12=18,18-5=13|13").steps,
            vec![(7, 1.0), (15, 1.0)]
        );
        assert_eq!(
            noisy(0.5).verify(&p, "7+12=19,19-5=14|14").steps,
            vec![(7, 1.0), (15, 1.0)]
        );
        let wrong: Vec<String> = (0..400)
            .map(|x| format!("7+12={x}"))
            .filter(|s| s != "7+12=19")
            .collect();
        let hits = wrong
            .iter()
            .filter(|w| noisy(0.3).verify(&p, &format!("{w}|0")).steps[0].1 == 1.0)
            .count();
        let rate = hits as f64 / wrong.len() as f64;
        assert!((rate - 0.3).abs() < 0.07, "false-positive rate {rate}");
        let again = noisy(0.3).verify(&p, "7+12=33|0").steps;
        assert_eq!(noisy(0.3).verify(&p, "7+12=33|0").steps, again);
        let v = t.verify(&p, "7+12=19,19-5=14|14");
        assert_eq!(v.steps, vec![(7, 1.0), (15, 1.0)]);
        let v = t.verify(&p, "7+12=19|14");
        assert!(v.correct && !v.format_ok);
        let v = t.verify(&p, "garbage");
        assert!(!v.correct && !v.format_ok);
    }

    #[test]
    fn countdown_accepts_any_valid_expression() {
        let t = Task::Countdown {
            seed: 3,
            difficulty: 1.0,
        };
        for i in 0..200 {
            let p = t.problem(TRAIN_STREAM, i);
            assert!(t.verify(&p, &p.solution).correct, "{p:?}");
        }
        let p = Problem {
            messages: None,
            prompt: "3,5,7,2:22=".into(),
            answer: "22".into(),
            solution: "3*5+7".into(),
            difficulty: 1.0,
        };
        assert!(t.verify(&p, "7+5*3").correct);
        assert!(!t.verify(&p, "(7+5)*2-2").correct); // 2 used twice
        assert!(!t.verify(&p, "22").correct); // 22 is not given
        assert!(!t.verify(&p, "3*5+7+").format_ok);
    }

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
    fn natural_answers_are_read_as_a_chat_model_writes_them() {
        let t = Task::Arithmetic {
            seed: 7,
            difficulty: 1.0,
            prm: Prm::Exact,
            natural: true,
        };
        for i in 0..200 {
            let p = t.problem(TRAIN_STREAM, i);
            let v = t.verify(&p, &p.solution);
            assert!(v.correct && v.format_ok, "{p:?} {v:?}");
            let ops = p.solution.lines().count() - 1;
            assert_eq!(v.steps.len(), ops, "{p:?}");
            assert!(v.steps.iter().all(|s| s.1 == 1.0), "{p:?} {v:?}");
        }
        // A compact problem in words.
        let worded = |prompt: &str, answer: &str, solution: &str| {
            in_words(Problem {
                prompt: prompt.into(),
                answer: answer.into(),
                solution: solution.into(),
                ..Problem::default()
            })
        };
        let p = worded("7+12-5=", "14", "7+12=19,19-5=14|14");
        assert_eq!(
            p.prompt,
            "What is 7 + 12 - 5? Work it out step by step, then give the final answer as \\boxed{N}."
        );
        assert_eq!(
            p.solution,
            "7 + 12 = 19\n19 - 5 = 14\nThe answer is \\boxed{14}."
        );
        // Steps end at their result's last byte.
        let r = "First, 7 + 12 = 19. Then 19 - 5 = 14. The answer is 14.";
        let v = t.verify(&p, r);
        assert!(v.correct && v.format_ok);
        let first = r.find("19.").expect("19") + 1;
        let second = r.find("14.").expect("14") + 1;
        assert_eq!(v.steps, vec![(first, 1.0), (second, 1.0)]);
        // The last number, unannounced: right, but not in the asked form.
        let v = t.verify(&p, "**14**");
        assert!(v.correct && !v.format_ok);
        // A chained expression is no step; its result is still the answer.
        let v = t.verify(&p, "7+12-5 = 14");
        assert!(v.correct && v.steps.is_empty(), "{v:?}");
        assert!(!t.verify(&p, "\\boxed{13}").correct);
        assert!(t.verify(&p, "The answer is 14, not 15.").correct);
        assert!(!t.verify(&p, "The answer is 15, or 14.").correct);
        assert!(!t.verify(&p, "").correct);
        // A wrong first step: the second is checked against the truth.
        let v = t.verify(&p, "7 + 12 = 18\n19 - 5 = 14\n\\boxed{14}");
        assert_eq!(
            v.steps.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![0.0, 1.0]
        );
        // Negative intermediate results.
        let p = worded("3-9+2=", "-4", "3-9=-6,-6+2=-4|-4");
        assert_eq!(
            p.solution,
            "3 - 9 = -6\n-6 + 2 = -4\nThe answer is \\boxed{-4}."
        );
        let v = t.verify(&p, &p.solution);
        assert!(
            v.correct && v.steps.iter().all(|s| s.1 == 1.0) && v.steps.len() == 2,
            "{v:?}"
        );
        // The hackable PRM rewards any equation's form.
        let hackable = Task::Arithmetic {
            seed: 0,
            difficulty: 1.0,
            prm: Prm::Format,
            natural: true,
        };
        let v = hackable.verify(&p, "1 + 1 = 3, 2 - 2 = 5");
        assert_eq!(
            v.steps.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![1.0, 1.0]
        );
        assert!(!v.correct);
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
}
