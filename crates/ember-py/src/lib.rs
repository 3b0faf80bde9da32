//! `ember._core`: the thin Python binding. It converts arguments, maps errors to Python
//! exceptions and releases the GIL while the engine computes; logic lives in the core crates.

mod convert;
mod dequant;
mod engine;
mod errors;
mod guard;
mod logger;
mod lora_read;
mod routing;
mod sampling;
mod sampling_params;
mod stats;
mod structured_outputs;
mod tokenizer;

use pyo3::prelude::*;

#[pymodule]
fn _core(py: Python<'_>, module: &Bound<'_, PyModule>) -> PyResult<()> {
    guard::guard(|| init_module(py, module))
}

fn init_module(py: Python<'_>, module: &Bound<'_, PyModule>) -> PyResult<()> {
    logger::init();
    errors::register(py, module)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<engine::PyEngine>()?;
    module.add_class::<engine::PyStepOutput>()?;
    module.add_class::<lora_read::PyReadLora>()?;
    module.add_class::<tokenizer::PyTokenizer>()?;
    module.add_class::<sampling_params::PySamplingParams>()?;
    module.add_class::<structured_outputs::PyStructuredOutputsParams>()?;
    module.add_function(wrap_pyfunction!(sampling::sampling_probs, module)?)?;
    module.add_function(wrap_pyfunction!(sampling::sample_token, module)?)?;
    module.add_function(wrap_pyfunction!(sampling::token_logprobs, module)?)?;
    module.add_function(wrap_pyfunction!(dequant::dequantize, module)?)?;
    module.add_function(wrap_pyfunction!(dequant::quantize_activations, module)?)?;
    module.add_function(wrap_pyfunction!(guard::_raise_panic, module)?)?;
    module.add_function(wrap_pyfunction!(routing::prefix_block_hashes, module)?)?;
    module.add_function(wrap_pyfunction!(routing::load_tokenizer, module)?)?;
    module.add_function(wrap_pyfunction!(stats::stat_specs, module)?)?;
    Ok(())
}
