//! Every cgroupfs read and write goes through these two helpers, whose errors
//! name the path and the data.

use std::path::Path;

use super::{CgroupError, Result};

pub fn write(path: &Path, data: &str) -> Result<()> {
    std::fs::write(path, data).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        data: data.to_owned(),
        source,
    })
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}
