//! The network spec file (TOML, SPEC section 3): input shape, layout, bias
//! policy and the weighted layers in forward order with their geometry.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Weight layout convention of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// PyTorch: dense `[out, in]`, conv `[Cout, Cin/g, kh, kw]`, flatten `c, y, x`.
    Torch,
    /// Keras: dense `[in, out]`, conv `[kh, kw, Cin/g, Cout]`, flatten `y, x, c`.
    Keras,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Torch => "torch",
            Layout::Keras => "keras",
        })
    }
}

/// True for a valid sample shape: `[C, H, W]` or `[features]`, all
/// positive.
pub fn is_input_shape(dims: &[usize]) -> bool {
    matches!(dims.len(), 1 | 3) && !dims.contains(&0)
}

/// An integer or an `[h, w]` pair, as `stride`, `padding` and `dilation` accept.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Pair {
    /// The same value for both axes.
    One(usize),
    /// `[h, w]`.
    Two([usize; 2]),
}

impl Pair {
    /// The `[h, w]` values.
    pub fn hw(self) -> [usize; 2] {
        match self {
            Pair::One(v) => [v, v],
            Pair::Two(v) => v,
        }
    }
}

/// One `[[layers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Name of the weight tensor.
    pub weight: String,
    /// Name of the bias tensor, if any.
    pub bias: Option<String>,
    /// Convolution stride (default 1).
    pub stride: Option<Pair>,
    /// Convolution zero padding (default 0).
    pub padding: Option<Pair>,
    /// Convolution dilation (default 1).
    pub dilation: Option<Pair>,
    /// Convolution groups (default 1).
    pub groups: Option<usize>,
}

/// A parsed spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// One sample's shape: `[C, H, W]` or `[features]`.
    pub input: Option<Vec<usize>>,
    /// Weight layout (default torch).
    pub layout: Option<Layout>,
    /// Whether biases count in `s_in` (default true).
    pub bias: Option<bool>,
    /// The weighted layers in forward order.
    pub layers: Vec<LayerSpec>,
}

impl Spec {
    /// Parses spec text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let spec: Spec = toml::from_str(text)
            .map_err(|e| Error::Spec { path: path.to_path_buf(), reason: e.to_string().trim_end().to_string() })?;
        if spec.layers.is_empty() {
            return Err(Error::Spec { path: path.to_path_buf(), reason: "no [[layers]] listed".into() });
        }
        if let Some(input) = &spec.input {
            if !is_input_shape(input) {
                return Err(Error::Spec {
                    path: path.to_path_buf(),
                    reason: format!("input must be [C, H, W] or [features] with positive sizes, got {input:?}"),
                });
            }
        }
        for l in &spec.layers {
            let bad = [("stride", l.stride), ("dilation", l.dilation)]
                .into_iter()
                .find(|(_, p)| p.is_some_and(|p| p.hw().contains(&0)));
            if let Some((key, _)) = bad {
                return Err(Error::Spec {
                    path: path.to_path_buf(),
                    reason: format!("layer `{}`: {key} must be positive", l.weight),
                });
            }
            if l.groups == Some(0) {
                return Err(Error::Spec {
                    path: path.to_path_buf(),
                    reason: format!("layer `{}`: groups must be positive", l.weight),
                });
            }
        }
        Ok(spec)
    }

    /// Reads and parses a spec file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Spec { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "input = [4]\n\n[[layers]]\nweight = \"a.weight\"\nstrides = 2\n";
        let err = Spec::parse(text, Path::new("s.toml")).unwrap_err().to_string();
        assert!(err.contains("strides"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn pairs_and_defaults() {
        let text =
            "input = [3, 8, 8]\nlayout = \"keras\"\n[[layers]]\nweight = \"c/kernel\"\nstride = [2, 1]\npadding = 1\n";
        let spec = Spec::parse(text, Path::new("s.toml")).unwrap();
        assert_eq!(spec.layout, Some(Layout::Keras));
        assert_eq!(spec.layers[0].stride.unwrap().hw(), [2, 1]);
        assert_eq!(spec.layers[0].padding.unwrap().hw(), [1, 1]);
        assert!(spec.layers[0].dilation.is_none());
    }
}
