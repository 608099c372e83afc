//! Metadata that collections keep beside their checkpoints rather than in
//! them: Ray Tune trial folders (the Model Zoos' layout), where
//! `<trial>/checkpoint_<N>/checkpoints` sits beside `<trial>/params.json`
//! (the trial's config) and `<trial>/result.json` (one JSON object per
//! reported iteration); Hugging Face Trainer checkpoints
//! (`checkpoint-<N>/trainer_state.json`); timm runs (`summary.csv` beside
//! `checkpoint-<epoch>.pth.tar`); and file names that hold a run's
//! settings, read with a pattern of named groups (`--name-pattern`).

use std::collections::BTreeMap;
use std::path::Path;

/// The most a file kept beside checkpoints is read of (a Ray Tune trial's
/// `result.json` grows by a line per iteration); a larger one adds
/// nothing.
const MAX_SIDECAR_BYTES: u64 = 256 << 20;

/// The bytes of a file kept beside checkpoints (`result.json`,
/// `trainer_state.json`, `summary.csv`, Orbax's metadata), at most `max`:
/// `None` when it is not there, not a regular file, larger, or
/// unreadable. Opened without blocking, so a FIFO put in its place never
/// hangs a scan.
pub(crate) fn sidecar(path: &Path, max: u64) -> Option<Vec<u8>> {
    std::fs::metadata(path).ok().filter(std::fs::Metadata::is_file)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).ok()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max + 1), &mut bytes).ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

/// [`sidecar`] as text, at most [`MAX_SIDECAR_BYTES`].
fn sidecar_text(path: &Path) -> Option<String> {
    String::from_utf8(sidecar(path, MAX_SIDECAR_BYTES)?).ok()
}

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
/// `params.json` flattened, then the `result.json` line of its checkpoint,
/// its `config` left out (it repeats the params). The line is the one
/// naming the checkpoint's folder (`checkpoint_dir_name`, as Ray 2 reports
/// it: there `checkpoint_<N>` counts checkpoints, not iterations); in a
/// result file without such names (Ray 1, the Model Zoos), the line of
/// `training_iteration` N, else the `N`th line. A Ray 2 result file that
/// names no line for the folder gives no line (never another
/// checkpoint's). The line's `training_iteration` is also the `step`.
/// Empty when `path` is not in such a layout; unreadable or malformed JSON
/// files are skipped.
pub fn trial_metadata(path: &Path) -> BTreeMap<String, String> {
    let Some(dir) = path.parent().filter(|d| iteration(d).is_some()) else { return BTreeMap::new() };
    let n = iteration(dir).expect("checked");
    let Some(trial_dir) = dir.parent() else { return BTreeMap::new() };
    let cell = Trial::of(trial_dir);
    let trial = cell.get_or_init(|| Trial::read(trial_dir));
    let mut out = trial.params.clone();
    let lines = &trial.lines;
    let folder = dir.file_name().and_then(|f| f.to_str());
    let named = |l: &serde_json::Value| l.get("checkpoint_dir_name").is_some_and(|c| !c.is_null());
    let line = if lines.iter().any(named) {
        lines.iter().find(|l| l.get("checkpoint_dir_name").and_then(|c| c.as_str()) == folder)
    } else {
        let by_iteration = lines.iter().find(|l| l.get("training_iteration").and_then(|i| i.as_u64()) == Some(n));
        by_iteration.or_else(|| usize::try_from(n).ok().and_then(|n| lines.get(n.checked_sub(1)?)))
    };
    if let Some(serde_json::Value::Object(m)) = line {
        for (k, v) in m {
            if k != "config" {
                flatten(k, v, &mut out, 1);
            }
        }
        // The checkpoint's step is its iteration (Ray 2's folder number
        // counts checkpoints).
        if let Some(it) = m.get("training_iteration").and_then(|i| i.as_u64()) {
            out.entry("step".into()).or_insert_with(|| it.to_string());
        }
    }
    out
}

/// A Ray Tune trial's files, read and parsed once for all its checkpoints
/// (a `result.json` of megabytes, read again for each of a trial's
/// checkpoints, made a scan of 60 of them take 0.6 s instead of 0.01 s).
struct Trial {
    /// `params.json`, flattened.
    params: BTreeMap<String, String>,
    /// `result.json`'s lines.
    lines: Vec<serde_json::Value>,
}

/// A file's length and modification time, `None` when it is no regular
/// file: a trial's files are parsed again when theirs change.
type Version = Option<(u64, std::time::SystemTime)>;

/// A trial parsed: its folder, the versions of its `params.json` and
/// `result.json` then, and what they hold (set once, by the first to ask).
type Parsed = (std::path::PathBuf, [Version; 2], std::sync::Arc<std::sync::OnceLock<Trial>>);

/// The trials parsed last (a scan meets a trial's checkpoints one after
/// another).
static TRIALS: std::sync::Mutex<Vec<Parsed>> = std::sync::Mutex::new(Vec::new());

/// How many trials [`TRIALS`] keeps.
const TRIALS_KEPT: usize = 16;

impl Trial {
    /// The cell of the trial in folder `dir`: the one kept from before
    /// when its files are unchanged, else a new one. Whoever asks first
    /// fills it (`get_or_init` with [`Trial::read`]), outside the lock;
    /// others asking at once wait for that, so a trial is parsed once.
    fn of(dir: &Path) -> std::sync::Arc<std::sync::OnceLock<Trial>> {
        let version = |name: &str| -> Version {
            let meta = std::fs::metadata(dir.join(name)).ok().filter(std::fs::Metadata::is_file)?;
            Some((meta.len(), meta.modified().ok()?))
        };
        let versions = [version("params.json"), version("result.json")];
        let mut kept = TRIALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, cell)) = kept.iter().find(|(d, v, _)| d == dir && *v == versions) {
            return std::sync::Arc::clone(cell);
        }
        let cell = std::sync::Arc::new(std::sync::OnceLock::new());
        kept.retain(|(d, _, _)| d != dir);
        if kept.len() >= TRIALS_KEPT {
            kept.remove(0);
        }
        kept.push((dir.to_path_buf(), versions, std::sync::Arc::clone(&cell)));
        cell
    }

    /// Parses the trial in folder `dir`. Unreadable or malformed files
    /// add nothing.
    fn read(dir: &Path) -> Trial {
        let mut params = BTreeMap::new();
        if let Some(v) = sidecar_text(&dir.join("params.json")).and_then(|t| serde_json::from_str(&t).ok()) {
            flatten("", &v, &mut params, 0);
        }
        let lines = sidecar_text(&dir.join("result.json"))
            .map(|text| {
                text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).ok()).collect()
            })
            .unwrap_or_default();
        Trial { params, lines }
    }
}

/// A Hugging Face Trainer checkpoint's metadata (`path` a directory with
/// `trainer_state.json`): `global_step` (also as `step`) and `epoch`, then
/// every value the Trainer logged at that step (`loss`, `learning_rate`,
/// `eval_loss`, `eval_accuracy`, ...: the `log_history` entries of that
/// step, later ones winning). Empty when `path` is no such directory;
/// an unreadable or malformed file is skipped.
pub fn trainer_metadata(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(text) = sidecar_text(&path.join(crate::checkpoint::TRAINER_STATE)) else { return out };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else { return out };
    let step = state.get("global_step").and_then(|s| s.as_u64());
    if let Some(step) = step {
        out.insert("global_step".into(), step.to_string());
        out.insert("step".into(), step.to_string());
    }
    if let Some(epoch) = state.get("epoch").filter(|e| e.is_number()) {
        out.insert("epoch".into(), epoch.to_string());
    }
    let logs = state.get("log_history").and_then(|l| l.as_array()).into_iter().flatten();
    for entry in logs.filter(|e| step.is_some() && e.get("step").and_then(|s| s.as_u64()) == step) {
        if let serde_json::Value::Object(m) = entry {
            for (k, v) in m.iter().filter(|(k, _)| !matches!(k.as_str(), "step" | "epoch")) {
                flatten(k, v, &mut out, 1);
            }
        }
    }
    out
}

/// The name of the table timm's `train.py` keeps beside its checkpoints.
const TIMM_SUMMARY: &str = "summary.csv";

/// A timm training run's metadata for the checkpoint at `path` whose own
/// `epoch` is `epoch`: the row of that epoch in the `summary.csv` beside
/// it (`train_loss`, `eval_loss`, `eval_top1`, `eval_top5`, `lr`, as
/// `update_summary` appends one per epoch; `checkpoint-<epoch>.pth.tar`,
/// `last` and `model_best` each find their own epoch's). Empty without
/// such a table (one whose first column is `epoch`) or such a row; an
/// unreadable or malformed table is skipped.
pub fn timm_metadata(path: &Path, epoch: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let (Some(dir), Ok(epoch)) = (path.parent(), epoch.parse::<u64>()) else { return out };
    let Some(text) = sidecar(&dir.join(TIMM_SUMMARY), MAX_SIDECAR_BYTES) else { return out };
    let mut table = csv::Reader::from_reader(&text[..]);
    let Ok(header) = table.headers().cloned() else { return out };
    if header.get(0) != Some("epoch") {
        return out;
    }
    // The last row of the epoch: a resumed run appends it again.
    let row = table.records().flatten().filter(|r| r.get(0).and_then(|e| e.parse::<u64>().ok()) == Some(epoch)).last();
    for (k, v) in header.iter().zip(row.iter().flatten()).skip(1) {
        if !v.is_empty() {
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// What a collection keeps beside the checkpoint at `path` (whose own
/// metadata is `own`): a Ray Tune trial's ([`trial_metadata`]), a
/// Trainer's ([`trainer_metadata`]) or a timm run's ([`timm_metadata`]).
pub fn beside(path: &Path, own: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = trial_metadata(path);
    let timm = own.get("epoch").map(|e| timm_metadata(path, e)).unwrap_or_default();
    for (k, v) in trainer_metadata(path).into_iter().chain(timm) {
        out.entry(k).or_insert(v);
    }
    out
}

/// A pattern of named groups matched against each checkpoint's path; each
/// group that matches becomes a metadata column.
#[derive(Debug, Clone)]
pub struct NamePattern(regex::Regex);

impl NamePattern {
    /// The file names of the paper's own code (CNT-DNNs' `train_vision.py`):
    /// `CIFAR10_cnn_nlayers-5_init-random-normal_support-0.05_seed-7_realaccuracy-0.4143_binaccuracy-0.4000.npy`.
    pub const CNT_DNNS: &'static str = r"(?P<dataset>[A-Za-z0-9]+)_(?P<arch>[A-Za-z0-9]+)_nlayers-(?P<nlayers>\d+)_init-(?P<init>[A-Za-z0-9-]+)_support-(?P<support>[0-9.eE+-]+)_seed-(?P<seed>\d+)_realaccuracy-(?P<accuracy>[0-9.]+)_binaccuracy-(?P<binaccuracy>[0-9.]+)";

    /// Parses a pattern (`cnt-dnns` names [`NamePattern::CNT_DNNS`]); it
    /// must have at least one named group.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = if text == "cnt-dnns" { Self::CNT_DNNS } else { text };
        let re = regex::Regex::new(text).map_err(|e| format!("--name-pattern: {e}"))?;
        if re.capture_names().flatten().next().is_none() {
            return Err("--name-pattern: the pattern has no named group `(?P<name>...)`".into());
        }
        Ok(NamePattern(re))
    }

    /// The pattern's text (`cnt-dnns` expanded).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The named groups that match `path`, as metadata.
    pub fn metadata(&self, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(c) = self.0.captures(path) {
            for name in self.0.capture_names().flatten() {
                if let Some(m) = c.name(name) {
                    out.insert(name.to_string(), m.as_str().to_string());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ray 2 numbers checkpoints, not iterations, and names each
    /// checkpoint's folder in its result line: that line is taken; Ray 1's
    /// folders are iterations.
    #[test]
    fn trial_results_are_the_checkpoints_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let trial = |name: &str, lines: &[&str]| {
            let t = dir.path().join(name);
            std::fs::create_dir_all(t.join("checkpoint_000001")).unwrap();
            std::fs::write(t.join("params.json"), r#"{"lr": 0.1, "optim": {"name": "sgd"}}"#).unwrap();
            std::fs::write(t.join("result.json"), lines.join("\n")).unwrap();
            trial_metadata(&t.join("checkpoint_000001/model.pt"))
        };
        let ray2 = [
            r#"{"test_acc": 0.1, "training_iteration": 1, "checkpoint_dir_name": null}"#,
            r#"{"test_acc": 0.2, "training_iteration": 2, "checkpoint_dir_name": "checkpoint_000000"}"#,
            r#"{"test_acc": 0.3, "training_iteration": 3, "checkpoint_dir_name": "checkpoint_000001"}"#,
        ];
        let m = trial("ray2", &ray2);
        assert_eq!(m.get("test_acc").map(String::as_str), Some("0.3"));
        assert_eq!(m.get("step").map(String::as_str), Some("3"));
        assert_eq!(m.get("optim.name").map(String::as_str), Some("sgd"));
        let m = trial("ray2_unreported", &ray2[..2]);
        assert_eq!(m.get("test_acc"), None, "{m:?}");
        assert_eq!(m.get("lr").map(String::as_str), Some("0.1"));
        let ray1 = [r#"{"test_acc": 0.5, "training_iteration": 1}"#, r#"{"test_acc": 0.6, "training_iteration": 2}"#];
        assert_eq!(trial("ray1", &ray1).get("test_acc").map(String::as_str), Some("0.5"));
    }

    /// A trial's files are parsed once for all its checkpoints, and again
    /// when they change (a trial still running appends to its results).
    #[test]
    fn a_trial_is_read_again_when_its_results_change() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint_000002/checkpoints");
        std::fs::create_dir_all(ck.parent().unwrap()).unwrap();
        let results = dir.path().join("result.json");
        std::fs::write(&results, "{\"training_iteration\": 1, \"acc\": 0.5}\n").unwrap();
        assert_eq!(trial_metadata(&ck).get("acc"), None);
        let more = "{\"training_iteration\": 1, \"acc\": 0.5}\n{\"training_iteration\": 2, \"acc\": 0.75}\n";
        std::fs::write(&results, more).unwrap();
        assert_eq!(trial_metadata(&ck).get("acc").map(String::as_str), Some("0.75"));
        let first = Trial::of(dir.path());
        assert!(std::sync::Arc::ptr_eq(&first, &Trial::of(dir.path())), "parsed once");
        // Workers asking at once share one parse and see the same line.
        let seen: Vec<_> = std::thread::scope(|s| {
            let asks: Vec<_> = (0..4).map(|_| s.spawn(|| trial_metadata(&ck))).collect();
            asks.into_iter().map(|a| a.join().unwrap()).collect()
        });
        assert!(seen.iter().all(|m| m.get("acc").map(String::as_str) == Some("0.75")), "{seen:?}");
    }

    #[test]
    fn a_timm_summary_row_is_the_checkpoints_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint-1.pth.tar");
        let table = "epoch,train_loss,eval_top1\n0,1.5,40.0\n1,1.2,55.5\n1,1.1,56.0\n2,0.9,\n";
        std::fs::write(dir.path().join("summary.csv"), table).unwrap();
        let m = timm_metadata(&ck, "1");
        // A resumed run's repeated epoch: its last row.
        assert_eq!(m.get("eval_top1").map(String::as_str), Some("56.0"));
        assert_eq!(m.get("train_loss").map(String::as_str), Some("1.1"));
        assert!(!m.contains_key("epoch"));
        // An empty cell is no value; an epoch with no row, none.
        assert!(!timm_metadata(&ck, "2").contains_key("eval_top1"));
        assert!(timm_metadata(&ck, "7").is_empty());
        assert!(timm_metadata(&ck, "1.5").is_empty());
        // A table whose first column is not `epoch` is not timm's.
        std::fs::write(dir.path().join("summary.csv"), "step,loss\n1,2\n").unwrap();
        assert!(timm_metadata(&ck, "1").is_empty());
    }

    #[test]
    fn cnt_dnns_names_become_columns() {
        let p = NamePattern::parse("cnt-dnns").unwrap();
        let m = p.metadata(
            "w/CIFAR10_cnn_nlayers-5_init-random-normal_support-0.05_seed-7_realaccuracy-0.4143_binaccuracy-0.4000.npy",
        );
        let get = |k: &str| m.get(k).map(String::as_str);
        assert_eq!(get("init"), Some("random-normal"));
        assert_eq!(get("support"), Some("0.05"));
        assert_eq!(get("seed"), Some("7"));
        assert_eq!(get("accuracy"), Some("0.4143"));
        assert_eq!(get("arch"), Some("cnn"));
        assert!(NamePattern::parse("no groups").is_err());
        assert!(NamePattern::parse("(?P<x>[").is_err());
    }
}
