//! Structured output: a request's constraint (JSON schema, regex, choice, Lark grammar)
//! compiled by llguidance over Ember's own tokenizer into one matcher per request, which gives
//! the mask of allowed next tokens each step and consumes every sampled token. The engine and
//! runner only call into [`StructuredOutputs`], and callers' threads into its [`GrammarCompiler`];
//! nothing else here is seen outside.

mod compiler;
mod grammar;
mod matchers;
mod token_env;

pub use compiler::GrammarCompiler;
pub use matchers::StructuredOutputs;
