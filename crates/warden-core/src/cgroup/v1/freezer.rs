//! v1 freezer: `freezer.state` is FROZEN, FREEZING or THAWED. A parent's
//! state covers its descendants (Documentation/admin-guide/cgroup-v1/freezer-subsystem.rst).
//! A SIGKILL to a FROZEN task stays pending until THAWED.

use std::path::Path;

use crate::cgroup::{fs, Result};

pub fn freeze(dir: &Path) -> Result<()> {
    fs::write(&dir.join("freezer.state"), "FROZEN")
}

pub fn thaw(dir: &Path) -> Result<()> {
    fs::write(&dir.join("freezer.state"), "THAWED")
}

/// FREEZING (some task not stopped yet) is not frozen.
pub fn is_frozen(dir: &Path) -> Result<bool> {
    Ok(fs::read(&dir.join("freezer.state"))?.trim() == "FROZEN")
}
