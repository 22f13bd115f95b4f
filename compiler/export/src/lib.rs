//! `keel-export`: a backend of the IR that writes Python. A recipe's loss
//! graph becomes one PyTorch expression per IR node (`torch.rs`), over a
//! fixed runtime of the IR's semantics in torch (`keel_rt.py`, the same file
//! for every recipe). No method name appears here: what a recipe computes
//! comes from its graph.
//!
//! The exported function takes the batch as a dict of tensors by Keel's
//! input names (`docs/batch-format.md`) and returns `loss`, `advantages`
//! and the `metric.*` values; its gradient is torch autograd's, which the
//! tests compare with the gradient Keel derives (`tests/export.rs`).

#![forbid(unsafe_code)]

mod torch;

use keel_check::{Checked, Diagnostic};
use keel_ir::LogitsPath;

pub use torch::forward_source;

/// The IR's semantics in torch, shipped as `_keel.py` in every package.
pub const RUNTIME: &str = include_str!("keel_rt.py");

/// A package written by the exporter: relative paths and their contents.
#[derive(Clone, Debug)]
pub struct Package {
    /// The Python package name (`keel_grpo`).
    pub name: String,
    pub files: Vec<(String, String)>,
}

/// The Python package name for a recipe: `keel_` and the recipe's name with
/// every character that is not a letter, digit or `_` as `_`.
pub fn package_name(recipe: &str) -> String {
    let body: String = recipe
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("keel_{}", body.to_ascii_lowercase())
}

/// The inputs a plain torch module takes: everything the recipe reads by
/// name, `logp` given (not derived from `logits`) unless the recipe reads
/// the vocabulary itself, and the credit computed (no `advantages` input).
pub fn torch_inputs(recipe: &keel_check::CheckedRecipe) -> impl Fn(&str) -> bool + Sync + use<> {
    let fusable = LogitsPath::fusable(recipe);
    move |n: &str| n != "advantages" && (n != "logits" || !fusable)
}

/// Export recipe `index` of `checked` as a torch package whose `forward`
/// reads the batch tensors `has` says; `source` names the recipe file in
/// the generated text.
pub fn torch_package(
    checked: &Checked,
    index: usize,
    has: &(dyn Fn(&str) -> bool + Sync),
    source: &str,
) -> Result<Package, Vec<Diagnostic>> {
    let recipe = checked.recipes.get(index).ok_or_else(Vec::new)?;
    let compiled =
        keel_ir::compile_loss_for(checked, index, &|n: &str| has(n), LogitsPath::Program)?;
    let name = package_name(&recipe.name);
    let module = forward_source(&compiled.graph, &recipe.name, source);
    let init = format!(
        "\"\"\"The loss of Keel recipe `{r}`, exported by `keel export` (see README.md).\"\"\"\n\nfrom .loss import INPUTS, OUTPUTS, PARAMS, RECIPE, forward\n\n__all__ = [\"forward\", \"INPUTS\", \"OUTPUTS\", \"PARAMS\", \"RECIPE\"]\n",
        r = recipe.name
    );
    let pyproject = format!(
        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"{dist}\"\nversion = \"0.1.0\"\ndescription = \"The loss of Keel recipe `{r}`, exported by keel export\"\nrequires-python = \">=3.9\"\ndependencies = [\"torch>=2.1\"]\n\n[tool.setuptools]\npackages = [\"{name}\"]\n",
        dist = name.replace('_', "-"),
        r = recipe.name,
    );
    let readme = torch::readme(&compiled.graph, &recipe.name, &name, source);
    Ok(Package {
        files: vec![
            (format!("{name}/__init__.py"), init),
            (format!("{name}/_keel.py"), RUNTIME.to_string()),
            (format!("{name}/loss.py"), module),
            ("pyproject.toml".into(), pyproject),
            ("README.md".into(), readme),
        ],
        name,
    })
}
