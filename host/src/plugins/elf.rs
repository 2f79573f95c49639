//! A look at an ELF file's headers before `dlopen` is allowed near it.
//!
//! The dynamic loader maps a library's segments without checking that the file holds them:
//! a truncated copy of a real plugin loads, and the host dies of SIGBUS the moment it
//! touches a page past the end of the file. So the segments are checked against the file's
//! size first, and a library built for another machine is named as such.

use std::io::Read as _;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;

fn machine_name(m: u16) -> &'static str {
    match m {
        3 => "x86",
        40 => "arm",
        62 => "x86_64",
        183 => "aarch64",
        243 => "riscv",
        21 => "powerpc64",
        22 => "s390x",
        _ => "another machine",
    }
}

fn host_machine() -> Option<u16> {
    match std::env::consts::ARCH {
        "x86_64" => Some(62),
        "aarch64" => Some(183),
        "x86" => Some(3),
        "arm" => Some(40),
        "riscv64" => Some(243),
        "powerpc64" => Some(21),
        "s390x" => Some(22),
        _ => None,
    }
}

/// Checks a 64-bit little-endian ELF file's program headers against its size and its
/// machine against the host's. Files that are not ELF at all are left for `dlopen` to
/// describe. Returns a one-line reason on failure.
/// Reads `file` by position, so its descriptor's offset is left where it was.
pub fn check(file: &std::fs::File) -> Result<(), String> {
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut f = crate::plugins::trust::PositionalReader { file, at: 0 };
    let mut head = [0u8; 64];
    if size < 64 || f.read_exact(&mut head).is_err() || head[..4] != *b"\x7fELF" {
        return Ok(());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    if head[4] != 2 || head[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let machine = u16_at(&head, 18);
    if let Some(host) = host_machine() {
        if machine != host {
            return Err(format!(
                "built for {} (ELF machine {machine}), this host is {}",
                machine_name(machine),
                std::env::consts::ARCH
            ));
        }
    }
    let phoff = u64_at(&head, 32);
    let phentsize = u16_at(&head, 54) as u64;
    let phnum = u16_at(&head, 56) as u64;
    let table_end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    if phentsize < 56 || table_end > size {
        return Err(format!(
            "truncated or corrupt ELF file: its program headers end at byte {table_end}, the file has {size}"
        ));
    }
    let mut table = vec![0u8; (table_end - phoff) as usize];
    let mut f = crate::plugins::trust::PositionalReader { file, at: phoff };
    f.read_exact(&mut table).map_err(|e| e.to_string())?;
    for i in 0..phnum as usize {
        let ph = &table[i * phentsize as usize..];
        let kind = u32_at(ph, 0);
        if kind != PT_LOAD && kind != PT_DYNAMIC {
            continue;
        }
        let end = u64_at(ph, 8).saturating_add(u64_at(ph, 32));
        if end > size {
            return Err(format!(
                "truncated ELF file: its segments need {end} bytes, the file has {size}"
            ));
        }
    }
    Ok(())
}
