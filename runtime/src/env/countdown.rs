//! Countdown: numbers and a target (`3,5,7:22=`), answered with an
//! expression that reaches the target using each given number at most once.

use keel_model::rng::Rng;

use super::{Context, Environment, Problem, Verdict};
use crate::error::Result;

/// The countdown environment.
#[derive(Clone, Debug)]
pub struct Countdown {
    pub seed: u64,
    pub difficulty: f64,
}

/// `task.name = countdown`: `task.seed`, `task.difficulty`.
pub fn open(cx: &Context) -> Result<Box<dyn Environment>> {
    Ok(Box::new(Countdown {
        seed: cx.settings.int("task", "seed") as u64,
        difficulty: cx.settings.num("task", "difficulty"),
    }))
}

impl Environment for Countdown {
    fn problem(&self, stream: u64, i: u64) -> Problem {
        countdown(&mut Rng::derive(self.seed, stream, i), self.difficulty)
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        verify_countdown(problem, response)
    }

    fn has_rule_judge(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "countdown seed={} difficulty={}",
            self.seed, self.difficulty
        )
    }
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
        ..Default::default()
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
    // The rule judge: partial credit by distance to the target, for a
    // well-formed expression over the given numbers (else 0).
    let judge = match (value, target) {
        (Some(v), Some(t)) if format_ok && numbers_ok => {
            1.0 - ((v - t).abs() as f64 / (t.abs().max(1)) as f64).min(1.0)
        }
        _ => 0.0,
    };
    Verdict {
        correct: format_ok && numbers_ok && value.is_some() && value == target,
        format_ok,
        steps: Vec::new(),
        judge: Some(judge),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::TRAIN_STREAM;

    #[test]
    fn countdown_accepts_any_valid_expression() {
        let t = Countdown {
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
            ..Default::default()
        };
        assert!(t.verify(&p, "7+5*3").correct);
        // The rule judge: partial credit by distance to the target.
        assert_eq!(t.verify(&p, "7+5*3").judge, Some(1.0));
        assert_eq!(t.verify(&p, "7+5").judge, Some(1.0 - 10.0 / 22.0));
        assert_eq!(t.verify(&p, "9+9").judge, Some(0.0), "9 is not given twice");
        assert!(!t.verify(&p, "(7+5)*2-2").correct); // 2 used twice
        assert!(!t.verify(&p, "22").correct); // 22 is not given
        assert!(!t.verify(&p, "3*5+7+").format_ok);
    }
}
