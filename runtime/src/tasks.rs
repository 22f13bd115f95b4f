//! Verifiable tasks: procedurally generated arithmetic and countdown problems
//! (a pure function of the seed and the problem index), and JSONL files with a
//! verifier.

use crate::error::{Error, codes};
use crate::rng::Rng;

/// One problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub prompt: String,
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
                seed, difficulty, ..
            } => arithmetic(&mut Rng::derive(*seed, stream, i), *difficulty),
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
    Problem {
        prompt: String::new(),
        answer: String::new(),
        solution: String::new(),
        difficulty: 0.0,
    }
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
    let body = p.prompt.trim_end_matches('=');
    let mut operands = Vec::new();
    let mut ops = Vec::new();
    let mut rest = body;
    if let Some((v, k)) = int_prefix(rest) {
        operands.push(v);
        rest = &rest[k..];
    }
    while let Some(c) = rest.chars().next() {
        ops.push(c);
        rest = &rest[1..];
        match int_prefix(rest) {
            Some((v, k)) => {
                operands.push(v);
                rest = &rest[k..];
            }
            None => break,
        }
    }
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

/// Read a JSONL file of `{"prompt": ..., "answer": ...}` records (an optional
/// `"solution"` is the warm-start target; the answer otherwise).
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
        let prompt = field("prompt")?.ok_or_else(|| {
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
            prompt: "7+12-5=".into(),
            answer: "14".into(),
            solution: "7+12=19,19-5=14|14".into(),
            difficulty: 1.0,
        };
        let t = Task::Arithmetic {
            seed: 0,
            difficulty: 1.0,
            prm: Prm::Exact,
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
}
