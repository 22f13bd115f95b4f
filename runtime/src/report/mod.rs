//! Reading finished runs: `keel report RUN_DIR` ([`html`]: one
//! self-contained page of plots and guard events), `keel compare RUN_DIR...`
//! ([`compare`]: arms by recipe and `--set` values, means over seeds) and
//! the SVG plots both draw ([`plot`]); [`paired`] is `keel compare
//! --baseline`'s statistic.
//!
//! May import: `crate::run::dir` (the run directory's layout and metric
//! names, its only way into a run), `crate::error` and `keel-model`'s
//! atomic files; nothing else of the runtime.

pub mod compare;
pub mod html;
pub mod paired;
pub mod plot;

pub use html::write;
