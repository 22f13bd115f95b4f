//! verl's datasets: a parquet file in the layout verl's
//! `examples/data_preprocess/*.py` write (`prompt` a list of `{role,
//! content}` messages, `data_source`, `reward_model` a struct with
//! `ground_truth`, `extra_info` a struct), read row by row with the
//! `parquet` crate's record API (no arrow) and handed to the data task as
//! the records a JSONL file holds: `{"prompt": [...], "answer":
//! ground_truth, "data_source", "extra_info"}`.

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::{Value, json};

use crate::error::{Error, Result, codes};

/// The rows of `path` as JSONL-style records (`prompt`, `answer`,
/// `data_source`, `extra_info`), each with where it came from
/// (`PATH: row N`, from 1) for errors.
pub fn records(path: &str) -> Result<Vec<(String, Value)>> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::new(
            codes::DATA_UNREADABLE,
            format!("cannot read `{path}`: {e}"),
            "check the path in `task.path` (relative to the recipe's directory)",
        )
        .at(path.to_string())
    })?;
    let unreadable = |e: parquet::errors::ParquetError| {
        Error::new(
            codes::DATA_UNREADABLE,
            format!("`{path}` is not a parquet file Keel can read: {e}"),
            "write it with pandas or pyarrow (`DataFrame.to_parquet`, `datasets.Dataset.to_parquet`), as verl's preprocessing scripts do",
        )
        .at(path.to_string())
    };
    let reader = SerializedFileReader::new(file).map_err(unreadable)?;
    let rows = reader.get_row_iter(None).map_err(unreadable)?;
    let mut out = Vec::new();
    for (k, row) in rows.enumerate() {
        let at = format!("{path}: row {}", k + 1);
        let v = row.map_err(unreadable)?.to_json_value();
        let missing = |column: &str, what: &str| {
            Error::new(
                codes::DATA_RECORD,
                format!("the row has no {what} (column `{column}`)"),
                "verl's layout: `prompt` (a list of {role, content} messages), `reward_model` (a struct with `ground_truth`), and optionally `data_source` and `extra_info`",
            )
            .at(at.clone())
        };
        let prompt = v
            .get("prompt")
            .filter(|p| !p.is_null())
            .ok_or_else(|| missing("prompt", "prompt"))?;
        let truth = v
            .get("reward_model")
            .filter(|r| !r.is_null())
            .ok_or_else(|| missing("reward_model", "reward model"))?
            .get("ground_truth")
            .filter(|g| !g.is_null())
            .ok_or_else(|| missing("reward_model.ground_truth", "ground truth"))?;
        out.push((
            at,
            json!({
                "prompt": prompt,
                "answer": truth,
                "data_source": v.get("data_source").cloned().unwrap_or(Value::Null),
                "extra_info": v.get("extra_info").cloned().unwrap_or(Value::Null),
            }),
        ));
    }
    Ok(out)
}
