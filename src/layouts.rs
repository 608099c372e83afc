//! Metadata that collections keep beside their checkpoints rather than in
//! them: Ray Tune trial folders (the Model Zoos' layout), where
//! `<trial>/checkpoint_<N>/checkpoints` sits beside `<trial>/params.json`
//! (the trial's config) and `<trial>/result.json` (one JSON object per
//! reported iteration).

use std::collections::BTreeMap;
use std::path::Path;

/// The iteration `N` of a `checkpoint_<N>` folder.
fn iteration(dir: &Path) -> Option<u64> {
    let name = dir.file_name()?.to_str()?;
    let digits = name.strip_prefix("checkpoint_")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Adds a JSON value's leaves under `prefix` (nested keys joined with `.`).
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>, depth: usize) {
    match v {
        serde_json::Value::Object(m) if depth < 8 => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out, depth + 1);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        serde_json::Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A Ray Tune trial's metadata for the checkpoint at `path`: its
/// `params.json` flattened, then the `result.json` line of its iteration
/// (by `training_iteration`, else the `N`th line), its `config` left out
/// (it repeats the params). Empty when `path` is not in such a layout;
/// unreadable or malformed JSON files are skipped.
pub fn trial_metadata(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(dir) = path.parent().filter(|d| iteration(d).is_some()) else { return out };
    let n = iteration(dir).expect("checked");
    let Some(trial) = dir.parent() else { return out };
    if let Ok(text) = std::fs::read_to_string(trial.join("params.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            flatten("", &v, &mut out, 0);
        }
    }
    if let Ok(text) = std::fs::read_to_string(trial.join("result.json")) {
        let lines: Vec<serde_json::Value> =
            text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).ok()).collect();
        let by_iteration = lines.iter().find(|l| l.get("training_iteration").and_then(|i| i.as_u64()) == Some(n));
        let line = by_iteration.or_else(|| usize::try_from(n).ok().and_then(|n| lines.get(n.checked_sub(1)?)));
        if let Some(serde_json::Value::Object(m)) = line {
            for (k, v) in m {
                if k != "config" {
                    flatten(k, v, &mut out, 1);
                }
            }
        }
    }
    out
}
