//! cntscope reads neural network checkpoints as Complex Network Theory
//! graphs (neurons are nodes, weights are links) and measures them: link
//! weights, node strength and layer fluctuation, as defined in
//! "Characterizing Learning Dynamics of Deep Neural Networks via Complex
//! Networks" (ICTAI 2021), for single checkpoints and large collections.
//!
//! The pipeline: [`collection`] finds the checkpoints,
//! [`checkpoint::Checkpoint`] maps each, [`graph::Network`] reads it as a
//! graph, an [`engine::Engine`] measures it, [`scan`] does so over
//! collections (its directory described by [`manifest`]) and [`output`]
//! writes the tables.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod collection;
pub(crate) mod cursor;
pub(crate) mod dcp;
pub mod density;
pub mod discover;
pub mod engine;
pub mod error;
pub(crate) mod fill;
pub mod flat;
pub mod flax;
pub mod graph;
pub mod hdf5;
pub mod keras;
pub mod keras_graph;
pub mod layouts;
pub mod manifest;
mod mapped;
pub mod natsort;
pub mod numpy;
pub mod orbax;
pub mod output;
pub mod pickle;
pub mod plot;
pub(crate) mod reparam;
pub(crate) mod saved_model;
pub mod scan;
pub mod separation;
pub mod simd;
pub mod spec;
pub mod stats;
pub mod study;
pub(crate) mod tf;
pub mod torch;
pub mod zip;

pub use error::{Error, Result};
