//! Prints every kernel the host launches with its parameter kinds, one per line
//! (`symbol ptr ptr i32 ...`), for `scripts/check_kernel_signatures.py`, which compares them
//! with the entries of the compiled PTX.

use ember_cuda::kernels::SIGNATURES;

fn main() {
    for (symbol, kinds) in SIGNATURES {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        println!("{symbol} {}", kinds.join(" "));
    }
}
