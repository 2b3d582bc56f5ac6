//! Giving freed memory back to the kernel.
//!
//! A start from the whole log frees about as much as it keeps: the replay's hashed maps of
//! every name and decided request are folded into the history's vectors, and the reader's
//! buffers go. glibc keeps freed small blocks in its heaps, where they stay resident until
//! reused; a long-running service would never reuse most of them. One trim once the state is
//! built (and after each snapshot, whose copy of the state is dropped) hands those pages back.

/// Returns the free pages of every malloc arena to the kernel (glibc's `malloc_trim`); a no-op
/// on other C libraries.
pub(crate) fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only walks glibc's own free lists, under the
    // arenas' locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
