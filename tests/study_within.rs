//! The study commands on a population whose answer is known: within each
//! setting the link-weight distribution is fixed (the same multiset of
//! weights, rearranged) while node-strength fluctuation grows with
//! accuracy; across settings the weight scale and the accuracy range move
//! together (a confound). The pooled separation table must be fooled by
//! the confound, the within-setting tables must not; and the study
//! commands must not hide failures or typos.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{write_st, T};

fn cntscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope")).args(args).output().expect("runs cntscope")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// An 8-4-2 MLP whose first layer holds sixteen `+scale` and sixteen
/// `-scale` weights: `pure` of its input columns all `+` or all `-` (in-
/// put strengths ±4 scale), the others alternating (strength 0). The
/// link-weight distribution is the same for every `pure`; the input set's
/// fluctuation grows with it.
fn net(path: &Path, scale: f64, pure: usize, meta: &[(&str, &str)]) {
    let mut w = vec![0.0; 4 * 8];
    for col in 0..8 {
        for row in 0..4 {
            let sign = if col < 2 * pure {
                if col % 2 == 0 {
                    1.0
                } else {
                    -1.0
                }
            } else if row % 2 == 0 {
                1.0
            } else {
                -1.0
            };
            w[row * 8 + col] = sign * scale;
        }
    }
    let w2 = vec![0.5, -0.5, 0.25, -0.25, 0.1, 0.2, -0.3, 0.4];
    write_st(path, &[T::f32("fc1.weight", &[4, 8], w), T::f32("fc2.weight", &[2, 4], w2)], meta);
}

/// The separation table as `feature -> spearman`.
fn table(path: &Path, setting: Option<&str>) -> BTreeMap<String, f64> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut out = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        if setting.is_some_and(|s| &rec[0] != s) {
            continue;
        }
        out.insert(rec[col("feature")].to_string(), rec[col("spearman")].parse().unwrap());
    }
    out
}

#[test]
fn within_setting_tables_find_what_was_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = dir.path().join("zoo");
    std::fs::create_dir(&zoo).unwrap();
    // Two settings: small weights and low accuracy, large weights and high
    // accuracy; within each, accuracy grows with `pure`.
    for (init, scale, base) in [("small", 1.0, 0.1), ("large", 3.0, 0.55)] {
        for k in 0..10 {
            let pure = k / 2;
            let accuracy = format!("{:.3}", base + 0.04 * k as f64);
            let name = format!("{init}-{k}.safetensors");
            net(&zoo.join(name), scale, pure, &[("accuracy", &accuracy), ("init", init)]);
        }
    }
    let out = dir.path().join("study");
    let o = cntscope(&["ensemble", zoo.to_str().unwrap(), "-o", out.to_str().unwrap(), "--within", "init"]);
    assert!(o.status.success(), "{}", text(&o));

    // Pooled: the link-weight std tracks accuracy only through the setting.
    let pooled = table(&out.join("separation.csv"), None);
    let std = "L1 fc1 link-weight std";
    let fluct = "V0 input fluctuation";
    assert!(pooled[std] > 0.8, "the confound shows in the pooled table: {}", pooled[std]);
    // Within each setting: the link-weight distribution is constant (no
    // rank correlation at all) and the fluctuation separates.
    for init in ["small", "large"] {
        let within = table(&out.join("separation_within.csv"), Some(init));
        assert!(within[std].is_nan() || within[std].abs() < 0.2, "{init}: link-weight std {}", within[std]);
        assert!(within[fluct] > 0.9, "{init}: fluctuation {}", within[fluct]);
        // The mean link weight is 0 in every network.
        let mean = within["L1 fc1 link-weight mean"];
        assert!(mean.is_nan() || mean.abs() < 0.2, "{init}: mean {mean}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Within init=small") && html.contains("Within init=large"));
    // The summary of the settings comes after the pooled table: no
    // link-weight summary has a rank correlation (they are constant within
    // a setting) and the best fluctuation separates (what was built in).
    let summary = html.find("Within each setting of init").expect("a within-setting summary");
    assert!(html.find("Which measure separates").unwrap() < summary);
    let row = |init: &str| {
        let at = html[summary..].find(&format!("<td>init={init}</td>")).unwrap() + summary;
        html[at..at + html[at..].find("</tr>").unwrap()].to_string()
    };
    for init in ["small", "large"] {
        let row = row(init);
        let cells: Vec<&str> = row.split("</td>").map(|c| c.rsplit('>').next().unwrap()).collect();
        assert_eq!(cells[2], "-", "{row}");
        let rho: f64 = cells[4].split(": ").nth(1).and_then(|v| v.split(',').next()).unwrap().parse().unwrap();
        assert!(cells[4].contains("fluctuation") && rho.abs() > 0.9, "{row}");
    }

    // --per-group caps each accuracy bin (a deterministic sample) and
    // --outliers drops values: both still give a table, twice the same.
    let capped = dir.path().join("capped");
    let scan = out.join("scan");
    let mut runs = Vec::new();
    for _ in 0..2 {
        let args = ["ensemble", scan.to_str().unwrap(), "-o", capped.to_str().unwrap()];
        let o = cntscope(&[&args[..], &["--per-group", "1", "--outliers", "2", "--width", "0.2"]].concat());
        assert!(o.status.success(), "{}", text(&o));
        runs.push(std::fs::read(capped.join("separation.csv")).unwrap());
    }
    assert_eq!(runs[0], runs[1], "the sample is deterministic");
    let capped_table = table(&capped.join("separation.csv"), None);
    let n: usize = csv::Reader::from_path(capped.join("separation.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[2].parse::<usize>().unwrap())
        .max()
        .unwrap();
    assert!(n <= 5, "one checkpoint per 0.2-wide accuracy bin: {n} ({capped_table:?})");
}

#[test]
fn study_commands_do_not_hide_failure() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = dir.path().join("zoo");
    std::fs::create_dir(&zoo).unwrap();
    for k in 0..4 {
        net(
            &zoo.join(format!("n{k}.safetensors")),
            1.0,
            k,
            &[("accuracy", &format!("0.{k}")), ("run", "r"), ("epoch", &k.to_string())],
        );
    }
    std::fs::write(zoo.join("broken.safetensors"), b"truncated").unwrap();
    let z = zoo.to_str().unwrap();
    let out = dir.path().join("rep");
    let o = cntscope(&["report", z, "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a failed checkpoint is exit 1: {}", text(&o));
    assert!(text(&o).contains("1 run,"), "{}", text(&o));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("broken.safetensors") && html.contains("could not be analysed"), "the report names it");
    let scan = out.join("scan");
    let s = scan.to_str().unwrap();
    for (args, says) in [
        (vec!["ensemble", s, "--by", "nosuchcol"], "--by nosuchcol: no such column"),
        (vec!["ensemble", s, "--accuracy", "nosuch"], "--accuracy nosuch: no such column"),
        (vec!["dynamics", s, "--run-by", "nosuchcol"], "--run-by nosuchcol: no such column"),
        (vec!["ensemble", s, "--within", "nosuch"], "--within nosuch: no such column"),
    ] {
        let o = cntscope(&[&args[..], &["-o", dir.path().join("x").to_str().unwrap()]].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says) && text(&o).contains("accuracy, epoch, run"), "{args:?}: {}", text(&o));
    }
    // An outlier rule of no standard deviations, or fewer, is refused.
    for m in ["--outliers=-1", "--outliers=0", "--outliers=nan"] {
        let o = cntscope(&["ensemble", s, "-o", "x", m]);
        assert_eq!(o.status.code(), Some(2), "{m}: {}", text(&o));
        assert!(text(&o).contains("standard deviations above 0"), "{m}: {}", text(&o));
    }
    // Flags of another command are refused, not ignored.
    let o = cntscope(&["ensemble", s, "-o", "x", "--checkpoint", "does/not/exist"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Nothing analysed: an error, no report.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("t.safetensors"), b"x").unwrap();
    let none = dir.path().join("none");
    let o = cntscope(&["report", bad.to_str().unwrap(), "-o", none.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nothing to study"), "{}", text(&o));
    assert!(!none.join("report.html").exists());
    // The study commands take the scan's flags.
    let binned = dir.path().join("binned");
    let o = cntscope(&["ensemble", z, "-o", binned.to_str().unwrap(), "--bins", "7", "--jobs", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let hist = std::fs::read_to_string(binned.join("scan/histograms.csv")).unwrap();
    assert!(hist.lines().nth(1).unwrap().contains(",7,"), "{hist}");
}
