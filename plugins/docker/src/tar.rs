//! A tar archive holding one file (and its parent directories), as the archive API takes
//! it. Built with the `tar` crate, whose GNU long-name entries carry paths of any length (a
//! plain ustar header holds 100 bytes of name).

/// An archive with `content` at `path` (absolute; stored relative to `/`) with `mode`.
pub fn single_file(path: &str, mode: u32, content: &[u8]) -> std::io::Result<Vec<u8>> {
    let rel = path.trim_start_matches('/');
    let mut builder = tar::Builder::new(Vec::with_capacity(content.len() + 4096));
    let parts: Vec<&str> = rel.split('/').collect();
    for i in 1..parts.len() {
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_mtime(0);
        builder.append_data(
            &mut dir,
            format!("{}/", parts[..i].join("/")),
            std::io::empty(),
        )?;
    }
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(mode);
    file.set_size(content.len() as u64);
    file.set_mtime(0);
    builder.append_data(&mut file, rel, content)?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mode = e.header().mode().unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, mode, data)
            })
            .collect()
    }

    #[test]
    fn the_archive_is_one_file_with_its_directories() {
        let tar = single_file("/home/travis/build.sh", 0o755, b"echo hi\n").unwrap();
        let got = entries(&tar);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, "home/");
        assert_eq!(got[1].0, "home/travis/");
        assert_eq!(
            got[2],
            ("home/travis/build.sh".into(), 0o755, b"echo hi\n".to_vec())
        );
    }

    #[test]
    fn a_path_of_150_bytes_arrives_whole() {
        let dir = "d".repeat(60);
        let path = format!("/{dir}/{dir}/{}.sh", "s".repeat(25));
        assert!(path.len() >= 150, "{}", path.len());
        let tar = single_file(&path, 0o755, b"x").unwrap();
        let got = entries(&tar);
        assert_eq!(got.last().unwrap().0, path.trim_start_matches('/'));
        assert_eq!(got.last().unwrap().2, b"x");
    }
}
