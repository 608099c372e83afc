//! The `cntscope` command line. The Python package runs this same file as
//! its `cntscope` command (and its study functions through [`run`]).

pub(crate) mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;

use cntscope::checkpoint::Checkpoint;
use cntscope::collection::{self, Collection};
use cntscope::engine::{select_engine, AnalysisOptions, CpuEngine, Engine, GpuContext, GpuEngine};
use cntscope::graph::{GraphOptions, LayerKind, Network, PoolOp, Reading};
use cntscope::output::{atomic_write, num, write_csv, NODE_VALUES_HEADER};
use cntscope::scan::{measure, merge, scan, ScanOptions, ScanSummary};
use cntscope::spec::Scale;
use cntscope::study::{study, Grouping, StudyOptions};

use cli::{Cli, Command};

/// A scan allocates and frees small buffers for every checkpoint; with
/// mimalloc a scan of 5000 small checkpoints takes 8% less time than with
/// glibc's allocator (built without transparent huge pages, which cost more
/// to zero than they save here and doubled the resident memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ExitCode::from(run_args(std::env::args_os()))
}

/// True in a process that is the command line (not a Python session using
/// the library): only there does Ctrl-C during a scan exit the process.
static COMMAND_LINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The command line on `args` (the program name first), as a process: its
/// exit code.
pub(crate) fn run_args(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) -> u8 {
    COMMAND_LINE.store(true, std::sync::atomic::Ordering::Relaxed);
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version on stdout, exit 0; usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// The checkpoints under the paths; none at all is bad usage.
pub(crate) fn found_checkpoints(paths: &[PathBuf]) -> anyhow::Result<Collection> {
    let found = collection::collect(paths)?;
    if found.paths.is_empty() {
        bail!("no checkpoints found under the given paths");
    }
    Ok(found)
}

/// On Ctrl-C (or SIGTERM, as Slurm sends at a time limit) during a scan into
/// `dir`: says that what was finished is kept and how to finish, then
/// exits (130 / 143). The journal holds every record appended so far; a
/// torn last one is cut off by `--resume`.
fn on_interrupt_explain_resume(dir: &Path) {
    #[cfg(unix)]
    if COMMAND_LINE.load(std::sync::atomic::Ordering::Relaxed) {
        static MESSAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let text = format!(
            "\ninterrupted: the checkpoints finished so far are kept in {}; run the same command with --resume to \
             measure only the rest\n",
            dir.display()
        );
        if MESSAGE.set(text.into_bytes()).is_err() {
            return;
        }
        extern "C" fn handler(signal: libc::c_int) {
            if let Some(m) = MESSAGE.get() {
                // SAFETY: write(2) and _exit(2) are async-signal-safe; the
                // message was built before the handler was installed.
                unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
            }
            unsafe { libc::_exit(128 + signal) };
        }
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe {
            libc::signal(libc::SIGINT, handler as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, handler as *const () as libc::sighandler_t);
        }
    }
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs one parsed command.
pub(crate) fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Inspect { checkpoint, graph } => {
            let options = graph.options()?;
            let ck = Checkpoint::open_as(&checkpoint, options.key.as_deref())?;
            let net = Network::build(&ck, &options)?;
            print_notes(&net);
            inspect(&ck, &net, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Nodes { checkpoint, graph, device, layer, output } => {
            let options = graph.options()?;
            let engine = select_engine(device.device(), device.adapter.as_deref(), cores())?;
            if cli.verbose {
                eprintln!("engine: {}", engine.name());
            }
            let opts = AnalysisOptions { keep_values: true, ..AnalysisOptions::default() };
            let m = measure(&checkpoint, &options, engine.as_ref(), &opts)?;
            print_notes(&m.network);
            let sets = &m.analysis.node_sets;
            if let Some(k) = layer {
                if k >= sets.len() {
                    bail!("--layer {k}: the network has node layers 0..={}", sets.len() - 1);
                }
            }
            let rows = sets.iter().enumerate().filter(|(k, _)| layer.is_none_or(|l| l == *k)).flat_map(|(k, s)| {
                let v = s.values.as_ref().expect("values were asked for");
                (0..v.strength.len()).map(move |i| {
                    vec![k.to_string(), i.to_string(), num(v.s_in[i]), num(v.s_out[i]), num(v.strength[i])]
                })
            });
            match output {
                Some(path) => atomic_write(&path, |w| write_csv(w, &NODE_VALUES_HEADER, rows))?,
                None => write_csv(std::io::stdout().lock(), &NODE_VALUES_HEADER, rows)?,
            }
            Ok(0)
        }
        Command::Scan { paths, graph, device, output, scan: scan_args, resume, shard } => {
            let opts = ScanOptions {
                resume,
                shard: shard.as_deref().map(cli::parse_shard).transpose()?,
                ..scan_args.options(graph.options()?, cores())?
            };
            let checkpoints = found_checkpoints(&paths)?;
            // Few checkpoints: parallelism goes inside the layers instead.
            let threads = (opts.jobs / checkpoints.paths.len()).max(1);
            let engine = select_engine(device.device(), device.adapter.as_deref(), threads)?;
            if cli.verbose {
                eprintln!("engine: {}", engine.name());
            }
            on_interrupt_explain_resume(&output);
            let summary = scan(&checkpoints, &output, engine.as_ref(), &opts)?;
            if cli.verbose {
                if let Some(kb) = peak_memory_kb() {
                    eprintln!("peak memory: {:.1} MB", kb as f64 / 1024.0);
                }
                eprintln!("largest rows held at once: {} bytes", summary.largest_rows);
            }
            Ok(scan_outcome(summary, &output))
        }
        Command::Merge { dirs, output } => {
            // Merged is success: failed checkpoints are rows of errors.csv,
            // reported, not a failed merge.
            let summary = merge(&dirs, &output)?;
            eprintln!("merged all {} shards", summary.shards);
            report_scan(&summary, &output);
            Ok(0)
        }
        Command::Ensemble { input, ensemble } => run_study(input, Some(ensemble), None, cli.verbose),
        Command::Dynamics { input, dynamics } => run_study(input, None, Some(dynamics), cli.verbose),
        Command::Report { input, ensemble, dynamics } => run_study(input, Some(ensemble), Some(dynamics), cli.verbose),
        Command::Verify { paths, graph, adapter } => verify(&paths, &graph.options()?, adapter.as_deref(), cli.verbose),
    }
}

/// A study: scans the checkpoints into `DIR/scan` (or takes the given scan
/// directory), then writes the analyses, figures and report into `DIR`.
/// Its exit code is the scan's: 1 when some checkpoints failed (they are
/// listed in the report), and nothing written but an error when none was
/// analysed.
fn run_study(
    input: cli::StudyInput,
    ensemble: Option<cli::EnsembleArgs>,
    dynamics: Option<cli::DynamicsArgs>,
    verbose: bool,
) -> anyhow::Result<u8> {
    let graph = input.graph.options()?;
    let e = ensemble.as_ref();
    let d = dynamics.as_ref();
    // Columns given by name must exist; a default that does not leaves its
    // analysis empty, with a note.
    let mut required = Vec::new();
    let mut column = |flag: &str, given: Option<&String>, default: &str| {
        if let Some(c) = given {
            required.push((flag.to_string(), c.clone()));
        }
        given.cloned().unwrap_or_else(|| default.to_string())
    };
    let accuracy = column("--accuracy", input.accuracy.as_ref(), "accuracy");
    let by = column("--by", e.and_then(|e| e.by.as_ref()), "accuracy");
    let run = column("--run-by", d.and_then(|d| d.run_by.as_ref()), "run");
    let order = column("--order-by", d.and_then(|d| d.order_by.as_ref()), "epoch");
    let opts = StudyOptions {
        grouping: Grouping {
            column: by,
            width: e.map_or(Some(0.1), |e| Some(e.width.unwrap_or(0.1)).filter(|&w| w > 0.0)),
        },
        width_given: e.is_some_and(|e| e.width.is_some()),
        accuracy,
        run,
        order,
        required,
        graph: graph.clone(),
        ensemble: e.is_some(),
        dynamics: d.is_some(),
        checkpoint: d.and_then(|d| d.checkpoint.clone()),
        outliers: e.and_then(|e| e.outliers),
        per_group: e.and_then(|e| e.per_group).map(|n| n as usize),
        within: e.map_or_else(Vec::new, |e| e.within.clone()),
    };
    let engine = select_engine(input.device.device(), input.device.adapter.as_deref(), cores())?;
    if verbose {
        eprintln!("engine: {}", engine.name());
    }
    let given_scan = match &input.paths[..] {
        [dir] if dir.join(cntscope::manifest::MANIFEST).is_file() || dir.join(cntscope::scan::JOURNAL).is_file() => {
            cntscope::manifest::Manifest::require_complete(dir)?;
            Some(dir.clone())
        }
        _ => None,
    };
    let scan_dir = match given_scan {
        Some(dir) => dir,
        None => {
            let checkpoints = found_checkpoints(&input.paths)?;
            let scan_opts = input.scan.options(graph, cores())?;
            let dir = input.output.join("scan");
            on_interrupt_explain_resume(&dir);
            let summary = scan(&checkpoints, &dir, engine.as_ref(), &scan_opts)?;
            report_scan(&summary, &dir);
            dir
        }
    };
    let done = study(&scan_dir, &input.output, engine.as_ref(), &opts)?;
    for note in &done.notes {
        eprintln!("note: {note}");
    }
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut what = vec![plural(done.checkpoints, "checkpoint", "checkpoints")];
    if opts.ensemble {
        what.push(format!("{} by {}", plural(done.groups, "group", "groups"), done.by));
    }
    if opts.dynamics {
        what.push(plural(done.runs, "run", "runs"));
    }
    if done.failed > 0 {
        what.push(format!("{} failed (listed in the report)", done.failed));
    }
    eprintln!("{} -> {}", what.join(", "), input.output.join("report.html").display());
    Ok(if done.failed > 0 { 1 } else { 0 })
}

/// This process's peak resident memory (Linux's `VmHWM`): its own, unlike
/// `getrusage`'s `ru_maxrss`, which also counts the memory of the process
/// that spawned it, as it was when this one started.
fn peak_memory_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Prints how a scan went; its exit code (0 all good, 1 some failed, 2
/// none analysed).
fn scan_outcome(summary: ScanSummary, output: &Path) -> u8 {
    report_scan(&summary, output);
    match (summary.analysed, summary.failed) {
        (_, 0) => 0,
        (0, _) => 2,
        _ => 1,
    }
}

/// Prints how a scan went: counts, where failures are listed, and a
/// warning about checkpoints with NaN or infinite values.
fn report_scan(summary: &ScanSummary, output: &Path) {
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    if summary.notes.len() == cntscope::scan::Notes::MAX {
        eprintln!("note: (further notes not shown; `cntscope inspect` shows a checkpoint's)");
    }
    if summary.kept > 0 && summary.kept == summary.analysed + summary.failed {
        eprintln!("nothing left to do: all {} checkpoints were in the journal already", summary.kept);
    } else if summary.kept > 0 {
        eprintln!("{} checkpoints were in the journal already; the rest measured now", summary.kept);
    }
    eprintln!("{} analysed, {} failed -> {}", summary.analysed, summary.failed, output.display());
    if summary.failed > 0 {
        eprintln!("failures are listed in {}", output.join("errors.csv").display());
    }
    if summary.non_finite > 0 {
        eprintln!(
            "warning: {} checkpoint(s) hold NaN or infinite weights or biases: counted in the `non_finite` \
             columns of nodes.csv and links.csv, left out of every statistic",
            summary.non_finite
        );
    }
}

/// Both engines on the same checkpoints; the largest deviation of the GPU
/// from the CPU reference per node set, relative to the set's largest
/// |strength| (SPEC section 7 allows 1e-5).
fn verify(paths: &[PathBuf], graph: &GraphOptions, adapter: Option<&str>, verbose: bool) -> anyhow::Result<u8> {
    const TOLERANCE: f64 = 1e-5;
    let checkpoints = found_checkpoints(paths)?;
    let cpu = CpuEngine::new(cores());
    let gpu = GpuEngine::new(Arc::new(GpuContext::new(adapter)?));
    eprintln!("engine: {}", gpu.name());
    let opts = AnalysisOptions { keep_values: true, ..AnalysisOptions::default() };
    for (path, why) in checkpoints.problems() {
        eprintln!("error: {}: {why}", path.display());
    }
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record([
        "checkpoint",
        "node_layer",
        "node_set",
        "nodes",
        "max_abs_deviation",
        "relative_deviation",
        "within_tolerance",
    ])?;
    let (mut worst, mut failed) = (0.0f64, 0usize);
    for path in checkpoints.paths.iter().filter(|p| checkpoints.problem(p).is_none()) {
        let (a, b) = match (measure(path, graph, &cpu, &opts), measure(path, graph, &gpu, &opts)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        for (k, (sa, sb)) in a.analysis.node_sets.iter().zip(&b.analysis.node_sets).enumerate() {
            let (va, vb) =
                (&sa.values.as_ref().expect("asked for").strength, &sb.values.as_ref().expect("asked for").strength);
            let scale = va.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
            let dev = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0.0f64, f64::max);
            let rel = dev / scale;
            worst = worst.max(rel);
            let row = [
                path.display().to_string(),
                k.to_string(),
                sa.name.clone(),
                va.len().to_string(),
                num(dev),
                num(rel),
                (rel <= TOLERANCE).to_string(),
            ];
            out.write_record(&row)?;
        }
    }
    out.flush()?;
    if verbose || worst > TOLERANCE {
        eprintln!("largest relative deviation: {worst:.3e} (tolerance {TOLERANCE:e})");
    }
    let failed = failed + (checkpoints.paths.len() - checkpoints.readable());
    Ok(if failed == checkpoints.paths.len() {
        2
    } else if worst > TOLERANCE || failed > 0 {
        1
    } else {
        0
    })
}

/// Prints what the graph assumed (conv geometry, orientations, channel
/// level) on standard error, where the user sees it.
fn print_notes(net: &Network) {
    for note in notes(net) {
        eprintln!("note: {note}");
    }
}

/// What the graph assumed, and a per-layer analysis and why: the notes
/// the command line prints and the Python package issues as warnings.
pub(crate) fn notes(net: &Network) -> Vec<String> {
    let mut notes = net.notes.clone();
    notes.extend(net.per_layer_note());
    notes
}

/// ` (BxR after)` where a layer's padding after its input differs from
/// the padding before it, else nothing.
fn padded_after(before: [usize; 2], after: [usize; 2]) -> String {
    if after == before {
        String::new()
    } else {
        format!(" ({}x{} after)", after[0], after[1])
    }
}

fn inspect(ck: &Checkpoint, net: &Network, out: &mut impl Write) -> anyhow::Result<()> {
    let path = ck.path().display();
    writeln!(out, "checkpoint: {path}")?;
    writeln!(
        out,
        "graph: {}, layout: {}, biases in s_in: {}, batchnorm: {}",
        net.source.name(),
        net.layout,
        if net.bias { "yes" } else { "no" },
        net.bn
    )?;
    // The file's own, then what its collection keeps beside it (a Ray
    // trial's results, a Trainer's state, a timm run's summary), as a scan
    // records them.
    let mut metadata = ck.metadata().clone();
    for (k, v) in cntscope::layouts::beside(ck.path(), ck.metadata()) {
        metadata.entry(k).or_insert(v);
    }
    if !metadata.is_empty() {
        let meta: Vec<String> = metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "metadata: {}", meta.join(", "))?;
    }
    writeln!(out, "node sets:")?;
    for (k, s) in net.node_sets.iter().enumerate() {
        writeln!(out, "  V{k:<3} {:<24} {:>12}  {} nodes", s.name, s.shape.to_string(), s.shape.count())?;
    }
    writeln!(out, "layers:")?;
    let shape =
        |t: &str| ck.shape(t).map(|s| format!("{t} {s:?}")).with_context(|| format!("{path}: tensor `{t}` not found"));
    for (i, l) in net.layers.iter().enumerate() {
        let mut tensors = Vec::new();
        if let Some(w) = &l.weight {
            tensors.push(shape(w)?);
        }
        if let Some(b) = &l.bias {
            tensors.push(format!("+ {}", shape(b)?));
        }
        match &l.scale {
            Some(Scale::Tensor(t)) => tensors.push(format!("folded scale {}", shape(t)?)),
            Some(Scale::Factor(f)) => tensors.push(format!("folded scale {f}")),
            None => {}
        }
        if let Some(n) = &l.norm {
            let how = if l.kind == LayerKind::Norm { "batchnorm" } else { "folded batchnorm" };
            tensors.push(format!("{how} {} (eps {})", n.prefix, n.eps));
        }
        let kind = match l.kind {
            LayerKind::Dense { in_out: true, .. } => "dense (stored [in, out])".to_string(),
            LayerKind::Conv(c) | LayerKind::ConvTranspose(c) if c.channel_level => format!(
                "{} {}x{} groups {} at channel level (input grid unknown)",
                l.kind.name(),
                c.kh,
                c.kw,
                c.geometry.groups
            ),
            LayerKind::Conv(c) | LayerKind::ConvTranspose(c) => {
                let g = c.geometry;
                format!(
                    "{} {}x{} stride {}x{} padding {}x{}{} dilation {}x{} groups {}",
                    l.kind.name(),
                    c.kh,
                    c.kw,
                    g.stride[0],
                    g.stride[1],
                    g.padding[0],
                    g.padding[1],
                    padded_after(g.padding, g.padding_after),
                    g.dilation[0],
                    g.dilation[1],
                    g.groups
                )
            }
            LayerKind::Pool(p) => match p.op {
                PoolOp::AdaptiveAvg => format!("{} to {}x{}", l.kind.name(), p.out_hw[0], p.out_hw[1]),
                PoolOp::Interpolate(ip) => format!(
                    "{} to {}x{}{}{}",
                    l.kind.name(),
                    p.out_hw[0],
                    p.out_hw[1],
                    if ip.align_corners { " (align corners)" } else { "" },
                    ip.scale_factor.map_or(String::new(), |f| format!(" (scale factor {}x{})", f[0], f[1]))
                ),
                PoolOp::Pad { before, .. } => format!(
                    "{} to {}x{}, input at row {} column {}",
                    l.kind.name(),
                    p.out_hw[0],
                    p.out_hw[1],
                    before[0],
                    before[1]
                ),
                _ => format!(
                    "{} {}x{} stride {}x{} padding {}x{}{}{}{}",
                    l.kind.name(),
                    p.kernel[0],
                    p.kernel[1],
                    p.stride[0],
                    p.stride[1],
                    p.padding[0],
                    p.padding[1],
                    padded_after(p.padding, p.padding_after),
                    if p.op == (PoolOp::Avg { count_include_pad: false }) { " (padding not counted)" } else { "" },
                    if p.ceil_mode { " (ceil mode)" } else { "" }
                ),
            },
            k => k.name().to_string(),
        };
        let (from, to) = (&net.node_sets[l.from], &net.node_sets[l.to]);
        let read_shape = net.read_shape(l);
        let mut read = if read_shape.channels() == from.shape.channels() {
            format!("V{}", l.from)
        } else {
            format!("V{}[{}..{}]", l.from, l.from_channels[0], l.from_channels[1])
        };
        match l.reading {
            Reading::Direct => {}
            Reading::View => read = format!("{read} {read_shape} viewed as"),
            Reading::PixelShuffle(r) => read = format!("{read} {read_shape} pixel-shuffled by {r} to"),
            Reading::PixelUnshuffle(r) => read = format!("{read} {read_shape} pixel-unshuffled by {r} to"),
        }
        let write = if l.output.channels() == to.shape.channels() && l.step == 1 {
            format!("V{}", l.to)
        } else if l.step == 1 {
            format!("V{}[{}..{}]", l.to, l.offset, l.offset + l.output.channels())
        } else {
            let last = l.offset + (l.output.channels().max(1) - 1) * l.step;
            format!("V{}[{}..={last} step {}]", l.to, l.offset, l.step)
        };
        let tensors = if tensors.is_empty() { String::new() } else { format!(": {}", tensors.join(" ")) };
        writeln!(out, "  L{:<3} {:<24} {kind}{tensors}  ({read} {} -> {write} {})", i + 1, l.name, l.input, l.output)?;
    }
    if !net.unused.is_empty() {
        writeln!(out, "unused tensors:")?;
        for (t, why) in &net.unused {
            writeln!(out, "  {t}: {why}")?;
        }
    }
    if let Some(reason) = &net.not_chain {
        writeln!(out, "not a chain: {reason}")?;
        writeln!(out, "node strength across layers is not defined for this checkpoint; each layer's input and output side is reported as its own node set")?;
    }
    Ok(())
}
