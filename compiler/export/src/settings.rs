//! The recipe's optimizer and batch settings in an engine's terms: every
//! `optimizer` and `rollout` key the engine has, with the recipe's value or
//! Keel's default (the engines' defaults differ), and the keys it has not,
//! listed. The learning rate is read as the host program computes it
//! (`lower::schedule_values`: warm-up, decay and any schedule of `step`).

use keel_check::{Checked, CheckedRecipe, Setting};

/// A recipe's setting: its constant, Keel's default, or neither (a value
/// that changes during the run, or an option name).
pub(crate) struct Settings<'a> {
    pub recipe: &'a CheckedRecipe,
}

impl Settings<'_> {
    /// The number the run uses for `section.key`, when it is one number.
    pub fn num(&self, section: &str, key: &str) -> Option<f64> {
        match self.recipe.setting(section, key)? {
            Setting::Num(x) => Some(x),
            _ => None,
        }
    }

    pub fn int(&self, section: &str, key: &str) -> Option<u64> {
        self.num(section, key)
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|x| x as u64)
    }

    /// An option's name (`optimizer.name`, `optimizer.schedule`).
    pub fn sym(&self, section: &str, key: &str) -> Option<String> {
        match self.recipe.setting(section, key)? {
            Setting::Sym(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the recipe writes `section.key` (not the default).
    pub fn written(&self, section: &str, key: &str) -> bool {
        self.recipe.value(section, key).is_some()
    }
}

/// The learning rate of each step and its shape in the engines' terms.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lr {
    /// `peak · min(1, k / warmup) · decay`, as `optimizer.warmup` and
    /// `optimizer.schedule` define it, whatever the recipe wrote.
    Family {
        peak: f64,
        warmup: u64,
        decay: &'static str,
        per_step: Vec<f64>,
    },
    /// A schedule of the step with no such shape (`per_step` holds it).
    Other { peak: f64, per_step: Vec<f64> },
    /// Not a schedule (it reads state or the batch): why.
    Dynamic(String),
}

/// The recipe's learning rate over `steps` steps, by the host program.
pub(crate) fn learning_rate(checked: &Checked, index: usize, steps: u64) -> Lr {
    let Some(r) = checked.recipes.get(index) else {
        return Lr::Dynamic("no such recipe".into());
    };
    let values = keel_ir::compile_host(checked, index)
        .map_err(|d| d.first().map(|d| d.message.clone()).unwrap_or_default())
        .and_then(|h| {
            if h.scalars.iter().any(|(n, _)| n == "optimizer.lr") {
                keel_ir::lower::schedule_values(&h, "optimizer.lr", steps)
            } else {
                let lr = Settings { recipe: r }
                    .num("optimizer", "lr")
                    .unwrap_or(f64::NAN);
                Ok(vec![lr; steps as usize])
            }
        });
    match values {
        Ok(v) => shape_of(v),
        Err(why) => Lr::Dynamic(why),
    }
}

/// The family `v` (one value per step from 1) belongs to, if any.
pub(crate) fn shape_of(v: Vec<f64>) -> Lr {
    let peak = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let t = v.len() as u64;
    if !(peak.is_finite() && peak > 0.0) {
        return Lr::Other { peak, per_step: v };
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * peak;
    // The warm-up ends at the first step that reaches the peak (1: none).
    let first = v.iter().position(|&x| close(x, peak)).map_or(1, |i| i + 1) as u64;
    for warmup in [first, 0] {
        for decay in ["constant", "linear", "cosine"] {
            let fits = v
                .iter()
                .enumerate()
                .all(|(i, &x)| close(x, peak * family(decay, warmup, t, (i + 1) as u64)));
            if fits {
                return Lr::Family {
                    peak,
                    warmup: if warmup <= 1 { 0 } else { warmup },
                    decay,
                    per_step: v,
                };
            }
        }
    }
    Lr::Other { peak, per_step: v }
}

/// The factor of step `k` (from 1) of `t` with `warmup` and `decay`: the
/// lowering's formula (`lower::scheduled_lr`).
fn family(decay: &str, warmup: u64, t: u64, k: u64) -> f64 {
    let ramp = (k as f64 / warmup.max(1) as f64).min(1.0);
    let p = ((k as f64 - warmup as f64) / (t as f64 - warmup as f64).max(1.0)).clamp(0.0, 1.0);
    ramp * match decay {
        "linear" => 1.0 - p,
        "cosine" => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        _ => 1.0,
    }
}

/// What an export did with the settings: the engine's settings, the
/// recipe's that it has no place for, and where it differs.
#[derive(Default)]
pub(crate) struct Mapped {
    /// `name=value`, in the engine's spelling.
    pub set: Vec<(String, String)>,
    pub unmapped: Vec<String>,
    pub caveats: Vec<String>,
}

impl Mapped {
    pub fn set(&mut self, name: &str, value: impl ToString) {
        self.set.push((name.to_string(), value.to_string()));
    }

    /// Set the engine's `names` to the recipe's `section.key` when it is
    /// one number (written as an integer when `int`); list it as not
    /// mapped when it changes during the run.
    pub fn number(
        &mut self,
        s: &Settings,
        (section, key): (&str, &str),
        engine: &str,
        names: &[&str],
        int: bool,
    ) {
        if let Some(why) = not_constant(s, section, key, engine) {
            self.unmapped.push(why);
            return;
        }
        let value = if int {
            s.int(section, key).map(|n| n.to_string())
        } else {
            s.num(section, key).map(py_float)
        };
        let Some(v) = value else {
            return;
        };
        for name in names {
            self.set(name, &v);
        }
    }
}

/// A number as Python and Hydra read it (`1e-6`, `0.5`, `3.0`).
pub(crate) fn py_float(x: f64) -> String {
    format!("{x:?}")
}

/// The keys of `rollout` that shape the rollout and that no exported
/// engine maps (each engine adds its own to this list).
pub(crate) const KEEL_ONLY_ROLLOUT: &[(&str, &str)] = &[
    (
        "dynamic_sampling",
        "DAPO's group filter runs in Keel's runtime",
    ),
    (
        "overlong_buffer",
        "the overlong penalty runs in Keel's runtime",
    ),
    (
        "overlong_penalty",
        "the overlong penalty runs in Keel's runtime",
    ),
    ("max_turns", "multi-turn rollouts run in Keel's runtime"),
    ("branch_first", "branched rollouts run in Keel's runtime"),
    ("branch_samples", "branched rollouts run in Keel's runtime"),
    ("branch_top_k", "branched rollouts run in Keel's runtime"),
];

/// The lines of unmapped `rollout` keys the recipe writes.
pub(crate) fn keel_only(s: &Settings, engine: &str, out: &mut Vec<String>) {
    for (key, why) in KEEL_ONLY_ROLLOUT {
        if s.written("rollout", key) {
            out.push(format!(
                "`rollout.{key}`: {engine} has no such setting ({why})"
            ));
        }
    }
}

/// `rollout.KEY` or `optimizer.KEY` written as a schedule (not one
/// number): the engine's setting is one number, so it is listed.
pub(crate) fn not_constant(s: &Settings, section: &str, key: &str, engine: &str) -> Option<String> {
    (s.written(section, key) && s.num(section, key).is_none()).then(|| {
        format!("`{section}.{key}` changes during the run; {engine}'s setting is one number, so it is not set")
    })
}

/// The batch of one step: prompts P, group G, E epochs of M mini-batches
/// (optimizer steps) of `micro` micro-batches each, when all are numbers.
pub(crate) struct Batch {
    pub prompts: u64,
    pub group: u64,
    pub epochs: u64,
    pub minibatches: u64,
    pub micro: u64,
}

impl Batch {
    pub fn of(s: &Settings) -> Option<Batch> {
        let b = Batch {
            prompts: s.int("rollout", "prompts")?.max(1),
            group: s.int("rollout", "group")?.max(1),
            epochs: s.int("rollout", "epochs")?.max(1),
            minibatches: s.int("rollout", "minibatches")?.max(1),
            micro: s.int("rollout", "micro_batches")?.max(1),
        };
        Some(b)
    }

    /// Samples a step: P · G.
    pub fn samples(&self) -> u64 {
        self.prompts * self.group
    }

    /// Optimizer steps a step: E · M.
    pub fn updates(&self) -> u64 {
        self.epochs * self.minibatches
    }

    /// Samples per micro-batch, when the division is exact.
    pub fn per_micro(&self) -> Option<u64> {
        let d = self.minibatches * self.micro;
        self.samples().is_multiple_of(d).then(|| self.samples() / d)
    }
}

/// The rollout and optimizer settings as verl 0.9.1's Hydra overrides.
pub(crate) fn verl(checked: &Checked, index: usize) -> Mapped {
    let mut m = Mapped::default();
    let Some(recipe) = checked.recipes.get(index) else {
        return m;
    };
    let s = Settings { recipe };
    let a = "actor_rollout_ref.actor";
    let r = "actor_rollout_ref.rollout";
    match Batch::of(&s) {
        Some(b) => {
            m.set("data.train_batch_size", b.prompts);
            m.set(&format!("{r}.n"), b.group);
            m.set(&format!("{a}.ppo_epochs"), b.epochs);
            if b.prompts.is_multiple_of(b.minibatches) {
                m.set(
                    &format!("{a}.ppo_mini_batch_size"),
                    b.prompts / b.minibatches,
                );
            } else {
                m.unmapped.push(format!("`rollout.minibatches = {}`: verl's `ppo_mini_batch_size` counts prompts, and {} prompts do not split into {} mini-batches", b.minibatches, b.prompts, b.minibatches));
            }
            match b.per_micro() {
                Some(n) => m.set(&format!("{a}.ppo_micro_batch_size_per_gpu"), n),
                None => m.unmapped.push(format!("`rollout.micro_batches = {}`: {} samples a mini-batch do not split into {} micro-batches", b.micro, b.samples() / b.minibatches.max(1), b.micro)),
            }
        }
        None => m.unmapped.push("the batch (`rollout.prompts`, `group`, `epochs`, `minibatches`, `micro_batches`) changes during the run: verl's batch sizes are numbers, so none is set".into()),
    }
    let (temperature, top_p) = (format!("{r}.temperature"), format!("{r}.top_p"));
    m.number(
        &s,
        ("rollout", "temperature"),
        "verl",
        &[&temperature],
        false,
    );
    m.number(&s, ("rollout", "top_p"), "verl", &[&top_p], false);
    m.number(
        &s,
        ("rollout", "max_tokens"),
        "verl",
        &["data.max_response_length"],
        true,
    );
    keel_only(&s, "verl", &mut m.unmapped);
    optimizer_for_verl(checked, index, &s, &mut m);
    m
}

fn optimizer_for_verl(checked: &Checked, index: usize, s: &Settings, m: &mut Mapped) {
    let o = "actor_rollout_ref.actor.optim";
    let name = s.sym("optimizer", "name").unwrap_or_else(|| "adamw".into());
    let class = match name.as_str() {
        "adam" => "Adam",
        "sgd" => "SGD",
        _ => "AdamW",
    };
    m.set(&format!("{o}.optimizer"), class);
    let steps = s.int("optimizer", "steps");
    match steps {
        Some(t) => m.set("trainer.total_training_steps", t),
        None => m.unmapped.push(
            "`optimizer.steps` is not a number: `trainer.total_training_steps` is not set".into(),
        ),
    }
    match steps.map(|t| learning_rate(checked, index, t)) {
        Some(Lr::Family {
            peak,
            warmup,
            decay,
            ..
        }) => {
            m.set(&format!("{o}.lr"), py_float(peak));
            if warmup == 0 && decay == "constant" {
                m.set(&format!("{o}.lr_scheduler_type"), "constant");
            } else {
                // verl's cosine schedule counting steps from 1 is Keel's:
                // a warm-up of k / w, then the cosine; with min_lr_ratio 1
                // the cosine is flat (a constant after the warm-up).
                m.set(&format!("{o}.lr_scheduler_type"), "cosine");
                m.set(&format!("{o}.zero_indexed_step"), "False");
                m.set(&format!("{o}.lr_warmup_steps"), warmup);
                m.set(&format!("{o}.num_cycles"), "0.5");
                m.set(
                    &format!("{o}.min_lr_ratio"),
                    if decay == "cosine" { "0.0" } else { "1.0" },
                );
                if decay == "constant" {
                    m.caveats.push(format!("the learning rate's warm-up over {warmup} steps is verl's cosine schedule with `min_lr_ratio=1.0` (flat after the warm-up) and `zero_indexed_step=False` (steps counted from 1, as Keel's `step`): equal at every step"));
                }
                if decay == "linear" {
                    m.unmapped.push("the linear decay of `optimizer.lr` after the warm-up: verl's schedules are constant and cosine, so verl holds the peak".into());
                }
            }
        }
        Some(Lr::Other { peak, per_step }) => {
            m.set(&format!("{o}.lr"), py_float(peak));
            m.unmapped.push(format!(
                "the learning-rate schedule (step 1: {:e}, last step: {:e}) is neither constant nor a warm-up with a cosine decay: verl's `optim.lr` is its peak, {:e}, held",
                per_step.first().copied().unwrap_or(f64::NAN),
                per_step.last().copied().unwrap_or(f64::NAN),
                peak
            ));
        }
        Some(Lr::Dynamic(why)) => m.unmapped.push(format!(
            "the learning rate: {why}; verl's `optim.lr` is left as configured"
        )),
        None => {}
    }
    let decay = format!("{o}.weight_decay");
    m.number(s, ("optimizer", "weight_decay"), "verl", &[&decay], false);
    if class != "SGD"
        && let (Some(b1), Some(b2)) = (s.num("optimizer", "beta1"), s.num("optimizer", "beta2"))
    {
        m.set(
            &format!("{o}.betas"),
            format!("[{},{}]", py_float(b1), py_float(b2)),
        );
    }
    if let Some(eps) = s
        .num("optimizer", "eps")
        .filter(|e| *e != 1e-8 && class != "SGD")
    {
        m.set(
            &format!("{o}.override_optimizer_config"),
            format!("{{eps:{}}}", py_float(eps)),
        );
    }
    // The engine workers read optim.clip_grad, the legacy actor grad_clip.
    let clip = format!("{o}.clip_grad");
    let names = [clip.as_str(), "actor_rollout_ref.actor.grad_clip"];
    m.number(s, ("optimizer", "grad_clip"), "verl", &names, false);
}

/// The rollout and optimizer settings as TRL 1.16's `GRPOConfig` keyword
/// arguments, and the recipe's learning rate per optimizer step relative
/// to `learning_rate` when TRL's own schedulers cannot give it (they count
/// steps from 0, Keel's `step` from 1).
pub(crate) struct TrlMapped {
    pub mapped: Mapped,
    /// Factor of `learning_rate` at each Keel step (from 1).
    pub lr_schedule: Option<Vec<f64>>,
    /// Optimizer steps per Keel step (E · M).
    pub updates_per_step: u64,
}

pub(crate) fn trl(checked: &Checked, index: usize) -> TrlMapped {
    let mut out = TrlMapped {
        mapped: Mapped::default(),
        lr_schedule: None,
        updates_per_step: 1,
    };
    let Some(recipe) = checked.recipes.get(index) else {
        return out;
    };
    let s = Settings { recipe };
    let m = &mut out.mapped;
    match Batch::of(&s) {
        Some(b) => {
            m.set("num_generations", b.group);
            m.set("num_iterations", b.epochs);
            out.updates_per_step = b.updates();
            match b.per_micro() {
                Some(n) => {
                    m.set("per_device_train_batch_size", n);
                    m.set("gradient_accumulation_steps", b.micro);
                    m.set("steps_per_generation", b.minibatches * b.micro);
                }
                None => m.unmapped.push(format!("the batch: {} samples a step do not split into {} mini-batches of {} micro-batches, so TRL's `per_device_train_batch_size` is not set", b.samples(), b.minibatches, b.micro)),
            }
        }
        None => m.unmapped.push("the batch (`rollout.prompts`, `group`, `epochs`, `minibatches`, `micro_batches`) changes during the run: TRL's batch sizes are numbers, so none is set".into()),
    }
    m.number(
        &s,
        ("rollout", "temperature"),
        "TRL",
        &["temperature"],
        false,
    );
    m.number(&s, ("rollout", "top_p"), "TRL", &["top_p"], false);
    m.number(
        &s,
        ("rollout", "max_tokens"),
        "TRL",
        &["max_completion_length"],
        true,
    );
    keel_only(&s, "TRL", &mut m.unmapped);
    let name = s.sym("optimizer", "name").unwrap_or_else(|| "adamw".into());
    match name.as_str() {
        "sgd" => m.set("optim", "\"sgd\""),
        "adam" => {
            m.set("optim", "\"adamw_torch\"");
            m.unmapped.push("`optimizer.name = adam` (L2 weight decay in the gradient): TRL's optimizers decouple the decay, so `adamw_torch` is used".into());
        }
        _ => m.set("optim", "\"adamw_torch\""),
    }
    let steps = s.int("optimizer", "steps");
    match steps {
        Some(t) => m.set("max_steps", t * out.updates_per_step),
        None => m
            .unmapped
            .push("`optimizer.steps` is not a number: `max_steps` is not set".into()),
    }
    match steps.map(|t| learning_rate(checked, index, t)) {
        Some(Lr::Family {
            peak,
            warmup,
            decay,
            per_step,
        }) => {
            m.set("learning_rate", py_float(peak));
            let hf = match (decay, warmup) {
                ("constant", 0) => "constant",
                ("constant", _) => "constant_with_warmup",
                (d, _) => d,
            };
            m.set("lr_scheduler_type", format!("\"{hf}\""));
            m.set("warmup_steps", warmup * out.updates_per_step);
            if hf != "constant" || out.updates_per_step > 1 {
                out.lr_schedule = Some(per_step.iter().map(|x| x / peak).collect());
            }
        }
        Some(Lr::Other { peak, per_step }) => {
            m.set("learning_rate", py_float(peak));
            m.set("lr_scheduler_type", "\"constant\"");
            out.lr_schedule = Some(per_step.iter().map(|x| x / peak).collect());
        }
        Some(Lr::Dynamic(why)) => m.unmapped.push(format!(
            "the learning rate: {why}; TRL's `learning_rate` is not set"
        )),
        None => {}
    }
    if out.lr_schedule.is_some() {
        m.caveats.push("TRL's schedulers count steps from 0 and Keel's `step` counts from 1: `KeelGRPOTrainer.create_scheduler` runs the recipe's own learning rate at each step (`LR_SCHEDULE`, a factor of `learning_rate` per Keel step); `lr_scheduler_type` and `warmup_steps` name the same shape".into());
    }
    m.number(
        &s,
        ("optimizer", "weight_decay"),
        "TRL",
        &["weight_decay"],
        false,
    );
    for (key, name) in [
        ("beta1", "adam_beta1"),
        ("beta2", "adam_beta2"),
        ("eps", "adam_epsilon"),
    ] {
        if let Some(x) = s.num("optimizer", key) {
            m.set(name, py_float(x));
        }
    }
    m.number(
        &s,
        ("optimizer", "grad_clip"),
        "TRL",
        &["max_grad_norm"],
        false,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The families are recognised from their values alone, whatever
    /// expression wrote them; anything else is `Other`.
    #[test]
    fn learning_rate_shapes_are_recognised_from_values() {
        let t = 40u64;
        for (decay, warmup) in [
            ("constant", 0),
            ("constant", 20),
            ("cosine", 5),
            ("linear", 10),
        ] {
            let v: Vec<f64> = (1..=t)
                .map(|k| 3e-4 * family(decay, warmup, t, k))
                .collect();
            match shape_of(v) {
                Lr::Family {
                    peak,
                    warmup: w,
                    decay: d,
                    ..
                } => {
                    assert_eq!((d, w), (decay, warmup));
                    assert!((peak - 3e-4).abs() < 1e-18);
                }
                other => panic!("{decay}/{warmup}: {other:?}"),
            }
        }
        // `3e-4 * min(1, step / 20)` is the constant family with 20 steps.
        let v: Vec<f64> = (1..=t).map(|k| 3e-4 * (k as f64 / 20.0).min(1.0)).collect();
        assert!(matches!(
            shape_of(v),
            Lr::Family {
                warmup: 20,
                decay: "constant",
                ..
            }
        ));
        // An exponential decay is not a family.
        let v: Vec<f64> = (1..=t).map(|k| 1e-3 * 0.9f64.powi(k as i32)).collect();
        assert!(matches!(shape_of(v), Lr::Other { .. }));
    }
}
