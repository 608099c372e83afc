//! The GPU engine (WGSL kernels through wgpu). Until it lands, opening a
//! context reports that it is unavailable, so `--device gpu` fails clearly.

use std::sync::Arc;

use crate::error::{Error, Result};

/// A wgpu device and queue with its cached pipelines.
pub struct GpuContext {
    _private: (),
}

impl GpuContext {
    /// Opens the GPU context on the first adapter whose name contains
    /// `adapter` (any adapter when `None`).
    pub fn new(_adapter: Option<&str>) -> Result<Self> {
        Err(Error::GpuUnavailable(
            "the GPU engine is not built yet; use --device cpu".into(),
        ))
    }
}

/// The GPU engine over a shared context.
pub struct GpuEngine {
    _ctx: Arc<GpuContext>,
}

impl GpuEngine {
    /// An engine on `ctx`.
    pub fn new(ctx: Arc<GpuContext>) -> Self {
        GpuEngine { _ctx: ctx }
    }
}

impl super::Engine for GpuEngine {
    fn name(&self) -> String {
        "gpu".into()
    }
    fn layer_strengths(
        &self,
        _: &crate::graph::Layer,
        _: crate::spec::Layout,
        _: &crate::checkpoint::Tensor<'_>,
        _: Option<&crate::checkpoint::Tensor<'_>>,
    ) -> Result<super::LayerStrengths> {
        unreachable!("a GpuEngine cannot be built before the GPU engine lands")
    }
    fn moments(&self, _: &[f64]) -> Result<crate::stats::Moments> {
        unreachable!("a GpuEngine cannot be built before the GPU engine lands")
    }
    fn histogram(&self, _: &[f64], _: f64, _: f64, _: usize) -> Result<crate::stats::Histogram> {
        unreachable!("a GpuEngine cannot be built before the GPU engine lands")
    }
    fn weight_histogram(
        &self,
        _: &crate::checkpoint::Tensor<'_>,
        _: f64,
        _: f64,
        _: usize,
    ) -> Result<crate::stats::Histogram> {
        unreachable!("a GpuEngine cannot be built before the GPU engine lands")
    }
}
