//! Memory-mapping a model file: only a regular file is opened, so a path that names a FIFO or a
//! device (which could block the open forever or never end) is refused before it is touched.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::Mmap;

/// Maps the regular file at `path` read-only.
pub fn map_model_file(path: &Path) -> io::Result<Mmap> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let file = File::open(path)?;
    // SAFETY: the file is opened read-only; Ember never writes model files while they are mapped.
    unsafe { Mmap::map(&file) }
}
