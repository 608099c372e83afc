//! Discovery without a spec never gives a wrong number without a word:
//! BatchNorms placed and folded, assumed conv geometry reported, convs of
//! unknown grid measured at channel level, transformers analysed per layer
//! (GPT-2's Conv1D, embeddings), every unused tensor listed with a reason,
//! and the `graph` column of nodes.csv saying how the graph was obtained.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cntscope::checkpoint::Checkpoint;
use cntscope::engine::AnalysisOptions;
use cntscope::graph::{GraphOptions, GraphSource, LayerKind, Network};
use common::{engines, values, write_st, T};

fn fixture(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir).join(name)
}

fn cntscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope")).args(args).output().expect("runs cntscope")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cntscope scan PATH` into a fresh directory, which must succeed with
/// nothing failed: the directory (kept while it lives), the output and
/// the run.
fn scanned(path: &Path) -> (tempfile::TempDir, PathBuf, Output) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = cntscope(&["scan", path.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    (dir, out, o)
}

/// Every tensor is either read by a layer or listed as unused with a reason.
fn accounted(ck: &Checkpoint, net: &Network) {
    let used: BTreeSet<&str> = net.used_tensors().into_iter().collect();
    let unused: BTreeSet<&str> = net.unused.iter().map(|(t, _)| t.as_str()).collect();
    for name in ck.names() {
        assert!(
            used.contains(name) != unused.contains(name),
            "`{name}`: used {} / unused {}",
            used.contains(name),
            unused.contains(name)
        );
    }
    assert!(net.unused.iter().all(|(_, why)| !why.is_empty()));
}

/// Every engine measures the network without an error.
fn measured_by_every_engine(what: &str, net: &Network, ck: &Checkpoint) {
    for e in engines() {
        e.analyze(net, ck, &AnalysisOptions::default()).unwrap_or_else(|err| panic!("{what} {}: {err}", e.name()));
    }
}

fn dense(net: &Network, name: &str) -> (usize, usize, bool) {
    let l = net.layers.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no layer `{name}`"));
    match l.kind {
        LayerKind::Dense { inputs, outputs, in_out } => (inputs, outputs, in_out),
        k => panic!("`{name}` is {k:?}"),
    }
}

#[test]
fn transformers_are_analysed_per_layer() {
    for model in ["gpt2", "bert", "llama"] {
        let ck = Checkpoint::open(fixture("hf", &format!("{model}.safetensors"))).unwrap();
        let net = Network::build(&ck, &GraphOptions::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(net.source, GraphSource::PerLayer, "{model}");
        accounted(&ck, &net);
        // (Llama's RMSNorms have no bias: their weight alone could be a PReLU's, and the reason says so.)
        let norms = net.unused.iter().filter(|(_, why)| why.contains("LayerNorm") || why.contains("RMSNorm")).count();
        assert!(norms >= 4, "{model}: the normalisations are listed as unused: {:?}", net.unused);
        measured_by_every_engine(model, &net, &ck);
        match model {
            "gpt2" => {
                // Conv1D weights are [in, out]: c_attn maps 16 features to 48.
                assert_eq!(dense(&net, "transformer.h.0.attn.c_attn"), (16, 48, true));
                assert_eq!(dense(&net, "transformer.h.0.mlp.c_proj"), (64, 16, true));
                assert_eq!(dense(&net, "transformer.wte"), (64, 16, true), "vocab one-hot inputs to 16 features");
                assert!(net.notes.iter().any(|n| n.contains("Conv1D")), "{:?}", net.notes);
            }
            "bert" => {
                assert_eq!(dense(&net, "embeddings.word_embeddings"), (64, 16, true));
                assert_eq!(dense(&net, "encoder.layer.0.intermediate.dense"), (16, 32, false));
            }
            _ => {
                assert_eq!(dense(&net, "model.embed_tokens"), (64, 16, true));
                assert_eq!(dense(&net, "lm_head"), (16, 64, false));
                assert!(net.notes.iter().any(|n| n.contains("embeddings")), "{:?}", net.notes);
            }
        }
    }
}

/// A Hugging Face Trainer's output as the Trainer writes it
/// (`tests/fixtures/hf/trainer`): each `checkpoint-N/` is one checkpoint,
/// its model (`model.safetensors`, or Trainer 4's `pytorch_model.bin`),
/// with the step, epoch and what was logged at that step as columns; the
/// Trainer's own state beside it (optimizer, scheduler, RNG, pickled
/// arguments) is no checkpoint, and neither is the `training_args.bin`
/// that `save_model` puts beside the final model.
#[test]
fn trainer_checkpoints_are_their_models_with_the_trainer_state() {
    let trainer = fixture("hf", "trainer");
    let (dir, out, o) = scanned(&trainer);
    let mut r = csv::Reader::from_path(out.join("nodes.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no `{name}`: {header:?}"));
    let graph = col("graph");
    let rows: Vec<Vec<String>> = r.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    let at = |f: &str| trainer.join(f).to_str().unwrap().to_string();
    let want = [at("checkpoint-12"), at("checkpoint-4"), at("checkpoint-8"), at("model.safetensors")];
    assert_eq!(names, want.iter().map(String::as_str).collect::<Vec<_>>());
    let of = |name: &str| rows.iter().find(|r| r[0] == at(name)).unwrap();
    for (name, step, accuracy) in
        [("checkpoint-4", "4", "0.375"), ("checkpoint-8", "8", "0.375"), ("checkpoint-12", "12", "")]
    {
        assert_eq!(of(name)[col("step")], step, "{name}");
        assert_eq!(of(name)[col("global_step")], step, "{name}");
        assert_eq!(of(name)[col("eval_accuracy")], accuracy, "{name}");
    }
    assert!(!of("checkpoint-4")[col("loss")].is_empty() && !of("checkpoint-4")[col("learning_rate")].is_empty());
    // Each is its model: checkpoint-8's, the pytorch_model.bin of
    // checkpoint-12 and the final model are the same weights, node set by
    // node set, and checkpoint-8 reads as its model.safetensors does.
    let measures = |name: &str| -> Vec<Vec<String>> {
        rows.iter().filter(|r| r[0] == at(name)).map(|r| r[1..=graph].to_vec()).collect()
    };
    assert!(measures("checkpoint-8").len() > 10);
    assert_eq!(measures("checkpoint-8"), measures("checkpoint-12"));
    assert_eq!(measures("checkpoint-8"), measures("model.safetensors"));
    assert_ne!(measures("checkpoint-8"), measures("checkpoint-4"));
    let direct = dir.path().join("direct");
    let model = trainer.join("checkpoint-8/model.safetensors");
    assert!(cntscope(&["scan", model.to_str().unwrap(), "-o", direct.to_str().unwrap()]).status.success());
    let text = std::fs::read_to_string(direct.join("nodes.csv")).unwrap();
    let direct_rows: Vec<Vec<String>> =
        text.lines().skip(1).map(|l| l.split(',').skip(1).take(graph).map(String::from).collect()).collect();
    assert_eq!(measures("checkpoint-8"), direct_rows);
    assert_eq!(std::fs::read_to_string(out.join("errors.csv")).unwrap().lines().count(), 1);
    // `inspect` shows what the scan records.
    let shown = cntscope(&["inspect", trainer.join("checkpoint-4").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("eval_accuracy=0.375"), "{}", stderr(&shown));
    let said = "1 file named as a training run's state (";
    assert!(stderr(&o).contains(said) && stderr(&o).contains(&at("training_args.bin")), "{}", stderr(&o));
}

/// Accelerate's `save_state` folders (`tests/fixtures/hf/accelerate`): the
/// model is measured, the optimizer's and scheduler's state beside it are
/// not read (they are no networks) and the scan says so.
#[test]
fn training_state_beside_a_model_is_left_and_said() {
    let root = fixture("hf", "accelerate");
    let (dir, out, o) = scanned(&root);
    let nodes = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
    let names: BTreeSet<&str> = nodes.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    let model = |i: usize| format!("{}/checkpoints/checkpoint_{i}/model.safetensors", root.display());
    assert_eq!(names, [model(0), model(1)].iter().map(String::as_str).collect());
    assert!(stderr(&o).contains("4 files named as a training run's state ("), "{}", stderr(&o));
    // Named on the command line, such a file is read (and is no network).
    let optimizer = root.join("checkpoints/checkpoint_0/optimizer.bin");
    let o = cntscope(&["scan", optimizer.to_str().unwrap(), "-o", dir.path().join("one").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn one_dimensional_and_maybe_grouped_convs_are_said() {
    // Conv1d weights (rank 3) are convs of 1 x k kernels; `conv3` ([8, 3, 5],
    // groups 2 in the model) after a layer of 6 outputs is read with groups
    // 1, and a note says it may be grouped.
    let ck = Checkpoint::open(fixture("torch", "signal_1d.safetensors")).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    accounted(&ck, &net);
    let convs: Vec<(&str, usize, usize)> = net
        .layers
        .iter()
        .filter_map(|l| match l.kind {
            LayerKind::Conv(c) => Some((l.name.as_str(), c.kh, c.kw)),
            _ => None,
        })
        .collect();
    assert_eq!(convs, [("conv1", 1, 9), ("conv2", 1, 3), ("conv3", 1, 5), ("se1", 1, 1), ("se2", 1, 1)]);
    let note = net.notes.iter().find(|n| n.starts_with("convolutions read with groups 1")).expect("a note");
    assert!(note.ends_with("`conv3`"), "{note}");
}

#[test]
fn transposed_convs_are_told_by_their_bias() {
    // `up2.weight` [6, 3, 3, 2] with `up2.bias` [3]: a ConvTranspose2d of 6
    // inputs and 3 outputs. `up1` has no bias: read as a conv, and the note
    // says a transposed conv without a bias cannot be told.
    let ck = Checkpoint::open(fixture("torch", "autoencoder_tiny.safetensors")).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    accounted(&ck, &net);
    let up2 = net.layers.iter().find(|l| l.name == "up2").unwrap();
    assert!(matches!(up2.kind, LayerKind::ConvTranspose(c) if c.channel_level), "{:?}", up2.kind);
    assert_eq!((up2.input.channels(), up2.output.channels()), (6, 3));
    let note = net.notes.iter().find(|n| n.starts_with("read as transposed convolutions")).expect("a note");
    assert!(note.contains("without a bias") && note.ends_with("`up2`"), "{note}");
    // `bn1` (up1's) is no sibling of `down1` by name (a conv of its size):
    // left out and said, not folded into the wrong layer.
    assert!(net.layers.iter().all(|l| l.norm.is_none()), "no BatchNorm folded");
    assert!(net.notes.iter().any(|n| n.starts_with("BatchNorms left out") && n.ends_with("`bn1`")), "{:?}", net.notes);
    let why = net.unused.iter().find(|(t, _)| t == "bn1.running_var").map(|(_, w)| w.as_str()).unwrap_or("");
    assert!(why.contains("follows no weighted layer"), "{why}");
    measured_by_every_engine(ck.path().to_str().unwrap_or(""), &net, &ck);
}

#[test]
fn attention_in_projections_are_dense_layers() {
    // torchvision's ViT: nn.MultiheadAttention keeps Q, K and V as one
    // `in_proj_weight` [3d, d] with `in_proj_bias` [3d].
    let ck = Checkpoint::open(fixture("torch", "vit_tiny.safetensors")).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    assert_eq!(net.source, GraphSource::PerLayer);
    accounted(&ck, &net);
    for i in 0..2 {
        let name = format!("encoder.layers.encoder_layer_{i}.self_attention.in_proj");
        assert_eq!(dense(&net, &name), (8, 24, false));
        let layer = net.layers.iter().find(|l| l.name == name).unwrap();
        assert_eq!(layer.bias.as_deref(), Some(&*format!("{name}_bias")));
        assert_eq!(dense(&net, &format!("encoder.layers.encoder_layer_{i}.self_attention.out_proj")), (8, 8, false));
    }
    measured_by_every_engine(ck.path().to_str().unwrap_or(""), &net, &ck);
}

#[test]
fn batchnorms_fold_into_their_layers_and_unknown_grids_stay_channels() {
    // torchvision naming: `bn1` sorts before `conv1`, `downsample.1` after
    // `downsample.0`; num_batches_tracked is an integer buffer.
    let ck = Checkpoint::open(fixture("torch", "resnet_tiny.safetensors")).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    accounted(&ck, &net);
    assert_eq!(net.source, GraphSource::PerLayer);
    let folded: Vec<&str> = net.layers.iter().filter_map(|l| l.norm.as_ref().map(|n| n.prefix.as_str())).collect();
    for bn in ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.downsample.1", "layer2.0.bn3"] {
        assert!(folded.contains(&bn), "`{bn}` folded: {folded:?}");
    }
    assert!(net.layers.iter().all(|l| l.kind != LayerKind::Norm), "every BatchNorm found its layer");
    assert!(net
        .unused
        .iter()
        .any(|(t, why)| t.ends_with("num_batches_tracked") && why.contains("a tensor of I64, not of a float dtype")));
    for l in &net.layers {
        if let LayerKind::Conv(c) = l.kind {
            assert!(c.channel_level, "`{}`: no grid is invented", l.name);
        }
    }
    assert!(net.notes.iter().any(|n| n.contains("channel level")), "{:?}", net.notes);
    // The epsilon is not in the checkpoint: the one taken is said.
    assert!(
        net.notes.iter().any(|n| n.contains("BatchNorm epsilon assumed 1e-5 for 10 BatchNorms")),
        "{:?}",
        net.notes
    );
}

#[test]
fn depthwise_convs_keep_their_channels_in_the_per_layer_analysis() {
    // MobileNetV2's depthwise convs ([C, 1, 3, 3] after a layer of C
    // outputs): C inputs, one group each, not one input read by C kernels.
    let ck = Checkpoint::open(fixture("torch", "mobilenet_v2_tiny.safetensors")).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    assert_eq!(net.source, GraphSource::PerLayer);
    let mut depthwise = 0;
    for l in &net.layers {
        if let LayerKind::Conv(c) = l.kind {
            if c.cin_g == 1 {
                assert_eq!((c.geometry.groups, c.cin()), (c.cout, c.cout), "`{}`", l.name);
                depthwise += 1;
            }
        }
    }
    assert!(depthwise >= 5, "{depthwise} depthwise convs");
    assert!(net.notes.iter().any(|n| n.contains("read as depthwise")), "{:?}", net.notes);
    // A first conv of one input channel (an MNIST network's) has no layer
    // before it: one channel in.
    let ck = Checkpoint::open(fixture("torch", "functional_tiny.safetensors")).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    let first = net.layers.iter().find(|l| l.name == "conv1").unwrap();
    let LayerKind::Conv(c) = first.kind else { panic!("conv1 is a conv") };
    assert_eq!((c.geometry.groups, c.cin()), (1, 1));
    assert!(!net.notes.iter().any(|n| n.contains("read as depthwise")), "{:?}", net.notes);
}

#[test]
fn layer_scales_and_layernorms_are_named_without_a_spec() {
    // torchvision's ConvNeXt: layer scales `[C, 1, 1]` and LayerNorms have
    // no place without a spec; each is listed with its reason, and a note
    // says the layers they scale are measured raw.
    let ck = Checkpoint::open(fixture("torch", "convnext_tiny.safetensors")).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    accounted(&ck, &net);
    let why = |t: &str| net.unused.iter().find(|(n, _)| n == t).map(|(_, w)| w.as_str()).unwrap_or("");
    assert!(why("features.1.0.layer_scale").starts_with("a layer scale"), "{:?}", net.unused);
    assert!(why("features.1.0.block.2.weight").contains("LayerNorm"), "{:?}", net.unused);
    assert!(
        net.notes.iter().any(|n| n.starts_with("layer scales") && n.contains("`features.1.1.layer_scale`")),
        "{:?}",
        net.notes
    );
    // With its spec, the same tensors are folded (scales) or said to be per-sample (LayerNorms).
    let spec = cntscope::spec::Spec::load(&fixture("torch", "convnext_tiny.toml")).unwrap();
    let net = Network::build(&ck, &GraphOptions { spec: Some(spec), ..Default::default() }).unwrap();
    assert!(net.used_tensors().contains(&"features.1.0.layer_scale"));
    assert!(net.unused.iter().all(|(_, why)| why.contains("per-sample")), "{:?}", net.unused);
}

/// A conv-conv-dense chain stored with torchvision's module names
/// (`classifier.*` sorts before `features.*`), strides 2.
fn strided_chain(path: &Path) {
    let t = |name, shape: &[usize]| T::f32(name, shape, values(shape.iter().product(), 3));
    write_st(
        path,
        &[
            t("classifier.0.weight", &[5, 8 * 2 * 2]),
            t("features.0.weight", &[4, 3, 3, 3]),
            t("features.3.weight", &[8, 4, 3, 3]),
        ],
        &[],
    );
}

#[test]
fn assumed_geometry_is_reported_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    strided_chain(&path);
    let p = path.to_str().unwrap();
    // As a chain in module order with stride 1, padding 0: 3x8x8 -> 4x6x6
    // -> 8x4x4 does not reach classifier.0's 32 inputs, so per layer.
    let o = cntscope(&["inspect", p, "--input", "3,8,8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("analysed layer by layer"), "{err}");
    // Both convs are at channel level there (the first layer in name order
    // is the dense one): no grid, so no geometry was assumed.
    assert!(!err.contains("conv geometry assumed"), "{err}");
    // A first conv that does read the --input grid in the per-layer
    // fallback has its assumed geometry said, as in a chain.
    let first = dir.path().join("first.safetensors");
    let t = |name, shape: &[usize]| T::f32(name, shape, values(shape.iter().product(), 5));
    write_st(&first, &[t("a.weight", &[4, 3, 3, 3]), t("b.weight", &[5, 7])], &[]);
    let o = cntscope(&["inspect", first.to_str().unwrap(), "--input", "3,8,8"]);
    let err = stderr(&o);
    assert!(o.status.success() && err.contains("analysed layer by layer"), "{err}");
    assert!(
        err.contains(
            "conv geometry assumed (no spec): stride 1, padding 0, dilation 1, groups from channel counts for `a`;"
        ),
        "{err}"
    );
    // With an input where the assumed geometry fits, the chain is taken,
    // and the assumption is said.
    let o = cntscope(&["inspect", p, "--input", "3,6,6"]);
    let err = stderr(&o);
    assert!(err.contains("conv geometry assumed (no spec): stride 1, padding 0"), "{err}");
    assert!(err.contains("modules taken in the order `features`, `classifier`"), "{err}");
    let out = dir.path().join("scan");
    let o = cntscope(&["scan", p, "--input", "3,6,6", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("conv geometry assumed"), "scan says it too: {}", stderr(&o));
    let table = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "graph").expect("a graph column");
    assert!(table.lines().skip(1).all(|l| l.split(',').nth(col) == Some("discovered")), "{table}");
    // A spec: no note, `graph` = spec.
    let spec = dir.path().join("s.toml");
    std::fs::write(&spec, "input = [3, 8, 8]\n[[layers]]\nweight = \"features.0.weight\"\npadding = 1\nstride = 2\n[[layers]]\nweight = \"features.3.weight\"\npadding = 1\nstride = 2\n[[layers]]\nweight = \"classifier.0.weight\"\n").unwrap();
    let out = dir.path().join("spec");
    let o = cntscope(&["scan", p, "--spec", spec.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success() && !stderr(&o).contains("note:"), "{}", stderr(&o));
    let table = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
    assert!(table.lines().skip(1).all(|l| l.split(',').nth(col) == Some("spec")), "{table}");
}

#[test]
fn inspect_lists_every_unused_tensor() {
    let p = fixture("hf", "gpt2.safetensors");
    let o = cntscope(&["inspect", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("unused tensors:"), "{out}");
    assert!(out.contains("transformer.ln_f.weight: a normalisation without running statistics"), "{out}");
    assert!(out.contains("dense (stored [in, out])"), "{out}");
}
