//! A TOML reader that keeps spans, so every diagnostic carries a line, and
//! that keeps going after an error, so a user sees every problem at once.
//!
//! A [`Fields`] wraps one table; each getter marks its key as known and
//! records a diagnostic when the value has the wrong shape. [`Fields::finish`]
//! reports keys nobody asked for (typos) with the list of known ones.

use crate::units;
use crate::{Diagnostic, Diagnostics};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use toml_edit::{Document, Item, TableLike, Value};

/// One file being read: its name, text and the diagnostics so far.
pub struct Source<'a> {
    file: &'a str,
    src: &'a str,
    diags: RefCell<Vec<Diagnostic>>,
}

impl<'a> Source<'a> {
    /// A reader for `src`, called `file` in messages.
    pub fn new(file: &'a str, src: &'a str) -> Source<'a> {
        Source {
            file,
            src,
            diags: RefCell::new(Vec::new()),
        }
    }

    /// 1-based line of a byte offset.
    fn line(&self, span: Option<Range<usize>>) -> usize {
        match span {
            Some(r) => {
                self.src[..r.start.min(self.src.len())]
                    .matches('\n')
                    .count()
                    + 1
            }
            None => 0,
        }
    }

    /// Records a diagnostic.
    pub fn error(&self, span: Option<Range<usize>>, field: &str, message: impl Into<String>) {
        let d = Diagnostic {
            file: self.file.to_string(),
            line: self.line(span),
            field: field.to_string(),
            message: message.into(),
        };
        self.diags.borrow_mut().push(d);
    }

    /// Parses the TOML syntax; a syntax error is the only diagnostic then.
    pub fn parse(&self) -> Result<Document<&'a str>, Diagnostics> {
        Document::parse(self.src).map_err(|e| {
            let msg = e.message().trim().to_string();
            Diagnostics(vec![Diagnostic {
                file: self.file.to_string(),
                line: self.line(e.span()),
                field: String::new(),
                message: format!("invalid TOML: {msg}"),
            }])
        })
    }

    /// The value when there were no diagnostics, else all of them in line order.
    pub fn result<T>(&self, value: Option<T>) -> Result<T, Diagnostics> {
        let mut d = self.diags.borrow().clone();
        d.sort_by_key(|x| x.line);
        match value {
            Some(v) if d.is_empty() => Ok(v),
            _ if d.is_empty() => Err(Diagnostics(vec![Diagnostic {
                file: self.file.to_string(),
                line: 0,
                field: String::new(),
                message: "invalid config".into(),
            }])),
            _ => Err(Diagnostics(d)),
        }
    }
}

/// One table of a config, read field by field.
pub struct Fields<'c, 'a> {
    ctx: &'c Source<'a>,
    table: &'a dyn TableLike,
    prefix: String,
    seen: RefCell<Vec<String>>,
}

fn shown(v: &Value) -> String {
    v.to_string().trim().to_string()
}

impl<'c, 'a> Fields<'c, 'a> {
    /// The document's top-level table.
    pub fn root(ctx: &'c Source<'a>, table: &'a dyn TableLike) -> Fields<'c, 'a> {
        Fields {
            ctx,
            table,
            prefix: String::new(),
            seen: RefCell::new(Vec::new()),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Item> {
        self.seen.borrow_mut().push(key.to_string());
        self.table.get(key)
    }

    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let (k, item) = self.table.get_key_value(key)?;
        item.span().or_else(|| k.span())
    }

    /// Whether the table has `key` at all.
    pub fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }

    /// Records a diagnostic at `key`'s line.
    pub fn error_at(&self, key: &str, message: impl Into<String>) {
        self.ctx.error(self.span_of(key), &self.path(key), message);
    }

    /// Records a diagnostic for a missing key, at the table's line.
    pub fn missing(&self, key: &str, what: &str) {
        self.ctx
            .error(None, &self.path(key), format!("missing; expected {what}"));
    }

    fn value(&self, key: &str) -> Option<&'a Value> {
        match self.get(key)? {
            Item::Value(v) => Some(v),
            Item::None => None,
            _ => {
                self.error_at(key, "expected a value, got a table");
                None
            }
        }
    }

    /// A name of a [`named!`](crate::named) enum, like `amp = "service"`;
    /// `None` when absent or not one of its names (then a diagnostic lists
    /// the names it has).
    pub fn named<T>(&self, key: &str) -> Option<T>
    where
        T: std::str::FromStr<Err = crate::named::UnknownName>,
    {
        match self.str(key)?.parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error_at(key, e.in_field());
                None
            }
        }
    }

    /// A string.
    pub fn str(&self, key: &str) -> Option<String> {
        let v = self.value(key)?;
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error_at(
                    key,
                    format!("expected a string in quotes, got {}", shown(v)),
                );
                None
            }
        }
    }

    /// A required string.
    pub fn req_str(&self, key: &str, what: &str) -> Option<String> {
        let s = self.str(key);
        if s.is_none() && self.table.get(key).is_none() {
            self.missing(key, what);
        }
        s
    }

    /// A non-negative integer.
    pub fn u64(&self, key: &str) -> Option<u64> {
        let v = self.value(key)?;
        match v.as_integer() {
            Some(i) if i >= 0 => Some(i as u64),
            _ => {
                self.error_at(
                    key,
                    format!("expected a whole number >= 0, got {}", shown(v)),
                );
                None
            }
        }
    }

    /// A whole number (may be negative).
    pub fn i64(&self, key: &str) -> Option<i64> {
        let v = self.value(key)?;
        match v.as_integer() {
            Some(i) => Some(i),
            None => {
                self.error_at(key, format!("expected a whole number, got {}", shown(v)));
                None
            }
        }
    }

    /// A non-negative number.
    pub fn f64(&self, key: &str) -> Option<f64> {
        let v = self.value(key)?;
        let n = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        match n {
            Some(x) if x.is_finite() && x >= 0.0 => Some(x),
            _ => {
                self.error_at(key, format!("expected a number >= 0, got {}", shown(v)));
                None
            }
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str) -> Option<bool> {
        let v = self.value(key)?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.error_at(key, format!("expected true or false, got {}", shown(v)));
                None
            }
        }
    }

    fn unit<T>(
        &self,
        key: &str,
        parse: fn(&str) -> Result<T, String>,
        numbers_ok: bool,
    ) -> Option<T> {
        let v = self.value(key)?;
        let text = match (v.as_str(), v.as_integer(), v.as_float()) {
            (Some(s), _, _) => s.to_string(),
            (_, Some(i), _) if numbers_ok => i.to_string(),
            (_, _, Some(f)) if numbers_ok => f.to_string(),
            _ => shown(v).trim_matches('"').to_string(),
        };
        match parse(&text) {
            Ok(x) => Some(x),
            Err(m) => {
                self.error_at(key, m);
                None
            }
        }
    }

    /// A duration (`"30s"`, `"2h"`), in ms.
    pub fn duration(&self, key: &str) -> Option<u64> {
        self.unit(key, units::parse_duration, false)
    }

    /// A size (`"512MiB"`), in bytes; a bare number is bytes.
    pub fn size(&self, key: &str) -> Option<u64> {
        self.unit(key, units::parse_size, true)
    }

    /// CPU (`2`, `0.5`, `"500m"`), in millicores.
    pub fn cores(&self, key: &str) -> Option<u64> {
        self.unit(key, units::parse_cores, true)
    }

    /// A list of strings.
    pub fn str_list(&self, key: &str) -> Vec<String> {
        let Some(v) = self.value(key) else {
            return Vec::new();
        };
        let Some(arr) = v.as_array() else {
            self.error_at(
                key,
                format!(
                    "expected a list of strings like [\"a\", \"b\"], got {}",
                    shown(v)
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, x) in arr.iter().enumerate() {
            match x.as_str() {
                Some(s) => out.push(s.to_string()),
                None => self.ctx.error(
                    x.span(),
                    &format!("{}[{i}]", self.path(key)),
                    format!("expected a string, got {}", shown(x)),
                ),
            }
        }
        out
    }

    /// A table of string values, e.g. `labels = { gpu = "a100" }`.
    pub fn str_map(&self, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(item) = self.get(key) else {
            return out;
        };
        let Some(t) = item.as_table_like() else {
            self.ctx.error(
                item.span(),
                &self.path(key),
                "expected a table of strings like { zone = \"a\" }",
            );
            return out;
        };
        for (k, v) in t.iter() {
            match v.as_str() {
                Some(s) => {
                    out.insert(k.to_string(), s.to_string());
                }
                None => self.ctx.error(
                    v.span(),
                    &format!("{}.{k}", self.path(key)),
                    "expected a string in quotes",
                ),
            }
        }
        out
    }

    /// A sub-table (`[key]` or `key = { ... }`), read with its own [`Fields`].
    pub fn table(&self, key: &str) -> Option<Fields<'c, 'a>> {
        let item = self.get(key)?;
        let Some(t) = item.as_table_like() else {
            self.error_at(key, format!("expected a table, like [{key}]"));
            return None;
        };
        Some(Fields {
            ctx: self.ctx,
            table: t,
            prefix: self.path(key),
            seen: RefCell::new(Vec::new()),
        })
    }

    /// An array of tables (`[[key]]`), each read with its own [`Fields`]
    /// whose messages name it `key[i]`.
    pub fn tables(&self, key: &str) -> Vec<Fields<'c, 'a>> {
        let Some(item) = self.get(key) else {
            return Vec::new();
        };
        let Some(arr) = item.as_array_of_tables() else {
            self.error_at(key, format!("expected [[{key}]] tables"));
            return Vec::new();
        };
        arr.iter()
            .enumerate()
            .map(|(i, t)| Fields {
                ctx: self.ctx,
                table: t as &dyn TableLike,
                prefix: format!("{}[{i}]", self.path(key)),
                seen: RefCell::new(Vec::new()),
            })
            .collect()
    }

    /// Reports keys that no getter asked for.
    pub fn finish(self) {
        let seen = self.seen.borrow();
        let mut known: Vec<&str> = seen.iter().map(String::as_str).collect();
        known.sort_unstable();
        known.dedup();
        for (k, item) in self.table.iter() {
            if !seen.iter().any(|s| s == k) {
                let span = self
                    .table
                    .get_key_value(k)
                    .and_then(|(key, _)| key.span())
                    .or_else(|| item.span());
                self.ctx.error(
                    span,
                    &self.path(k),
                    format!("unknown field; expected one of: {}", known.join(", ")),
                );
            }
        }
    }
}
