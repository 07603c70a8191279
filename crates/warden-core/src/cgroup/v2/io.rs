//! v2 io controller: bytes written, from `io.stat`.

use std::path::Path;

use crate::cgroup::{fs, Result};

/// Sum of `wbytes=` over every device line of `io.stat`.
pub fn write_bytes(dir: &Path) -> Result<Option<u64>> {
    Ok(fs::read_opt(&dir.join("io.stat"))?.map(|text| parse_wbytes(&text)))
}

/// `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` per device.
pub fn parse_wbytes(text: &str) -> u64 {
    text.split_whitespace()
        .filter_map(|field| field.strip_prefix("wbytes="))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_device() {
        let text = "8:0 rbytes=10 wbytes=4096 rios=1 wios=1 dbytes=0 dios=0\n\
                    253:1 rbytes=0 wbytes=100 rios=0 wios=2 dbytes=0 dios=0\n";
        assert_eq!(super::parse_wbytes(text), 4196);
        assert_eq!(super::parse_wbytes(""), 0);
    }
}
