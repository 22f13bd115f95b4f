//! What the engine targets share: the inputs a loss term reads, and the
//! refusals (E0800-E0802) for what an engine cannot run, with the
//! `--allow-partial` lines that replace them.

use keel_check::codes::{self, Code};
use keel_check::{Checked, CheckedRecipe, Diagnostic, Label};
use keel_ir::ir::{Graph, NodeId};
use keel_ir::lower::LossTerm;

/// The inputs the nodes `roots` depend on.
pub(crate) fn inputs_of(g: &Graph, roots: &[NodeId]) -> Vec<String> {
    crate::torch::inputs_of(g, &g.live_from(roots.iter().copied()))
}

pub(crate) fn term_roots(t: &LossTerm) -> Vec<NodeId> {
    let mut r = vec![t.scalar];
    if let Some((v, w)) = t.matrix {
        r.extend([v, w]);
    }
    r.extend(t.coef);
    r.extend(t.norm);
    r
}

/// Where a diagnostic about recipe `r` points: the first read of `input`,
/// else the recipe's name.
fn at_input(r: &CheckedRecipe, input: &str, what: &str) -> Label {
    match r.inputs.get(input) {
        Some((f, s)) => Label::new(*f, *s, what.to_string()),
        None => Label::new(r.file, r.name_span, what.to_string()),
    }
}

/// What an engine's messages say about it.
pub(crate) struct Engine {
    pub name: &'static str,
    /// What the engine's loss is given (a help line starts with it).
    pub loss_sees: &'static str,
    pub credit_help: &'static str,
    /// What to do when the credit is dropped (`--allow-partial`).
    pub credit_dropped: &'static str,
    /// Where the engine computes rewards instead of the `reward` section.
    pub reward_fn: &'static str,
}

/// E0800 for every input a term of the loss reads that `available` says
/// the engine does not give it, one per input, at the first term's entry.
pub(crate) fn loss_input_refusals(
    recipe: &CheckedRecipe,
    compiled: &keel_ir::CompiledLoss,
    available: &dyn Fn(&str) -> bool,
    engine: &Engine,
) -> Vec<Diagnostic> {
    let g = &compiled.graph;
    // Each input the engine does not give, with the terms that read it
    // (`tokens` and `vocab_index` come with the vocabulary's `logits`).
    let mut missing: Vec<(String, Vec<String>)> = Vec::new();
    for t in &compiled.terms {
        for n in inputs_of(g, &term_roots(t)) {
            if available(&n) {
                continue;
            }
            match missing.iter_mut().find(|(m, _)| *m == n) {
                Some((_, secs)) => secs.push(t.section.clone()),
                None => missing.push((n, vec![t.section.clone()])),
            }
        }
    }
    if missing.len() > 1 {
        missing.retain(|(n, _)| n != "tokens" && n != "vocab_index");
    }
    missing
        .iter()
        .map(|(n, secs)| {
            refusal(
                codes::EXPORT_INPUT,
                format!(
                    "the loss's `{}` term{} `{n}`, which {} does not give the loss",
                    secs.join("` and `"),
                    if secs.len() > 1 { "s read" } else { " reads" },
                    engine.name
                ),
                at_term(recipe, &secs[0], n),
                &match n.as_str() {
                    // What reads the reward belongs in the credit, which the
                    // engine computes from its rewards.
                    "reward" | "correct" => format!(
                        "{}, not the reward: move what reads `{n}` into `credit` (for example `credit {{ value = if {n} > 0 then 1 else -0.5 }}`, the sign and weight of each sample) and write the term over `advantages`; the exported credit runs on {}'s rewards",
                        engine.loss_sees, engine.name
                    ),
                    _ => format!(
                        "{}: write the term over those, or train this recipe with `keel run`",
                        engine.loss_sees
                    ),
                },
            )
        })
        .collect()
}

/// The refusals (or, with `allow_partial`, the dropped lines) for what
/// runs outside the loss: a credit the engine cannot compute (`credit`:
/// why), guards (E0801), and the sections Keel's runtime runs (E0802).
pub(crate) fn outside_loss(
    recipe: &CheckedRecipe,
    merged: &keel_check::resolve::Merged,
    engine: &Engine,
    credit: Option<&String>,
    allow_partial: bool,
    refused: &mut Vec<Diagnostic>,
    dropped: &mut Vec<String>,
) {
    let e = engine.name;
    if let Some(why) = credit {
        let first = recipe
            .inputs
            .keys()
            .find(|n| {
                // The inputs named before the reason's explanation.
                let named = why.split(", which").next().unwrap_or(why);
                named.contains(&format!(" {n}")) || named.contains(&format!("{n},"))
            })
            .cloned()
            .unwrap_or_default();
        if allow_partial {
            dropped.push(format!("the credit ({why}): {}", engine.credit_dropped));
        } else {
            refused.push(refusal(
                codes::EXPORT_INPUT,
                format!("the credit cannot run in {e}: {why}"),
                at_input(recipe, &first, "read here"),
                engine.credit_help,
            ));
        }
    }
    for guard in &recipe.guards {
        let what = format!("guard `{}`", guard.name);
        if allow_partial {
            dropped.push(format!("{what} ({e} has no guards)"));
        } else {
            refused.push(refusal(
                codes::EXPORT_GUARD,
                format!("{e} cannot run {what}"),
                Label::new(guard.file, guard.span, "this guard".to_string()),
                "guards run in Keel's runtime between steps; pass --allow-partial to export without them (the README lists them)",
            ));
        }
    }
    for sec in ["curriculum", "state", "update", "reward"] {
        let Some(s) = merged.section(sec) else {
            continue;
        };
        if s.entries.is_empty() {
            continue;
        }
        if allow_partial {
            dropped.push(if sec == "reward" {
                format!("the `reward` section: {}", engine.reward_fn)
            } else {
                format!("the `{sec}` section (Keel's runtime runs it)")
            });
        } else {
            let help = if sec == "reward" {
                format!(
                    "{e} computes each sample's reward with its own reward function ({}), and the exported loss and credit read that as `reward`: pass --allow-partial to export without the section (the README lists it)",
                    engine.reward_fn
                )
            } else {
                format!(
                    "pass --allow-partial to export the loss and credit without it (the README lists it), and configure {e}'s own equivalent"
                )
            };
            refused.push(refusal(
                codes::EXPORT_HOST,
                format!("{e} cannot run the recipe's `{sec}` section"),
                Label::new(
                    s.file,
                    s.name_span,
                    format!("`{sec}` runs in Keel's runtime"),
                ),
                &help,
            ));
        }
    }
}

/// The credit as an estimator's files (`Err`: why not) and whether the
/// recipe has a credit, with the refusals (or dropped lines) of
/// [`outside_loss`] added.
pub(crate) fn credit_and_outside(
    checked: &Checked,
    index: usize,
    source: &str,
    engine: &Engine,
    allow_partial: bool,
    builtin_credit: bool,
    (refused, dropped): (&mut Vec<Diagnostic>, &mut Vec<String>),
) -> (Result<Vec<(String, String)>, String>, bool) {
    let (Some(recipe), Some(merged)) = (checked.recipes.get(index), checked.merged.get(index))
    else {
        return (Err("no such recipe".into()), false);
    };
    let has_credit = merged
        .section("credit")
        .is_some_and(|s| s.entry("value").is_some());
    let estimator = crate::verl_estimator(checked, index, source);
    outside_loss(
        recipe,
        merged,
        engine,
        estimator
            .as_ref()
            .err()
            .filter(|_| has_credit && !builtin_credit),
        allow_partial,
        refused,
        dropped,
    );
    (estimator, has_credit)
}

/// Where a diagnostic about term `section` reading `input` points: the
/// term's entry (`objective.loss`, `S.value`), else the first read.
fn at_term(r: &CheckedRecipe, section: &str, input: &str) -> Label {
    let key = if section == "objective" {
        "loss"
    } else {
        "value"
    };
    match r.value(section, key) {
        Some(v) => Label::new(v.file, v.name_span, format!("this term reads `{input}`")),
        None => at_input(r, input, &format!("`{input}` read here")),
    }
}

pub(crate) fn refusal(code: Code, msg: String, label: Label, help: &str) -> Diagnostic {
    Diagnostic::error(code, msg, label).with_help(help.to_string())
}

/// The README's `Caveats` and `Dropped` sections (empty lists: none).
pub(crate) fn readme_lists(caveats: &[String], dropped: &[String]) -> String {
    let mut md = String::new();
    for (title, items) in [
        ("Caveats", caveats),
        ("Dropped (`--allow-partial`)", dropped),
    ] {
        if items.is_empty() {
            continue;
        }
        md.push_str(&format!("\n## {title}\n\n"));
        for i in items {
            md.push_str(&format!("- {i}\n"));
        }
    }
    md
}

/// The README's `Not mapped` section: the recipe's settings the engine
/// has no place for (empty: none).
pub(crate) fn readme_unmapped(unmapped: &[String], engine: &str) -> String {
    if unmapped.is_empty() {
        return format!(
            "\n## Not mapped\n\nNone: every optimizer and rollout setting of the recipe has its {engine} setting.\n"
        );
    }
    let mut md = format!(
        "\n## Not mapped\n\nThe recipe's settings {engine} has no place for; its run differs from `keel run` there:\n\n"
    );
    for u in unmapped {
        md.push_str(&format!("- {u}\n"));
    }
    md
}
