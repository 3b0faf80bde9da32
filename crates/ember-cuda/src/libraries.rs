//! The shared libraries cudarc opens at run time (the driver, cuBLAS, NVRTC), checked before
//! cudarc touches them. cudarc panics when a library is missing or lacks a symbol, and would
//! load a CUDA 12 cuBLAS as happily as a CUDA 13 one; so each library is opened here under the
//! same names in the same order as cudarc, its version read and the symbols Ember calls looked
//! up, and any problem becomes an error naming the library and the folders searched.

use std::ffi::c_int;
use std::path::Path;

/// How a library reports its version, and which versions Ember accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionRule {
    /// `cuDriverGetVersion` (1000 * major + 10 * minor) at least this.
    DriverAtLeast(c_int),
    /// `cublasGetProperty(MAJOR_VERSION)` equal to this.
    CublasMajor(c_int),
    /// `nvrtcVersion` major equal to this.
    NvrtcMajor(c_int),
}

/// One library cudarc loads: cudarc's base names (`lib{name}.so...`), the name Ember wants, the
/// version rule and the symbols Ember calls through cudarc.
#[derive(Clone, Copy, Debug)]
pub struct LibrarySpec {
    /// What the library is, for messages ("cuBLAS").
    pub what: &'static str,
    /// cudarc's base names, tried in this order.
    pub base_names: &'static [&'static str],
    /// The file name a CUDA 13 installation provides.
    pub wanted_file: &'static str,
    /// The accepted versions.
    pub version: VersionRule,
    /// Symbols that must exist (cudarc resolves each lazily and panics when one is missing).
    pub symbols: &'static [&'static str],
}

/// The driver API, CUDA 13.0 or newer (cudarc's `cuda-13000` bindings).
pub const DRIVER: LibrarySpec = LibrarySpec {
    what: "the CUDA driver",
    base_names: &["cuda", "nvcuda"],
    wanted_file: "libcuda.so.1",
    version: VersionRule::DriverAtLeast(13000),
    symbols: &["cuInit", "cuDeviceGetCount", "cuDriverGetVersion"],
};

/// cuBLAS 13 (the GEMMs and the graph-capture workspace).
pub const CUBLAS: LibrarySpec = LibrarySpec {
    what: "cuBLAS",
    base_names: &["cublas"],
    wanted_file: "libcublas.so.13",
    version: VersionRule::CublasMajor(13),
    symbols: &[
        "cublasCreate_v2",
        "cublasSetStream_v2",
        "cublasGemmEx",
        "cublasSetWorkspace_v2",
        "cublasDestroy_v2",
    ],
};

/// NVRTC 13, needed only when the kernels are compiled at run time (no embedded fatbin).
pub const NVRTC: LibrarySpec = LibrarySpec {
    what: "NVRTC",
    base_names: &["nvrtc"],
    wanted_file: "libnvrtc.so.13",
    version: VersionRule::NvrtcMajor(13),
    symbols: &[
        "nvrtcCreateProgram",
        "nvrtcCompileProgram",
        "nvrtcGetPTX",
        "nvrtcGetProgramLog",
    ],
};

/// A library opened under one name: what the check needs to ask it.
pub trait OpenedLibrary {
    /// True when the library exports `symbol`.
    fn has_symbol(&self, symbol: &str) -> bool;
    /// The version `rule` reads (the raw number it compares), or why it could not be read.
    fn version(&self, rule: VersionRule) -> Result<c_int, String>;
}

/// Where the dynamic loader looks: the `LD_LIBRARY_PATH` folders, then the system's.
#[derive(Clone, Debug, Default)]
pub struct SearchPath {
    /// The `LD_LIBRARY_PATH` folders, in order.
    pub folders: Vec<String>,
}

impl SearchPath {
    /// The search path of this process.
    pub fn from_env() -> Self {
        Self::parse(std::env::var("LD_LIBRARY_PATH").ok().as_deref())
    }

    /// Parses an `LD_LIBRARY_PATH` value.
    pub fn parse(ld_library_path: Option<&str>) -> Self {
        let folders = ld_library_path
            .unwrap_or("")
            .split(':')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        Self { folders }
    }

    /// The folders searched, for messages.
    pub fn describe(&self) -> String {
        if self.folders.is_empty() {
            "LD_LIBRARY_PATH is empty; searched the system library folders only".into()
        } else {
            format!(
                "searched LD_LIBRARY_PATH ({}), then the system library folders",
                self.folders.join(":")
            )
        }
    }

    /// The first `LD_LIBRARY_PATH` folder holding `file`, else the system folders.
    pub fn folder_of(&self, file: &str) -> String {
        self.folders
            .iter()
            .find(|folder| Path::new(folder).join(file).exists())
            .cloned()
            .unwrap_or_else(|| "the system library folders".into())
    }
}

/// cudarc's candidate file names for `spec`, in the order it tries them.
pub fn candidates(spec: &LibrarySpec) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in spec
        .base_names
        .iter()
        .flat_map(|name| cudarc::get_lib_name_candidates(name))
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Checks `spec` as cudarc would load it: the first candidate `open` accepts must have the
/// wanted version and every symbol. Returns the file name that loaded.
pub fn check_library<L: OpenedLibrary>(
    spec: &LibrarySpec,
    candidates: &[String],
    open: impl Fn(&str) -> Result<L, String>,
    search: &SearchPath,
) -> Result<String, String> {
    let mut wanted_error = None;
    let mut opened = None;
    for name in candidates {
        match open(name) {
            Ok(library) => {
                opened = Some((name.clone(), library));
                break;
            }
            Err(e) if name == spec.wanted_file => wanted_error = Some(e),
            Err(_) => {}
        }
    }
    let Some((name, library)) = opened else {
        let reason = wanted_error.map_or(String::new(), |e| format!("; the loader said: {e}"));
        return Err(format!(
            "{} ({}) could not be loaded: {}; tried {}{reason}. Put the folder holding {} on LD_LIBRARY_PATH",
            spec.what,
            spec.wanted_file,
            search.describe(),
            candidates.join(", "),
            spec.wanted_file,
        ));
    };
    let place = || format!("{name} from {}", search.folder_of(&name));
    let version = library
        .version(spec.version)
        .map_err(|e| format!("{} ({}): cannot read its version: {e}", spec.what, place()))?;
    if let Some(wanted) = version_problem(spec.version, version) {
        return Err(format!(
            "{} ({}) is {}, Ember needs {wanted} ({}); put the folder holding {} first on LD_LIBRARY_PATH ({})",
            spec.what,
            place(),
            describe_version(spec.version, version),
            spec.wanted_file,
            spec.wanted_file,
            search.describe(),
        ));
    }
    let missing: Vec<&str> = spec
        .symbols
        .iter()
        .copied()
        .filter(|symbol| !library.has_symbol(symbol))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} ({}) lacks {}: a broken or foreign build; {}",
            spec.what,
            place(),
            missing.join(", "),
            search.describe()
        ));
    }
    Ok(name)
}

/// What `rule` wants when `found` breaks it, else `None`.
fn version_problem(rule: VersionRule, found: c_int) -> Option<String> {
    match rule {
        VersionRule::DriverAtLeast(min) if found < min => {
            Some(format!("a driver for CUDA {} or newer", driver_version_text(min)))
        }
        VersionRule::CublasMajor(major) | VersionRule::NvrtcMajor(major) if found != major => {
            Some(format!("version {major}"))
        }
        _ => None,
    }
}

fn describe_version(rule: VersionRule, found: c_int) -> String {
    match rule {
        VersionRule::DriverAtLeast(_) => format!("a driver for CUDA {}", driver_version_text(found)),
        VersionRule::CublasMajor(_) | VersionRule::NvrtcMajor(_) => format!("version {found}"),
    }
}

fn driver_version_text(version: c_int) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

impl OpenedLibrary for libloading::Library {
    fn has_symbol(&self, symbol: &str) -> bool {
        // SAFETY: only the address is looked up; nothing is called.
        unsafe { self.get::<*const ()>(symbol.as_bytes()) }.is_ok()
    }

    fn version(&self, rule: VersionRule) -> Result<c_int, String> {
        type OneInt = unsafe extern "C" fn(*mut c_int) -> c_int;
        type Property = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;
        type TwoInts = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
        let mut value: c_int = 0;
        let mut minor: c_int = 0;
        // SAFETY: each function has the C signature declared for it by NVIDIA's headers
        // (`cuDriverGetVersion(int*)`, needing no `cuInit`; `cublasGetProperty(type, int*)`,
        // 0 = MAJOR_VERSION; `nvrtcVersion(int*, int*)`) and writes only through its pointers.
        let status = unsafe {
            match rule {
                VersionRule::DriverAtLeast(_) => self
                    .get::<OneInt>(b"cuDriverGetVersion")
                    .map_err(|e| e.to_string())?(&mut value),
                VersionRule::CublasMajor(_) => self
                    .get::<Property>(b"cublasGetProperty")
                    .map_err(|e| e.to_string())?(0, &mut value),
                VersionRule::NvrtcMajor(_) => {
                    self.get::<TwoInts>(b"nvrtcVersion").map_err(|e| e.to_string())?(&mut value, &mut minor)
                }
            }
        };
        if status != 0 {
            return Err(format!("the version query returned status {status}"));
        }
        Ok(value)
    }
}

/// The dynamic loader's own words (`dlerror`), which libloading keeps as the error's source.
fn loader_error(e: &libloading::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |source| source.to_string())
}

/// Checks `spec` with the real dynamic loader and this process's search path.
pub fn check_installed(spec: &LibrarySpec) -> Result<String, String> {
    check_library(
        spec,
        &candidates(spec),
        // SAFETY: loading a CUDA library runs its initializers, which have no preconditions;
        // the handle is dropped after the check (cudarc opens its own, the same file).
        |name| unsafe { libloading::Library::new(name) }.map_err(|e| loader_error(&e)),
        &SearchPath::from_env(),
    )
}

#[cfg(test)]
#[path = "libraries_tests.rs"]
mod tests;
