//! Studies of scanned populations, as in the paper: ensemble analysis
//! (checkpoints grouped by a metadata column; pooled densities of link
//! weights, node strengths and fluctuations per group; group x group
//! divergence matrices; the separation table) and individual analysis
//! (measures along each training run; a layer x layer divergence matrix of
//! one checkpoint), with an HTML report that shows them all.
//!
//! Everything starts from a scan's tables; node strengths and link weights
//! are pooled in one more pass over the checkpoints, into fine histograms
//! on edges shared by every group (so pools merge and memory stays flat).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::density::{grid, jensen_shannon, symmetric_kl, Pool, FINE_BINS, GRID_POINTS};
use crate::engine::{AnalysisOptions, BinRanges, Binned, Engine, Finite};
use crate::error::{Error, Result};
use crate::graph::{GraphOptions, Network};
use crate::natsort::{natural_cmp, value_cmp};
use crate::output::{atomic_write, num, write_csv};
use crate::plot::{self, Curve};
use crate::separation::{rank_table, separation, Separation};
use crate::stats::Histogram;

/// How checkpoints are grouped.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// The metadata column (e.g. `accuracy`).
    pub column: String,
    /// Bin width for numeric values (bins start at 0); `None` groups by the
    /// value as text.
    pub width: Option<f64>,
}

impl Grouping {
    /// The group of a value: a sort key and a label (`[0.8, 0.9)`).
    pub fn group(&self, value: &str) -> Option<(f64, String)> {
        match (self.width, value.trim().parse::<f64>()) {
            (Some(w), Ok(v)) if v.is_finite() => {
                // Edges are decimals: 0.3 / 0.1 is 2.9999999999999996 in
                // binary, yet 0.3 belongs to [0.3, 0.4). A quotient within
                // 1e-9 of a whole number is on that edge.
                let q = v / w;
                let k = if (q - q.round()).abs() <= 1e-9 * q.abs().max(1.0) { q.round() } else { q.floor() };
                let (lo, hi) = (k * w, (k + 1.0) * w);
                Some((lo, format!("[{}, {})", trim(lo), trim(hi))))
            }
            (None, _) if !value.is_empty() => Some((f64::NAN, value.to_string())),
            _ => None,
        }
    }
}

/// A number rounded for labels (bin edges of 0.1 print as 0.3, not 0.30000000000000004).
fn trim(x: f64) -> String {
    let s = format!("{:.6}", x);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// What a study computes and from which columns.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Groups of the ensemble analysis.
    pub grouping: Grouping,
    /// Whether the grouping's width was given (`--width`); when not, an
    /// accuracy in percent is grouped 10 wide instead of 0.1.
    pub width_given: bool,
    /// The accuracy column for the separation table.
    pub accuracy: String,
    /// The column naming a training run (individual analysis).
    pub run: String,
    /// The column ordering checkpoints within a run (`epoch`, `step`).
    pub order: String,
    /// How to read checkpoints as graphs.
    pub graph: GraphOptions,
    /// Run the ensemble analysis (densities, divergences, separation).
    pub ensemble: bool,
    /// Run the individual analysis (measures along each run).
    pub dynamics: bool,
    /// The checkpoint of the node-set divergence matrix (default: the last
    /// of the first run).
    pub checkpoint: Option<PathBuf>,
    /// Per-checkpoint values beyond this many standard deviations of their
    /// group's mean are dropped (the paper's outlier rule), per measure.
    pub outliers: Option<f64>,
    /// At most this many checkpoints per group (a deterministic sample).
    pub per_group: Option<usize>,
    /// Metadata columns whose settings each get a separation table.
    pub within: Vec<String>,
    /// Columns named on the command line, with the flag that named them:
    /// each must exist (a default column that does not leaves its analysis
    /// empty, with a note).
    pub required: Vec<(String, String)>,
}

impl StudyOptions {
    /// Whether `flag` named its column on the command line (a default
    /// may then be replaced, never a column the user named).
    fn named(&self, flag: &str) -> bool {
        self.required.iter().any(|(f, _)| f == flag)
    }
}

/// One row of a scan table, by column name.
type Row = BTreeMap<String, String>;

/// A scan table: its header and rows.
fn read_table(path: &Path) -> Result<(Vec<String>, Vec<Row>)> {
    let err = |e: csv::Error| Error::Study { path: path.to_path_buf(), reason: format!("reading the table: {e}") };
    let mut r = csv::Reader::from_path(path).map_err(err)?;
    let header: Vec<String> = r.headers().map_err(err)?.iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| Ok(header.iter().cloned().zip(rec.map_err(err)?.iter().map(String::from)).collect()))
        .collect::<Result<_>>()?;
    Ok((header, rows))
}

fn get(row: &Row, col: &str) -> f64 {
    row.get(col).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// A measure of one layer or node set: `(measure, index, name)`.
type Key = (&'static str, usize, String);

/// The pooled values of one measure, per group.
struct Pools {
    lo: f64,
    hi: f64,
    groups: BTreeMap<usize, Pool>,
}

impl Pools {
    /// Pools over `[lo, hi]`, widened by a hair so that an engine's f32
    /// rounding cannot put an extreme value outside the shared edges.
    fn new(lo: f64, hi: f64) -> Self {
        let pad = 1e-6 * (hi - lo).abs().max(lo.abs()).max(hi.abs()).max(f64::MIN_POSITIVE);
        Pools { lo: lo - pad, hi: hi + pad, groups: BTreeMap::new() }
    }

    fn pool(&mut self, group: usize) -> &mut Pool {
        let (lo, hi) = (self.lo, self.hi);
        self.groups.entry(group).or_insert_with(|| Pool::new(lo, hi))
    }

    fn add(&mut self, group: usize, values: &[f64]) {
        self.pool(group).add(values);
    }

    fn add_binned(&mut self, group: usize, b: &Binned) {
        self.pool(group).add_binned(&b.moments, &b.histogram, b.values.as_deref());
    }
}

/// What a study wrote.
#[derive(Debug, Clone, Default)]
pub struct StudySummary {
    /// Checkpoints in the study.
    pub checkpoints: usize,
    /// Groups of the ensemble analysis.
    pub groups: usize,
    /// The column the ensemble analysis grouped by (the default's
    /// replacement when the scan has no such column).
    pub by: String,
    /// Training runs of the individual analysis.
    pub runs: usize,
    /// Checkpoints the scan could not analyse (listed in the report).
    pub failed: usize,
    /// Files written, relative to the output directory.
    pub files: Vec<String>,
    /// What the study could not do, for the user to see.
    pub notes: Vec<String>,
}

/// Runs the study on a finished scan in `scan_dir` and writes its tables,
/// figures and `report.html` into `out_dir`.
pub fn study(scan_dir: &Path, out_dir: &Path, engine: &dyn Engine, opts: &StudyOptions) -> Result<StudySummary> {
    // The scan is read while no scan writes it; the study's directory is
    // written by this study alone.
    let _reading = crate::manifest::DirLock::shared(scan_dir)?;
    let (header, nodes) = read_table(&scan_dir.join("nodes.csv"))?;
    let (_, links) = read_table(&scan_dir.join("links.csv"))?;
    let (_, errors) = read_table(&scan_dir.join("errors.csv"))?;
    if nodes.is_empty() {
        return Err(Error::Study {
            path: scan_dir.to_path_buf(),
            reason: format!(
                "nothing to study: no checkpoint was analysed ({} failed, listed in errors.csv)",
                errors.len()
            ),
        });
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::output(out_dir, e))?;
    let same = out_dir.canonicalize().ok() == scan_dir.canonicalize().ok();
    let _writing = if same { None } else { Some(crate::manifest::DirLock::exclusive(out_dir)?) };
    let mut study_notes = Vec::new();
    // Where the default columns are missing, what the scan has instead
    // (an accuracy by another name; a step and the runs' folders), said
    // in notes.
    let mut header = header;
    let mut nodes = nodes;
    let mut filled = opts.clone();
    study_notes.extend(accuracy_default(&mut filled, &header, &nodes));
    study_notes.extend(percent_groups(&mut filled, &nodes));
    if opts.dynamics {
        study_notes.extend(dynamics_defaults(&mut filled, &mut header, &mut nodes));
    }
    let opts = &filled;
    // A column that is not there is an error listing those that are, never
    // an empty study.
    let mut needed: Vec<(&str, &str)> = opts.required.iter().map(|(f, c)| (f.as_str(), c.as_str())).collect();
    needed.extend(opts.within.iter().map(|c| ("--within", c.as_str())));
    let mut defaults: Vec<(&str, &str)> = Vec::new();
    if opts.ensemble {
        defaults.extend([("--by", opts.grouping.column.as_str()), ("--accuracy", opts.accuracy.as_str())]);
    }
    if opts.dynamics {
        defaults.extend([("--run-by", opts.run.as_str()), ("--order-by", opts.order.as_str())]);
    }
    for (flag, column) in defaults {
        if !header.iter().any(|h| h == column) && !opts.named(flag) {
            study_notes.push(format!("no `{column}` column: the analysis that needs it is empty (give {flag} COLUMN)"));
        }
    }
    for (flag, column) in needed {
        if !header.iter().any(|h| h == column) {
            let metadata: Vec<&str> =
                header.iter().map(String::as_str).filter(|h| !crate::output::NODES_HEADER.contains(h)).collect();
            return Err(Error::Study {
                path: scan_dir.join("nodes.csv"),
                reason: format!(
                    "{flag} {column}: no such column; the metadata columns are: {}",
                    if metadata.is_empty() { "(none)".to_string() } else { metadata.join(", ") }
                ),
            });
        }
    }
    let figures = out_dir.join("figures");
    std::fs::create_dir_all(&figures).map_err(|e| Error::output(&figures, e))?;
    let summary = StudySummary {
        notes: study_notes,
        failed: errors.len(),
        by: opts.grouping.column.clone(),
        ..StudySummary::default()
    };
    let mut study = Study { out_dir, figures, engine, opts, summary, html: Report::default() };

    // Checkpoints and their groups.
    let mut checkpoints: Vec<String> = nodes.iter().filter_map(|r| r.get("checkpoint").cloned()).collect();
    checkpoints.dedup();
    study.summary.checkpoints = checkpoints.len();
    // Each checkpoint's group, worked out once (every row of a checkpoint
    // carries the same metadata).
    let mut group: HashMap<&str, (f64, String)> = HashMap::new();
    for r in &nodes {
        if let (Some(c), Some(v)) = (r.get("checkpoint"), r.get(&opts.grouping.column)) {
            if let Some(g) = opts.grouping.group(v) {
                group.entry(c.as_str()).or_insert(g);
            }
        }
    }
    // Checkpoints with no value to group by are in no group: said, never
    // silently left out (a Trainer logs `eval_accuracy` only at its
    // evaluation steps). A column missing altogether has its note above.
    if opts.ensemble && header.contains(&opts.grouping.column) {
        let ungrouped: Vec<&str> = checkpoints.iter().map(String::as_str).filter(|c| !group.contains_key(c)).collect();
        study.summary.notes.extend(without_value(&ungrouped, &opts.grouping.column, "in no group"));
    }
    // Grouped by another column, checkpoints with no accuracy are still
    // in their groups but not in the separation table: said.
    if opts.ensemble && opts.accuracy != opts.grouping.column && header.contains(&opts.accuracy) {
        let without = lacking(&nodes, &opts.accuracy);
        study.summary.notes.extend(without_value(&without, &opts.accuracy, "left out of the separation table"));
    }
    let mut labels: Vec<(f64, String)> = group.values().cloned().collect();
    labels.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| natural_cmp(&a.1, &b.1)));
    labels.dedup_by(|a, b| a.1 == b.1);
    let mut group_of: HashMap<&str, usize> =
        group.iter().filter_map(|(c, (_, label))| Some((*c, labels.iter().position(|l| &l.1 == label)?))).collect();
    // --per-group: a deterministic sample of each group (the checkpoints
    // whose names have the smallest digests).
    if let Some(cap) = opts.per_group {
        let mut members: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for (&c, &g) in &group_of {
            members.entry(g).or_default().push(c);
        }
        let mut keep = std::collections::HashSet::new();
        for (_, mut cs) in members {
            cs.sort_by_key(|c| (crate::manifest::digest(c.as_bytes()), *c));
            keep.extend(cs.into_iter().take(cap));
        }
        group_of.retain(|c, _| keep.contains(c));
    }
    let in_study =
        |r: &Row| opts.per_group.is_none() || r.get("checkpoint").is_some_and(|c| group_of.contains_key(c.as_str()));
    let nodes_in: Vec<Row> = nodes.iter().filter(|r| in_study(r)).cloned().collect();
    let links_in: Vec<Row> = links.iter().filter(|r| in_study(r)).cloned().collect();
    let names: Vec<String> = labels.iter().map(|l| l.1.clone()).collect();
    study.summary.groups = names.len();

    if opts.ensemble {
        study.ensemble(&nodes_in, &links_in, &checkpoints, &group_of, &names)?;
    }
    if opts.dynamics {
        study.individual(&nodes)?;
    }
    study.html.failures(&errors);
    // The notes, also as a file: for scripts and the Python package, which
    // see no stderr of ours in a notebook. Written every time, so notes of
    // an earlier study in the directory never linger.
    let notes: String = study.summary.notes.iter().map(|n| format!("{n}\n")).collect();
    study.write_text("notes.txt", &notes)?;
    let page = std::mem::take(&mut study.html).finish(&study.summary, &opts.grouping.column);
    study.write_text("report.html", &page)?;
    Ok(study.summary)
}

/// A study in progress: where it writes, what it has written.
struct Study<'a> {
    out_dir: &'a Path,
    figures: PathBuf,
    engine: &'a dyn Engine,
    opts: &'a StudyOptions,
    summary: StudySummary,
    html: Report,
}

impl Study<'_> {
    /// Writes `text` to `file` in the output directory, atomically.
    fn write_text(&mut self, file: &str, text: &str) -> Result<()> {
        atomic_write(&self.out_dir.join(file), |w| std::io::Write::write_all(w, text.as_bytes()))?;
        self.summary.files.push(file.to_string());
        Ok(())
    }

    /// Writes an SVG figure into `figures/`.
    fn figure(&mut self, file: &str, svg: &str) -> Result<()> {
        let path = self.figures.join(file);
        atomic_write(&path, |w| std::io::Write::write_all(w, svg.as_bytes()))?;
        self.summary.files.push(format!("figures/{file}"));
        Ok(())
    }

    /// Writes a CSV table.
    fn table(&mut self, file: &str, header: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
        atomic_write(&self.out_dir.join(file), |w| write_csv(w, header, rows))?;
        self.summary.files.push(file.to_string());
        Ok(())
    }

    /// Ensemble analysis: pooled densities per group, divergence matrices,
    /// the separation table.
    fn ensemble(
        &mut self,
        nodes: &[Row],
        links: &[Row],
        checkpoints: &[String],
        group_of: &HashMap<&str, usize>,
        names: &[String],
    ) -> Result<()> {
        let opts = self.opts;
        // Pools: fluctuations from the table; strengths and weights in one pass.
        let mut pools: BTreeMap<Key, Pools> = BTreeMap::new();
        let range = |rows: &[Row], index_col: &str, lo: &str, hi: &str| {
            let mut r: BTreeMap<(usize, String), (f64, f64)> = BTreeMap::new();
            for row in rows {
                let key = (
                    get(row, index_col) as usize,
                    row.get("node_set").or(row.get("name")).cloned().unwrap_or_default(),
                );
                let e = r.entry(key).or_insert((f64::INFINITY, f64::NEG_INFINITY));
                e.0 = e.0.min(get(row, lo));
                e.1 = e.1.max(get(row, hi));
            }
            r
        };
        for ((k, name), (lo, hi)) in range(nodes, "node_layer", "strength_min", "strength_max") {
            pools.insert(("strength", k, name.clone()), Pools::new(lo, hi));
            let flucts: Vec<(usize, f64)> = nodes
                .iter()
                .filter(|r| get(r, "node_layer") as usize == k)
                .filter_map(|r| Some((*group_of.get(r.get("checkpoint")?.as_str())?, get(r, "fluctuation"))))
                .collect();
            let flucts = without_outliers(flucts, |v| *v, opts.outliers);
            let (flo, fhi) =
                flucts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, v)| (a.min(*v), b.max(*v)));
            let mut p = Pools::new(flo, fhi);
            for (g, v) in flucts {
                p.add(g, &[v]);
            }
            pools.insert(("fluctuation", k, name), p);
        }
        for ((i, name), (lo, hi)) in range(links, "layer", "min", "max") {
            pools.insert(("link_weight", i, name), Pools::new(lo, hi));
        }
        for c in checkpoints {
            let Some(&g) = group_of.get(c.as_str()) else { continue };
            let ck = Checkpoint::open_as(c, opts.graph.key.as_deref())?;
            let net = Network::build(&ck, &opts.graph)?;
            let set_keys: Vec<Key> =
                net.node_sets.iter().enumerate().map(|(k, s)| ("strength", k, s.name.clone())).collect();
            let layer_keys: Vec<Key> = net.weighted_layers().map(|(i, l)| ("link_weight", i, l.name.clone())).collect();
            let range = |key: &Key| pools.get(key).map_or((0.0, 1.0), |p| Histogram::range_for(p.lo, p.hi));
            let ranges = BinRanges {
                node_sets: set_keys.iter().map(range).collect(),
                layers: layer_keys.iter().map(range).collect(),
            };
            let binned = ck.unless_changed(self.engine.binned(&net, &ck, &ranges, FINE_BINS))?;
            for (key, b) in set_keys.iter().zip(&binned.node_sets).chain(layer_keys.iter().zip(&binned.layers)) {
                if let Some(p) = pools.get_mut(key) {
                    p.add_binned(g, b);
                }
            }
        }
        // Densities, divergence matrices and their figures.
        let mut divergence_rows = Vec::new();
        let mut density_rows = Vec::new();
        let by = &opts.grouping.column;
        for ((measure, index, name), p) in &pools {
            let present: Vec<(usize, &Pool)> = p.groups.iter().map(|(g, pool)| (*g, pool)).collect();
            if present.is_empty() {
                continue;
            }
            let (lo, hi) = present.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, pool)| {
                (a.min(pool.moments.min), b.max(pool.moments.max))
            });
            let common = grid(lo, hi, GRID_POINTS);
            let mut curves = Vec::new();
            for (g, pool) in &present {
                let d = pool.density(&common);
                for (x, y) in common.iter().zip(&d) {
                    density_rows.push(vec![
                        measure.to_string(),
                        index.to_string(),
                        name.clone(),
                        names[*g].clone(),
                        num(*x),
                        num(*y),
                    ]);
                }
                let name = format!("{by} {} (n = {})", names[*g], pool.moments.n);
                curves.push(Curve { name, points: common.iter().copied().zip(d).collect(), value: None });
            }
            let pools: Vec<&Pool> = present.iter().map(|(_, pool)| *pool).collect();
            let (js, skl) = divergences(&pools);
            for (a, (ga, pa)) in present.iter().enumerate() {
                for (b, (gb, pb)) in present.iter().enumerate() {
                    divergence_rows.push(vec![
                        measure.to_string(),
                        index.to_string(),
                        name.clone(),
                        names[*ga].clone(),
                        names[*gb].clone(),
                        pa.moments.n.to_string(),
                        pb.moments.n.to_string(),
                        num(skl[a][b]),
                        num(js[a][b]),
                    ]);
                }
            }
            let group_labels: Vec<String> = present.iter().map(|(g, _)| names[*g].clone()).collect();
            let what = format!(
                "{} {} {name}",
                measure.replace('_', " "),
                if *measure == "link_weight" { format!("L{index}") } else { format!("V{index}") }
            );
            let stem = format!("{measure}_{index}");
            let density = plot::densities(
                &format!("{what}: density by {by} (each panel its own scale)"),
                measure,
                "density (sums to 1 on the grid)",
                &curves,
            )
            .map_err(|e| fig_err(self.out_dir, e))?;
            let js_map = plot::heatmap(&format!("{what}: Jensen-Shannon"), &group_labels, &js)
                .map_err(|e| fig_err(self.out_dir, e))?;
            let skl_map = plot::heatmap(&format!("{what}: symmetric KL"), &group_labels, &skl)
                .map_err(|e| fig_err(self.out_dir, e))?;
            for (file, svg) in [
                (format!("density_{stem}.svg"), &density),
                (format!("js_{stem}.svg"), &js_map),
                (format!("skl_{stem}.svg"), &skl_map),
            ] {
                self.figure(&file, svg)?;
            }
            self.html.section(&format!("Ensemble: {what}"), &[&density, &js_map, &skl_map]);
        }
        let header = ["measure", "index", "name", "group_a", "group_b", "n_a", "n_b", "symmetric_kl", "jensen_shannon"];
        self.table("divergence.csv", &header, divergence_rows)?;
        self.table("densities.csv", &["measure", "index", "name", "group", "x", "density"], density_rows)?;

        // The separation table, over all checkpoints and within each
        // setting of the --within columns.
        let group = |r: &Row| r.get("checkpoint").and_then(|c| group_of.get(c.as_str()).copied());
        let table = separation_table(nodes, links, &opts.accuracy, &group, opts.outliers);
        self.html.separation(&opts.accuracy, &table);
        if !opts.within.is_empty() {
            let setting = |r: &Row| -> Vec<String> {
                opts.within.iter().map(|c| r.get(c).cloned().unwrap_or_default()).collect()
            };
            let mut settings: Vec<Vec<String>> = nodes.iter().map(setting).collect();
            settings.sort_by(|a, b| {
                a.iter().zip(b).map(|(x, y)| value_cmp(x, y)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
            });
            settings.dedup();
            let mut rows = Vec::new();
            let mut tables = Vec::new();
            for value in &settings {
                let n: Vec<Row> = nodes.iter().filter(|r| &setting(r) == value).cloned().collect();
                let l: Vec<Row> = links.iter().filter(|r| &setting(r) == value).cloned().collect();
                let within = separation_table(&n, &l, &opts.accuracy, &group, opts.outliers);
                rows.extend(separation_csv(&within).map(|cells| [value.clone(), cells].concat()));
                let label: Vec<String> = opts.within.iter().zip(value).map(|(c, v)| format!("{c}={v}")).collect();
                tables.push((label.join(", "), within));
            }
            let mut header: Vec<&str> = opts.within.iter().map(String::as_str).collect();
            header.extend(SEPARATION_HEADER);
            self.table("separation_within.csv", &header, rows)?;
            self.html.separation_within(&opts.within, &opts.accuracy, &tables);
        }
        self.table("separation.csv", &SEPARATION_HEADER, separation_csv(&table).collect())?;
        Ok(())
    }

    /// Individual analysis: each run's measures along training, and one
    /// checkpoint's node-set divergences.
    fn individual(&mut self, nodes: &[Row]) -> Result<()> {
        let opts = self.opts;
        let runs = dynamics(nodes, opts);
        self.summary.runs = runs.len();
        self.summary.notes.extend(dynamics_notes(nodes, &runs, opts));
        if runs.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        // Curves per (measure, node set), one per run.
        const PLOTTED: [(&str, &str); 2] = [("fluctuation", "fluctuation"), ("strength_mean", "mean strength")];
        let mut by_set: BTreeMap<(usize, usize, String), Vec<Curve>> = BTreeMap::new();
        for (run, points) in &runs {
            // Runs are coloured by their final accuracy.
            let last = points.last().map(|(_, r)| get(r, &opts.accuracy)).filter(|a| a.is_finite());
            let name = match last {
                Some(a) => format!("{run} ({})", trim(a)),
                None => run.clone(),
            };
            for (order, row) in points {
                let k = get(row, "node_layer") as usize;
                let set = row.get("node_set").cloned().unwrap_or_default();
                rows.push(vec![
                    run.clone(),
                    row.get(&opts.order).cloned().unwrap_or_else(|| num(*order)),
                    k.to_string(),
                    set.clone(),
                    row["fluctuation"].clone(),
                    row["strength_mean"].clone(),
                    row["strength_skewness"].clone(),
                    row["strength_kurtosis"].clone(),
                    row.get(&opts.accuracy).cloned().unwrap_or_default(),
                ]);
                for (m, (col, _)) in PLOTTED.iter().enumerate() {
                    let curves = by_set.entry((m, k, set.clone())).or_default();
                    if curves.last().is_none_or(|c| c.name != name) {
                        curves.push(Curve { name: name.clone(), points: vec![], value: last });
                    }
                    curves.last_mut().expect("just pushed").points.push((*order, get(row, col)));
                }
            }
        }
        let header = [
            "run",
            &opts.order,
            "node_layer",
            "node_set",
            "fluctuation",
            "strength_mean",
            "strength_skewness",
            "strength_kurtosis",
            &opts.accuracy,
        ];
        self.table("dynamics.csv", &header, rows)?;
        let mut svgs = Vec::new();
        for ((m, k, set), curves) in &by_set {
            let (col, label) = PLOTTED[*m];
            let colour = format!("run (final {})", opts.accuracy);
            let svg = plot::lines(&format!("V{k} {set}: {label} along training"), &opts.order, label, &colour, curves)
                .map_err(|e| fig_err(self.out_dir, e))?;
            let file = format!("dynamics_{col}_{k}.svg");
            self.figure(&file, &svg)?;
            svgs.push(svg);
        }
        // Layer x layer divergence of one checkpoint (by default the last of
        // the first run).
        let last = runs
            .iter()
            .next()
            .and_then(|(run, points)| Some((run.clone(), PathBuf::from(&points.last()?.1["checkpoint"]))));
        let chosen = opts.checkpoint.clone().map(|c| (c.display().to_string(), c)).or(last);
        if let Some((title, checkpoint)) = chosen {
            svgs.push(self.layer_divergence(&checkpoint, &title)?);
        }
        let refs: Vec<&String> = svgs.iter().collect();
        self.html.section(&format!("Individual: each run along {}", opts.order), &refs);
        Ok(())
    }

    /// The node sets of one checkpoint, pairwise Jensen-Shannon of their
    /// strength densities.
    fn layer_divergence(&mut self, checkpoint: &Path, title: &str) -> Result<String> {
        let (engine, opts) = (self.engine, self.opts);
        let ck = Checkpoint::open_as(checkpoint, opts.graph.key.as_deref())?;
        let net = Network::build(&ck, &opts.graph)?;
        let a = ck.unless_changed(engine.analyze(&net, &ck, &AnalysisOptions { keep_values: true, bins: 1 }))?;
        let pools: Vec<Pool> = a
            .node_sets
            .iter()
            .map(|s| {
                let mut p = Pool::new(s.strength.min, s.strength.max);
                // NaN and infinite strengths are left out, as in the scan.
                p.add(&Finite::of(s.values.as_ref().expect("asked for").strength.clone()).values);
                p
            })
            .collect();
        let labels: Vec<String> = a.node_sets.iter().enumerate().map(|(k, s)| format!("V{k} {}", s.name)).collect();
        let (js, _) = divergences(&pools.iter().collect::<Vec<_>>());
        let mut rows = Vec::new();
        for i in 0..pools.len() {
            for j in 0..pools.len() {
                rows.push(vec![checkpoint.display().to_string(), labels[i].clone(), labels[j].clone(), num(js[i][j])]);
            }
        }
        self.table("layer_divergence.csv", &["checkpoint", "node_set_a", "node_set_b", "jensen_shannon"], rows)?;
        let svg =
            plot::heatmap(&format!("{title}: node sets, Jensen-Shannon ({})", checkpoint.display()), &labels, &js)
                .map_err(|e| fig_err(self.out_dir, e))?;
        self.figure("layer_divergence.svg", &svg)?;
        Ok(svg)
    }
}

/// Jensen-Shannon and symmetric KL divergences between every two pools,
/// each pair's densities on a grid over both pools' range. Both are
/// symmetric (term by term, so to the bit): each pair is computed once, and
/// a pool against itself is 0.
fn divergences(pools: &[&Pool]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let n = pools.len();
    let (mut js, mut skl) = (vec![vec![0.0; n]; n], vec![vec![0.0; n]; n]);
    for a in 0..n {
        for b in a + 1..n {
            let (p, q) = (pools[a], pools[b]);
            let g = grid(p.moments.min.min(q.moments.min), p.moments.max.max(q.moments.max), GRID_POINTS);
            let (dp, dq) = (p.density(&g), q.density(&g));
            (js[a][b], skl[a][b]) = (jensen_shannon(&dp, &dq), symmetric_kl(&dp, &dq));
            (js[b][a], skl[b][a]) = (js[a][b], skl[a][b]);
        }
    }
    (js, skl)
}

fn fig_err(dir: &Path, e: String) -> Error {
    Error::output(dir, e)
}

/// Every per-checkpoint summary against accuracy: node sets' fluctuation,
/// mean strength and shape, and layers' link-weight statistics.
/// Columns of `separation.csv` (and the last of `separation_within.csv`).
const SEPARATION_HEADER: [&str; 6] = ["rank", "feature", "n", "spearman", "auroc", "direction"];

/// A separation table's CSV rows, ranked from 1.
fn separation_csv(table: &[Separation]) -> impl Iterator<Item = Vec<String>> + '_ {
    table.iter().enumerate().map(|(i, s)| {
        vec![
            (i + 1).to_string(),
            s.feature.clone(),
            s.n.to_string(),
            num(s.spearman),
            num(s.auroc),
            s.direction().to_string(),
        ]
    })
}

/// With `outliers = Some(m)`, each checkpoint's value beyond `m` standard
/// deviations of its group's mean is dropped (groups by their index; a
/// group of equal values keeps them all; NaN values are kept for the
/// caller to skip).
fn without_outliers<T>(items: Vec<(usize, T)>, value: impl Fn(&T) -> f64, outliers: Option<f64>) -> Vec<(usize, T)> {
    let Some(m) = outliers else { return items };
    let mut stats: HashMap<usize, crate::stats::Moments> = HashMap::new();
    let mut values: HashMap<usize, Vec<f64>> = HashMap::new();
    for (g, t) in &items {
        let v = value(t);
        if v.is_finite() {
            values.entry(*g).or_default().push(v);
        }
    }
    for (g, v) in values {
        stats.insert(g, crate::stats::Moments::from_slice(&v));
    }
    items
        .into_iter()
        .filter(|(g, t)| {
            let v = value(t);
            !v.is_finite() || stats.get(g).is_none_or(|s| (v - s.mean).abs() <= m * s.std())
        })
        .collect()
}

fn separation_table(
    nodes: &[Row],
    links: &[Row],
    accuracy: &str,
    group: &dyn Fn(&Row) -> Option<usize>,
    outliers: Option<f64>,
) -> Vec<Separation> {
    // Each feature's (group, (value, accuracy)) per checkpoint.
    type Values = Vec<(usize, (f64, f64))>;
    let mut features: BTreeMap<String, Values> = BTreeMap::new();
    let node_cols =
        ["fluctuation", "strength_mean", "strength_skewness", "strength_kurtosis", "s_in_mean", "s_out_mean"];
    for row in nodes {
        let acc = get(row, accuracy);
        let g = group(row).unwrap_or(usize::MAX);
        for col in node_cols {
            let name = format!("V{} {} {col}", row["node_layer"], row.get("node_set").map_or("", String::as_str));
            features.entry(name).or_default().push((g, (get(row, col), acc)));
        }
    }
    for row in links {
        let acc = get(row, accuracy);
        let g = group(row).unwrap_or(usize::MAX);
        for col in ["mean", "std", "skewness", "kurtosis"] {
            let name = format!("L{} {} link-weight {col}", row["layer"], row.get("name").map_or("", String::as_str));
            features.entry(name).or_default().push((g, (get(row, col), acc)));
        }
    }
    rank_table(
        features
            .into_iter()
            .map(|(f, items)| {
                let pairs: Vec<(f64, f64)> =
                    without_outliers(items, |(v, _)| *v, outliers).into_iter().map(|(_, p)| p).collect();
                separation(&f, &pairs)
            })
            .collect(),
    )
}

/// Each training run's node-set rows, ordered by the order column.
fn dynamics<'a>(nodes: &'a [Row], opts: &StudyOptions) -> BTreeMap<String, Vec<(f64, &'a Row)>> {
    let mut runs: BTreeMap<String, Vec<(f64, &Row)>> = BTreeMap::new();
    for row in nodes {
        let order = get(row, &opts.order);
        if order.is_nan() {
            continue;
        }
        let run = row.get(&opts.run).cloned().unwrap_or_else(|| "all".into());
        runs.entry(run).or_default().push((order, row));
    }
    for points in runs.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(get(a.1, "node_layer").total_cmp(&get(b.1, "node_layer"))));
    }
    runs
}

/// The individual analysis' columns where the defaults (`run`, `epoch`)
/// are not in the scan and no flag named others: checkpoints ordered by
/// `step` when the scan has it, and runs found in the checkpoints' paths
/// ([`run_folder`]), added to every row as a `run` column. Sets them in
/// `opts` and returns a note for each default replaced.
fn dynamics_defaults(opts: &mut StudyOptions, header: &mut Vec<String>, nodes: &mut [Row]) -> Vec<String> {
    let mut notes = Vec::new();
    let step = "step".to_string();
    if !opts.named("--order-by") && !header.contains(&opts.order) && header.contains(&step) {
        notes.push(format!(
            "no `{}` column: checkpoints are ordered by `step` along their runs (give --order-by COLUMN)",
            opts.order
        ));
        opts.order = step;
    }
    if !opts.named("--run-by") && !header.contains(&opts.run) {
        let folders: BTreeMap<&str, PathBuf> = nodes
            .iter()
            .filter_map(|r| {
                let c = r.get("checkpoint")?;
                let step = r.get("step").and_then(|s| s.parse().ok());
                Some((c.as_str(), run_folder(Path::new(c), step)))
            })
            .collect();
        let names = run_names(folders.values());
        let runs: std::collections::BTreeSet<&String> = names.values().collect();
        let shown: Vec<&str> = runs.iter().take(5).map(|s| s.as_str()).collect();
        notes.push(format!(
            "no `{}` column: runs are the checkpoints' folders ({} run{}: {}{}; give --run-by COLUMN)",
            opts.run,
            runs.len(),
            if runs.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if runs.len() > shown.len() { ", ..." } else { "" }
        ));
        let run_of: BTreeMap<String, String> =
            folders.iter().map(|(c, folder)| (c.to_string(), names[folder].clone())).collect();
        for row in nodes.iter_mut() {
            if let Some(run) = row.get("checkpoint").and_then(|c| run_of.get(c)) {
                row.insert(opts.run.clone(), run.clone());
            }
        }
        header.push(opts.run.clone());
    }
    notes
}

/// The accuracy column where the default (`accuracy`) is not in the scan
/// and no flag named one: the one metadata column with numbers named as
/// training libraries name an accuracy (`eval_accuracy`, `val_acc`,
/// `mean_accuracy`, `eval_top1`, `acc1`; never a `best_...`), a training
/// accuracy only when there is no other. It becomes the separation
/// table's accuracy and, unless `--by` was given, the ensemble's grouping.
/// Returns what the user should know: the column taken, or the
/// candidates when there are several.
fn accuracy_default(opts: &mut StudyOptions, header: &[String], nodes: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    let numeric = |c: &str| nodes.iter().any(|r| get(r, c).is_finite());
    let default = opts.accuracy.clone();
    if !(opts.ensemble || opts.dynamics) || opts.named("--accuracy") || header.contains(&default) {
        return notes;
    }
    let candidates: Vec<&String> = header
        .iter()
        .filter(|h| !crate::output::NODES_HEADER.contains(&h.as_str()))
        .filter(|h| {
            // A best-so-far (`best_acc1`) is not this checkpoint's.
            let h = h.to_ascii_lowercase();
            let named = h.contains("accuracy") || h.ends_with("acc") || h.ends_with("acc1") || h.ends_with("top1");
            named && !h.starts_with("best")
        })
        .filter(|h| numeric(h))
        .collect();
    let held_out: Vec<&String> =
        candidates.iter().copied().filter(|h| !h.to_ascii_lowercase().starts_with("train")).collect();
    let chosen = match (&candidates[..], &held_out[..]) {
        (_, [one]) | ([one], []) => Some((*one).clone()),
        _ => None,
    };
    match chosen {
        Some(column) => {
            let by = opts.ensemble && !opts.named("--by") && opts.grouping.column == default;
            notes.push(format!(
                "no `{default}` column: `{column}` is the accuracy{} (give --accuracy COLUMN{})",
                if by { " and the groups" } else { "" },
                if by { ", --by COLUMN" } else { "" }
            ));
            if by {
                opts.grouping.column = column.clone();
            }
            opts.accuracy = column;
        }
        None if candidates.len() > 1 => {
            let names: Vec<&str> = candidates.iter().map(|c| c.as_str()).collect();
            notes.push(format!(
                "no `{default}` column and several that could be one ({}): give --accuracy COLUMN",
                names.join(", ")
            ));
        }
        None => {}
    }
    notes
}

/// An accuracy in percent (timm's `eval_top1`) grouped by accuracy:
/// groups of 10 points, as 0.1 of a fraction, unless `--width` was given;
/// a note either way.
fn percent_groups(opts: &mut StudyOptions, nodes: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    let (column, width) = (&opts.grouping.column, opts.grouping.width);
    if !opts.ensemble || *column != opts.accuracy || !width.is_some_and(|w| w < 1.0) {
        return notes;
    }
    let values = nodes.iter().map(|r| get(r, column)).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if hi > 1.0 {
        if !opts.width_given && lo >= 0.0 && hi <= 100.0 {
            opts.grouping.width = Some(10.0);
            notes.push(format!(
                "`{column}` is in percent (values up to {}): its groups are 10 wide, as 0.1 of a fraction (give --width)",
                trim(hi)
            ));
        } else {
            notes.push(format!(
                "`{column}` has values above 1 (percentages?): the groups are {} wide (give --width)",
                num(width.unwrap_or_default())
            ));
        }
    }
    notes
}

/// The folder of the training run that saved the checkpoint at `path`
/// (at `step`, when known), found in its path: the folder holding the
/// last component that names a step (`trial_3` for
/// `exp/trial_3/checkpoint_000002/model.pt`, `out` for
/// `out/checkpoint-500`, `logs/checkpoints` for
/// `logs/checkpoints/epoch=3-step=100.ckpt`; a CheckpointManager's folder
/// for its step folder `run/7`, a bare number equal to the step), else the
/// folder holding the checkpoint.
fn run_folder(path: &Path, step: Option<u64>) -> PathBuf {
    let names_step = |name: &std::ffi::OsStr| {
        let name = Path::new(name);
        crate::checkpoint::step_from_path(name).is_some()
            || name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()) && n.parse().ok() == step)
    };
    let carrier = path.ancestors().find(|a| a.file_name().is_some_and(names_step));
    carrier.unwrap_or(path).parent().unwrap_or(Path::new("")).to_path_buf()
}

/// Short names for run folders: each one's path below the folder they all
/// share (the last component of that folder when there is only one run).
fn run_names<'a>(folders: impl Iterator<Item = &'a PathBuf>) -> BTreeMap<&'a PathBuf, String> {
    let folders: Vec<&PathBuf> = folders.collect();
    let mut common: Option<PathBuf> = None;
    for f in &folders {
        common = Some(match common {
            None => f.to_path_buf(),
            Some(c) => c.components().zip(f.components()).take_while(|(a, b)| a == b).map(|(a, _)| a).collect(),
        });
    }
    let common = common.unwrap_or_default();
    // A last folder every run has (Lightning's `version_0/checkpoints`)
    // tells none apart.
    let last = folders.first().and_then(|f| f.file_name());
    let shared_last = last.filter(|l| {
        folders
            .iter()
            .all(|f| f.file_name() == Some(l) && f.parent().is_some_and(|p| p.starts_with(&common) && p != common))
    });
    folders
        .into_iter()
        .map(|f| {
            let shown = if shared_last.is_some() { f.parent().unwrap_or(f) } else { f.as_path() };
            let below = shown.strip_prefix(&common).unwrap_or(shown);
            let name = if below.as_os_str().is_empty() {
                // One run: its folder's name (the one above a `checkpoints`).
                let named = match f.file_name() {
                    Some(n) if n.eq_ignore_ascii_case("checkpoints") => {
                        f.parent().and_then(|p| p.file_name()).or(Some(n))
                    }
                    n => n,
                };
                named.map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned())
            } else {
                below.display().to_string()
            };
            (f, if name.is_empty() { ".".into() } else { name })
        })
        .collect()
}

/// What the user should know about the runs found: checkpoints with no
/// value to order them by (left out), and runs holding several
/// checkpoints at one point of training (likely two runs as one).
fn dynamics_notes(nodes: &[Row], runs: &BTreeMap<String, Vec<(f64, &Row)>>, opts: &StudyOptions) -> Vec<String> {
    let mut notes = Vec::new();
    let unordered = lacking(nodes, &opts.order);
    if runs.values().any(|p| !p.is_empty()) {
        notes.extend(without_value(&unordered, &opts.order, "left out of the dynamics"));
    }
    for (run, points) in runs {
        // The checkpoints at each point and their measures: copies (a
        // Lightning `last.ckpt`) measure alike and are no sign of two runs.
        // Each point (the order value as written) and its checkpoints'
        // measures.
        let mut at: BTreeMap<u64, (&str, BTreeMap<&str, Vec<&str>>)> = BTreeMap::new();
        for (order, row) in points {
            let text = |c: &str| row.get(c).map_or("", String::as_str);
            let (_, checkpoints) = at.entry(order.to_bits()).or_insert((text(&opts.order), BTreeMap::new()));
            let measures = checkpoints.entry(text("checkpoint")).or_default();
            measures.extend([text("fluctuation"), text("strength_mean")]);
        }
        let found = at.into_values().find(|(_, cs)| {
            let mut measures = cs.values();
            let first = measures.next();
            measures.any(|m| Some(m) != first)
        });
        if let Some((order, cs)) = found {
            let cs: Vec<&str> = cs.into_keys().collect();
            notes.push(format!(
                "run `{run}` has several checkpoints at {} {order} ({}): two runs taken as one? (give --run-by COLUMN)",
                opts.order,
                cs.join(", ")
            ));
        }
    }
    notes
}

/// The checkpoints of `nodes` (rows of a checkpoint together) with no
/// number in `column`.
fn lacking<'a>(nodes: &'a [Row], column: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = nodes
        .iter()
        .filter(|r| get(r, column).is_nan())
        .filter_map(|r| r.get("checkpoint").map(String::as_str))
        .collect();
    out.dedup();
    out
}

/// The note for `checkpoints` that have no value in `column` (none when
/// there are none): how many, what that means for them, the first.
fn without_value(checkpoints: &[&str], column: &str, so: &str) -> Option<String> {
    let (first, n) = (checkpoints.first()?, checkpoints.len());
    let (has, is) = if n == 1 { (" has", "is") } else { ("s have", "are") };
    Some(format!("{n} checkpoint{has} no `{column}` value and {is} {so} (first: {first})"))
}

/// The kinds of per-checkpoint summary the paper compares.
const KINDS: [&str; 3] = ["link weights", "node strength", "layer fluctuation"];

/// Which of [`KINDS`] a separation table's summary is (its name as
/// `separation_table` writes it).
fn kind_of(feature: &str) -> &'static str {
    if feature.contains(" link-weight ") {
        KINDS[0]
    } else if feature.ends_with(" fluctuation") {
        KINDS[2]
    } else {
        KINDS[1]
    }
}

/// The self-contained HTML page: figures inline as SVG, tables inline.
#[derive(Default)]
struct Report {
    /// The separation table: the answer, shown first.
    lead: String,
    /// Figure sections, in the order added.
    body: String,
}

impl Report {
    fn section(&mut self, title: &str, svgs: &[&String]) {
        let _ = write!(self.body, "<h2>{}</h2>\n<div class=\"figs\">", escape(title));
        for svg in svgs {
            let _ = write!(self.body, "<figure>{svg}</figure>");
        }
        self.body.push_str("</div>\n");
    }

    fn separation(&mut self, accuracy: &str, table: &[Separation]) {
        let _ = write!(
            self.lead,
            "<h2>Which measure separates accurate from under-trained networks?</h2>\n<p>For every per-checkpoint \
             summary: Spearman's rho with <code>{a}</code> over all checkpoints, and the AUROC of the summary for \
             telling the top third of checkpoints by <code>{a}</code> from the bottom third (0.5: no separation; \
             <em>higher</em>: larger in accurate networks). Strongest first; all rows in <code>separation.csv</code>.</p>\n\
             <table><tr><th>#</th><th>summary</th><th>n</th><th>Spearman rho</th><th>AUROC</th><th>direction</th></tr>\n",
            a = escape(accuracy)
        );
        self.separation_rows(table, 25);
    }

    /// The first `limit` rows of a separation table, and the table's end.
    fn separation_rows(&mut self, table: &[Separation], limit: usize) {
        for (i, s) in table.iter().take(limit).enumerate() {
            let _ = writeln!(
                self.lead,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                i + 1,
                escape(&s.feature),
                s.n,
                s.spearman,
                s.auroc,
                s.direction()
            );
        }
        self.lead.push_str("</table>\n");
    }

    /// The separation tables within each setting of the `--within`
    /// columns: first the best summary of each kind (link weights, node
    /// strength, layer fluctuation) per setting, the paper's question, then
    /// each setting's leading rows.
    fn separation_within(&mut self, columns: &[String], accuracy: &str, tables: &[(String, Vec<Separation>)]) {
        let columns: Vec<String> = columns.iter().map(|c| escape(c)).collect();
        let _ = write!(
            self.lead,
            "<h2>Within each setting of {cols}</h2>\n<p>The table above again, over the checkpoints of one setting \
             at a time (all rows in <code>separation_within.csv</code>), so that a setting which moves both a \
             measure and <code>{a}</code> (an init scale) cannot pass for separation. First the best summary of \
             each kind by |Spearman rho| in each setting: link weights against node strength and layer \
             fluctuation.</p>\n<table><tr><th>setting</th><th>n</th>",
            cols = columns.join(", "),
            a = escape(accuracy)
        );
        for kind in KINDS {
            let _ = write!(self.lead, "<th>best {kind}: summary, rho, AUROC</th>");
        }
        self.lead.push_str("</tr>\n");
        for (setting, table) in tables {
            let n = table.iter().map(|s| s.n).max().unwrap_or(0);
            let _ = write!(self.lead, "<tr><td>{}</td><td>{n}</td>", escape(setting));
            for kind in KINDS {
                let best = table
                    .iter()
                    .filter(|s| kind_of(&s.feature) == kind && s.spearman.is_finite())
                    .max_by(|a, b| a.spearman.abs().total_cmp(&b.spearman.abs()));
                match best {
                    Some(s) => {
                        let _ = write!(
                            self.lead,
                            "<td style=\"text-align:left\">{}: {:+.2}, {:.2}</td>",
                            escape(&s.feature),
                            s.spearman,
                            s.auroc
                        );
                    }
                    None => self.lead.push_str("<td>-</td>"),
                }
            }
            self.lead.push_str("</tr>\n");
        }
        self.lead.push_str("</table>\n");
        for (setting, table) in tables {
            let _ = write!(
                self.lead,
                "<h3>Within {}</h3>\n<table><tr><th>#</th><th>summary</th><th>n</th><th>Spearman rho with {}</th>\
                 <th>AUROC</th><th>direction</th></tr>\n",
                escape(setting),
                escape(accuracy)
            );
            self.separation_rows(table, 10);
        }
    }

    /// The checkpoints the scan could not analyse, named where the reader
    /// sees them.
    fn failures(&mut self, errors: &[Row]) {
        if errors.is_empty() {
            return;
        }
        let _ = write!(
            self.lead,
            "<h2>{} checkpoint(s) could not be analysed</h2>\n<p>They are in no figure or table of this report \
             (all of them in the scan's <code>errors.csv</code>).</p>\n<table><tr><th>checkpoint</th><th>kind</th>\
             <th>message</th></tr>\n",
            errors.len()
        );
        for r in errors.iter().take(200) {
            let cell = |c: &str| escape(r.get(c).map_or("", String::as_str));
            let _ = writeln!(
                self.lead,
                "<tr><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                cell("checkpoint"),
                cell("kind"),
                cell("message")
            );
        }
        self.lead.push_str("</table>\n");
    }

    fn finish(self, summary: &StudySummary, by: &str) -> String {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cntscope report</title>\n<style>\
             body{{font-family:sans-serif;max-width:1500px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             td:nth-child(2){{text-align:left}}.figs{{display:flex;flex-wrap:wrap;gap:8px}}figure{{margin:0}}\
             </style></head><body>\n<h1>cntscope report</h1>\n<p>{} checkpoints in {} groups by <code>{}</code>; \
             {} training runs. Node strength, layer fluctuation and link weights as defined in the README; tables \
             beside this file.</p>\n{}{}{}</body></html>\n",
            summary.checkpoints,
            summary.groups,
            escape(by),
            summary.runs,
            notes_html(&summary.notes),
            self.lead,
            self.body
        )
    }
}

/// The study's notes (what it assumed or could not do), as a list.
fn notes_html(notes: &[String]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    let items: String = notes.iter().map(|n| format!("<li>{}</li>", escape(n))).collect();
    format!("<div class=\"notes\"><p>Notes:</p><ul>{items}</ul></div>\n")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_on_a_bin_edge_are_in_the_bin_they_start() {
        let g = Grouping { column: "accuracy".into(), width: Some(0.1) };
        for (v, label) in [
            ("0.3", "[0.3, 0.4)"),
            ("0.6", "[0.6, 0.7)"),
            ("0.7", "[0.7, 0.8)"),
            ("0.9000", "[0.9, 1)"),
            ("0.29999", "[0.2, 0.3)"),
            ("0", "[0, 0.1)"),
            ("-0.05", "[-0.1, 0)"),
        ] {
            assert_eq!(g.group(v).unwrap().1, label, "{v}");
        }
        let g = Grouping { column: "acc".into(), width: Some(0.05) };
        assert_eq!(g.group("0.85").unwrap().1, "[0.85, 0.9)");
    }

    #[test]
    fn a_run_is_the_folder_above_the_step() {
        let run = |p: &str, step: Option<u64>| run_folder(Path::new(p), step).display().to_string();
        // Ray Tune, a Trainer, Lightning, a CheckpointManager's step folder.
        assert_eq!(run("exp/trial_3/checkpoint_000002/model.pt", Some(7)), "exp/trial_3");
        assert_eq!(run("out/checkpoint-500", Some(500)), "out");
        assert_eq!(run("logs/version_1/checkpoints/epoch=3-step=100.ckpt", Some(100)), "logs/version_1/checkpoints");
        assert_eq!(run("mgr/seed_2/7", Some(7)), "mgr/seed_2");
        // A number that is not the step (a seed's folder) is no step folder.
        assert_eq!(run("seeds/1/final.pt", None), "seeds/1");
        assert_eq!(run("seeds/1/final.pt", Some(40)), "seeds/1");
        assert_eq!(run("model.safetensors", None), "");
    }

    #[test]
    fn runs_are_named_below_their_shared_folder() {
        let folders: Vec<PathBuf> = ["/a/exp/t1", "/a/exp/t2", "/a/exp/t2"].iter().map(PathBuf::from).collect();
        let names = run_names(folders.iter());
        assert_eq!(names.values().cloned().collect::<Vec<_>>(), ["t1", "t2"]);
        let one = [PathBuf::from("/a/exp/t1")];
        assert_eq!(run_names(one.iter())[&one[0]], "t1");
        let lightning: Vec<PathBuf> =
            ["logs/version_0/checkpoints", "logs/version_1/checkpoints"].iter().map(PathBuf::from).collect();
        assert_eq!(run_names(lightning.iter()).values().cloned().collect::<Vec<_>>(), ["version_0", "version_1"]);
        assert_eq!(run_names(lightning[..1].iter())[&lightning[0]], "version_0");
        let here = [PathBuf::from("")];
        assert_eq!(run_names(here.iter())[&here[0]], ".");
    }
}
