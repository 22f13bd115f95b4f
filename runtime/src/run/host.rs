//! The recipe's host program, compiled with cranelift: step-level values
//! (schedules such as `optimizer.lr`, rollout limits, curriculum values,
//! `update` rules, guard conditions) and the per-sample reward.
//!
//! Host code reads batch statistics (`mean(entropy) over batch` in a guard)
//! and rewards that are not elementwise (a group statistic): those come
//! from running the host graph on the whole batch, by the reference
//! interpreter ([`HostProgram::interpreted`]).

use std::collections::HashMap;

use keel_compiler::host::{ColumnFn, Jit, ScalarFn};
use keel_compiler::interp::{self, Env};
use keel_compiler::ir::{Graph, NodeId, Op};
use keel_compiler::{Checked, lower};

use crate::batch::BatchView;
use crate::error::{Error, codes};

pub struct HostProgram {
    graph: Graph,
    names: Vec<String>,
    scalar: ScalarFn,
    reward: Option<RewardFn>,
    /// Owns the compiled code the functions above point into.
    _jit: Jit,
}

enum RewardFn {
    Jit(ColumnFn),
    /// Not elementwise (reads a group statistic): the interpreter computes it
    /// over the batch.
    Interpreted(NodeId),
}

impl HostProgram {
    /// Compile recipe `index`'s host program with hyperparameter and state
    /// values `params` (by `Param` name, e.g. `clip.eps_high`, `state.beta`).
    pub fn compile(
        checked: &Checked,
        index: usize,
        params: &HashMap<String, f64>,
    ) -> Result<HostProgram, Error> {
        let fail = |m: String| {
            Error::new(
                codes::LOSS_PROGRAM,
                format!("the recipe's host program cannot be compiled: {m}"),
                "this is a compiler bug if `keel check` accepts the recipe; please report it",
            )
        };
        let (Some(m), Some(c)) = (checked.merged.get(index), checked.recipes.get(index)) else {
            return Err(fail("no such recipe".into()));
        };
        let h = lower::host_graph(&checked.program, m, c)
            .map_err(|d| fail(d.first().map(|d| d.message.clone()).unwrap_or_default()))?;
        let mut graph = h.graph;
        set_params(&mut graph, params);
        let mut jit = Jit::new().map_err(fail)?;
        let ids: Vec<NodeId> = h.scalars.iter().map(|s| s.1).collect();
        let names = h.scalars.iter().map(|s| s.0.clone()).collect();
        let scalar = jit.scalar(&graph, &ids).map_err(fail)?;
        let reward = h.reward.map(|r| match jit.column(&graph, r) {
            Ok(f) => RewardFn::Jit(f),
            Err(_) => RewardFn::Interpreted(r),
        });
        Ok(HostProgram {
            graph,
            names,
            scalar,
            reward,
            _jit: jit,
        })
    }

    pub fn has_reward(&self) -> bool {
        self.reward.is_some()
    }

    /// Every node's value over the batch, by the reference interpreter.
    fn interpreted(&self, batch: &BatchView) -> Result<Vec<Vec<f64>>, Error> {
        let env = Env {
            shape: batch.shape.clone(),
            mask: batch.mask,
            inputs: batch.inputs,
        };
        interp::run(&self.graph, &env).map_err(|e| {
            Error::new(
                codes::LOSS_PROGRAM,
                format!("a batch statistic of the host program failed: {}", e.0),
                "check that the recipe's inputs are produced by the runtime (docs/runtime.md)",
            )
        })
    }

    /// The value of every scalar (`optimizer.lr`, `guard.NAME`, `state.X`, …).
    pub fn scalars(&self, batch: &BatchView) -> Result<HashMap<String, f64>, Error> {
        let needs_batch = self
            .scalar
            .inputs
            .iter()
            .any(|&i| !matches!(&self.graph.nodes[i].op, Op::Input(n) if batch.inputs.get(n).is_some_and(|v| v.len() == 1)));
        let dev = if needs_batch {
            Some(self.interpreted(batch)?)
        } else {
            None
        };
        let vals: Vec<f64> = self
            .scalar
            .inputs
            .iter()
            .map(|&i| match (&self.graph.nodes[i].op, &dev) {
                (_, Some(d)) => d
                    .get(i)
                    .and_then(|v| v.first())
                    .copied()
                    .unwrap_or(f64::NAN),
                (Op::Input(n), None) => batch
                    .inputs
                    .get(n)
                    .and_then(|v| v.first())
                    .copied()
                    .unwrap_or(f64::NAN),
                _ => f64::NAN,
            })
            .collect();
        let out = self.scalar.call(&vals);
        Ok(self.names.iter().cloned().zip(out).collect())
    }

    /// The reward of every sample, or `None` when the recipe has no `reward`.
    pub fn reward(&self, batch: &BatchView) -> Result<Option<Vec<f64>>, Error> {
        match &self.reward {
            None => Ok(None),
            Some(RewardFn::Interpreted(r)) => Ok(self.interpreted(batch)?.get(*r).cloned()),
            Some(RewardFn::Jit(f)) => {
                let all_inputs = f
                    .columns
                    .iter()
                    .chain(&f.scalars)
                    .all(|&i| matches!(&self.graph.nodes[i].op, Op::Input(n) if batch.inputs.contains_key(n)));
                let dev = if all_inputs {
                    None
                } else {
                    Some(self.interpreted(batch)?)
                };
                let get = |i: NodeId| -> Vec<f64> {
                    match (&self.graph.nodes[i].op, &dev) {
                        (_, Some(d)) => d.get(i).cloned().unwrap_or_default(),
                        (Op::Input(n), None) => batch.inputs.get(n).cloned().unwrap_or_default(),
                        _ => Vec::new(),
                    }
                };
                let cols: Vec<Vec<f64>> = f.columns.iter().map(|&i| get(i)).collect();
                let refs: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
                let scal: Vec<f64> = f
                    .scalars
                    .iter()
                    .map(|&i| get(i).first().copied().unwrap_or(f64::NAN))
                    .collect();
                if refs.is_empty() {
                    // A constant reward: one value for every sample.
                    let v = scal.first().copied();
                    let n = batch.shape.b;
                    return Ok(Some(match v {
                        Some(v) => vec![v; n],
                        None => self
                            .interpreted(batch)?
                            .get(f.output)
                            .cloned()
                            .unwrap_or_default(),
                    }));
                }
                f.call(&refs, &scal).map(Some).map_err(|e| {
                    Error::new(
                        codes::LOSS_PROGRAM,
                        format!("reward program: {e}"),
                        "this is a runtime bug; please report it",
                    )
                })
            }
        }
    }
}

/// Replace the values of `Param` nodes named in `params`.
pub fn set_params(g: &mut Graph, params: &HashMap<String, f64>) {
    for n in &mut g.nodes {
        if let Op::Param { name, value } = &mut n.op
            && let Some(v) = params.get(name)
        {
            *value = *v;
        }
    }
}

/// The current value of every `Param` of a graph.
pub fn params_of(g: &Graph) -> HashMap<String, f64> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Param { name, value } => Some((name.clone(), *value)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Rollouts, Row, StepInputs};
    use crate::env::Verdict;

    const RECIPE: &str = r#"import std/grpo
recipe q extends grpo {
    optimizer { lr = 3e-4 * min(1, step / 20) }
    reward = if correct then 1 - 0.01 * length else 0
    state { avg = 1.0 }
    update { avg = 0.5 * avg + 0.5 * mean(entropy) over batch }
    guard low: mean(entropy) over batch < 0.05 => { warn "low" }
}
"#;

    fn batch(correct: &[bool], entropy: f64) -> Rollouts {
        Rollouts {
            rows: correct
                .iter()
                .enumerate()
                .map(|(i, &c)| Row {
                    old_logp: vec![-0.5; i + 1],
                    entropy: vec![entropy; i + 1],
                    old_logits: vec![0.0; (i + 1) * 3],
                    verdict: Verdict {
                        correct: c,
                        format_ok: true,
                        steps: Vec::new(),
                        judge: None,
                    },
                    ..Row::sampled(vec![1], vec![5; i + 1])
                })
                .collect(),
            vocab: 3,
            difficulty: vec![0.5],
        }
    }

    #[test]
    fn schedules_rewards_state_and_guards_run_as_compiled_host_code() {
        let checked = keel_compiler::check_source(&keel_compiler::NoFiles, "q.recipe", RECIPE);
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let mut params = HashMap::new();
        params.insert("state.avg".to_string(), 0.2);
        let h = HostProgram::compile(&checked, 0, &params).expect("compiles");
        let r = batch(&[true, false, true], 0.04);
        let s = StepInputs {
            step: 10.0,
            total_steps: 100.0,
            epoch: 0.0,
        };
        let (reward, sc) = r.with_host_view(s, |view| (h.reward(view), h.scalars(view)));
        let reward = reward.expect("runs").expect("a reward");
        assert_eq!(reward, vec![1.0 - 0.01, 0.0, 1.0 - 0.03]);
        let sc = sc.expect("runs");
        assert_eq!(sc["optimizer.lr"], 3e-4 * 0.5);
        // The state starts from the value given, not the recipe's 1.0.
        assert!((sc["state.avg"] - (0.5 * 0.2 + 0.5 * 0.04)).abs() < 1e-15);
        assert_eq!(sc["guard.low"], 1.0);
        let r = batch(&[true], 0.5);
        let sc = r.with_host_view(s, |view| h.scalars(view)).expect("runs");
        assert_eq!(sc["guard.low"], 0.0);
    }
}
