//! Walks one TOML table with typed getters that record every problem instead of stopping at
//! the first, and reports every key it does not know, so a typo is never silently ignored.

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::duration::parse_duration;
use super::error::ConfigErrors;

pub struct Fields<'a> {
    pub file: &'a Path,
    prefix: String,
    table: &'a Table,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    pub fn new(
        file: &'a Path,
        prefix: impl Into<String>,
        table: &'a Table,
        known: &'static [&'static str],
    ) -> Self {
        Self {
            file,
            prefix: prefix.into(),
            table,
            known,
        }
    }

    /// The full key path of `key` in this table.
    pub fn path(&self, key: &str) -> String {
        join(&self.prefix, key)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        debug_assert!(
            self.known.contains(&key),
            "{key} missing from the known keys"
        );
        self.table.get(key)
    }

    fn typed<T>(
        &self,
        key: &str,
        errs: &mut ConfigErrors,
        want: &str,
        pick: impl Fn(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.get(key)?;
        let picked = pick(value);
        if picked.is_none() {
            errs.push(
                self.file,
                self.path(key),
                format!("expected {want}, found {}", value.type_str()),
            );
        }
        picked
    }

    pub fn str(&self, key: &str, errs: &mut ConfigErrors) -> Option<&'a str> {
        self.typed(key, errs, "a string", Value::as_str)
    }

    pub fn bool(&self, key: &str, errs: &mut ConfigErrors) -> Option<bool> {
        self.typed(key, errs, "true or false", Value::as_bool)
    }

    pub fn table(&self, key: &str, errs: &mut ConfigErrors) -> Option<&'a Table> {
        self.typed(key, errs, "a table", Value::as_table)
    }

    pub fn array(&self, key: &str, errs: &mut ConfigErrors) -> Option<&'a Vec<Value>> {
        self.typed(key, errs, "an array", Value::as_array)
    }

    /// An integer within `range`; out of range is an error naming the range.
    pub fn int(
        &self,
        key: &str,
        range: RangeInclusive<i64>,
        errs: &mut ConfigErrors,
    ) -> Option<i64> {
        let n = self.typed(key, errs, "an integer", Value::as_integer)?;
        if range.contains(&n) {
            Some(n)
        } else {
            errs.push(
                self.file,
                self.path(key),
                format!("{n} is out of range {}..={}", range.start(), range.end()),
            );
            None
        }
    }

    /// A duration string greater than zero, such as "250ms" or "2s".
    pub fn duration(&self, key: &str, errs: &mut ConfigErrors) -> Option<Duration> {
        let s = self.typed(key, errs, "a duration string such as \"2s\"", Value::as_str)?;
        match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                errs.push(self.file, self.path(key), "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(reason) => {
                errs.push(self.file, self.path(key), reason);
                None
            }
        }
    }

    /// A size such as "64KiB" or a number of bytes, within `range`.
    pub fn size(
        &self,
        key: &str,
        range: RangeInclusive<u64>,
        errs: &mut ConfigErrors,
    ) -> Option<u64> {
        let v = self.get(key)?;
        match super::limits::parse_size(v) {
            Some(n) if range.contains(&n) => Some(n),
            Some(n) => {
                errs.push(
                    self.file,
                    self.path(key),
                    format!(
                        "{n} bytes is out of range {}..={}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
            None => {
                errs.push(
                    self.file,
                    self.path(key),
                    "expected a size such as \"50MiB\", \"512KiB\", \"1GB\" or a number of bytes",
                );
                None
            }
        }
    }

    pub fn require(&self, key: &str, errs: &mut ConfigErrors) -> bool {
        let present = self.table.contains_key(key);
        if !present {
            errs.push(self.file, self.path(key), "required key is missing");
        }
        present
    }

    /// Reports every key that is not in `known`, with the closest known key as a hint.
    pub fn finish(self, errs: &mut ConfigErrors) {
        for key in self.table.keys() {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let reason = match closest(key, self.known) {
                Some(hint) => format!("unknown key (did you mean `{hint}`?)"),
                None => format!("unknown key (known keys: {})", self.known.join(", ")),
            };
            errs.push(self.file, self.path(key), reason);
        }
    }
}

pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The known key within edit distance 2 of `key`, if any.
fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(closest("blance", &["balance", "backends"]), Some("balance"));
        assert_eq!(closest("zzzzzz", &["balance"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn collects_type_range_and_unknown_key_errors() {
        let table: Table =
            toml::from_str("a = 1\nb = \"x\"\nc = 500\nd = \"0s\"\ntypo = 1").unwrap();
        let file = Path::new("f.toml");
        let f = Fields::new(file, "p", &table, &["a", "b", "c", "d"]);
        let mut errs = ConfigErrors::default();
        assert_eq!(f.str("a", &mut errs), None);
        assert_eq!(f.int("b", 0..=10, &mut errs), None);
        assert_eq!(f.int("c", 0..=10, &mut errs), None);
        assert_eq!(f.duration("d", &mut errs), None);
        f.finish(&mut errs);
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["p.a", "p.b", "p.c", "p.d", "p.typo"]);
        assert!(errs.0[2].reason.contains("out of range 0..=10"));
    }
}
