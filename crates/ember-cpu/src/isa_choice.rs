//! The kernel family a backend runs: the best the CPU supports, or the one named by the
//! `EMBER_CPU_ISA` environment variable (to test or compare the dispatch paths of one build).

use crate::matmul::Isa;
use ember_core::{BackendError, BackendResult};

/// The environment variable that forces a kernel family: `scalar`, `avx2`, `avx512vnni` (x86-64),
/// `neon` or `neon-dotprod` (AArch64).
pub const ISA_ENV: &str = "EMBER_CPU_ISA";

/// The accepted values of [`ISA_ENV`], in the order of [`Isa`]'s variants.
const ISA_NAMES: [(&str, Isa); 5] = [
    ("scalar", Isa::Scalar),
    ("avx2", Isa::Avx2),
    ("avx512vnni", Isa::Avx512Vnni),
    ("neon", Isa::Neon),
    ("neon-dotprod", Isa::NeonDotprod),
];

/// The family named by `value` (the variable's content; unset or empty: [`Isa::detect`]), or an
/// error naming the variable when the name is unknown or this CPU cannot run that family.
pub fn choose_isa(value: Option<&str>) -> BackendResult<Isa> {
    let Some(name) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Isa::detect());
    };
    let known = ISA_NAMES.map(|(n, _)| n).join(", ");
    let Some(&(_, isa)) = ISA_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        return Err(BackendError::Device(format!(
            "{ISA_ENV}={name:?} is not a kernel family; expected one of: {known}"
        )));
    };
    if !isa.is_supported() {
        return Err(BackendError::Device(format!(
            "{ISA_ENV}={name}: this CPU lacks the instructions of that kernel family (best here: {:?})",
            Isa::detect()
        )));
    }
    Ok(isa)
}

/// [`choose_isa`] on the process's [`ISA_ENV`].
pub fn isa_from_env() -> BackendResult<Isa> {
    choose_isa(std::env::var(ISA_ENV).ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_detects() {
        assert_eq!(choose_isa(None).unwrap(), Isa::detect());
        assert_eq!(choose_isa(Some(" ")).unwrap(), Isa::detect());
    }

    #[test]
    fn names_select_supported_families_and_refuse_the_rest() {
        for (name, isa) in ISA_NAMES {
            let upper = name.to_uppercase();
            match choose_isa(Some(&upper)) {
                Ok(chosen) => assert!(isa.is_supported() && chosen == isa),
                Err(e) => assert!(!isa.is_supported() && e.to_string().contains(ISA_ENV), "{e}"),
            }
        }
        assert_eq!(choose_isa(Some("scalar")).unwrap(), Isa::Scalar);
        assert_eq!(ISA_NAMES.map(|(_, isa)| isa), Isa::ALL);
    }

    #[test]
    fn unknown_name_is_an_error_naming_the_variable_and_choices() {
        let e = choose_isa(Some("sse9")).unwrap_err().to_string();
        assert!(
            e.contains("EMBER_CPU_ISA") && e.contains("avx512vnni") && e.contains("neon-dotprod"),
            "{e}"
        );
    }
}
