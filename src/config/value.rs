//! How a key's value is written: its [`Kind`] (checked in every layer,
//! parsed from the environment and flags), the readers and writers the key
//! table's setters and getters are made of, and the codecs of the plain
//! fields that `keys::field!` declares in one line.

use crate::server::access::Cidr;
use toml::Value;

/// How a key's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// A whole number, 0 or more.
    Int,
    /// `true`/`false` (the environment and flags also take on/off, yes/no, 1/0).
    Bool,
    /// A list of strings (comma-separated in the environment and flags;
    /// flags may also repeat).
    List,
    /// A table of strings (`GROUP=VALUE` pairs in the environment and flags).
    Table,
}

impl Kind {
    /// Checks that a TOML value is of this kind.
    pub fn check(self, v: &Value) -> Result<(), String> {
        let ok = match self {
            Kind::Str => v.is_str(),
            Kind::Int => v.as_integer().is_some_and(|n| n >= 0),
            Kind::Bool => v.is_bool(),
            Kind::List => v.as_array().is_some_and(|a| a.iter().all(Value::is_str)),
            Kind::Table => v.as_table().is_some_and(|t| t.values().all(Value::is_str)),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, found {v}", self.expected()))
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "a whole number (0 or more)",
            Kind::Bool => "true or false",
            Kind::List => "a list of strings",
            Kind::Table => "a table of strings",
        }
    }

    /// Parses the value as the environment and flags write it: `values` are
    /// the occurrences (one for the environment; a flag may repeat). Lists
    /// are comma-separated, tables `GROUP=VALUE` pairs; a repeated scalar
    /// takes the last.
    pub fn parse(self, values: &[&str]) -> Result<Value, String> {
        let last = values.last().map_or("", |v| v.trim());
        let items = || {
            values
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        Ok(match self {
            Kind::Str => Value::String(last.to_owned()),
            Kind::Int => Value::Integer(
                last.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("{last:?} is not a whole number (0 or more)"))?,
            ),
            Kind::Bool => Value::Boolean(match last.to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(format!("{last:?} is not true/false (or on/off)")),
            }),
            Kind::List => Value::Array(items().map(|s| Value::String(s.into())).collect()),
            Kind::Table => {
                let mut t = toml::Table::new();
                for pair in items() {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("{pair:?}: expected GROUP=VALUE"))?;
                    t.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
                }
                Value::Table(t)
            }
        })
    }
}

// Readers for setters (the value's kind is checked before).

pub(super) fn string(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, found {v}"))
}

pub(super) fn int<T: TryFrom<i64>>(v: &Value) -> Result<T, String> {
    let n = v
        .as_integer()
        .ok_or_else(|| format!("expected a whole number, found {v}"))?;
    T::try_from(n).map_err(|_| format!("{n} is out of range"))
}

pub(super) fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {v}"))
}

pub(super) fn strings(v: &Value) -> Result<Vec<&str>, String> {
    v.as_array()
        .ok_or_else(|| format!("expected a list, found {v}"))?
        .iter()
        .map(string)
        .collect()
}

/// None for an empty string, else what `parse` makes of it, trimmed.
pub(super) fn optional<T>(
    v: &Value,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match string(v)?.trim() {
        "" => Ok(None),
        s => parse(s).map(Some),
    }
}

/// A list of `T`s; an item that does not parse "is not `what`".
pub(super) fn parsed<T: std::str::FromStr>(v: &Value, what: &str) -> Result<Vec<T>, String> {
    strings(v)?
        .into_iter()
        .map(|s| s.parse().map_err(|_| format!("{s:?} is not {what}")))
        .collect()
}

pub(super) fn cidrs(v: &Value) -> Result<Vec<Cidr>, String> {
    strings(v)?.into_iter().map(str::parse).collect()
}

// Writers for getters.

pub(super) fn text(s: impl ToString) -> Value {
    Value::String(s.to_string())
}

pub(super) fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> Value {
    Value::Array(items.into_iter().map(text).collect())
}

pub(super) fn num(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

/// The codecs of plain fields: each says the key's [`Kind`], the flag's
/// value name unless the key gives its own, and how the field is read from
/// the value and written back.
pub(super) mod codec {
    use super::{Kind, Value, boolean, int as whole, num, string as str_of, text};
    use std::time::Duration;

    /// Any integer field: a whole number.
    pub(crate) mod int {
        use super::*;
        pub(crate) const KIND: Kind = Kind::Int;
        pub(crate) const VALUE_NAME: &str = "N";
        pub(crate) fn read<T: TryFrom<i64>>(v: &Value) -> Result<T, String> {
            whole(v)
        }
        pub(crate) fn write<T: Copy + TryInto<i64>>(n: &T) -> Value {
            num(*n)
        }
    }

    /// A [`Duration`] field, written in whole seconds.
    pub(crate) mod secs {
        use super::*;
        pub(crate) const KIND: Kind = Kind::Int;
        pub(crate) const VALUE_NAME: &str = "SECS";
        pub(crate) fn read(v: &Value) -> Result<Duration, String> {
            Ok(Duration::from_secs(whole(v)?))
        }
        pub(crate) fn write(d: &Duration) -> Value {
            num(d.as_secs())
        }
    }

    /// A [`Duration`] field, written in whole milliseconds.
    pub(crate) mod millis {
        use super::*;
        pub(crate) const KIND: Kind = Kind::Int;
        pub(crate) const VALUE_NAME: &str = "MS";
        pub(crate) fn read(v: &Value) -> Result<Duration, String> {
            Ok(Duration::from_millis(whole(v)?))
        }
        pub(crate) fn write(d: &Duration) -> Value {
            num(d.as_millis())
        }
    }

    /// A `bool` field.
    pub(crate) mod flag {
        use super::*;
        pub(crate) const KIND: Kind = Kind::Bool;
        pub(crate) const VALUE_NAME: &str = "true|false";
        pub(crate) fn read(v: &Value) -> Result<bool, String> {
            boolean(v)
        }
        pub(crate) fn write(b: &bool) -> Value {
            Value::Boolean(*b)
        }
    }

    /// A `String` field, taken as written.
    pub(crate) mod string {
        use super::*;
        pub(crate) const KIND: Kind = Kind::Str;
        pub(crate) const VALUE_NAME: &str = "TEXT";
        pub(crate) fn read(v: &Value) -> Result<String, String> {
            Ok(str_of(v)?.to_owned())
        }
        pub(crate) fn write(s: &str) -> Value {
            text(s)
        }
    }

    /// A field of a type read with `FromStr` and written with `Display`
    /// (`CountMode`, `LogFormat`).
    pub(crate) mod parsed {
        use super::*;
        use std::fmt::Display;
        use std::str::FromStr;
        pub(crate) const KIND: Kind = Kind::Str;
        pub(crate) const VALUE_NAME: &str = "VALUE";
        pub(crate) fn read<T: FromStr<Err = String>>(v: &Value) -> Result<T, String> {
            str_of(v)?.parse()
        }
        pub(crate) fn write<T: Display>(x: &T) -> Value {
            text(x)
        }
    }
}
