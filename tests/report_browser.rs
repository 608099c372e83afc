//! The HTML report as a reader opens it: rendered by headless Chromium
//! (Debian's `chromium`), it loads without console errors and shows every
//! figure the study wrote. Without Chromium the test fails saying how to
//! get it; `CNTSCOPE_SKIP_BROWSER=1` skips it on purpose.

use std::path::Path;
use std::process::Command;

#[test]
fn the_report_loads_in_a_browser_with_every_figure() {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        if std::env::var("CNTSCOPE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("SKIP report in a browser (CNTSCOPE_SKIP_BROWSER=1)");
            return;
        }
        panic!("no Chromium for the report test: `apt-get install chromium`, or set CNTSCOPE_SKIP_BROWSER=1");
    };
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/zoo/mlp");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .args(["report", zoo.to_str().unwrap(), "-o", out.to_str().unwrap(), "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let figures = std::fs::read_dir(out.join("figures")).unwrap().count();
    assert!(figures > 10, "{figures} figures");
    let url = format!("file://{}", out.join("report.html").display());
    let profile = dir.path().join("profile");
    let o = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(dom.contains("<title>cntscope report</title>"), "the page did not load: {log}");
    assert_eq!(dom.matches("<svg").count(), figures, "every figure in the rendered page");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
}
