//! The recipe's guards: each fires when its condition has held for its
//! window of steps, and its actions warn, stop, skip the update, roll back,
//! or change a hyperparameter, a state variable or a schedule from then on.

use std::collections::HashMap;

use keel_compiler::{CheckedGuard, GuardAction as Action, GuardOp};

use super::checkpoint::{TrainState, bits, unbits};

/// What the guards decided for one step.
#[derive(Default)]
pub struct Decision {
    pub skip: bool,
    pub rollback: Option<u64>,
    pub stop: bool,
}

/// The hyperparameter values now: the recipe's, guard overrides, and the
/// recipe's state.
pub fn current_params(base: &HashMap<String, f64>, st: &TrainState) -> HashMap<String, f64> {
    let mut p = base.clone();
    for (k, v) in &st.overrides {
        p.insert(k.clone(), unbits(*v));
    }
    for (k, v) in &st.host_state {
        p.insert(format!("state.{k}"), unbits(*v));
    }
    p
}

/// Run the guards on this step's host values `hs` (`guard.NAME` is 1 where
/// the condition holds): the decision, and one event for each that fired.
pub fn apply(
    guards: &[CheckedGuard],
    hs: &HashMap<String, f64>,
    base: &HashMap<String, f64>,
    st: &mut TrainState,
    d: &mut Decision,
) -> Vec<String> {
    let mut events = Vec::new();
    for g in guards {
        let fired = hs.get(&format!("guard.{}", g.name)).copied().unwrap_or(0.0) != 0.0;
        let run = st.guard_run.entry(g.name.clone()).or_insert(0);
        *run = if fired { *run + 1 } else { 0 };
        if *run < g.window {
            continue;
        }
        *run = 0;
        let mut what = vec![format!("guard `{}`", g.name)];
        for a in &g.actions {
            match a {
                Action::Warn(m) => what.push(format!("warn: {m}")),
                Action::Stop => {
                    d.stop = true;
                    what.push("stop".into());
                }
                Action::Skip => {
                    d.skip = true;
                    what.push("skip".into());
                }
                Action::Rollback(n) => {
                    d.rollback = Some(*n);
                    what.push(format!("rollback {n}"));
                }
                Action::Assign { target, op, value } => {
                    what.push(assign(base, st, target, *op, *value));
                }
            }
        }
        events.push(what.join("; "));
    }
    events
}

/// A guard's assignment `target op= value`. A hyperparameter or a state
/// variable takes its new value; a computed value (a schedule) is scaled or
/// shifted from now on. Returns the event's text.
fn assign(
    base: &HashMap<String, f64>,
    st: &mut TrainState,
    target: &str,
    op: GuardOp,
    value: f64,
) -> String {
    if base.contains_key(target) || target.starts_with("state.") {
        let cur = current_params(base, st).get(target).copied().unwrap_or(0.0);
        let new = op.apply(cur, value);
        if let Some(s) = target.strip_prefix("state.") {
            st.host_state.insert(s.to_string(), bits(new));
        } else {
            st.overrides.insert(target.to_string(), bits(new));
        }
        format!("{target} = {new}")
    } else {
        let (a, b) = st
            .adjust
            .get(target)
            .map(|(a, b)| (unbits(*a), unbits(*b)))
            .unwrap_or((1.0, 0.0));
        let (a, b) = match op {
            GuardOp::Mul => (a * value, b * value),
            GuardOp::Div => (a / value, b / value),
            GuardOp::Add => (a, b + value),
            GuardOp::Sub => (a, b - value),
            GuardOp::Set => (0.0, value),
        };
        st.adjust.insert(target.to_string(), (bits(a), bits(b)));
        format!("{target} {} {value}", op.text())
    }
}
