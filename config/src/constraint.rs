//! Label constraints of a lease request: `key=value`, `key!=value`,
//! `key in (a,b)`, `key` (exists), `!key` (does not exist), and version
//! comparisons `key>=1.2`, `key<2`.
//!
//! Versions compare component by component on `.`; numeric components
//! compare as numbers, others as text (`1.10 > 1.9`, `12.2 >= 12.2`).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// What a label must satisfy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Equal to the value.
    Eq { value: String },
    /// Absent, or different from the value.
    Ne { value: String },
    /// One of the values.
    In { values: Vec<String> },
    /// Present with any value.
    Exists,
    /// Absent.
    NotExists,
    /// A version at least this.
    VersionGe { value: String },
    /// A version below this.
    VersionLt { value: String },
}

/// One constraint on one label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// The label key.
    pub key: String,
    /// What it must satisfy.
    pub op: Op,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        match &self.op {
            Op::Eq { value } => write!(f, "{k}={value}"),
            Op::Ne { value } => write!(f, "{k}!={value}"),
            Op::In { values } => write!(f, "{k} in ({})", values.join(",")),
            Op::Exists => write!(f, "{k}"),
            Op::NotExists => write!(f, "!{k}"),
            Op::VersionGe { value } => write!(f, "{k}>={value}"),
            Op::VersionLt { value } => write!(f, "{k}<{value}"),
        }
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Constraint {
    /// Equality, the common case.
    pub fn eq(key: &str, value: &str) -> Constraint {
        Constraint {
            key: key.to_string(),
            op: Op::Eq {
                value: value.to_string(),
            },
        }
    }

    /// Parses one constraint expression; the error says what was expected.
    pub fn parse(s: &str) -> Result<Constraint, String> {
        let t = s.trim();
        let bad = |why: &str| {
            Err(format!(
                "constraint `{s}`: {why}; expected key=value, key!=value, key in (a,b), key, !key, key>=1.2 or key<2"
            ))
        };
        let key_ok = |k: &str| -> Result<String, String> {
            let k = k.trim();
            if valid_key(k) {
                Ok(k.to_string())
            } else {
                Err(format!(
                    "constraint `{s}`: `{k}` is not a label key (letters, digits, - _ . /)"
                ))
            }
        };
        if let Some((k, rest)) = t.split_once(" in ") {
            let rest = rest.trim();
            let Some(inner) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
                return bad("the values of `in` go in parentheses");
            };
            let values: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if values.is_empty() {
                return bad("`in` needs at least one value");
            }
            return Ok(Constraint {
                key: key_ok(k)?,
                op: Op::In { values },
            });
        }
        for (sep, make) in [
            (">=", (|v| Op::VersionGe { value: v }) as fn(String) -> Op),
            ("!=", |v| Op::Ne { value: v }),
            ("<", |v| Op::VersionLt { value: v }),
            ("=", |v| Op::Eq { value: v }),
        ] {
            if let Some((k, v)) = t.split_once(sep) {
                let v = v.trim();
                if v.is_empty() {
                    return bad("the value is empty");
                }
                return Ok(Constraint {
                    key: key_ok(k)?,
                    op: make(v.to_string()),
                });
            }
        }
        if let Some(k) = t.strip_prefix('!') {
            return Ok(Constraint {
                key: key_ok(k)?,
                op: Op::NotExists,
            });
        }
        if t.is_empty() {
            return bad("it is empty");
        }
        Ok(Constraint {
            key: key_ok(t)?,
            op: Op::Exists,
        })
    }

    /// Whether `labels` satisfy the constraint.
    pub fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        let have = labels.get(&self.key);
        match (&self.op, have) {
            (Op::Eq { value }, Some(v)) => v == value,
            (Op::Eq { .. }, None) => false,
            (Op::Ne { value }, Some(v)) => v != value,
            (Op::Ne { .. }, None) => true,
            (Op::In { values }, Some(v)) => values.contains(v),
            (Op::In { .. }, None) => false,
            (Op::Exists, h) => h.is_some(),
            (Op::NotExists, h) => h.is_none(),
            (Op::VersionGe { value }, Some(v)) => version_cmp(v, value) != Ordering::Less,
            (Op::VersionLt { value }, Some(v)) => version_cmp(v, value) == Ordering::Less,
            (Op::VersionGe { .. } | Op::VersionLt { .. }, None) => false,
        }
    }
}

/// Compares versions component by component.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (Some(_), None) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(p), Ok(q)) => p.cmp(&q),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn holds_table() {
        let l = labels(&[
            ("gpu", "a100"),
            ("zone", "a"),
            ("cuda", "12.2"),
            ("kernel", "6.10"),
        ]);
        let cases: &[(&str, bool)] = &[
            ("gpu=a100", true),
            ("gpu=t4", false),
            ("gpu!=t4", true),
            ("gpu!=a100", false),
            ("arch!=arm", true),
            ("zone in (a,b)", true),
            ("zone in (b, c)", false),
            ("gpu", true),
            ("arch", false),
            ("!arch", true),
            ("!gpu", false),
            ("cuda>=12.0", true),
            ("cuda>=12.2", true),
            ("cuda>=12.10", false),
            ("kernel>=6.9", true),
            ("kernel<6.9", false),
            ("cuda<13", true),
            ("missing>=1", false),
        ];
        for (expr, want) in cases {
            let c = Constraint::parse(expr).unwrap();
            assert_eq!(c.holds(&l), *want, "{expr}");
            // Display round-trips through parse.
            assert_eq!(Constraint::parse(&c.to_string()).unwrap(), c, "{expr}");
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "it is empty"),
            ("gpu=", "the value is empty"),
            ("zone in a,b", "the values of `in` go in parentheses"),
            ("zone in ()", "`in` needs at least one value"),
            ("my key=1", "`my key` is not a label key"),
        ];
        for (expr, want) in cases {
            let e = Constraint::parse(expr).unwrap_err();
            assert!(e.contains(want), "{expr}: {e}");
        }
    }
}
