//! Test references that live outside the repository (the default model's GGUF file,
//! llama.cpp's tokenizer vocabularies), found through environment variables.
//!
//! A missing reference skips its test with a note, except under `CI=true`, where it fails
//! the test: CI must never pass by skipping. Unit tests use this module directly; the
//! integration tests in `tests/` include the same file.

use std::ffi::OsString;
use std::path::PathBuf;

/// The path in `$var`; `None` with a note on stderr when it is unset outside CI.
///
/// # Panics
/// When `$var` is unset and `CI=true`.
pub fn reference_path(var: &str, what: &str) -> Option<PathBuf> {
    reference_path_in(var, what, |key| std::env::var_os(key))
}

/// [`reference_path`] over the environment `env`.
fn reference_path_in(var: &str, what: &str, env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(path) = env(var) {
        return Some(PathBuf::from(path));
    }
    let message = format!("{what} not found: set {var}");
    if env("CI").is_some_and(|ci| ci == "true") {
        panic!("{message} (CI=true: a missing reference fails the test instead of skipping it)");
    }
    eprintln!("skipped: {message}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn a_set_variable_gives_its_path_and_an_unset_one_skips_outside_ci() {
        let vars = [("REF", "/models/x.gguf"), ("CI", "false")];
        assert_eq!(
            reference_path_in("REF", "x", env(&vars)),
            Some(PathBuf::from("/models/x.gguf"))
        );
        assert_eq!(reference_path_in("OTHER", "x", env(&vars)), None);
        assert_eq!(reference_path_in("OTHER", "x", env(&[])), None);
    }

    #[test]
    #[should_panic(expected = "CI=true")]
    fn an_unset_variable_fails_under_ci() {
        reference_path_in("REF", "the model", env(&[("CI", "true")]));
    }
}
