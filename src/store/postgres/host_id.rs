//! This host's name in a fleet, kept in its data dir so that a restarted
//! host is the same host (its notes, totals and heartbeat go on).

use crate::store::StoreError;
use std::path::Path;

/// The name kept in `data_dir`, made (hostname and a random suffix) and
/// kept there on the first start.
pub fn load_or_make(data_dir: &Path) -> Result<String, StoreError> {
    let file = data_dir.join("host-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let id = format!(
        "{}-{:08x}",
        if name.is_empty() { "kmsd" } else { &name },
        rand::random::<u32>()
    );
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&file, format!("{id}\n")))
        .map_err(|e| {
            StoreError::unavailable(
                file.display().to_string(),
                format!("cannot keep this host's fleet name: {e}"),
            )
        })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_keeps_its_name_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::load_or_make(dir.path()).unwrap();
        assert_eq!(super::load_or_make(dir.path()).unwrap(), first);
        assert!(first.len() > 9);
    }
}
