//! Handing a loaded component's resident code pages back to the operating system while keeping
//! the component itself.
//!
//! wasmtime maps a precompiled artifact privately from its file (`Component::deserialize_file`)
//! and makes it read-only once published. Its pages are then clean copies of the file, which
//! `madvise(MADV_DONTNEED)` drops from the process and the next access faults back in from the
//! page cache (or from disk, if the kernel reclaimed it meanwhile): dropping them loses nothing.
//! A page the loader wrote before publishing (a relocation) is the process's own copy, which
//! dropping would lose, so each page is checked in `/proc/self/pagemap` first and only pages
//! still backed by the file (or not resident at all) are dropped.

use std::ops::Range;

/// Bytes per page.
const PAGE: usize = 4096;
/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const FILE_OR_SHARED: u64 = 1 << 61;

/// Drops the resident pages of `image` (a component's mapped artifact, from
/// `Component::image_range`) that are still clean copies of its file, including the pages
/// `image` only partly covers (a file's last page is mapped whole; whatever else shares a page
/// is protected by the same check). Returns how many bytes were resident and dropped.
/// Blocking (it reads `/proc/self/pagemap`); does nothing outside Linux.
pub fn release(image: Range<*const u8>) -> std::io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        release_linux(image.start as usize, image.end as usize)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = image;
        Ok(0)
    }
}

/// The `/proc/self/pagemap` entries of `count` pages from page number `first`.
#[cfg(target_os = "linux")]
fn pagemap_entries(first: usize, count: usize) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; count * 8];
    std::fs::File::open("/proc/self/pagemap")?.read_exact_at(&mut bytes, (first * 8) as u64)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|entry| u64::from_ne_bytes(entry.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(target_os = "linux")]
fn release_linux(start: usize, end: usize) -> std::io::Result<usize> {
    let first = start / PAGE;
    let last = end.div_ceil(PAGE);
    if last <= first {
        return Ok(0);
    }
    let entries = pagemap_entries(first, last - first)?;
    let entry = |page: usize| entries[page - first];
    // A page may go when it is the file's (or absent: dropping it does nothing); a private
    // copy, resident or swapped out, must stay.
    let droppable = |bits: u64| {
        if bits & PRESENT != 0 {
            bits & FILE_OR_SHARED != 0
        } else {
            bits & SWAPPED == 0
        }
    };
    let mut released = 0;
    let mut page = first;
    while page < last {
        if !droppable(entry(page)) {
            page += 1;
            continue;
        }
        let run_start = page;
        while page < last && droppable(entry(page)) {
            if entry(page) & PRESENT != 0 {
                released += PAGE;
            }
            page += 1;
        }
        // SAFETY: mapped pages (each holds a byte of `image`) that hold no private copy
        // (checked above; the artifact's mapping is read-only, so none appears meanwhile):
        // what is dropped is refetched unchanged from the file or shared memory behind it.
        let result = unsafe {
            libc::madvise(
                (run_start * PAGE) as *mut libc::c_void,
                (page - run_start) * PAGE,
                libc::MADV_DONTNEED,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(released)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Whether the page at `addr` is mapped into this process now.
    fn resident(addr: usize) -> bool {
        pagemap_entries(addr / PAGE, 1).unwrap()[0] & PRESENT != 0
    }

    #[test]
    fn clean_pages_go_and_come_back_unchanged_while_written_ones_stay() {
        const PAGES: usize = 8;
        let mut file = tempfile::tempfile().unwrap();
        let contents: Vec<u8> = (0..PAGES * PAGE).map(|i| (i / PAGE + 1) as u8).collect();
        std::io::Write::write_all(&mut file, &contents).unwrap();
        // Mapped as wasmtime maps an artifact: private, writable until published, then read-only.
        // SAFETY: a fresh mapping of a file this test owns, unmapped at the end.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGES * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let memory = base as *mut u8;
        // SAFETY: page 2 of the mapping above: a private copy, like a relocation.
        unsafe { std::ptr::write_bytes(memory.add(2 * PAGE), 0xEE, PAGE) };
        // SAFETY: the whole mapping above.
        assert_eq!(
            unsafe { libc::mprotect(base, PAGES * PAGE, libc::PROT_READ) },
            0
        );
        let read = |page: usize| {
            // SAFETY: inside the mapping above, which is readable.
            unsafe { std::slice::from_raw_parts(memory.add(page * PAGE), PAGE).to_vec() }
        };
        for page in 0..PAGES {
            read(page);
        }
        let start = base as usize;
        assert!((0..PAGES).all(|page| resident(start + page * PAGE)));

        let released = release(memory as *const u8..unsafe { memory.add(PAGES * PAGE) }).unwrap();

        assert_eq!(
            released,
            (PAGES - 1) * PAGE,
            "every clean page, not the written one"
        );
        for page in 0..PAGES {
            assert_eq!(resident(start + page * PAGE), page == 2, "page {page}");
        }
        assert_eq!(read(2), vec![0xEE; PAGE], "the private copy is kept");
        for page in (0..PAGES).filter(|&page| page != 2) {
            assert_eq!(
                read(page),
                vec![page as u8 + 1; PAGE],
                "page {page} comes back"
            );
        }
        // SAFETY: the mapping above, no longer used.
        assert_eq!(unsafe { libc::munmap(base, PAGES * PAGE) }, 0);
    }

    #[test]
    fn pages_the_range_covers_in_part_go_too_but_no_others() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; 3 * PAGE]).unwrap();
        // SAFETY: as above.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * PAGE,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        } as usize;
        assert_ne!(base as *mut libc::c_void, libc::MAP_FAILED);
        for page in 0..3 {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::read_volatile((base + page * PAGE) as *const u8) };
        }
        // From the middle of page 0 to the middle of page 1: pages 0 and 1, not page 2.
        let range = (base + PAGE / 2) as *const u8..(base + PAGE + PAGE / 2) as *const u8;
        assert_eq!(release(range).unwrap(), 2 * PAGE);
        assert!(!resident(base) && !resident(base + PAGE) && resident(base + 2 * PAGE));
        // An empty range: nothing.
        let empty = (base + 2 * PAGE) as *const u8..(base + 2 * PAGE) as *const u8;
        assert_eq!(release(empty).unwrap(), 0);
        assert!(resident(base + 2 * PAGE));
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::munmap(base as *mut libc::c_void, 3 * PAGE) },
            0
        );
    }
}
