//! Where a measurement came from: tool version, git commit, device, driver, meter, date.

/// `model name` from /proc/cpuinfo, else `cpu`.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "cpu".into())
}

/// Provenance shared by the rows of one sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub tool_version: String,
    pub git_commit: String,
    pub device: String,
    pub device_name: String,
    pub driver: String,
    pub meter: String,
}

impl Provenance {
    /// The provenance fields a plan fixes (its device), the others empty: for rows
    /// that describe a planned point rather than a measured one.
    pub fn planned(plan: &super::plan::Plan) -> Provenance {
        Provenance {
            tool_version: String::new(),
            git_commit: String::new(),
            device: plan.device.clone(),
            device_name: String::new(),
            driver: String::new(),
            meter: String::new(),
        }
    }
}

/// `git rev-parse --short HEAD` of the current folder, else `unknown`.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `YYYY-MM-DD` (UTC) of now.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    date_of(secs)
}

/// `YYYY-MM-DD` of a Unix time (civil-from-days).
pub fn date_of(secs: u64) -> String {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(951_782_400), "2000-02-29");
        assert_eq!(date_of(1_735_689_600), "2025-01-01");
    }
}
