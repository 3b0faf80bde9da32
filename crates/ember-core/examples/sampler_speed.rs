//! Times `sample()` on one row of logits for common vocabulary sizes and settings.
//!
//! Run: `cargo run -p ember-core --release --example sampler_speed`

use std::time::Instant;

use ember_core::sampler::{sample, uniform};
use ember_core::{SampleContext, SamplingParams};

fn main() {
    let settings = [
        (
            "greedy",
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
        ),
        ("t=1", SamplingParams::default()),
        (
            "t=0.8 top_k=50",
            SamplingParams {
                temperature: 0.8,
                top_k: 50,
                ..Default::default()
            },
        ),
        (
            "t=0.7 top_p=0.9",
            SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                ..Default::default()
            },
        ),
        (
            "t=1 top_p=0.95 min_p=0.05",
            SamplingParams {
                top_p: 0.95,
                min_p: 0.05,
                ..Default::default()
            },
        ),
        (
            "t=1 logprobs=5",
            SamplingParams {
                logprobs: Some(5),
                ..Default::default()
            },
        ),
    ];
    println!("{:>7} {:>28} {:>10}", "vocab", "setting", "us/token");
    for vocab in [49_152usize, 151_936] {
        // Peaked like an LM's logits: a few strong candidates over a long tail.
        let row: Vec<f32> = (0..vocab)
            .map(|i| {
                let u = uniform(7, i) as f32;
                if i % 997 == 0 {
                    8.0 + 4.0 * u
                } else {
                    6.0 * u - 3.0
                }
            })
            .collect();
        for (name, params) in &settings {
            let iters = 200;
            let mut scratch = row.clone();
            let start = Instant::now();
            let mut checksum = 0u64;
            for i in 0..iters {
                scratch.copy_from_slice(&row);
                checksum += u64::from(sample(&mut scratch, params, &ctx(i)).token_id);
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
            println!("{vocab:>7} {name:>28} {us:>10.1}   (checksum {checksum})");
        }
    }
}

/// The context of output token `token_index` of a request with seed 1.
fn ctx(token_index: usize) -> SampleContext<'static> {
    SampleContext {
        seed: 1,
        token_index,
        ..Default::default()
    }
}
