//! The architectures, each written once over `ember_core::Backend`.

pub mod llama;
