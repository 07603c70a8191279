//! v1 blkio controller: bytes written, from the throttle statistics (kept
//! whatever the I/O scheduler, unlike `blkio.io_service_bytes`).

use std::path::Path;

use crate::cgroup::{fs, Result};

/// Prefers the `_recursive` file, which counts descendants too.
pub fn write_bytes(dir: &Path) -> Result<Option<u64>> {
    for name in [
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.throttle.io_service_bytes",
    ] {
        if let Some(text) = fs::read_opt(&dir.join(name))? {
            return Ok(Some(parse_write(&text)));
        }
    }
    Ok(None)
}

/// Sums the `MAJ:MIN Write N` lines (the `Total` lines add reads).
pub fn parse_write(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [_, "Write", n] => n.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_write_lines_only() {
        let text = "8:0 Read 100\n8:0 Write 4096\n8:0 Sync 0\n8:0 Async 4196\n\
                    8:0 Discard 0\n8:0 Total 4196\n8:16 Write 4\nTotal 4200\n";
        assert_eq!(super::parse_write(text), 4100);
        assert_eq!(super::parse_write("Total 0\n"), 0);
    }
}
