//! `[limits]` tables, in tenant files and (as defaults) in the main file.

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::{LimitsConfig, QuotaConfig, QuotaWindow, RateConfig, Scope};

const LIMITS_KEYS: &[&str] = &[
    "rate",
    "per_client_ip",
    "quota",
    "max_body",
    "max_concurrent",
    "scope",
];
const RATE_KEYS: &[&str] = &["requests", "per", "burst"];
const QUOTA_KEYS: &[&str] = &["requests", "per"];
/// A rate period outside these bounds is a typo (or no limit at all).
const MIN_PER: Duration = Duration::from_millis(1);
const MAX_PER: Duration = Duration::from_secs(366 * 86_400);

pub fn parse_limits(file: &Path, key: &str, t: &Table, errs: &mut ConfigErrors) -> LimitsConfig {
    let f = Fields::new(file, key, t, LIMITS_KEYS);
    let mut l = LimitsConfig::default();
    for (name, slot) in [
        ("rate", &mut l.rate),
        ("per_client_ip", &mut l.per_client_ip),
    ] {
        if let Some(t) = f.table(name, errs) {
            *slot = parse_rate(file, &f.path(name), t, errs);
        }
    }
    if let Some(t) = f.table("quota", errs) {
        let q = Fields::new(file, f.path("quota"), t, QUOTA_KEYS);
        q.require("requests", errs);
        q.require("per", errs);
        let requests = q.int("requests", 1..=i64::MAX, errs);
        let per = match q.str("per", errs) {
            Some("day") => Some(QuotaWindow::Day),
            Some("month") => Some(QuotaWindow::Month),
            Some(other) => {
                errs.push(
                    file,
                    q.path("per"),
                    format!("`{other}` is not one of day, month"),
                );
                None
            }
            None => None,
        };
        q.finish(errs);
        if let (Some(requests), Some(per)) = (requests, per) {
            l.quota = Some(QuotaConfig {
                requests: requests as u64,
                per,
            });
        }
    }
    if let Some(n) = f.size("max_body", 1..=u64::MAX, errs) {
        l.max_body = Some(n);
    }
    if let Some(n) = f.int("max_concurrent", 1..=1_000_000, errs) {
        l.max_concurrent = Some(n as u32);
    }
    l.scope = match f.str("scope", errs) {
        Some("cluster") => Some(Scope::Cluster),
        Some("local") => Some(Scope::Local),
        Some(other) => {
            errs.push(
                file,
                f.path("scope"),
                format!("`{other}` is not one of cluster, local"),
            );
            None
        }
        None => None,
    };
    f.finish(errs);
    l
}

fn parse_rate(file: &Path, key: &str, t: &Table, errs: &mut ConfigErrors) -> Option<RateConfig> {
    let f = Fields::new(file, key, t, RATE_KEYS);
    f.require("requests", errs);
    let requests = f.int("requests", 1..=1_000_000_000, errs);
    let per = match f.get("per") {
        None => Some(Duration::from_secs(1)),
        Some(_) => f.duration("per", errs).filter(|per| {
            let sane = (MIN_PER..=MAX_PER).contains(per);
            if !sane {
                errs.push(file, f.path("per"), "must be between 1ms and 366d");
            }
            sane
        }),
    };
    let burst = f.int("burst", 1..=1_000_000_000, errs);
    let burst_ok = burst.is_some() || f.get("burst").is_none();
    f.finish(errs);
    let (requests, per) = (requests? as u64, per?);
    burst_ok.then(|| RateConfig {
        requests,
        per,
        // Default burst: one period's worth of requests.
        burst: burst.map_or(requests, |b| b as u64),
    })
}

/// "50MiB", "512KiB", "1GB", "100kB", or an integer number of bytes.
pub fn parse_size(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_integer() {
        return u64::try_from(n).ok().filter(|n| *n > 0);
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (LimitsConfig, ConfigErrors) {
        let mut errs = ConfigErrors::default();
        let t: Table = toml::from_str(text).unwrap();
        (
            parse_limits(Path::new("t.toml"), "limits", &t, &mut errs),
            errs,
        )
    }

    #[test]
    fn every_key() {
        let (l, errs) = parse(
            "rate = { requests = 500, per = \"1s\", burst = 1000 }\n\
             per_client_ip = { requests = 20 }\nquota = { requests = 5_000_000, per = \"month\" }\n\
             max_body = \"50MiB\"\nmax_concurrent = 200\n",
        );
        assert!(errs.is_empty(), "{errs}");
        assert_eq!(l.rate.unwrap().burst, 1000);
        assert_eq!(l.per_client_ip.unwrap().burst, 20);
        assert_eq!(l.per_client_ip.unwrap().per, Duration::from_secs(1));
        assert_eq!(l.quota.unwrap().per, QuotaWindow::Month);
        assert_eq!(l.max_body, Some(50 << 20));
        assert_eq!(l.max_concurrent, Some(200));
    }

    #[test]
    fn mistakes_name_their_key() {
        let (_, errs) = parse(
            "rate = { per = \"1s\" }\nper_client_ip = { requests = 1, per = \"400d\" }\nquota = { requests = 1, per = \"week\" }\nmax_body = \"50 parsecs\"\n\
             max_concurrent = 0\nburst = 3\n",
        );
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "limits.rate.requests",
                "limits.per_client_ip.per",
                "limits.quota.per",
                "limits.max_body",
                "limits.max_concurrent",
                "limits.burst"
            ]
        );
    }
}
