//! The offline harness behind `tollgate test` (being written).

use std::path::Path;

/// Runs `tollgate test`.
pub async fn run_command(_plugin: &Path, _scenario: &Path) -> anyhow::Result<bool> {
    anyhow::bail!("the offline harness is not written yet")
}
