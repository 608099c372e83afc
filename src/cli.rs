//! Raw command-line flags (clap) and their validation into the library's
//! settings. Nothing here computes; `main` dispatches.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use cntscope::engine::{AnalysisOptions, Device};
use cntscope::graph::GraphOptions;
use cntscope::layouts::NamePattern;
use cntscope::scan::{MetadataTable, ScanOptions};
use cntscope::spec::{BnMode, Layout, Spec};

/// Neural network checkpoints as Complex Network Theory graphs: node
/// strength, layer fluctuation and link weights.
#[derive(Debug, Parser)]
#[command(name = "cntscope", version, about, long_about = None)]
pub struct Cli {
    /// Print more (the chosen engine, timings; a scan's peak memory).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the discovered graph: node sets, layers, tensors, geometry.
    Inspect {
        /// A safetensors file or sharded checkpoint directory.
        checkpoint: PathBuf,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// Per-node strengths of one checkpoint as CSV.
    Nodes {
        /// A safetensors file or sharded checkpoint directory.
        checkpoint: PathBuf,
        #[command(flatten)]
        graph: GraphArgs,
        #[command(flatten)]
        device: DeviceArgs,
        /// Only node set K (0 = input).
        #[arg(long, value_name = "K")]
        layer: Option<usize>,
        /// Write to FILE instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Measure every checkpoint under the paths into DIR.
    Scan {
        /// Files, directories (searched recursively) or glob patterns.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        graph: GraphArgs,
        #[command(flatten)]
        device: DeviceArgs,
        /// Output directory.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        #[command(flatten)]
        scan: ScanArgs,
        /// Keep what an interrupted scan into DIR finished; do only the rest.
        #[arg(long)]
        resume: bool,
        /// Only this part of the collection: checkpoint i when i % N == I
        /// (0-based). Combine the parts with `cntscope merge`.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
    },
    /// Ensemble analysis: group checkpoints by a metadata column; pooled
    /// densities, divergence matrices and the separation table, with figures.
    Ensemble {
        #[command(flatten)]
        input: StudyInput,
        #[command(flatten)]
        ensemble: EnsembleArgs,
    },
    /// Individual analysis: measures along each training run, and a node-set
    /// divergence matrix of one checkpoint, with figures.
    Dynamics {
        #[command(flatten)]
        input: StudyInput,
        #[command(flatten)]
        dynamics: DynamicsArgs,
    },
    /// Both analyses and one self-contained HTML report (report.html).
    Report {
        #[command(flatten)]
        input: StudyInput,
        #[command(flatten)]
        ensemble: EnsembleArgs,
        #[command(flatten)]
        dynamics: DynamicsArgs,
    },
    /// Combine the output directories of `scan --shard` runs into the
    /// tables one unsharded run would give.
    Merge {
        /// The shard runs' output directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Output directory.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
    },
    /// Run the CPU reference and the GPU engine on the same checkpoints and
    /// report the largest deviation per node set (CSV on standard output).
    Verify {
        /// Files, directories (searched recursively) or glob patterns.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        graph: GraphArgs,
        /// Use the GPU adapter whose name contains this text.
        #[arg(long, value_name = "SUBSTRING")]
        adapter: Option<String>,
    },
}

/// What a scan measures and how (shared by `scan` and the studies, which
/// scan their inputs first).
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Checkpoints analysed at once (default: all cores).
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Bins of each histogram.
    #[arg(long, default_value_t = 50)]
    pub bins: usize,
    /// Stop at the first checkpoint that fails.
    #[arg(long)]
    pub strict: bool,
    /// CSV of metadata keyed by checkpoint path (a `path` column), for
    /// files that carry none; its values override the files' own.
    #[arg(long, value_name = "FILE.csv")]
    pub metadata: Option<PathBuf>,
    /// Metadata from each checkpoint's path: a regex whose named groups
    /// (`(?P<seed>\d+)`) become columns, or `cnt-dnns` for the file
    /// names of the paper's own code.
    #[arg(long, value_name = "REGEX")]
    pub name_pattern: Option<String>,
}

/// Inputs of a study.
#[derive(Debug, Args)]
pub struct StudyInput {
    /// Checkpoints (files, directories, globs), or one `scan` output
    /// directory to study without scanning again.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Output directory.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Metadata column of the accuracy (the separation table ranks
    /// against it; dynamics.csv carries it) [default: accuracy].
    #[arg(long, value_name = "COLUMN")]
    pub accuracy: Option<String>,
}

/// Columns and rules of the ensemble analysis.
#[derive(Debug, Args)]
pub struct EnsembleArgs {
    /// Metadata column to group by [default: accuracy].
    #[arg(long, value_name = "COLUMN")]
    pub by: Option<String>,
    /// Bin width of a numeric grouping column (bins start at 0); 0 groups by
    /// the value as text [default: 0.1, or 10 for an accuracy in percent].
    #[arg(long)]
    pub width: Option<f64>,
    /// Drop per-checkpoint values beyond M standard deviations of their
    /// group's mean (the paper's outlier rule), per measure.
    #[arg(long, value_name = "M", value_parser = parse_positive)]
    pub outliers: Option<f64>,
    /// At most N checkpoints per group: a deterministic sample (by a digest
    /// of each checkpoint's name).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub per_group: Option<u32>,
    /// Also compute the separation table within each setting of these
    /// metadata columns (`init,size`): one table per combination, so a
    /// confound cannot pass for separation.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    pub within: Vec<String>,
}

/// Columns of the individual analysis.
#[derive(Debug, Args)]
pub struct DynamicsArgs {
    /// Metadata column naming a training run [default: run].
    #[arg(long, value_name = "COLUMN")]
    pub run_by: Option<String>,
    /// Metadata column ordering checkpoints within a run [default: epoch].
    #[arg(long, value_name = "COLUMN")]
    pub order_by: Option<String>,
    /// Checkpoint of the node-set divergence matrix (default: the last of
    /// the first run).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
}

/// Flags that say how to read a checkpoint as a graph.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Network spec file (TOML).
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// One sample's shape: C,H,W or FEATURES (needed for convolutions).
    #[arg(long, value_name = "C,H,W")]
    pub input: Option<String>,
    /// Weight layout (default: from the spec, else detected from names).
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// Leave biases (and BatchNorm shifts) out of s_in.
    #[arg(long)]
    pub no_bias: bool,
    /// BatchNorm: fold into the layer before it, its own layer, or ignore
    /// (default: from the spec, else fold).
    #[arg(long, value_enum)]
    pub bn: Option<BnArg>,
    /// Read the weights under this entry of a wrapped checkpoint (tensors
    /// `KEY.*`, e.g. `ema_state_dict`, `model.backbone`), instead of the
    /// state_dict found by name.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

/// `--bn` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BnArg {
    /// Folded into the weighted layer it follows, as inference engines do.
    Fold,
    /// Its own diagonal layer, with its own node set.
    Layer,
    /// Left out: strengths of the raw layers.
    Ignore,
}

/// `--layout` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// Dense [out, in], conv [Cout, Cin/g, kh, kw], flatten c,y,x.
    Torch,
    /// Dense [in, out], conv [kh, kw, Cin/g, Cout], flatten y,x,c.
    Keras,
}

/// Flags that say where to compute.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Where the reductions run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Use the GPU adapter whose name contains this text.
    #[arg(long, value_name = "SUBSTRING")]
    pub adapter: Option<String>,
}

/// `--device` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The f64 reference engine.
    Cpu,
    /// The GPU engine (fails clearly without an adapter).
    Gpu,
    /// The engine measured fastest for a scan (today the CPU; see BENCHMARKS.md).
    Auto,
}

impl GraphArgs {
    /// Validates the flags into graph options.
    pub fn options(&self) -> anyhow::Result<GraphOptions> {
        let spec = self.spec.as_deref().map(Spec::load).transpose()?;
        let input = self.input.as_deref().map(parse_input).transpose()?;
        let layout = self.layout.map(|l| match l {
            LayoutArg::Torch => Layout::Torch,
            LayoutArg::Keras => Layout::Keras,
        });
        let bn = self.bn.map(|b| match b {
            BnArg::Fold => BnMode::Fold,
            BnArg::Layer => BnMode::Layer,
            BnArg::Ignore => BnMode::Ignore,
        });
        Ok(GraphOptions { spec, input, layout, bias: self.no_bias.then_some(false), bn, key: self.key.clone() })
    }
}

impl DeviceArgs {
    /// The validated device choice.
    pub fn device(&self) -> Device {
        match self.device {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Gpu => Device::Gpu,
            DeviceArg::Auto => Device::Auto,
        }
    }
}

/// Parses `C,H,W` or `FEATURES`.
/// A finite number above 0.
fn parse_positive(text: &str) -> anyhow::Result<f64> {
    let v: f64 = text.trim().parse().with_context(|| format!("`{text}` is not a number"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("`{text}`: a number of standard deviations above 0");
    }
    Ok(v)
}

fn parse_input(text: &str) -> anyhow::Result<Vec<usize>> {
    let dims = text
        .split([',', 'x'])
        .map(|d| d.trim().parse::<usize>().with_context(|| format!("--input {text}: `{d}` is not a size")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !cntscope::spec::is_input_shape(&dims) {
        bail!("--input {text}: expected C,H,W or FEATURES with positive sizes");
    }
    Ok(dims)
}

/// Parses `I/N` with `I < N`.
pub fn parse_shard(text: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => bail!("--shard {text}: expected I/N with 0 <= I < N"),
    }
}

impl ScanArgs {
    /// The validated scan settings (for a fresh, unsharded scan; the caller
    /// sets resume and shard).
    pub fn options(&self, graph: GraphOptions, cores: usize) -> anyhow::Result<ScanOptions> {
        Ok(ScanOptions {
            analysis: analysis_options(self.bins)?,
            strict: self.strict,
            metadata: self.metadata.as_deref().map(MetadataTable::load).transpose()?,
            name_pattern: self
                .name_pattern
                .as_deref()
                .map(NamePattern::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            ..ScanOptions::new(graph, self.jobs.map_or(cores, |j| j as usize))
        })
    }
}

/// Scan's analysis settings from its flags.
pub fn analysis_options(bins: usize) -> anyhow::Result<AnalysisOptions> {
    if bins == 0 || bins > cntscope::engine::gpu::MAX_BINS {
        bail!("--bins must be between 1 and {}", cntscope::engine::gpu::MAX_BINS);
    }
    Ok(AnalysisOptions { bins, keep_values: false })
}
