//! The recipe's runtime settings: constants read from the checked recipe
//! (with the schema's defaults), and the step-level values (schedules, state
//! updates, guard conditions, the reward) compiled to host code.

use keel_compiler::{Checked, builtins};
use keel_grammar::ExprKind;

/// A constant setting.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Num(f64),
    /// An option name (`arithmetic`, `adamw`).
    Sym(String),
    Str(String),
}

/// Reads constant settings of one recipe.
pub struct Settings<'a> {
    pub checked: &'a Checked,
    pub index: usize,
}

impl Settings<'_> {
    pub fn get(&self, section: &str, key: &str) -> Option<Setting> {
        let merged = self.checked.merged.get(self.index)?;
        let recipe = self.checked.recipes.get(self.index)?;
        if let Some(e) = merged.section(section).and_then(|s| s.entry(key)) {
            match &e.value.kind {
                ExprKind::Str(s) => return Some(Setting::Str(unquote(s))),
                ExprKind::Var(v)
                    if recipe
                        .value(section, key)
                        .and_then(|v| v.info.constant)
                        .is_none() =>
                {
                    return Some(Setting::Sym(v.name.clone()));
                }
                _ => {}
            }
            if let Some(c) = recipe.value(section, key).and_then(|v| v.info.constant) {
                return Some(Setting::Num(c));
            }
            return None;
        }
        let d = builtins::section(section)?.key(key)?.default?;
        Some(match d.parse::<f64>() {
            Ok(x) => Setting::Num(x),
            Err(_) if d == "true" => Setting::Num(1.0),
            Err(_) if d == "false" => Setting::Num(0.0),
            Err(_) => Setting::Sym(d.trim_matches('"').to_string()),
        })
    }

    /// A numeric constant (or the default `or`).
    pub fn num(&self, section: &str, key: &str, or: f64) -> f64 {
        match self.get(section, key) {
            Some(Setting::Num(x)) => x,
            _ => or,
        }
    }

    pub fn int(&self, section: &str, key: &str, or: usize) -> usize {
        let x = self.num(section, key, or as f64);
        if x.is_finite() && x >= 0.0 {
            x as usize
        } else {
            or
        }
    }

    pub fn sym(&self, section: &str, key: &str) -> Option<String> {
        match self.get(section, key) {
            Some(Setting::Sym(s)) | Some(Setting::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether the recipe defines `section.key` itself (or inherits it).
    pub fn defined(&self, section: &str, key: &str) -> bool {
        self.checked
            .merged
            .get(self.index)
            .and_then(|m| m.section(section))
            .and_then(|s| s.entry(key))
            .is_some()
    }
}

/// The text of a string literal (the lexer keeps the quotes and escapes).
pub fn unquote(s: &str) -> String {
    let inner = s
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s);
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}
