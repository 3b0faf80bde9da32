//! Running fuzz cases: each mutated model is written to disk, opened by a real engine, given a
//! request and stepped; a panic is recorded as a failure, a case that runs too long aborts the
//! process with its description, and the whole process lives under an address-space limit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_core::{SamplingParams, ValidSamplingParams};
use ember_model::engine::engine_args::EngineArgs;
use ember_model::engine::LlmEngine;

use super::hf_writer::HfFiles;

/// What a case did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The model loaded and generated (or the request was refused with an error).
    Loaded,
    /// The model was refused with this error.
    Rejected(String),
}

/// Counts and failures over many cases.
#[derive(Default)]
pub struct Tally {
    /// Cases whose model loaded.
    pub num_loaded: u64,
    /// Cases whose model was refused with an error.
    pub num_rejected: u64,
    /// Descriptions and panic messages of the cases that panicked.
    pub panics: Vec<String>,
}

impl Tally {
    /// Cases run.
    pub fn num_cases(&self) -> u64 {
        self.num_loaded + self.num_rejected + self.panics.len() as u64
    }
}

/// Limits the process's address space to `bytes`, so an allocation sized from a corrupt
/// header fails the run instead of going unnoticed.
pub fn limit_address_space(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit only reads the struct passed by reference.
    let status = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    assert_eq!(status, 0, "setrlimit(RLIMIT_AS) failed");
}

/// Aborts the process, naming the case, when one case runs longer than `limit`.
pub struct Watchdog {
    started_ms: Arc<AtomicU64>,
    current: Arc<Mutex<String>>,
    epoch: Instant,
}

impl Watchdog {
    /// Starts the watchdog thread.
    pub fn start(limit: Duration) -> Self {
        let started_ms = Arc::new(AtomicU64::new(u64::MAX));
        let current = Arc::new(Mutex::new(String::new()));
        let epoch = Instant::now();
        let (started, name) = (started_ms.clone(), current.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let since = started.load(Ordering::Relaxed);
            let now = epoch.elapsed().as_millis() as u64;
            if since != u64::MAX && now.saturating_sub(since) > limit.as_millis() as u64 {
                let case = name.lock().map(|s| s.clone()).unwrap_or_default();
                eprintln!("fuzz case ran longer than {limit:?} (a hang): {case}");
                std::process::abort();
            }
        });
        Self {
            started_ms,
            current,
            epoch,
        }
    }

    fn begin(&self, description: &str) {
        if let Ok(mut current) = self.current.lock() {
            description.clone_into(&mut current);
        }
        self.started_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn end(&self) {
        self.started_ms.store(u64::MAX, Ordering::Relaxed);
    }
}

/// Where cases are written, and the tally.
pub struct Runner {
    dir: PathBuf,
    watchdog: Watchdog,
    verbose: bool,
    /// What happened so far.
    pub tally: Tally,
}

impl Runner {
    /// A runner writing its files under a fresh temporary folder.
    pub fn new(watchdog: Watchdog) -> Self {
        let dir = std::env::temp_dir().join(format!("ember-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("hf")).expect("temporary folder");
        // The panic message goes into the tally, not to stderr thousands of times.
        std::panic::set_hook(Box::new(|_| {}));
        Self {
            dir,
            watchdog,
            verbose: std::env::var_os("EMBER_FUZZ_VERBOSE").is_some(),
            tally: Tally::default(),
        }
    }

    /// Loads a GGUF file's bytes and generates from it.
    pub fn gguf(&mut self, description: &str, bytes: &[u8], float32: bool) -> Outcome {
        let path = self.dir.join("model.gguf");
        std::fs::write(&path, bytes).expect("write case");
        self.case(&format!("gguf {description}"), &path, float32)
    }

    /// Loads a Hugging Face folder's files and generates from it.
    pub fn hf(&mut self, files: &HfFiles) -> Outcome {
        let dir = self.dir.join("hf");
        std::fs::write(dir.join("config.json"), &files.config).expect("write case");
        std::fs::write(dir.join("model.safetensors"), &files.safetensors).expect("write case");
        std::fs::write(dir.join("tokenizer.json"), &files.tokenizer).expect("write case");
        self.case(&format!("hf {}", files.description), &dir, false)
    }

    fn case(&mut self, description: &str, path: &Path, float32: bool) -> Outcome {
        if self.verbose {
            eprintln!("case: {description}");
        }
        self.watchdog.begin(description);
        let result = catch_unwind(AssertUnwindSafe(|| load_and_generate(path, float32)));
        self.watchdog.end();
        match result {
            Ok(Ok(())) => {
                self.tally.num_loaded += 1;
                Outcome::Loaded
            }
            Ok(Err(error)) => {
                if self.verbose {
                    eprintln!("  refused: {error}");
                }
                self.tally.num_rejected += 1;
                Outcome::Rejected(error)
            }
            Err(payload) => {
                let message = ember_model::engine::panic_message(payload.as_ref()).to_string();
                self.tally.panics.push(format!("{description}: {message}"));
                Outcome::Rejected(format!("panic: {message}"))
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::panic::take_hook();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Opens the model and, when it loads, generates a few tokens with logprobs; the error when the
/// model was refused. Request and step errors are fine; only a panic (or abort) is a bug.
fn load_and_generate(path: &Path, float32: bool) -> Result<(), String> {
    let args = EngineArgs {
        kv_cache_memory_bytes: Some(256 << 10),
        num_threads: Some(1),
        device: "cpu".into(),
        dtype: if float32 { "float32" } else { "auto" }.into(),
        ..EngineArgs::new(path)
    };
    let mut engine = LlmEngine::new(&args).map_err(|e| e.to_string())?;
    let params = ValidSamplingParams::new(SamplingParams {
        max_tokens: Some(3),
        temperature: 0.8,
        top_p: 0.9,
        seed: Some(7),
        logprobs: Some(2),
        prompt_logprobs: Some(1),
        stop: vec!["ab".into()],
        ..SamplingParams::default()
    })
    .map_err(|e| format!("the fuzz request's parameters are invalid: {e}"))?;
    let _ = engine.tokenizer().encode("a b, c!", true);
    if engine
        .add_request("r", vec![0, 1, 2, 3], params, 0, None, None, None)
        .is_ok()
    {
        for _ in 0..6 {
            if !engine.has_unfinished_requests() || engine.step().is_err() {
                break;
            }
        }
    }
    Ok(())
}
