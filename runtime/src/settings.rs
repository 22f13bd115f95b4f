//! The recipe's runtime settings: constants read from the checked recipe
//! (with the schema's defaults), and the step-level values (schedules, state
//! updates, guard conditions, the reward) compiled to host code.

use keel_compiler::{Checked, Diagnostic, Label};

use crate::error::Error;

pub use keel_compiler::Setting;

/// Reads constant settings of one recipe.
pub struct Settings<'a> {
    pub checked: &'a Checked,
    pub index: usize,
}

impl Settings<'_> {
    /// The setting `section.key` (`CheckedRecipe::setting`: the recipe's
    /// value, else the schema's default).
    pub fn get(&self, section: &str, key: &str) -> Option<Setting> {
        self.checked.recipes.get(self.index)?.setting(section, key)
    }

    /// A numeric constant: the recipe's, else the schema's default (the
    /// one place defaults live); NaN for a key with neither.
    pub fn num(&self, section: &str, key: &str) -> f64 {
        match self.get(section, key) {
            Some(Setting::Num(x)) => x,
            _ => f64::NAN,
        }
    }

    /// A count (a non-negative integer constant); 0 for a key with neither
    /// a value nor a default.
    pub fn int(&self, section: &str, key: &str) -> usize {
        let x = self.num(section, key);
        if x.is_finite() && x >= 0.0 {
            x as usize
        } else {
            0
        }
    }

    /// A switch (`true`/`false`).
    pub fn flag(&self, section: &str, key: &str) -> bool {
        let x = self.num(section, key);
        x.is_finite() && x != 0.0
    }

    pub fn sym(&self, section: &str, key: &str) -> Option<String> {
        match self.get(section, key) {
            Some(Setting::Sym(s)) | Some(Setting::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A path setting (`model.init`, `task.path`, `task.tokenizer`),
    /// resolved as `import` resolves: a relative path written in a file is
    /// relative to that file's directory; one given with `--set` is relative
    /// to the working directory, as command-line arguments are.
    pub fn path(&self, section: &str, key: &str) -> Option<String> {
        let text = self.sym(section, key)?;
        let written_in = self
            .checked
            .recipes
            .get(self.index)
            .and_then(|r| r.value(section, key))
            .map(|v| self.checked.sources().name(v.file).to_string());
        let p = std::path::Path::new(&text);
        match written_in {
            Some(file) if p.is_relative() && !file.starts_with("--set ") => {
                let dir = std::path::Path::new(&file)
                    .parent()
                    .unwrap_or(std::path::Path::new(""));
                Some(dir.join(p).display().to_string())
            }
            _ => Some(text),
        }
    }

    /// Whether the recipe defines `section.key` itself (or inherits it).
    pub fn defined(&self, section: &str, key: &str) -> bool {
        self.checked
            .recipes
            .get(self.index)
            .and_then(|r| r.value(section, key))
            .is_some()
    }

    /// A diagnostic at `section.key` of the recipe (or at its name where it
    /// does not set the key), for an error the runtime finds in a setting.
    pub fn located(&self, section: &str, key: &str, e: &Error) -> Vec<Diagnostic> {
        let Some(r) = self.checked.recipes.get(self.index) else {
            return Vec::new();
        };
        let (file, span) = r
            .value(section, key)
            .map(|v| (v.file, v.name_span))
            .unwrap_or((r.file, r.name_span));
        vec![
            Diagnostic::error(
                e.code,
                e.message.clone(),
                Label::new(file, span, format!("`{section}.{key}`")),
            )
            .with_help(e.help.clone()),
        ]
    }

    /// `e` located at `section.key`: its location and its diagnostic.
    pub fn locate(&self, section: &str, key: &str, e: Error) -> Error {
        let mut e = e.at(format!("{section}.{key}"));
        e.diagnostics = self.located(section, key, &e);
        e
    }
}
