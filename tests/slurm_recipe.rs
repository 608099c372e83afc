//! The shipped Slurm recipe (`examples/slurm/`), run as Slurm runs it: each
//! array task a separate process with its `SLURM_ARRAY_TASK_ID`, then the
//! merge; then one task rerun alone, as after a failure. (On a real
//! single-node Slurm the same scripts are submitted with `submit.sh`: see
//! the README.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm").join(name)
}

fn run(name: &str, args: &[&Path], task: Option<usize>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name)).args(args).env("CNTSCOPE", env!("CARGO_BIN_EXE_cntscope"));
    cmd.env_remove("SLURM_ARRAY_TASK_ID").env_remove("SLURM_CPUS_PER_TASK");
    if let Some(t) = task {
        cmd.env("SLURM_ARRAY_TASK_ID", t.to_string());
    }
    cmd.output().expect("runs bash")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn array_tasks_then_merge_equal_one_scan_and_a_task_reruns_alone() {
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/zoo/mlp");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = Path::new("4");
    // The tasks run at once, as an array does.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (zoo, out) = (zoo.clone(), out.clone());
            std::thread::spawn(move || run("scan_array.sh", &[&zoo, &out, n], Some(i)))
        })
        .collect();
    for t in tasks {
        let o = t.join().unwrap();
        assert!(o.status.success(), "a task failed: {}", text(&o));
    }
    let o = run("merge.sh", &[&out, n], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("merged all 4 shards"), "{}", text(&o));

    let single = dir.path().join("single");
    let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .args(["scan", zoo.to_str().unwrap(), "-o", single.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let same = |what: &str| {
        for t in ["nodes.csv", "links.csv", "histograms.csv", "errors.csv"] {
            assert!(
                std::fs::read(out.join("all").join(t)).unwrap() == std::fs::read(single.join(t)).unwrap(),
                "{what}: {t} differs from one scan's"
            );
        }
    };
    same("merged");

    // Task 2 lost (its node failed): the merge refuses, naming it; task 2
    // rerun alone (the shard count is given, not Slurm's task count), then
    // the merge again.
    std::fs::remove_dir_all(out.join("shard-2")).unwrap();
    let o = run("merge.sh", &[&out, n], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("shard-2"), "{}", text(&o));
    let o = run("scan_array.sh", &[&zoo, &out, n], Some(2));
    assert!(o.status.success(), "{}", text(&o));
    let o = run("merge.sh", &[&out, n], None);
    assert!(o.status.success(), "{}", text(&o));
    same("merged after a rerun");

    // A task outside the split, or no shard count: refused with the usage.
    let o = run("scan_array.sh", &[&zoo, &out, n], Some(4));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a shard of 0..3"), "{}", text(&o));
    let o = run("scan_array.sh", &[&zoo, &out], Some(0));
    assert!(!o.status.success() && text(&o).contains("usage"), "{}", text(&o));
}
