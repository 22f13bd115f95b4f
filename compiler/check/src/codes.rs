//! Stable diagnostic codes and the error index.
//!
//! Every code has an entry in `docs/errors.md` (embedded here), which is what
//! `keel explain CODE` prints. A test checks that every code in [`ALL`] has an
//! entry and a snapshot test.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub &'static str);

macro_rules! codes {
    ($($name:ident = $code:literal: $title:literal;)*) => {
        $(pub const $name: Code = Code($code);)*
        /// Every code with its one-line title.
        pub const ALL: &[(Code, &str)] = &[$(($name, $title)),*];
    };
}

codes! {
    // Syntax.
    UNEXPECTED_TOKEN = "E0001": "unexpected token";
    UNEXPECTED_EOF = "E0002": "unexpected end of file";
    BAD_CHAR = "E0003": "unreadable character";
    UNTERMINATED_STRING = "E0004": "unterminated string";
    UNCLOSED_DELIMITER = "E0005": "unclosed delimiter";
    UNOPENED_DELIMITER = "E0006": "closing delimiter with nothing to close";
    TOO_DEEP = "E0007": "expression nested too deeply";
    // Names and structure.
    UNKNOWN_NAME = "E0100": "unknown name";
    UNKNOWN_MODULE = "E0101": "module not found";
    UNKNOWN_RECIPE = "E0102": "unknown base recipe";
    CYCLIC_EXTENDS = "E0103": "cyclic `extends`";
    DUPLICATE = "E0104": "defined twice";
    UNKNOWN_SECTION = "E0105": "unknown section";
    UNKNOWN_KEY = "E0106": "unknown key in a closed section";
    CYCLIC_DEFINITION = "E0107": "definition depends on itself";
    BAD_PATH = "E0108": "malformed assignment path";
    UNKNOWN_FIELD = "E0109": "unknown field";
    BAD_ARGUMENTS = "E0110": "wrong arguments in a call";
    UNKNOWN_FUNCTION = "E0111": "unknown function";
    RECURSIVE_FN = "E0112": "recursive function";
    SECTION_NEEDS_BLOCK = "E0113": "section cannot be set to one value";
    // Types and levels.
    TYPE_MISMATCH = "E0200": "type mismatch";
    LEVEL_MISMATCH = "E0202": "value is finer than its context allows";
    MISSING_OVER = "E0203": "reduction without `over`";
    UNEXPECTED_OVER = "E0204": "`over` on a function that does not reduce";
    BAD_REDUCTION_LEVEL = "E0205": "reduction to a level that is not coarser";
    UNKNOWN_LEVEL = "E0206": "unknown level";
    NONE_IN_EXPRESSION = "E0207": "`none` used as a value";
    // Hyperparameters.
    OUT_OF_RANGE = "E0300": "hyperparameter out of range";
    GROUP_TOO_SMALL = "E0301": "group too small for group-relative credit";
    NEGATIVE_COEFFICIENT = "E0302": "negative coefficient";
    NOT_CONSTANT = "E0303": "hyperparameter is not known before training";
    BAD_SYMBOL = "E0304": "unknown option value";
    // Recipe-level rules.
    BAD_ACTION = "E0400": "unknown guard action";
    COMMAND_OUTSIDE_GUARD = "E0401": "statement without `=` outside a guard";
    NOT_STATE = "E0402": "`update` assigns to something that is not a state variable";
    COMPOUND_OUTSIDE_GUARD = "E0403": "compound assignment outside a guard";
    BAD_WINDOW = "E0404": "malformed guard window";
    NO_LOSS = "E0405": "recipe defines no loss";
    CRITIC_INPUT = "E0406": "the policy's loss reads the critic's prediction during the update";
    // Compiling and running the loss.
    NOT_LOWERABLE = "E0500": "value cannot be compiled";
    NOT_DIFFERENTIABLE = "E0501": "gradient cannot flow through an operation";
    NON_FINITE_RESULT = "E0502": "the loss or its gradient is not finite";
    // Batches and settings.
    BATCH_MISSING = "E0600": "batch lacks a tensor the recipe reads";
    BATCH_DTYPE = "E0601": "batch tensor has the wrong dtype";
    BATCH_SHAPE = "E0602": "batch tensor has the wrong shape";
    BATCH_NONFINITE = "E0603": "batch tensor holds NaN or infinity";
    BATCH_UNREADABLE = "E0604": "batch file cannot be read";
    UNKNOWN_SETTING = "E0605": "`--set` names no hyperparameter";
    TOO_LARGE = "E0606": "batch needs more memory than is available";
    // The runtime (`keel run`).
    DATA_UNREADABLE = "E0700": "task data file cannot be read";
    DATA_RECORD = "E0701": "task data record is malformed";
    TASK_SETTING = "E0702": "task setting or data does not fit the runtime";
    MODEL_SETTING = "E0703": "model settings do not fit together";
    RUN_DIR = "E0704": "run directory or checkpoint cannot be used";
    RESUME_MISMATCH = "E0705": "the recipe changed since the run started";
    RUNTIME_INPUT = "E0706": "the recipe's loss cannot run on the runtime's batch";
    WEIGHTS = "E0707": "weights file does not match the model";
    DEVICE = "E0708": "no usable device";
    CHECKPOINT_FORMAT = "E0709": "checkpoint describes a model Keel cannot run";
    RUN_WARNINGS = "E0710": "`keel run` does not start on these warnings";
    JUDGE = "E0711": "the external judge failed";
    // Export to another engine (`keel export --target verl|trl`).
    EXPORT_INPUT = "E0800": "the target engine does not give the loss or credit an input it reads";
    EXPORT_GUARD = "E0801": "the target engine cannot run a guard";
    EXPORT_HOST = "E0802": "the target engine cannot run a section of the recipe";
    EXPORT_CRITIC = "E0803": "the target engine's critic cannot run the recipe's critic";
    // Warnings.
    UNUSED_LET = "W0001": "unused `let`";
    PROBABLE_TYPO_KEY = "W0002": "new key that looks like a typo of an inherited one";
    SUSPICIOUS_VALUE = "W0003": "unusual hyperparameter value";
    SHADOWS_INPUT = "W0004": "name shadows a built-in input";
}

const INDEX: &str = include_str!("../../../docs/errors.md");

/// The error-index entry for a code (`E0100`, case-insensitive), as Markdown.
pub fn explain(code: &str) -> Option<String> {
    let code = code.trim().to_ascii_uppercase();
    let header = format!("## {code}");
    let start = INDEX.find(&format!("{header}:"))?;
    let rest = &INDEX[start..];
    let end = rest[header.len()..]
        .find("\n## ")
        .map(|i| i + header.len() + 1)
        .unwrap_or(rest.len());
    Some(rest[..end].trim_end().to_string())
}

/// The title of a code, if it exists.
pub fn title(code: &str) -> Option<&'static str> {
    ALL.iter().find(|(c, _)| c.0 == code).map(|(_, t)| *t)
}
