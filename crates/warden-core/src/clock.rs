//! The one wall clock: milliseconds since the Unix epoch, for every record
//! that a person or another host reads (audit entries, evidence, latches).
//! Durations are measured with `Instant`, never with this.

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
