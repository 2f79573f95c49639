//! A tar archive holding one file (and its parent directories), as the archive API takes
//! it: ustar headers, 512-byte blocks, two zero blocks at the end.

fn header(name: &str, mode: u32, size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = name.as_bytes();
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}", width = len - 1);
        h[at..at + len - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0); // uid
    octal(&mut h, 116, 8, 0); // gid
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0); // mtime
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// An archive with `content` at `path` (absolute; stored relative to `/`) with `mode`.
/// Paths longer than 100 bytes are refused by the caller's config check (none are that long).
pub fn single_file(path: &str, mode: u32, content: &[u8]) -> Vec<u8> {
    let rel = path.trim_start_matches('/');
    let mut out = Vec::with_capacity(content.len() + 2048);
    let parts: Vec<&str> = rel.split('/').collect();
    for i in 1..parts.len() {
        let dir = format!("{}/", parts[..i].join("/"));
        out.extend_from_slice(&header(&dir, 0o755, 0, b'5'));
    }
    out.extend_from_slice(&header(rel, mode, content.len() as u64, b'0'));
    out.extend_from_slice(content);
    let pad = (512 - content.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad + 1024));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_one_file_with_its_directories_and_valid_checksums() {
        let tar = single_file("/home/travis/build.sh", 0o755, b"echo hi\n");
        assert_eq!(tar.len() % 512, 0);
        // home/, home/travis/, the file header, one data block, two zero blocks.
        assert_eq!(tar.len(), 512 * 6);
        assert_eq!(&tar[..5], b"home/");
        assert_eq!(&tar[1024..1045], b"home/travis/build.sh\0");
        assert_eq!(&tar[1024 + 100..1024 + 107], b"0000755");
        assert_eq!(&tar[1536..1544], b"echo hi\n");
        for block in [0, 512, 1024] {
            let h = &tar[block..block + 512];
            let stored =
                u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
            let sum: u32 = h
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u32::from(*b)
                    }
                })
                .sum();
            assert_eq!(stored, sum);
        }
    }
}
