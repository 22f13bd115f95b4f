//! Procedurally generated arithmetic (a pure function of the seed and the
//! problem index): `a+b-c=` answered with every step written out, so a
//! process reward can check each step. With a pretrained model the problem
//! is asked in words and the answer read as a chat model writes it.

use keel_model::rng::{Rng, fnv};

use super::{Context, Environment, Problem, TRAIN_STREAM, Verdict};
use crate::error::{Error, Result, codes};

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

/// The arithmetic environment.
#[derive(Clone, Debug)]
pub struct Arithmetic {
    pub seed: u64,
    pub difficulty: f64,
    pub prm: Prm,
    /// The problem in words and an answer in a chat model's style
    /// (`\boxed{N}`, "the answer is N", or the last number), for a
    /// pretrained tokenizer; otherwise the compact form `a+b=` →
    /// `a+b=c|c` of the character-level models.
    pub natural: bool,
}

/// `task.name = arithmetic`: `task.seed`, `task.difficulty`, `task.prm`;
/// in words when the model is pretrained. The chat template must take a
/// problem (a refusal shows here, not mid-run).
pub fn open(cx: &Context) -> Result<Box<dyn Environment>> {
    let s = cx.settings;
    let env = Arithmetic {
        seed: s.int("task", "seed") as u64,
        difficulty: s.num("task", "difficulty"),
        prm: match s.sym("task", "prm").as_deref() {
            Some("format") => Prm::Format,
            Some("noisy") => Prm::Noisy(s.num("task", "prm_false_positive")),
            _ => Prm::Exact,
        },
        natural: cx.pretrained,
    };
    if let Err(e) = env.problem(TRAIN_STREAM, 0).prompt_ids(cx.tok) {
        return Err(s.locate(
            "model",
            "init",
            Error::new(
                codes::CHECKPOINT_FORMAT,
                format!("the chat template cannot render a prompt: {e}"),
                "fix the checkpoint's chat template, or set `task.chat = off`",
            ),
        ));
    }
    Ok(Box::new(env))
}

impl Environment for Arithmetic {
    fn problem(&self, stream: u64, i: u64) -> Problem {
        let p = arithmetic(&mut Rng::derive(self.seed, stream, i), self.difficulty);
        if self.natural { in_words(p) } else { p }
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        let mut v = if self.natural {
            verify_natural(problem, response, self.prm)
        } else {
            verify_arithmetic(problem, response, self.prm)
        };
        // The rule judge: the fraction of the response's steps the task's
        // PRM rewards (0 without steps).
        let n = v.steps.len();
        v.judge = Some(if n == 0 {
            0.0
        } else {
            v.steps.iter().map(|s| s.1).sum::<f64>() / n as f64
        });
        v
    }

    fn has_rule_judge(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "arithmetic seed={} difficulty={}{}",
            self.seed,
            self.difficulty,
            if self.natural { " natural" } else { "" }
        )
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
        messages: None,
        prompt,
        answer,
        solution,
        difficulty: n_ops as f64 / max_ops.max(1) as f64,
        ..Default::default()
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
                        let h = fnv(format!("{}|{k}|{step}", p.prompt).as_bytes());
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
        judge: None,
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
                    let h = fnv(format!("{}|{k}|{a}{op}{b}={c}", p.prompt).as_bytes());
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
        judge: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::EVAL_STREAM;

    #[test]
    fn arithmetic_is_reproducible_and_its_solutions_verify() {
        let t = Arithmetic {
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
            ..Default::default()
        };
        let t = Arithmetic {
            seed: 0,
            difficulty: 1.0,
            prm: Prm::Exact,
            natural: false,
        };
        let v = t.verify(&p, "7+12=18,18-5=13|13");
        assert!(!v.correct && v.format_ok);
        assert_eq!(v.steps, vec![(7, 0.0), (15, 0.0)]);
        // The rule judge: the share of rewarded steps.
        assert_eq!(v.judge, Some(0.0));
        assert_eq!(t.verify(&p, "7+12=19,19-5=13|13").judge, Some(0.5));
        assert_eq!(t.verify(&p, &p.solution).judge, Some(1.0));
        // The hackable PRM rewards the same wrong steps for their form
        // alone, and still not a malformed one; correctness is unchanged.
        let hackable = Arithmetic {
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
        let noisy = |fp| Arithmetic {
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
    fn natural_answers_are_read_as_a_chat_model_writes_them() {
        let t = Arithmetic {
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
        let hackable = Arithmetic {
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
}
