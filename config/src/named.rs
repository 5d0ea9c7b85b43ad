//! Enums that people type and read by name (`granted`, `await_healthy`,
//! `on_failure`). [`named!`](crate::named) writes each name once: serde,
//! `Display`, `FromStr`, `as_str` and `ALL` all come from it, so a renamed
//! or added variant is one edit and every `match` on the enum names it.

/// A name that is none of an enum's: what was given and what is known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{got}`; expected {}", expected(.known))]
pub struct UnknownName {
    /// What kind of name (`task state`).
    pub what: &'static str,
    /// What was given (at most 64 characters of it).
    pub got: String,
    /// Every name the enum knows.
    pub known: &'static [&'static str],
}

fn expected(known: &[&str]) -> String {
    match known {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl UnknownName {
    /// `got` as a name of `what`, cut to 64 characters.
    pub fn new(what: &'static str, got: &str, known: &'static [&'static str]) -> UnknownName {
        UnknownName {
            what,
            got: got.chars().take(64).collect(),
            known,
        }
    }

    /// The words a config file's diagnostic uses for its field:
    /// `expected a, b or c, got "x"`.
    pub fn in_field(&self) -> String {
        format!("expected {}, got \"{}\"", expected(self.known), self.got)
    }
}

/// Defines an enum whose variants have one name each:
///
/// ```
/// charter_config::named! {
///     /// A colour.
///     pub enum Colour: "colour" {
///         /// Red.
///         Red = "red",
///         /// Dark blue.
///         DarkBlue = "dark_blue",
///     }
/// }
/// assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
/// assert_eq!("red".parse::<Colour>(), Ok(Colour::Red));
/// assert!("pink".parse::<Colour>().unwrap_err().to_string().contains("red or dark_blue"));
/// ```
#[macro_export]
macro_rules! named {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every variant's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// Its name, as people type and read it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::named::UnknownName;
            fn from_str(s: &str) -> Result<$name, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::named::UnknownName::new($what, s, $name::NAMES)),
                }
            }
        }
    };
}

/// Serde for an optional named enum written as its name, or as the empty
/// string when absent (as config files' canonical bytes always had it).
pub mod or_empty {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    /// Writes the name, or `""`.
    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.collect_str(t),
            None => s.serialize_str(""),
        }
    }

    /// Reads a name, or `""` as none.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(D::Error::custom)
    }
}
