//! Networks built by torchvision (and by hand with torch), their specs
//! written by `python/torch_to_spec.py`, and per-node strengths computed by
//! torch itself (`tests/fixtures/torch/make_fixtures.py`: conv2d of an
//! all-ones input, autograd for the out-strengths): both engines must
//! agree node set by node set, in every BatchNorm mode. The fixtures are
//! committed, so this needs no torch.

mod common;

use std::path::PathBuf;

use cntscope::checkpoint::Checkpoint;
use cntscope::engine::{AnalysisOptions, CpuEngine, Engine};
use cntscope::graph::{GraphOptions, Network};
use cntscope::spec::{BnMode, Spec};
use common::{assert_within, engines, write_st, T};

const NETWORKS: [&str; 18] = [
    "resnet_tiny",
    "vgg_bn_tiny",
    "mobilenet_v2_tiny",
    "densenet_tiny",
    "handmade",
    "functional_tiny",
    "gated_tiny",
    "convnext_tiny",
    "shufflenet_tiny",
    "signal_1d",
    "pyramid_tiny",
    "autoencoder_tiny",
    "segmenter_tiny",
    "unet_tiny",
    "eca_tiny",
    "subpixel_tiny",
    "tf_same_tiny",
    "reparametrized_tiny",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

#[test]
fn strengths_match_torch_in_every_bn_mode() {
    let engines = engines();
    for name in NETWORKS {
        let ck = Checkpoint::open(fixture(&format!("{name}.safetensors"))).unwrap();
        let expected = Checkpoint::open(fixture(&format!("{name}.expected.safetensors"))).unwrap();
        let spec = Spec::load(&fixture(&format!("{name}.toml"))).unwrap();
        for bn in [BnMode::Fold, BnMode::Layer, BnMode::Ignore] {
            let opts = GraphOptions { spec: Some(spec.clone()), bn: Some(bn), ..Default::default() };
            let net = Network::build(&ck, &opts).unwrap_or_else(|e| panic!("{name} bn={bn}: {e}"));
            // The squeeze-and-excitation branches (and an output other than
            // the last) end in sets no layer reads, and are said to.
            let ends = net.notes.iter().find(|n| n.starts_with("node sets that no layer reads"));
            match (name, ends) {
                ("gated_tiny", Some(n)) => assert!(n.ends_with("`se1.fc2`, `se2.fc2`"), "{n}"),
                ("signal_1d", Some(n)) => assert!(n.ends_with("`se2`"), "{n}"),
                ("segmenter_tiny", Some(n)) => assert!(n.ends_with("`lraspp.scale.1`, `interpolate_1`"), "{n}"),
                ("eca_tiny", Some(n)) => assert!(n.ends_with("`eca`"), "{n}"),
                (_, ends) => assert!(
                    !["gated_tiny", "signal_1d", "segmenter_tiny", "eca_tiny"].contains(&name) && ends.is_none(),
                    "{name}: {:?}",
                    net.notes
                ),
            }
            let sets = expected
                .names()
                .iter()
                .filter(|n| n.starts_with(&format!("{bn}/")) && n.ends_with("/strength"))
                .count();
            assert_eq!(net.node_sets.len(), sets, "{name} bn={bn}: node sets");
            for engine in &engines {
                let cpu = engine.name() == "cpu";
                let a = engine.analyze(&net, &ck, &AnalysisOptions { keep_values: true, bins: 10 }).unwrap();
                for (k, set) in a.node_sets.iter().enumerate() {
                    let want = expected.tensor(&format!("{bn}/V{k}/strength")).unwrap().to_f64();
                    let magnitude = expected.tensor(&format!("{bn}/V{k}/magnitude")).unwrap().to_f64();
                    let got = &set.values.as_ref().unwrap().strength;
                    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let tol = |i: usize| if cpu { 1e-9 * scale } else { 1e-5 * scale + 1e-6 * magnitude[i] };
                    assert_within(&format!("{name} bn={bn} {} V{k} {}", engine.name(), set.name), got, &want, tol);
                }
            }
        }
    }
}

/// A state_dict saved through DataParallel and `torch.compile` (every name
/// behind `module._orig_mod.`) reads as the model's own: the spec's names
/// find their tensors, with or without the wrappers' prefix, and every
/// strength is the same.
#[test]
fn a_wrapped_state_dict_reads_as_the_models_own() {
    let ck = Checkpoint::open(fixture("resnet_tiny.safetensors")).unwrap();
    let floats: Vec<&str> = ck.names().into_iter().filter(|n| ck.is_float(n)).collect();
    let wrapped: Vec<String> = floats.iter().map(|n| format!("module._orig_mod.{n}")).collect();
    let tensors: Vec<T> = floats
        .iter()
        .zip(&wrapped)
        .map(|(n, w)| {
            let t = ck.tensor(n).unwrap();
            T::f32(w, t.shape, t.to_f64())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrapped.safetensors");
    write_st(&path, &tensors, &[]);
    let unwrapped = Checkpoint::open(&path).unwrap();
    assert_eq!(unwrapped.names(), floats);
    let text = std::fs::read_to_string(fixture("resnet_tiny.toml")).unwrap();
    let prefixed = ["weight", "bias", "norm"]
        .iter()
        .fold(text.clone(), |t, key| t.replace(&format!("{key} = \""), &format!("{key} = \"module._orig_mod.")));
    assert_ne!(prefixed, text);
    let strengths = |ck: &Checkpoint, text: &str| {
        let spec = Spec::parse(text, std::path::Path::new("s.toml")).unwrap();
        let net = Network::build(ck, &GraphOptions { spec: Some(spec), ..Default::default() }).unwrap();
        let a = CpuEngine::new(1).analyze(&net, ck, &AnalysisOptions { keep_values: true, bins: 10 });
        a.unwrap().node_sets.into_iter().map(|s| s.values.unwrap().strength).collect::<Vec<_>>()
    };
    let want = strengths(&ck, &text);
    assert_eq!(strengths(&unwrapped, &text), want);
    assert_eq!(strengths(&unwrapped, &prefixed), want);
}

/// Parts of a reparametrized weight that do not fit each other are an
/// error naming the weight, its parts and what does not fit; mutated
/// files of reparametrized weights never panic.
#[test]
fn reparametrized_parts_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.safetensors");
    let cases: [(&[T], &str); 3] = [
        (
            &[T::f32("a.weight_g", &[3, 1], vec![1.0; 3]), T::f32("a.weight_v", &[2, 3], vec![1.0; 6])],
            "`a.weight`, kept as its weight norm (`a.weight_g`, `a.weight_v`): `g` of shape [3, 1] does not fit `v` \
             of shape [2, 3]",
        ),
        (
            &[
                T::f32("b.weight_orig", &[2, 3], vec![1.0; 6]),
                T::f32("b.weight_u", &[4], vec![1.0; 4]),
                T::f32("b.weight_v", &[3], vec![1.0; 3]),
            ],
            "`u` of 4 and `v` of 3 values do not fit a weight of shape [2, 3]",
        ),
        (
            &[T::f32("c.weight_orig", &[2, 3], vec![1.0; 6]), T::f32("c.weight_mask", &[3, 2], vec![1.0; 6])],
            "a mask of shape [3, 2] for a weight of shape [2, 3]",
        ),
    ];
    for (tensors, want) in cases {
        write_st(&path, tensors, &[]);
        let err = Checkpoint::open(&path).err().expect("refused").to_string();
        assert!(err.contains(want), "{err}");
    }
    let good = std::fs::read(fixture("reparametrized_tiny.safetensors")).unwrap();
    let (ok, refused) = common::measure_mutations(&good, &path, 800);
    assert!(ok > 0 && refused > 0, "{ok} measured, {refused} refused");
}
