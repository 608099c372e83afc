//! Scans that cannot be fooled: what a scan directory holds (manifest,
//! checksummed journal), `--resume` and `merge` refusing what does not fit,
//! one writer per directory, all-or-nothing tables, and collections with
//! filesystem oddities (loops, FIFOs, names that are not UTF-8).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{values, write_st, T};

const TABLES: [&str; 4] = ["nodes.csv", "links.csv", "histograms.csv", "errors.csv"];

fn cntscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope")).args(args).output().expect("runs cntscope")
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 6-5-3 MLP whose accuracy is `0.{seed}`.
fn mlp(path: &Path, seed: u64) {
    common::mlp(path, seed, &[("accuracy", &format!("0.{seed}"))]);
}

/// A folder of `n` MLPs.
fn zoo(dir: &Path, n: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        mlp(&dir.join(format!("m{i:02}.safetensors")), 10 + i);
    }
    dir.to_path_buf()
}

/// Runs a command that must succeed (exit 0 or 1).
#[track_caller]
fn ok(args: &[&str]) -> Output {
    let o = cntscope(args);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{args:?} failed: {}", text(&o));
    o
}

/// Runs a command that must be refused (exit 2) with a message containing
/// `says`.
#[track_caller]
fn refused(args: &[&str], says: &str) -> Output {
    let o = cntscope(args);
    assert_eq!(o.status.code(), Some(2), "{args:?} was not refused: {}", text(&o));
    assert!(text(&o).contains(says), "{args:?}: the refusal does not say `{says}`: {}", text(&o));
    o
}

#[track_caller]
fn same_tables(a: &Path, b: &Path) {
    for t in TABLES {
        let (x, y) = (std::fs::read(a.join(t)), std::fs::read(b.join(t)));
        assert!(x.is_ok() && y.is_ok(), "{t} missing in {} or {}", a.display(), b.display());
        assert!(x.unwrap() == y.unwrap(), "{t} differs between {} and {}", a.display(), b.display());
    }
}

fn rows(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count() - 1
}

#[test]
fn resume_continues_only_a_compatible_scan() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 8);
    let out = dir.path().join("out");
    ok(&["scan", s(&data), "-o", s(&out)]);
    let nodes = std::fs::read(out.join("nodes.csv")).unwrap();

    // Nothing left: says so, same tables.
    let o = ok(&["scan", s(&data), "-o", s(&out), "--resume"]);
    assert!(text(&o).contains("nothing left to do"), "{}", text(&o));
    assert_eq!(std::fs::read(out.join("nodes.csv")).unwrap(), nodes);

    // Settings that shape the tables.
    refused(&["scan", s(&data), "-o", s(&out), "--resume", "--bins", "10"], "bins: 50 -> 10");
    refused(&["scan", s(&data), "-o", s(&out), "--resume", "--no-bias"], "bias");
    refused(&["scan", s(&data), "-o", s(&out), "--resume", "--shard", "0/2"], "shard: none -> 0/2");
    refused(&["scan", s(&data), "-o", s(&out), "--resume", "--name-pattern", "m(?P<n>\\d+)"], "name_pattern");
    // The engine shapes the last digits: one directory, one engine.
    refused(&["scan", s(&data), "-o", s(&out), "--resume", "--device", "gpu"], "engine: cpu -> gpu");
    // The same collection spelt another way: names would differ.
    let other_spelling = format!("{}/./", s(&data));
    refused(&["scan", &other_spelling, "-o", s(&out), "--resume"], "give the paths as the scan did");
    // A collection that changed: a file removed, a file added, a file
    // rewritten.
    let moved = dir.path().join("m00.safetensors");
    std::fs::rename(data.join("m00.safetensors"), &moved).unwrap();
    refused(&["scan", s(&data), "-o", s(&out), "--resume"], "not the collection");
    std::fs::rename(&moved, data.join("m00.safetensors")).unwrap();
    mlp(&data.join("m99.safetensors"), 99);
    refused(&["scan", s(&data), "-o", s(&out), "--resume"], "9");
    std::fs::remove_file(data.join("m99.safetensors")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    mlp(&data.join("m03.safetensors"), 77);
    refused(&["scan", s(&data), "-o", s(&out), "--resume"], "changed since");
    // Another collection's journal and manifest.
    let other = zoo(&dir.path().join("other"), 8);
    refused(&["scan", s(&other), "-o", s(&out), "--resume"], "not the collection");
    // Every refusal left the directory as it was: tables and all.
    assert_eq!(std::fs::read(out.join("nodes.csv")).unwrap(), nodes);
    let o = cntscope(&["report", s(&out), "-o", s(&dir.path().join("rep"))]);
    assert!(o.status.success(), "a refused resume spoilt the scan: {}", text(&o));
}

#[test]
fn resume_starts_where_nothing_was_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 3);
    let fresh = dir.path().join("fresh");
    ok(&["scan", s(&data), "-o", s(&fresh)]);
    // A directory that does not exist, an empty one, one with an empty
    // journal (a scan killed before it wrote a record).
    for (name, prepare) in [("new", 0), ("empty", 1), ("killed", 2)] {
        let out = dir.path().join(name);
        if prepare > 0 {
            std::fs::create_dir(&out).unwrap();
        }
        if prepare > 1 {
            std::fs::write(out.join("scan.journal"), "").unwrap();
        }
        ok(&["scan", s(&data), "-o", s(&out), "--resume"]);
        same_tables(&fresh, &out);
    }
}

#[test]
fn damaged_journals_never_reach_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 6);
    let full = dir.path().join("full");
    ok(&["scan", s(&data), "-o", s(&full), "--jobs", "1"]);
    let journal = std::fs::read(full.join("scan.journal")).unwrap();
    let manifest = std::fs::read_to_string(full.join("scan.manifest")).unwrap();
    let unfinished = manifest.replace(r#""complete": true"#, r#""complete": false"#);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // A power cut: a torn record, then zeros where the rest would be.
        ("torn", {
            let mut j = journal[..journal.len() / 2].to_vec();
            j.resize(journal.len(), 0);
            j
        }),
        // Bytes inserted mid-journal.
        ("inserted", {
            let mut j = journal.clone();
            let at = journal.len() / 3;
            j.splice(at..at, b"1,2,3\n".iter().copied());
            j
        }),
        // One byte altered (a digit of a number in a row).
        ("altered", {
            let mut j = journal.clone();
            let at = journal.len() / 2 + journal[journal.len() / 2..].iter().position(|b| b.is_ascii_digit()).unwrap();
            j[at] = if j[at] == b'9' { b'8' } else { j[at] + 1 };
            j
        }),
        ("garbage", b"not a journal at all\n".repeat(100)),
    ];
    for (name, bytes) in cases {
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("scan.journal"), &bytes).unwrap();
        std::fs::write(out.join("scan.manifest"), &unfinished).unwrap();
        let o = ok(&["scan", s(&data), "-o", s(&out), "--resume"]);
        assert!(text(&o).contains("no intact record"), "{name}: the damage is not reported: {}", text(&o));
        same_tables(&full, &out);
    }
}

/// `n` shards of `data` scanned into `dir/shard-I` with `extra` options.
fn shards(data: &Path, dir: &Path, n: usize, extra: &[&str]) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let out = dir.join(format!("shard-{i}"));
            let shard = format!("{i}/{n}");
            let mut args = vec!["scan", s(data), "--shard", &shard, "-o", s(&out)];
            args.extend(extra);
            ok(&args);
            out
        })
        .collect()
}

#[test]
fn merge_refuses_what_is_not_one_whole_scan() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 9);
    let single = dir.path().join("single");
    ok(&["scan", s(&data), "-o", s(&single)]);
    let four = shards(&data, &dir.path().join("four"), 4, &[]);
    let merged = dir.path().join("merged");
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(four.iter().map(|p| s(p)));
    args.extend(["-o", s(&merged)]);
    let o = ok(&args);
    assert!(text(&o).contains("merged all 4 shards"), "{}", text(&o));
    same_tables(&single, &merged);
    // A merged directory is a whole scan: resumable as one.
    let o = ok(&["scan", s(&data), "-o", s(&merged), "--resume"]);
    assert!(text(&o).contains("nothing left to do"), "{}", text(&o));

    let out = dir.path().join("bad");
    let (a, b, c, d) = (s(&four[0]), s(&four[1]), s(&four[2]), s(&four[3]));
    refused(&["merge", a, b, c, "-o", s(&out)], "3/4 missing");
    // A shard given twice is taken once.
    ok(&["merge", a, b, c, d, d, "-o", s(&out)]);
    same_tables(&single, &out);
    // Other bins.
    let bins = shards(&data, &dir.path().join("bins"), 4, &["--bins", "10"]);
    refused(&["merge", a, b, c, s(&bins[3]), "-o", s(&out)], "bins: 50 -> 10");
    // Another collection with the same file names.
    let other = zoo(&dir.path().join("other/zoo"), 9);
    std::thread::sleep(std::time::Duration::from_millis(20));
    mlp(&other.join("m04.safetensors"), 5);
    let foreign = shards(&other, &dir.path().join("other"), 4, &[]);
    refused(&["merge", a, b, c, s(&foreign[3]), "-o", s(&out)], "another collection");
    // A shard of another split.
    let three = shards(&data, &dir.path().join("three"), 3, &[]);
    refused(&["merge", a, b, c, s(&three[2]), "-o", s(&out)], "one split");
    // The same shard twice with other records.
    refused(&["merge", a, b, c, d, s(&foreign[3]), "-o", s(&out)], "another collection");
    // A damaged journal, an unfinished shard, a directory that is no scan.
    let damaged = dir.path().join("damaged");
    copy_dir(&four[3], &damaged);
    std::fs::write(damaged.join("scan.journal"), b"garbage").unwrap();
    refused(&["merge", a, b, c, s(&damaged), "-o", s(&out)], "no intact record");
    let cut = dir.path().join("cut");
    copy_dir(&four[3], &cut);
    let journal = std::fs::read(cut.join("scan.journal")).unwrap();
    std::fs::write(cut.join("scan.journal"), &journal[..journal.len() / 2]).unwrap();
    refused(&["merge", a, b, c, s(&cut), "-o", s(&out)], "no intact record");
    let unfinished = dir.path().join("unfinished");
    copy_dir(&four[3], &unfinished);
    let m = std::fs::read_to_string(unfinished.join("scan.manifest")).unwrap();
    std::fs::write(unfinished.join("scan.manifest"), m.replace(r#""complete": true"#, r#""complete": false"#)).unwrap();
    refused(&["merge", a, b, c, s(&unfinished), "-o", s(&out)], "did not finish");
    refused(&["merge", a, b, c, s(&data), "-o", s(&out)], "not a scan directory");
    refused(&["merge", a, b, c, d, "-o", a], "is one of the shards");
    refused(&["merge", a, "nonexistent", "-o", s(&out)], "no such directory");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 4);
    let out = dir.path().join("out");
    ok(&["scan", s(&data), "-o", s(&out)]);
    // Another process holds the directory: every writer is refused at once,
    // naming the holder.
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(out.join(".cntscope.lock")).unwrap();
    lock.try_lock().unwrap();
    std::fs::write(out.join(".cntscope.lock"), "4242").unwrap();
    refused(&["scan", s(&data), "-o", s(&out)], "process 4242 is writing");
    refused(&["scan", s(&data), "-o", s(&out), "--resume"], "process 4242 is writing");
    let merged = dir.path().join("merged");
    refused(&["merge", s(&out), "-o", s(&merged)], "process 4242 is writing");
    drop(lock);

    // Two scans started together: one wins, the other is refused, and the
    // directory holds the winner's scan alone.
    let big = zoo(&dir.path().join("big"), 60);
    let race = dir.path().join("race");
    let spawn = |d: &Path| {
        Command::new(env!("CARGO_BIN_EXE_cntscope"))
            .args(["scan", s(d), "-o", s(&race), "--jobs", "1", "--device", "cpu"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(&big), spawn(&data));
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    let codes = [first.status.code(), second.status.code()];
    if codes.contains(&Some(2)) {
        let loser = if codes[0] == Some(2) { &first } else { &second };
        assert!(text(loser).contains("is writing this scan directory"), "{}", text(loser));
        let n = if codes[0] == Some(2) { 4 } else { 60 };
        assert_eq!(rows(&race.join("links.csv")), 2 * n, "the winner's scan, whole");
    } else {
        // One finished before the other started: the later one's scan.
        assert!(codes.iter().all(|c| *c == Some(0)), "{} {}", text(&first), text(&second));
    }
}

#[test]
fn a_full_disk_leaves_no_partial_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 5);
    let out = dir.path().join("out");
    ok(&["scan", s(&data), "-o", s(&out), "--bins", "7"]);
    for table in TABLES {
        // The disk fills while this table is written: the scan fails naming
        // it, no table of either scan is left under its final name, and the
        // study commands refuse the directory.
        let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
            .args(["scan", s(&data), "-o", s(&out)])
            .env("CNTSCOPE_TEST_DISK_FULL", format!("{table}:10"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{table}: {}", text(&o));
        assert!(text(&o).contains("No space left on device"), "{table}: {}", text(&o));
        for t in TABLES {
            assert!(!out.join(t).exists(), "{t} left in place after {table} could not be written");
        }
        let names: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "temporary tables left: {names:?}");
        refused(&["report", s(&out), "-o", s(&dir.path().join("rep"))], "did not finish");
        // --resume finishes it.
        ok(&["scan", s(&data), "-o", s(&out), "--resume"]);
        let o = cntscope(&["report", s(&out), "-o", s(&dir.path().join("rep"))]);
        assert!(o.status.success(), "{}", text(&o));
    }
    // The journal on a full device.
    #[cfg(target_os = "linux")]
    {
        let full = dir.path().join("devfull");
        std::fs::create_dir(&full).unwrap();
        std::os::unix::fs::symlink("/dev/full", full.join("scan.journal")).unwrap();
        let o = refused(&["scan", s(&data), "-o", s(&full)], "No space left on device");
        assert!(!full.join("nodes.csv").exists(), "{}", text(&o));
    }
}

#[cfg(unix)]
#[test]
fn odd_filesystems_scan_once_and_never_hang() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 3);
    std::fs::create_dir(data.join("sub")).unwrap();
    mlp(&data.join("sub/s.safetensors"), 50);
    std::os::unix::fs::symlink(".", data.join("a")).unwrap();
    std::os::unix::fs::symlink(".", data.join("b")).unwrap();
    std::os::unix::fs::symlink("..", data.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("nowhere.safetensors", data.join("dangling.safetensors")).unwrap();
    let fifo = data.join("x.safetensors");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Two names that differ only in bytes that are not UTF-8.
    let odd = |b: &[u8]| data.join(std::ffi::OsStr::from_bytes(b));
    mlp(&odd(b"\xff.safetensors"), 60);
    mlp(&odd(b"\xfe.safetensors"), 61);

    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .args(["scan", s(&data), "-o", s(&out)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    for (what, says) in [("a", "symlink loop"), ("b", "symlink loop"), ("sub/up", "symlink loop")] {
        let row = format!("{}/{what},io,,", s(&data));
        assert!(errors.lines().any(|l| l.starts_with(&row) && l.contains(says)), "{what}: {errors}");
    }
    assert!(errors.contains("x.safetensors: a FIFO"), "{errors}");
    assert!(errors.contains("dangling.safetensors: a broken symlink"), "{errors}");
    assert_eq!(rows(&out.join("errors.csv")), 5, "{errors}");
    let nodes = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
    let names: std::collections::BTreeSet<&str> = nodes.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(names.len(), 6, "each checkpoint once: {names:?}");
    assert!(names.contains(format!("{}/\\xff.safetensors", s(&data)).as_str()), "{names:?}");
    assert!(names.contains(format!("{}/\\xfe.safetensors", s(&data)).as_str()), "{names:?}");

    // Both odd names survive --resume (from a journal cut after the first
    // records) and merge.
    let journal = std::fs::read(out.join("scan.journal")).unwrap();
    let cut = dir.path().join("cut");
    copy_dir(&out, &cut);
    std::fs::write(cut.join("scan.journal"), &journal[..journal.len() / 3]).unwrap();
    ok(&["scan", s(&data), "-o", s(&cut), "--resume"]);
    same_tables(&out, &cut);
    let parts = shards(&data, &dir.path().join("parts"), 3, &[]);
    let merged = dir.path().join("merged");
    ok(&["merge", s(&parts[0]), s(&parts[1]), s(&parts[2]), "-o", s(&merged)]);
    same_tables(&out, &merged);

    // Named directly, a FIFO or a device is refused, never read.
    for special in [fifo.as_path(), Path::new("/dev/zero")] {
        let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
            .args(["inspect", s(special)])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("not a checkpoint file"), "{}", text(&o));
    }
}

/// Files that collections keep beside checkpoints (a Ray Tune trial's
/// `params.json` and `result.json`, a Trainer's `trainer_state.json`,
/// timm's `summary.csv`) and a sharded checkpoint's index, each a FIFO:
/// the scan finishes, the checkpoints measured without those columns, and
/// an index named directly is refused as not a regular file.
#[cfg(unix)]
#[test]
fn fifos_beside_checkpoints_never_hang_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("runs");
    let fifo = |p: &Path| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
    };
    std::fs::create_dir_all(data.join("ray/trial/checkpoint_000001")).unwrap();
    mlp(&data.join("ray/trial/checkpoint_000001/model.safetensors"), 1);
    fifo(&data.join("ray/trial/params.json"));
    fifo(&data.join("ray/trial/result.json"));
    std::fs::create_dir_all(data.join("trainer/checkpoint-5")).unwrap();
    mlp(&data.join("trainer/checkpoint-5/model.safetensors"), 2);
    fifo(&data.join("trainer/checkpoint-5/trainer_state.json"));
    std::fs::create_dir_all(data.join("timm")).unwrap();
    let w = T::f32("fc.weight", &[3, 4], values(12, 3));
    write_st(&data.join("timm/checkpoint-1.safetensors"), &[w], &[("epoch", "1")]);
    fifo(&data.join("timm/summary.csv"));
    let index = dir.path().join("sharded/model.safetensors.index.json");
    fifo(&index);

    // A hang fails the test rather than the suite.
    let run = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cntscope"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("cntscope {args:?} hung on a FIFO");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let out = dir.path().join("out");
    let o = run(&["scan", s(&data), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(rows(&out.join("nodes.csv")), 3 * 3 - 1, "three checkpoints: {}", text(&o));
    let o = run(&["inspect", s(&index)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));
}

/// One file under several names (timm's hard-linked `last.pth.tar` and
/// `model_best.pth.tar`, Lightning's `last.ckpt` symlink) is measured under
/// each, and the scan says which names are one file, so a study is not
/// silently given the same network twice; a copy is said as a checkpoint
/// that measures exactly as another.
#[cfg(unix)]
#[test]
fn one_file_under_several_names_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("run"), 3);
    std::fs::hard_link(data.join("m02.safetensors"), data.join("model_best.safetensors")).unwrap();
    std::os::unix::fs::symlink("m01.safetensors", data.join("last.safetensors")).unwrap();
    std::fs::copy(data.join("m00.safetensors"), data.join("m00_copy.safetensors")).unwrap();
    let out = dir.path().join("out");
    let o = ok(&["scan", s(&data), "-o", s(&out)]);
    assert_eq!(rows(&out.join("nodes.csv")), 6 * 3, "each name measured: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let name = |f: &str| format!("`{}`", data.join(f).display());
    let said = format!(
        "2 files are in the collection under more than one name (hard links or symlinks, such as timm's \
         `last.pth.tar` and `model_best.pth.tar` or Lightning's `last.ckpt`): {} = {}, {} = {};",
        name("last.safetensors"),
        name("m01.safetensors"),
        name("m02.safetensors"),
        name("model_best.safetensors")
    );
    assert!(stderr.contains(&said), "{stderr}");
    // A copy (equal bytes, another file) is no link: it is said as a
    // checkpoint that measures exactly as another; the links are not.
    let copies = format!(
        "1 checkpoint measures exactly as an earlier one (every node set's and layer's moments equal to the bit: \
         the same weights, as a copy such as Lightning's `last.ckpt` saved with `save_last=True`, or runs from \
         one initialisation before their first step): {} = {};",
        name("m00_copy.safetensors"),
        name("m00.safetensors")
    );
    assert!(stderr.contains(&copies), "{stderr}");
    // A file of many names is shown by its first three.
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    mlp(&many.join("a0.safetensors"), 1);
    for i in 1..5 {
        std::fs::hard_link(many.join("a0.safetensors"), many.join(format!("a{i}.safetensors"))).unwrap();
    }
    let o = ok(&["scan", s(&many), "-o", s(&dir.path().join("many-out"))]);
    let names = ["a0", "a1", "a2"].map(|a| format!("`{}`", many.join(format!("{a}.safetensors")).display()));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("{} = ... (5 names)", names.join(" = "))),
        "{}",
        text(&o)
    );
    // Nothing linked, nothing said.
    let o = ok(&[
        "scan",
        s(&data.join("m00.safetensors")),
        s(&data.join("m01.safetensors")),
        "-o",
        s(&dir.path().join("two")),
    ]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("more than one name"), "{}", text(&o));
}

/// As root every directory is readable: the test then runs the scan as
/// `nobody` (with `setpriv`), where it can.
#[cfg(unix)]
#[test]
fn an_unreadable_directory_is_an_error_row() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = zoo(&dir.path().join("zoo"), 2);
    let locked = data.join("locked");
    std::fs::create_dir(&locked).unwrap();
    mlp(&locked.join("hidden.safetensors"), 3);
    for f in ["m00.safetensors", "m01.safetensors"] {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = dir.path().join("out");
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_cntscope")]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_cntscope"))
    };
    let o = match cmd.args(["scan", s(&data), "-o", s(&out)]).output() {
        Ok(o) => o,
        Err(e) if root => {
            eprintln!("SKIP unreadable directory as root: setpriv unavailable ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{errors}", text(&o));
    assert!(errors.contains("locked: directory cannot be read"), "{errors}");
    assert_eq!(rows(&out.join("nodes.csv")), 2 * 3, "the readable checkpoints are measured");
}

#[test]
fn metadata_columns_never_share_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    write_st(
        &data.join("m.safetensors"),
        &[T::f32("net.0.weight", &[2, 3], values(6, 1))],
        &[("checkpoint", "a"), ("meta_checkpoint", "b"), ("count", "c")],
    );
    let out = dir.path().join("out");
    ok(&["scan", s(&data), "-o", s(&out)]);
    for table in ["nodes.csv", "links.csv"] {
        let text = std::fs::read_to_string(out.join(table)).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let unique: std::collections::BTreeSet<&&str> = header.iter().collect();
        assert_eq!(unique.len(), header.len(), "{table}: {header:?}");
        assert!(
            header.ends_with(&["meta_meta_checkpoint", "meta_count", "meta_checkpoint"][..]),
            "{table}: {header:?}"
        );
    }
}

#[test]
fn no_finite_value_is_nan_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    write_st(
        &data.join("m.safetensors"),
        &[T::f32("net.0.weight", &[2, 3], vec![f64::NAN; 6]), T::f32("net.2.weight", &[2, 2], values(4, 2))],
        &[],
    );
    let out = dir.path().join("out");
    ok(&["scan", s(&data), "-o", s(&out)]);
    let mut links = csv::Reader::from_path(out.join("links.csv")).unwrap();
    let header = links.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let first = links.records().next().unwrap().unwrap();
    assert_eq!(&first[col("count")], "0");
    for c in ["mean", "min", "max", "std"] {
        assert_eq!(&first[col(c)], "NaN", "links.csv {c} of a layer with no finite weight");
    }
    let mut nodes = csv::Reader::from_path(out.join("nodes.csv")).unwrap();
    let header = nodes.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for row in nodes.records() {
        let row = row.unwrap();
        if &row[col("nodes")] == "0" {
            for c in ["strength_mean", "strength_min", "strength_max", "fluctuation"] {
                assert_eq!(&row[col(c)], "NaN", "nodes.csv {c} of a set with no finite strength");
            }
        }
    }
}

#[test]
fn numbers_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    // Layers large enough to be split over threads, with odd sizes.
    write_st(
        &data.join("big.safetensors"),
        &[
            T::f32("fc1.weight", &[1031, 1237], values(1031 * 1237, 5)),
            T::f32("fc2.weight", &[7, 1031], values(7 * 1031, 6)),
        ],
        &[],
    );
    let outs: Vec<PathBuf> = [1, 2, 3, 7]
        .iter()
        .map(|jobs| {
            let out = dir.path().join(format!("j{jobs}"));
            ok(&["scan", s(&data), "-o", s(&out), "--device", "cpu", "--jobs", &jobs.to_string()]);
            out
        })
        .collect();
    for o in &outs[1..] {
        same_tables(&outs[0], o);
    }
}

#[test]
fn messages_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 1);
    let file = dir.path().join("README.md");
    std::fs::write(&file, "not a directory").unwrap();
    refused(&["scan", s(&data), "-o", s(&file)], "is a file, not a directory");
    let o = cntscope(&["scan", s(&data), "-o", s(&dir.path().join("o")), "--jobs", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--jobs"), "{}", text(&o));
    for args in [&["scan", "no/such/zoo", "-o", "x"][..], &["inspect", "no/such/file.safetensors"]] {
        refused(args, "no/such");
        let o = cntscope(args);
        assert!(text(&o).to_lowercase().contains("no such file or directory"), "{}", text(&o));
    }
    refused(&["merge", s(&data), "-o", s(&dir.path().join("m"))], "not a scan directory");
}

/// Ctrl-C in a scan says how to go on; `--resume` then finishes it.
#[cfg(unix)]
#[test]
fn an_interrupted_scan_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 2);
    // Enough work to still be running when interrupted: the same files
    // many times under other names (hard links).
    for i in 0..3000 {
        std::fs::hard_link(data.join("m00.safetensors"), data.join(format!("h{i:04}.safetensors"))).unwrap();
    }
    let out = dir.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .args(["scan", s(&data), "-o", s(&out), "--jobs", "1", "--device", "cpu"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    if o.status.success() {
        eprintln!("SKIP the scan finished before it was interrupted");
        return;
    }
    assert!(text(&o).contains("interrupted") && text(&o).contains("--resume"), "{}", text(&o));
    refused(&["report", s(&out), "-o", s(&dir.path().join("rep"))], "did not finish");
    ok(&["scan", s(&data), "-o", s(&out), "--resume"]);
    let fresh = dir.path().join("fresh");
    ok(&["scan", s(&data), "-o", s(&fresh)]);
    same_tables(&fresh, &out);
}

/// Tables are not synced one by one; a crash that loses their bytes
/// leaves sizes that the manifest contradicts: refused, then rendered again.
#[test]
fn tables_that_do_not_match_the_manifest_are_refused_and_rendered_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = zoo(&dir.path().join("zoo"), 4);
    let out = dir.path().join("out");
    ok(&["scan", s(&data), "-o", s(&out)]);
    let nodes = std::fs::read(out.join("nodes.csv")).unwrap();
    std::fs::write(out.join("nodes.csv"), "").unwrap();
    refused(&["report", s(&out), "-o", s(&dir.path().join("rep"))], "run the scan again with --resume");
    ok(&["scan", s(&data), "-o", s(&out), "--resume"]);
    assert_eq!(std::fs::read(out.join("nodes.csv")).unwrap(), nodes);
    let o = cntscope(&["report", s(&out), "-o", s(&dir.path().join("rep"))]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A chain of `n` 4x4 dense layers (`n` + 1 node sets).
fn many_layers(path: &Path, n: usize) {
    let names: Vec<String> = (0..n).map(|i| format!("l{i}.weight")).collect();
    let tensors: Vec<T<'_>> = names.iter().enumerate().map(|(i, n)| T::f32(n, &[4, 4], values(16, i as u64))).collect();
    write_st(path, &tensors, &[("accuracy", "0.5")]);
}

/// The most bytes of table rows a `cntscope -v scan` held at once, as it
/// reports them.
fn rows_held(args: &[&str], env: &[(&str, &str)]) -> u64 {
    let o =
        Command::new(env!("CARGO_BIN_EXE_cntscope")).arg("-v").args(args).envs(env.iter().copied()).output().unwrap();
    let err = text(&o);
    assert!(o.status.success(), "{err}");
    err.lines()
        .find_map(|l| l.strip_prefix("largest rows held at once: ")?.strip_suffix(" bytes")?.parse().ok())
        .unwrap_or_else(|| panic!("no rows held reported: {err}"))
}

#[test]
fn huge_records_are_written_in_pieces_and_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    zoo(&data, 3);
    many_layers(&data.join("many.safetensors"), 3000);
    let (held, pieces) = (dir.path().join("held"), dir.path().join("pieces"));
    ok(&["scan", s(&data), "-o", s(&held)]);
    // Every record above 100 rows written a piece at a time.
    let piecewise = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
            .args(args)
            .env("CNTSCOPE_TEST_HUGE_ROWS", "100")
            .output()
            .unwrap();
        assert!(matches!(o.status.code(), Some(0 | 1)), "{args:?}: {}", text(&o));
        o
    };
    piecewise(&["scan", s(&data), "-o", s(&pieces)]);
    same_tables(&held, &pieces);
    assert_eq!(rows(&pieces.join("links.csv")), 3 * 2 + 3000);
    // A torn record of that kind is cut off and measured again.
    let journal = pieces.join("scan.journal");
    let bytes = std::fs::read(&journal).unwrap();
    let many = bytes.windows(15).position(|w| w == b"many.safetensor").unwrap();
    std::fs::write(&journal, &bytes[..many + 200_000.min(bytes.len() - many - 1)]).unwrap();
    let o = piecewise(&["scan", s(&data), "-o", s(&pieces), "--resume"]);
    assert!(text(&o).contains("no intact record"), "{}", text(&o));
    same_tables(&held, &pieces);
}

#[test]
fn rows_of_a_checkpoint_are_never_held_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.safetensors");
    many_layers(&file, 60_000);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // Streamed (the default), a checkpoint's rows are held a piece of
    // about a megabyte at a time; held whole (what a threshold above its
    // 120001 rows gives), all of them: the 48 MB of journal text, less
    // each record's head. (Its peak memory is not the measure: at 60000
    // layers the graph and measures outweigh the rows, and the peak moves
    // by tens of MB with when the allocator returns freed memory; at
    // 300000 layers, README, the rows are most of it.)
    let streamed = rows_held(&["scan", s(&file), "-o", s(&a)], &[]);
    let held = rows_held(&["scan", s(&file), "-o", s(&b)], &[("CNTSCOPE_TEST_HUGE_ROWS", "1000000000")]);
    same_tables(&a, &b);
    let text = std::fs::metadata(a.join("scan.journal")).unwrap().len();
    assert!(streamed <= 2 << 20 && held >= text * 9 / 10, "streamed {streamed} B, held {held} B, journal {text} B");
}
