//! The library checks over fake libraries: missing, wrong version, missing symbol, fine.

use super::*;

/// A fake library: its version and the symbols it exports.
struct Fake {
    version: Result<c_int, String>,
    symbols: Vec<&'static str>,
}

impl OpenedLibrary for Fake {
    fn has_symbol(&self, symbol: &str) -> bool {
        self.symbols.contains(&symbol)
    }

    fn version(&self, _rule: VersionRule) -> Result<c_int, String> {
        self.version.clone()
    }
}

fn search() -> SearchPath {
    SearchPath::parse(Some("/opt/cu13/lib::/usr/local/lib"))
}

/// Opens only `present` (a file name), as `version` exporting `symbols`.
fn only_with(
    present: &'static str,
    version: c_int,
    symbols: Vec<&'static str>,
) -> impl Fn(&str) -> Result<Fake, String> {
    move |name: &str| {
        if name == present {
            Ok(Fake {
                version: Ok(version),
                symbols: symbols.clone(),
            })
        } else {
            Err(format!("{name}: cannot open shared object file"))
        }
    }
}

/// Opens only `present`, as `version` with every symbol of `spec`.
fn only(present: &'static str, version: c_int, spec: &LibrarySpec) -> impl Fn(&str) -> Result<Fake, String> {
    only_with(present, version, spec.symbols.to_vec())
}

#[test]
fn candidates_follow_cudarc_and_include_the_wanted_file() {
    for spec in [DRIVER, CUBLAS, NVRTC] {
        let names = candidates(&spec);
        assert!(names.contains(&spec.wanted_file.to_string()), "{names:?}");
        assert_eq!(names[0], format!("lib{}.so", spec.base_names[0]));
    }
}

#[test]
fn a_missing_library_names_itself_and_the_folders() {
    let names = candidates(&CUBLAS);
    let err = check_library(&CUBLAS, &names, only("libnothing.so", 13, &CUBLAS), &search()).unwrap_err();
    assert!(
        err.starts_with("cuBLAS (libcublas.so.13) could not be loaded"),
        "{err}"
    );
    assert!(
        err.contains("LD_LIBRARY_PATH (/opt/cu13/lib:/usr/local/lib)"),
        "{err}"
    );
    assert!(
        err.contains("libcublas.so.13: cannot open shared object file"),
        "{err}"
    );
    let empty = check_library(&CUBLAS, &names, only("x", 13, &CUBLAS), &SearchPath::parse(None)).unwrap_err();
    assert!(empty.contains("LD_LIBRARY_PATH is empty"), "{empty}");
}

#[test]
fn a_wrong_version_is_refused_with_both_versions() {
    let names = candidates(&CUBLAS);
    let err = check_library(&CUBLAS, &names, only("libcublas.so.12", 12, &CUBLAS), &search()).unwrap_err();
    assert!(
        err.starts_with("cuBLAS (libcublas.so.12 from the system library folders) is version 12"),
        "{err}"
    );
    assert!(err.contains("Ember needs version 13 (libcublas.so.13)"), "{err}");
    let old_driver = check_library(
        &DRIVER,
        &candidates(&DRIVER),
        only("libcuda.so.1", 12040, &DRIVER),
        &search(),
    )
    .unwrap_err();
    assert!(
        old_driver.contains("is a driver for CUDA 12.4, Ember needs a driver for CUDA 13.0 or newer"),
        "{old_driver}"
    );
}

#[test]
fn a_missing_symbol_is_named() {
    let names = candidates(&CUBLAS);
    let present = vec!["cublasCreate_v2", "cublasSetStream_v2", "cublasDestroy_v2"];
    let open = only_with("libcublas.so.13", 13, present);
    let err = check_library(&CUBLAS, &names, open, &search()).unwrap_err();
    assert!(err.contains("lacks cublasGemmEx, cublasSetWorkspace_v2"), "{err}");
}

#[test]
fn an_unreadable_version_is_an_error() {
    let open = |_: &str| {
        Ok(Fake {
            version: Err("undefined symbol: nvrtcVersion".into()),
            symbols: vec![],
        })
    };
    let err = check_library(&NVRTC, &candidates(&NVRTC), open, &search()).unwrap_err();
    assert!(err.contains("NVRTC (libnvrtc.so from"), "{err}");
    assert!(
        err.contains("cannot read its version: undefined symbol: nvrtcVersion"),
        "{err}"
    );
}

#[test]
fn the_first_name_that_opens_is_the_one_checked() {
    // cudarc takes the first candidate that opens, so a newer file later in the list does not help.
    let names = candidates(&CUBLAS);
    let (old, new) = (
        only("libcublas.so", 12, &CUBLAS),
        only("libcublas.so.13", 13, &CUBLAS),
    );
    let open = |name: &str| old(name).or_else(|_| new(name));
    assert!(check_library(&CUBLAS, &names, open, &search()).is_err());
    let fine = check_library(&CUBLAS, &names, only("libcublas.so.13", 13, &CUBLAS), &search());
    assert_eq!(fine, Ok("libcublas.so.13".to_string()));
    let new_driver = check_library(
        &DRIVER,
        &candidates(&DRIVER),
        only("libcuda.so.1", 13020, &DRIVER),
        &search(),
    );
    assert_eq!(new_driver, Ok("libcuda.so.1".to_string()));
}

#[test]
fn the_real_loader_reports_an_absent_library() {
    let spec = LibrarySpec {
        what: "a library nobody has",
        base_names: &["ember_no_such_library"],
        wanted_file: "libember_no_such_library.so.13",
        version: VersionRule::CublasMajor(13),
        symbols: &[],
    };
    let err = check_installed(&spec).unwrap_err();
    assert!(
        err.starts_with("a library nobody has (libember_no_such_library.so.13) could not be loaded"),
        "{err}"
    );
    assert!(
        err.contains("libember_no_such_library.so.13: cannot open shared object file"),
        "{err}"
    );
}
