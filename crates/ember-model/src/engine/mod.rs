//! The engine: options, opening a model, the backend choice, the model runner, and the
//! per-request output state behind one step loop.

pub mod batch;
pub mod device;
pub mod draft_model;
pub mod draft_open;
pub mod engine_args;
pub mod executor;
pub mod llm_engine;
pub mod loader;
pub mod lora_reader;
pub mod lora_registry;
mod output_state;
pub mod runner;
pub mod sample_rows;
pub mod speculative_args;
pub mod step_output;

pub use llm_engine::{panic_message, LlmEngine, StepFault};
pub use step_output::{LogprobEntry, StepOutput, StopReason, TokenLogprobs};
