//! Errors an inherited entry raises because the recipe extending it removed
//! what it reads (`credit = none`, `objective = none`): reported once per
//! removal, at the removal in the user's recipe, with every inherited read
//! as a secondary label and a help line saying how to drop or replace the
//! entries that still read it. Without this, the error points into the
//! base's file (`std/ppo.recipe`), which the user did not write.

use crate::diagnostic::{Diagnostic, Label};
use crate::resolve::{Entry, Merged, Removal};

/// One inherited read of a removed name.
struct Read {
    label: Label,
    /// `section.key` of the entry that reads it.
    entry: String,
    section: String,
    from: String,
}

/// Replace the errors listed in `unresolved` (index into `diags`, the
/// section and key each names) that an inherited entry raises after the
/// recipe removed that section or key, by one error per removal.
pub(crate) fn removals(
    recipe: &Merged,
    diags: &mut Vec<Diagnostic>,
    unresolved: &[(usize, String, Option<String>)],
) {
    let mut blamed: Vec<(usize, Vec<Read>, usize)> = Vec::new();
    let mut replaced = Vec::new();
    for (d, section, key) in unresolved {
        let Some(diag) = diags.get(*d) else {
            continue;
        };
        let at = &diag.primary;
        let Some((sec, entry)) = inherited_entry_at(recipe, at) else {
            continue;
        };
        let Some(r) = recipe.removed.iter().rposition(|r| {
            r.section == *section && (r.key.is_none() || r.key == *key) && r.by != entry.defined_in
        }) else {
            continue;
        };
        let what = match key {
            Some(k) => format!("`{section}.{k}`"),
            None => format!("`{section}`"),
        };
        let read = Read {
            label: Label::new(
                at.file,
                at.span,
                format!(
                    "`{sec}.{}`, inherited from `{}`, reads {what}",
                    entry.name, entry.defined_in
                ),
            ),
            entry: format!("{sec}.{}", entry.name),
            section: sec.to_string(),
            from: entry.defined_in.clone(),
        };
        match blamed.iter_mut().find(|(k, _, _)| *k == r) {
            Some((_, reads, _)) => reads.push(read),
            None => blamed.push((r, vec![read], *d)),
        }
        replaced.push(*d);
    }
    if blamed.is_empty() {
        return;
    }
    let new: Vec<(usize, Diagnostic)> = blamed
        .into_iter()
        .map(|(r, reads, d)| (d, blame(recipe, &recipe.removed[r], &reads, &diags[d])))
        .collect();
    // Each removal's error takes the place of its first read's.
    let mut out = Vec::with_capacity(diags.len());
    for (k, diag) in diags.drain(..).enumerate() {
        if let Some((_, b)) = new.iter().find(|(d, _)| *d == k) {
            out.push(b.clone());
        } else if !replaced.contains(&k) {
            out.push(diag);
        }
    }
    *diags = out;
}

/// The inherited entry (not defined by `recipe` itself) whose expression
/// holds `at`.
fn inherited_entry_at<'a>(recipe: &'a Merged, at: &Label) -> Option<(&'a str, &'a Entry)> {
    recipe.sections.iter().find_map(|s| {
        s.entries
            .iter()
            .find(|e| {
                e.defined_in != recipe.name
                    && e.file == at.file
                    && e.value.span.start <= at.span.start
                    && at.span.end <= e.value.span.end
            })
            .map(|e| (s.name.as_str(), e))
    })
}

fn blame(recipe: &Merged, removal: &Removal, reads: &[Read], first: &Diagnostic) -> Diagnostic {
    let removed = match &removal.key {
        Some(k) => format!("{}.{k}", removal.section),
        None => removal.section.clone(),
    };
    let mut entries: Vec<&str> = reads.iter().map(|r| r.entry.as_str()).collect();
    entries.dedup();
    let from = &reads[0].from;
    let mut d = Diagnostic::error(
        first.code,
        format!(
            "`{removed} = none` removes what inherited {} from `{from}` still {}",
            list(&entries),
            if entries.len() == 1 { "reads" } else { "read" }
        ),
        Label::new(removal.file, removal.span, "removed here"),
    );
    for r in reads {
        d = d.with_label(r.label.clone());
    }
    // For each section holding such an entry: start it afresh where the
    // recipe writes its own, else drop the entries.
    let mut fixes = Vec::new();
    let mut sections: Vec<&str> = reads.iter().map(|r| r.section.as_str()).collect();
    sections.dedup();
    for sec in sections {
        let own = recipe
            .section(sec)
            .is_some_and(|s| s.entries.iter().any(|e| e.defined_in == recipe.name));
        let removed_too = recipe
            .removed
            .iter()
            .any(|r| r.section == sec && r.key.is_none() && r.by == recipe.name);
        if own && !removed_too {
            fixes.push(format!("write `{sec} = none` before your `{sec} {{ … }}`: a section you write again keeps the `let`s and keys you do not replace"));
        } else {
            let mut keys: Vec<String> = reads
                .iter()
                .filter(|r| r.section == sec)
                .map(|r| format!("{} = none", r.entry))
                .collect();
            keys.dedup();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            fixes.push(format!(
                "write {} to drop the inherited entries",
                list(&keys)
            ));
        }
    }
    let define = match &removal.key {
        Some(k) => format!("define `{}.{k}` again", removal.section),
        None => format!("define `{}` again", removal.section),
    };
    d.with_help(format!("{}; or {define}", fixes.join("; ")))
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}
