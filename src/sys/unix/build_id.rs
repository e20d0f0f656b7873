//! The identity of the running executable.
//!
//! The GNU build-id note (`NT_GNU_BUILD_ID`, which Debian's and most distributions' linkers
//! emit by default) is read from the program headers of the main executable as mapped in
//! memory, so it costs no file I/O. Without such a note, the identity is a hash of the size and
//! modification time of `/proc/self/exe`.

use std::sync::OnceLock;

const NT_GNU_BUILD_ID: u32 = 3;

/// A 64-bit identity of the running executable (cached after the first call).
pub(crate) fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let id = gnu_build_id().unwrap_or_else(file_identity);
        // A test hook: pretend to be another build (see tests/process_parent_death.rs).
        match std::env::var_os("MULTIPROCESS_BUILD_ID_SALT") {
            Some(salt) => fnv1a(salt.as_encoded_bytes(), id),
            None => id,
        }
    })
}

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn file_identity() -> u64 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/exe") {
        Ok(m) => {
            let mut h = fnv1a(&m.len().to_le_bytes(), FNV_OFFSET);
            h = fnv1a(&m.mtime().to_le_bytes(), h);
            fnv1a(&m.mtime_nsec().to_le_bytes(), h)
        }
        Err(_) => 0,
    }
}

fn gnu_build_id() -> Option<u64> {
    struct Found(Option<u64>);
    unsafe extern "C" fn callback(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Found` passed below and outlives the iteration; `info` is
        // valid for the duration of the callback, as dl_iterate_phdr(3) guarantees.
        let (found, info) = unsafe { (&mut *(data as *mut Found), &*info) };
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            // SAFETY: a PT_NOTE segment of a loaded object is mapped readable at
            // `dlpi_addr + p_vaddr` for `p_memsz` bytes.
            let notes =
                unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
            if let Some(id) = parse_notes(notes) {
                found.0 = Some(id);
                return 1;
            }
        }
        // Only the first object (the main executable) is of interest.
        1
    }
    let mut found = Found(None);
    // SAFETY: the callback upholds dl_iterate_phdr's contract and only reads mapped memory.
    unsafe {
        libc::dl_iterate_phdr(
            Some(callback),
            &mut found as *mut Found as *mut libc::c_void,
        )
    };
    found.0
}

/// Finds the GNU build-id in a sequence of ELF notes and folds it to 64 bits.
fn parse_notes(mut notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let word = |i: usize| u32::from_ne_bytes(notes[i..i + 4].try_into().unwrap()) as usize;
        let (namesz, descsz, kind) = (word(0), word(4), word(8) as u32);
        let name_end = 12 + align4(namesz);
        let desc_end = name_end.checked_add(align4(descsz))?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" {
            return Some(fnv1a(&notes[name_end..name_end + descsz], FNV_OFFSET));
        }
        notes = &notes[desc_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_id_is_stable_and_nonzero() {
        let a = super::build_id();
        assert_ne!(a, 0);
        assert_eq!(a, super::build_id());
    }
}
