//! Giving freed memory back to the kernel.
//!
//! A start from the whole log frees about as much as it keeps: the replay's hashed maps of
//! every name and decided request are folded into the history's vectors, and the reader's
//! buffers go. glibc keeps freed small blocks in its heaps, where they stay resident until
//! reused; a long-running service would never reuse most of them. One trim once the state is
//! built (and after each snapshot, whose copy of the state is dropped) hands those pages back;
//! fixed thresholds for large blocks (`fix_thresholds`, at start) keep a thread's arena from
//! holding on to the big buffers it freed.

/// Fixes glibc's thresholds for large blocks. By default they rise with the largest block freed
/// (up to 32 MB for `mmap`, 64 MB for trimming): after a replay has freed its hashed maps,
/// the snapshot thread's encoding buffers (tens of MB) come from its own arena, whose free top
/// is then kept resident and out of `malloc_trim`'s reach (it trims the main arena's top
/// only). Fixed, a block of 4 MB or more is mapped on its own and unmapped when freed, and an
/// arena's free top above 8 MB is given back; the hot paths' buffers are far smaller.
pub(crate) fn fix_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets glibc's parameters, under its own lock; it takes no pointer.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

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
