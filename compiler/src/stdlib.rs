//! The stdlib: `.recipe` files embedded in the binary, importable as
//! `std/NAME`. They are ordinary recipes; nothing about them is special
//! except where their text comes from.

/// `(name, text)` of every stdlib module.
pub const FILES: &[(&str, &str)] = &[
    ("kl", include_str!("../../stdlib/kl.recipe")),
    ("ppo", include_str!("../../stdlib/ppo.recipe")),
    ("grpo", include_str!("../../stdlib/grpo.recipe")),
    ("dapo", include_str!("../../stdlib/dapo.recipe")),
    ("dr_grpo", include_str!("../../stdlib/dr_grpo.recipe")),
    ("gspo", include_str!("../../stdlib/gspo.recipe")),
    ("rloo", include_str!("../../stdlib/rloo.recipe")),
    (
        "reinforce_pp",
        include_str!("../../stdlib/reinforce_pp.recipe"),
    ),
    (
        "reinforce_pp_baseline",
        include_str!("../../stdlib/reinforce_pp_baseline.recipe"),
    ),
    ("kl_cov", include_str!("../../stdlib/kl_cov.recipe")),
    ("clip_cov", include_str!("../../stdlib/clip_cov.recipe")),
];

pub fn get(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn names() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(n, _)| *n)
}
