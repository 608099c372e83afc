//! The `cntscope` command line.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use cntscope::checkpoint::{collect_checkpoints, Checkpoint};
use cntscope::engine::{select_engine, AnalysisOptions, Device};
use cntscope::graph::{LayerKind, Network};
use cntscope::output::{atomic_write, num, write_csv, NODE_VALUES_HEADER};
use cntscope::scan::{measure, scan, ScanOptions};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect { checkpoint, graph } => {
            let options = graph.options()?;
            let ck = Checkpoint::open(&checkpoint)?;
            let net = Network::build(&ck, &options)?;
            inspect(&ck, &net, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodes {
            checkpoint,
            graph,
            device,
            layer,
            output,
        } => {
            let options = graph.options()?;
            let engine = select_engine(device.device(), device.adapter.as_deref(), cores())?;
            if cli.verbose {
                eprintln!("engine: {}", engine.name());
            }
            let opts = AnalysisOptions {
                keep_values: true,
                ..AnalysisOptions::default()
            };
            let m = measure(&checkpoint, &options, engine.as_ref(), &opts)?;
            if let Some(reason) = &m.network.not_chain {
                eprintln!("note: not a chain ({reason}); each layer's input and output side is its own node set");
            }
            let sets = &m.analysis.node_sets;
            if let Some(k) = layer {
                if k >= sets.len() {
                    bail!(
                        "--layer {k}: the network has node layers 0..={}",
                        sets.len() - 1
                    );
                }
            }
            let rows = sets
                .iter()
                .enumerate()
                .filter(|(k, _)| layer.is_none_or(|l| l == *k))
                .flat_map(|(k, s)| {
                    let v = s.values.as_ref().expect("values were asked for");
                    (0..v.strength.len()).map(move |i| {
                        vec![
                            k.to_string(),
                            i.to_string(),
                            num(v.s_in[i]),
                            num(v.s_out[i]),
                            num(v.strength[i]),
                        ]
                    })
                });
            match output {
                Some(path) => atomic_write(&path, |w| write_csv(w, &NODE_VALUES_HEADER, rows))?,
                None => write_csv(std::io::stdout().lock(), &NODE_VALUES_HEADER, rows)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan {
            paths,
            graph,
            device,
            output,
            jobs,
            bins,
            resume,
        } => {
            let opts = ScanOptions {
                graph: graph.options()?,
                analysis: cli::analysis_options(bins)?,
                jobs: jobs.unwrap_or_else(cores).max(1),
                resume,
                progress: true,
            };
            let checkpoints = collect_checkpoints(&paths)?;
            if checkpoints.is_empty() {
                bail!("no checkpoints found under the given paths");
            }
            // Few checkpoints: parallelism goes inside the layers instead.
            let threads = (opts.jobs / checkpoints.len()).max(1);
            let engine = select_engine(device.device(), device.adapter.as_deref(), threads)?;
            if cli.verbose || device.device() == Device::Gpu {
                eprintln!("engine: {}", engine.name());
            }
            let summary = scan(&checkpoints, &output, engine.as_ref(), &opts)?;
            eprintln!(
                "{} analysed, {} failed -> {}",
                summary.analysed,
                summary.failed,
                output.display()
            );
            if summary.failed > 0 {
                eprintln!(
                    "failures are listed in {}",
                    output.join("errors.csv").display()
                );
            }
            Ok(ExitCode::from(match (summary.analysed, summary.failed) {
                (_, 0) => 0,
                (0, _) => 2,
                _ => 1,
            }))
        }
    }
}

fn inspect(ck: &Checkpoint, net: &Network, out: &mut impl Write) -> anyhow::Result<()> {
    let path = ck.path().display();
    writeln!(out, "checkpoint: {path}")?;
    writeln!(
        out,
        "layout: {}, biases in s_in: {}",
        net.layout,
        if net.bias { "yes" } else { "no" }
    )?;
    if !ck.metadata().is_empty() {
        let meta: Vec<String> = ck
            .metadata()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(out, "metadata: {}", meta.join(", "))?;
    }
    writeln!(out, "node sets:")?;
    for (k, s) in net.node_sets.iter().enumerate() {
        writeln!(
            out,
            "  V{k:<3} {:<24} {:>12}  {} nodes",
            s.name,
            s.shape.to_string(),
            s.shape.count()
        )?;
    }
    writeln!(out, "layers:")?;
    for (i, l) in net.layers.iter().enumerate() {
        let shape = |t: &str| {
            ck.shape(t)
                .map(|s| format!("{t} {s:?}"))
                .with_context(|| format!("{path}: tensor `{t}` not found"))
        };
        let bias = l
            .bias
            .as_deref()
            .map(shape)
            .transpose()?
            .map(|b| format!(" + {b}"))
            .unwrap_or_default();
        let kind = match l.kind {
            LayerKind::Dense { .. } => "dense".to_string(),
            LayerKind::Conv(c) => {
                let g = c.geometry;
                format!(
                    "conv2d {}x{} stride {}x{} padding {}x{} dilation {}x{} groups {}",
                    c.kh,
                    c.kw,
                    g.stride[0],
                    g.stride[1],
                    g.padding[0],
                    g.padding[1],
                    g.dilation[0],
                    g.dilation[1],
                    g.groups
                )
            }
        };
        writeln!(
            out,
            "  L{:<3} {:<24} {kind}: {}{bias}  ({} -> {})",
            i + 1,
            l.name,
            shape(&l.weight)?,
            l.input,
            l.output
        )?;
    }
    if let Some(reason) = &net.not_chain {
        writeln!(out, "not a chain: {reason}")?;
        writeln!(out, "node strength across layers is not defined for this checkpoint; each layer's input and output side is reported as its own node set")?;
    }
    Ok(())
}
