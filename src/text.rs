//! Numbers, addresses, dates and JSON strings written as text straight into a buffer, without
//! the formatting machinery (`write!` costs hundreds of instructions per value on paths that
//! run per request: forwarding headers and access log lines). Pure.

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) -> days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An IPv4 address as dotted decimal (as `Display` writes it): the bytes and their length.
pub fn ipv4(v4: Ipv4Addr) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = match octet {
            100.. => 0,
            10.. => 1,
            _ => 2,
        };
        for d in &digits[skip..] {
            buf[len] = b'0' + d;
            len += 1;
        }
    }
    (buf, len)
}

/// `t` in RFC 3339, UTC, with milliseconds: `2023-11-14T22:13:20.123Z` (times before 1970
/// are written as 1970-01-01T00:00:00.000Z).
pub fn push_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let two = |out: &mut Vec<u8>, n: u64, sep: u8| {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8, sep]);
    };
    let y = y.clamp(0, 9999) as u64;
    let year = [y / 1000, y / 100 % 10, y / 10 % 10, y % 10].map(|n| b'0' + n as u8);
    out.extend_from_slice(&year);
    out.push(b'-');
    two(out, u64::from(m), b'-');
    two(out, u64::from(d), b'T');
    two(out, of_day / 3600, b':');
    two(out, of_day / 60 % 60, b':');
    two(out, of_day % 60, b'.');
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// A JSON string: quotes, backslashes and control characters escaped as serde_json does.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every host, path and id needs no escape: one pass to see, one copy.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // `ipv4` is held to `Display` by the forwarding headers' tests.
    #[test]
    fn times_as_humantime_writes_them() {
        for ms in [
            0,
            1_700_000_000_123,
            951_782_400_999,
            4_102_444_799_001,
            86_399_999,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let mut out = Vec::new();
            push_rfc3339_millis(&mut out, t);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_millis(t).to_string()
            );
        }
    }
}
