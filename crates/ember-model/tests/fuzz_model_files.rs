//! Mutated GGUF files and Hugging Face folders never panic, abort or hang Ember: every
//! single-field corruption, truncations and random byte flips of tiny valid models are loaded
//! by a real engine, which then generates. Runs under an address-space limit and a per-case
//! watchdog. `EMBER_FUZZ_RANDOM_CASES` (default 1500) sets the number of random cases and
//! `EMBER_FUZZ_SEED` their seed; `scripts/fuzz_model_files.sh` runs a million of them.

mod fuzz;

use std::time::{Duration, Instant};

use fuzz::mutate::{byte_flips, field_corruptions, truncations};
use fuzz::run::{limit_address_space, Outcome, Runner, Watchdog};
use fuzz::{gguf_writer, hf_writer, Rng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mutated_model_files_never_panic_abort_or_hang() {
    let num_random = env_u64("EMBER_FUZZ_RANDOM_CASES", 1500);
    let seed = env_u64("EMBER_FUZZ_SEED", 0);
    limit_address_space(env_u64("EMBER_FUZZ_ADDRESS_SPACE_BYTES", 4 << 30));
    let mut runner = Runner::new(Watchdog::start(Duration::from_secs(env_u64(
        "EMBER_FUZZ_CASE_TIMEOUT_S",
        30,
    ))));
    let mut rng = Rng::new(seed);
    let gguf = gguf_writer::tiny_llama(&mut rng);
    let hf = hf_writer::tiny_llama(&mut rng);
    // The unmutated models must load and generate, or every corruption would pass trivially.
    assert_eq!(runner.gguf("valid", &gguf.bytes, false), Outcome::Loaded);
    assert_eq!(runner.gguf("valid (float32)", &gguf.bytes, true), Outcome::Loaded);
    assert_eq!(runner.hf(&hf.valid()), Outcome::Loaded);

    let started = Instant::now();
    for (i, mutant) in field_corruptions(&gguf.bytes, &gguf.fields)
        .into_iter()
        .enumerate()
    {
        runner.gguf(&mutant.description, &mutant.bytes, i % 2 == 1);
    }
    for mutant in truncations(&gguf.bytes, &gguf.fields, 64, &mut rng) {
        runner.gguf(&mutant.description, &mutant.bytes, false);
    }
    let hf_valid = hf.valid();
    for files in hf.field_corruptions() {
        runner.hf(&files);
    }
    for mutant in truncations(&hf_valid.safetensors, &[], 64, &mut rng) {
        runner.hf(&hf_writer::HfFiles {
            description: mutant.description,
            safetensors: mutant.bytes,
            ..hf_valid.clone()
        });
    }
    let num_structured = runner.tally.num_cases();
    let st_header_len =
        8 + u64::from_le_bytes(hf_valid.safetensors[..8].try_into().unwrap_or_default()) as usize;
    for i in 0..num_random {
        let mut case_rng = Rng::new(seed ^ ember_core::sampler::splitmix64(i + 1));
        if i % 4 == 3 {
            let mutant = byte_flips(&hf_valid.safetensors, st_header_len, &mut case_rng);
            let description = format!("#{i} {}", mutant.description);
            runner.hf(&hf_writer::HfFiles {
                description,
                safetensors: mutant.bytes,
                ..hf_valid.clone()
            });
        } else {
            let mutant = byte_flips(&gguf.bytes, gguf.data_start, &mut case_rng);
            runner.gguf(&format!("#{i} {}", mutant.description), &mutant.bytes, i % 8 == 0);
        }
        if (i + 1) % 10_000 == 0 {
            let tally = &runner.tally;
            eprintln!(
                "fuzz: {} random cases, {} panics, {:.0} cases/s",
                i + 1,
                tally.panics.len(),
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let tally = std::mem::take(&mut runner.tally);
    drop(runner); // puts the default panic hook back, so the assertion below is reported
    eprintln!(
        "fuzz: {} cases ({num_structured} structured, {num_random} random) in {:.1} s: {} loaded, {} rejected, {} panics",
        tally.num_cases(),
        started.elapsed().as_secs_f64(),
        tally.num_loaded,
        tally.num_rejected,
        tally.panics.len()
    );
    assert!(
        tally.panics.is_empty(),
        "{} cases panicked:\n{}",
        tally.panics.len(),
        tally.panics[..tally.panics.len().min(30)].join("\n")
    );
}
