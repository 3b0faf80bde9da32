//! Compiling constraints into llguidance matchers, off the engine loop when a caller can: a
//! [`GrammarCompiler`] is cloned to callers' threads, which compile a request's constraint before
//! handing the request to the engine; clones share one cache of compiled matchers, so the loop
//! then only clones the compiled matcher (if the cache evicted it meanwhile, the loop compiles
//! it again itself). The cache lock is never held while compiling.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use ember_core::InvalidParam;
use llguidance::toktrie::TokEnv;
use llguidance::{Matcher, ParserFactory};

use super::grammar::grammar_of;
use super::token_env::EmberTokEnv;
use crate::text::tokenizer::Tokenizer;

/// Compiled constraints kept for reuse (an `n > 1` request's completions, a server's
/// repeated schema, a caller's compilation for the loop): a fresh clone of a compiled matcher
/// costs no compilation.
const NUM_CACHED_GRAMMARS: usize = 64;

/// An error of the `structured_outputs` field.
pub(super) fn invalid(message: String) -> InvalidParam {
    InvalidParam {
        field: "structured_outputs",
        message,
    }
}

/// Compiled matchers by constraint, oldest first in `order`.
#[derive(Default)]
struct GrammarCache {
    compiled: HashMap<Arc<ember_core::StructuredOutputs>, Matcher>,
    order: VecDeque<Arc<ember_core::StructuredOutputs>>,
}

/// Compiles constraints for one engine's tokenizer; clones share the token index and the cache.
#[derive(Clone)]
pub struct GrammarCompiler {
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    eos_token_id: Option<u32>,
    /// Built on the first compilation (indexing the tokenizer takes a moment).
    factory: Arc<Mutex<Option<Arc<ParserFactory>>>>,
    cache: Arc<Mutex<GrammarCache>>,
}

impl GrammarCompiler {
    /// A compiler whose matchers speak token ids below `vocab_size` and end with `eos_token_id`.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, eos_token_id: Option<u32>) -> Self {
        Self {
            tokenizer,
            vocab_size,
            eos_token_id,
            factory: Arc::default(),
            cache: Arc::default(),
        }
    }

    fn factory(&self) -> Result<Arc<ParserFactory>, InvalidParam> {
        let mut slot = self.factory.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(factory) = &*slot {
            return Ok(factory.clone());
        }
        let eos = self
            .eos_token_id
            .ok_or_else(|| invalid("needs a model with an end-of-sequence token".into()))?;
        let env: TokEnv = EmberTokEnv::new_env(self.tokenizer.clone(), self.vocab_size, eos);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| invalid(format!("cannot index the tokenizer for grammars: {e}")))?;
        factory.quiet();
        let factory = Arc::new(factory);
        *slot = Some(factory.clone());
        Ok(factory)
    }

    /// A fresh matcher for `spec`, from the cache or compiled (and cached); an error names the
    /// constraint's field and why it does not compile.
    pub fn compile(&self, spec: &Arc<ember_core::StructuredOutputs>) -> Result<Matcher, InvalidParam> {
        if let Some(matcher) = self.cached(spec) {
            return Ok(matcher);
        }
        let field = spec.constraint.field_name();
        let grammar = grammar_of(spec).map_err(invalid)?;
        let parser = self
            .factory()?
            .create_parser(grammar)
            .map_err(|e| invalid(format!("{field} does not compile: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(invalid(format!("{field} does not compile: {error}")));
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if !cache.compiled.contains_key(spec) {
            if cache.order.len() == NUM_CACHED_GRAMMARS {
                if let Some(oldest) = cache.order.pop_front() {
                    cache.compiled.remove(&oldest);
                }
            }
            cache.order.push_back(spec.clone());
            cache.compiled.insert(spec.clone(), matcher.clone());
        }
        Ok(matcher)
    }

    /// A clone of the compiled matcher of `spec`, if cached.
    fn cached(&self, spec: &Arc<ember_core::StructuredOutputs>) -> Option<Matcher> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.compiled.get(spec).cloned()
    }

    /// Number of cached compiled constraints.
    pub fn num_cached(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .compiled
            .len()
    }
}
