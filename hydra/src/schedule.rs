//! Schedules as crontab(5) writes them, on top of the `cron` crate.
//!
//! The `cron` crate reads Quartz expressions: a mandatory seconds field,
//! Sunday = 1, and day-of-month AND day-of-week. Hydra parses crontab syntax
//! itself, checks every value, expands each field to an explicit list, and
//! hands the crate expressions it cannot misread: days of the week by name,
//! and, when both day fields are restricted, two expressions whose fire times
//! are merged (a day matches if *either* field does). As in Vixie cron, a
//! day field counts as restricted unless it starts with `*`.
//!
//! Time zones follow Debian's cron at DST changes. Matching is done on the
//! zone's wall-clock time; each matching wall time then becomes an instant:
//! - a *fixed-time* job (neither the minute nor the hour field starts with
//!   `*`) whose time falls in a skipped interval fires once, right after the
//!   jump (several such times in one gap fire once); in a repeated interval
//!   it fires once, at the first occurrence;
//! - a job with `*` first in the minute or hour field keeps its normal
//!   times: nothing in the skipped interval, and both occurrences of a
//!   repeated wall time (it fires by real elapsed time).

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// Why an expression was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

fn err(msg: impl Into<String>) -> ScheduleError {
    ScheduleError(msg.into())
}

/// A parsed schedule in a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    source: String,
    tz: Tz,
    exprs: Vec<cron::Schedule>,
    /// `*` leads the minute or the hour field (Vixie's MIN_STAR/HR_STAR):
    /// such a job keeps its normal times across DST changes.
    wildcard: bool,
}

/// Local-time changes this large or larger are not smoothed (Debian: under 3 h).
const DST_WINDOW: Duration = Duration::hours(3);

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Field {
    fn value(&self, s: &str) -> Result<u32, ScheduleError> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + if self.min == 1 { 1 } else { 0 });
        }
        let v: u32 = s.parse().map_err(|_| {
            let names = if self.names.is_empty() {
                String::new()
            } else {
                format!(" or a name like {}", self.names[0])
            };
            err(format!("{}: `{s}` is not a number{names}", self.name))
        })?;
        if v < self.min || v > self.max {
            let extra = if self.max == 7 {
                " (0 and 7 are Sunday)"
            } else {
                ""
            };
            return Err(err(format!(
                "{}: {v} is out of range {}-{}{extra}",
                self.name, self.min, self.max
            )));
        }
        Ok(v)
    }

    /// Expands a field (`*`, `a`, `a-b`, steps, lists) to its set of values.
    fn expand(&self, text: &str) -> Result<Vec<u32>, ScheduleError> {
        let mut out = vec![false; self.max as usize + 1];
        for item in text.split(',') {
            if item.is_empty() {
                return Err(err(format!("{}: empty item in `{text}`", self.name)));
            }
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        err(format!(
                            "{}: step `{s}` must be a whole number above 0",
                            self.name
                        ))
                    })?;
                    (r, step)
                }
                None => (item, 1),
            };
            let (lo, hi) = if range == "*" {
                (self.min, if self.max == 7 { 6 } else { self.max })
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(err(format!(
                        "{}: range `{range}` runs backwards; crontab ranges do not wrap around",
                        self.name
                    )));
                }
                (a, b)
            } else {
                let a = self.value(range)?;
                // `a/step` means from a to the end, as in Vixie cron.
                (a, if step > 1 { self.max } else { a })
            };
            let mut v = lo;
            while v <= hi {
                out[v as usize] = true;
                v += step;
            }
        }
        Ok((0..=self.max).filter(|v| out[*v as usize]).collect())
    }
}

fn list(vals: &[u32]) -> String {
    vals.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn macro_expr(m: &str) -> Result<&'static str, ScheduleError> {
    Ok(match m {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => {
            return Err(err(
                "@reboot has no meaning for a cluster; use a schedule, or run the task once with `charter cron trigger`",
            ));
        }
        other => {
            return Err(err(format!(
                "unknown macro `{other}`; expected @yearly @annually @monthly @weekly @daily @midnight @hourly"
            )));
        }
    })
}

/// Checks an expression and zone the way [`Schedule::parse`] reads them
/// (for config readers, which cannot depend on Hydra).
pub fn check(expr: &str, tz: Option<&str>) -> Result<(), String> {
    Schedule::parse(expr, tz).map(|_| ()).map_err(|e| e.0)
}

impl Schedule {
    /// Parses a crontab(5) expression (5 fields, or 6 with leading seconds)
    /// in the IANA zone `tz` (default UTC).
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Schedule, ScheduleError> {
        let tz = match tz {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                err(format!(
                    "unknown time zone `{name}`; use an IANA name like Europe/Berlin or UTC"
                ))
            })?,
        };
        let trimmed = expr.trim();
        let text = if trimmed.starts_with('@') {
            macro_expr(&trimmed.to_ascii_lowercase())?
        } else {
            trimmed
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; got {n} in `{trimmed}`"
                )));
            }
        };
        let secs = SECOND.expand(sec)?;
        let mins = MINUTE.expand(rest[0])?;
        let hours = HOUR.expand(rest[1])?;
        let doms = DOM.expand(rest[2])?;
        let months = MONTH.expand(rest[3])?;
        let mut dows: Vec<u32> = DOW.expand(rest[4])?.into_iter().map(|d| d % 7).collect();
        dows.sort_unstable();
        dows.dedup();
        let dow_names = dows
            .iter()
            .map(|d| DAY_NAMES[*d as usize])
            .collect::<Vec<_>>()
            .join(",");
        let head = format!("{} {} {}", list(&secs), list(&mins), list(&hours));
        let dom_restricted = !rest[2].starts_with('*');
        let dow_restricted = !rest[4].starts_with('*');
        let quartz = if dom_restricted && dow_restricted {
            vec![
                format!("{head} {} {} *", list(&doms), list(&months)),
                format!("{head} * {} {dow_names}", list(&months)),
            ]
        } else {
            vec![format!(
                "{head} {} {} {dow_names}",
                list(&doms),
                list(&months)
            )]
        };
        let exprs = quartz
            .iter()
            .map(|q| {
                cron::Schedule::from_str(q)
                    .map_err(|e| err(format!("`{trimmed}` could not be compiled ({q}): {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = Schedule {
            source: trimmed.to_string(),
            tz,
            exprs,
            wildcard: rest[0].starts_with('*') || rest[1].starts_with('*'),
        };
        let probe = Utc
            .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default();
        if s.next_after(probe).is_none() {
            return Err(err(format!(
                "`{trimmed}` never fires (no such date, e.g. 30 February)"
            )));
        }
        Ok(s)
    }

    /// The expression as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The time zone the fields are read in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `t`.
    ///
    /// Away from a local-time change (none within 3 h of `t` or of the
    /// answer) wall times and instants map one to one in order, so the
    /// first matching wall time after `t`'s is the answer. Otherwise wall
    /// times are walked from 3 h before `t`'s wall time, since around a
    /// change a later wall time can be an earlier instant; the walk stops
    /// once wall times are 3 h past the best instant found.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_plain(t).or_else(|| self.next_walk(t))
    }

    /// [`Schedule::next_after`] when no local-time change is near.
    fn next_plain(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz).naive_local();
        let wall = self
            .exprs
            .iter()
            .filter_map(|e| e.after(&Utc.from_utc_datetime(&local)).next())
            .map(|w| w.naive_utc())
            .min()?;
        let LocalResult::Single(f) = self.tz.from_local_datetime(&wall) else {
            return None;
        };
        let f = f.with_timezone(&Utc);
        let offset = |x: DateTime<Utc>| x.with_timezone(&self.tz).offset().fix();
        let steady = |x: DateTime<Utc>| {
            offset(x - DST_WINDOW) == offset(x) && offset(x) == offset(x + DST_WINDOW)
        };
        (f > t && steady(t) && steady(f)).then_some(f)
    }

    fn next_walk(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = t.with_timezone(&self.tz).naive_local() - DST_WINDOW;
        let mut best: Option<DateTime<Utc>> = None;
        for e in &self.exprs {
            for wall in e.after(&Utc.from_utc_datetime(&start)).take(100_000) {
                let wall = wall.naive_utc();
                if let Some(b) = best
                    && wall > b.with_timezone(&self.tz).naive_local() + DST_WINDOW
                {
                    break;
                }
                for f in self.instants(wall) {
                    if f > t && best.is_none_or(|b| f < b) {
                        best = Some(f);
                    }
                }
            }
        }
        best
    }

    /// The instants a matching wall time fires at (see the module docs).
    fn instants(&self, wall: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(x) => vec![x.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) if self.wildcard => {
                vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
            }
            LocalResult::Ambiguous(first, _) => vec![first.with_timezone(&Utc)],
            LocalResult::None if self.wildcard => Vec::new(),
            LocalResult::None => {
                // Right after the jump: the first wall time that exists.
                let mut w = wall.with_second(0).unwrap_or(wall);
                for _ in 0..(DST_WINDOW.num_minutes()) {
                    w += Duration::minutes(1);
                    match self.tz.from_local_datetime(&w) {
                        LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => {
                            return vec![x.with_timezone(&Utc)];
                        }
                        LocalResult::None => {}
                    }
                }
                Vec::new()
            }
        }
    }

    /// The next `n` fire times strictly after `t`.
    pub fn upcoming(&self, mut t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
