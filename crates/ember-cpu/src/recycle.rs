//! Recycled activation buffers: a dropped tensor gives its buffer back to its thread, and a
//! tensor whose producer overwrites every element takes one, skipping the allocator and the
//! zero fill (a decode step makes and drops the same few shapes in every layer).

use crate::alloc::try_zeroed_vec;
use ember_core::BackendResult;
use std::cell::RefCell;

/// Buffers kept per thread.
const MAX_KEPT: usize = 16;
/// Larger buffers (prefill activations, `[batch, vocab]` logits) go back to the allocator.
const MAX_KEPT_ELEMENTS: usize = 1 << 18;

thread_local! {
    static KEPT: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` initialized elements of unspecified value (a dropped tensor's old contents, or
/// zeros), for a producer that writes every one; `OutOfMemory` when it cannot be allocated.
pub fn take_for_overwrite(len: usize, what: &str) -> BackendResult<Vec<f32>> {
    let kept = KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let fit = (0..kept.len())
            .filter(|&i| kept[i].capacity() >= len)
            .min_by_key(|&i| kept[i].capacity());
        fit.map(|i| kept.swap_remove(i))
    });
    match kept {
        Some(mut buf) => {
            buf.resize(len, 0.0);
            Ok(buf)
        }
        None => try_zeroed_vec(len, what),
    }
}

/// Keeps `buf` for a later [`take_for_overwrite`] on this thread (unless it is large or the
/// thread already keeps enough).
pub fn give_back(buf: Vec<f32>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_KEPT_ELEMENTS {
        return;
    }
    // A thread being torn down has no pool: the buffer is freed.
    let _ = KEPT.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() < MAX_KEPT {
            kept.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_sized_and_large_ones_are_not_kept() {
        let mut buf = take_for_overwrite(100, "test").unwrap();
        assert_eq!(buf.len(), 100);
        buf.fill(7.0);
        let ptr = buf.as_ptr();
        give_back(buf);
        let again = take_for_overwrite(60, "test").unwrap();
        assert_eq!(
            (again.len(), again.as_ptr()),
            (60, ptr),
            "the kept buffer, shortened"
        );
        give_back(again);
        let longer = take_for_overwrite(100, "test").unwrap();
        assert_eq!((longer.len(), longer.as_ptr()), (100, ptr));
        give_back(vec![0.0; MAX_KEPT_ELEMENTS + 1]);
        let fresh = take_for_overwrite(MAX_KEPT_ELEMENTS + 1, "test").unwrap();
        assert!(fresh.iter().all(|&v| v == 0.0), "a large buffer is not recycled");
    }
}
