//! Values read "loosely": a key holding the wrong type of value deserializes to what it
//! holds instead, so the parser can say "burst must be a whole number, got the text "10""
//! where serde would say "invalid type: string, expected i64" without naming the key.

use std::{fmt, marker::PhantomData};

use serde::de::{
    self, Deserialize, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor,
    value::{MapAccessDeserializer, SeqAccessDeserializer},
};

/// The TOML type a key expects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Integer,
    Text,
    Table,
    List,
}

/// Types a policy key can hold, with the TOML type they are written as.
pub(super) trait Shaped {
    const SHAPE: Shape;
}

impl Shaped for i64 {
    const SHAPE: Shape = Shape::Integer;
}

impl Shaped for String {
    const SHAPE: Shape = Shape::Text;
}

impl<T> Shaped for Vec<T> {
    const SHAPE: Shape = Shape::List;
}

/// What a key held when it was not the expected type.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Found {
    Integer(i64),
    Float(f64),
    Bool(bool),
    /// The text, already shortened with `quote`.
    Text(String),
    Datetime,
    Table,
    List,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Integer(v) => write!(f, "the number {v}"),
            Found::Float(v) => write!(f, "the decimal number {v:?}"),
            Found::Bool(v) => write!(f, "`{v}`"),
            Found::Text(q) => write!(f, "the text {q}"),
            Found::Datetime => f.write_str("a date"),
            Found::Table => f.write_str("a table"),
            Found::List => f.write_str("a list"),
        }
    }
}

/// A value of the expected type `T`, or what was there instead.
pub(super) enum Typed<T> {
    Ok(T),
    Wrong(Found),
}

/// The private key under which the toml crate hands over a datetime as a one-entry table.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// Quotes user input for a message: escaped (no control characters reach the terminal)
/// and, past `QUOTE_MAX` characters, cut with `…` and the full length.
pub(super) fn quote(s: &str) -> String {
    const QUOTE_MAX: usize = 64;
    match s.char_indices().nth(QUOTE_MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => {
            let shown = format!("{:?}", &s[..cut]);
            format!("{}…\" ({} bytes)", &shown[..shown.len() - 1], s.len())
        }
    }
}

impl<'de, T: Deserialize<'de> + Shaped> Deserialize<'de> for Typed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TypedVisitor(PhantomData))
    }
}

struct TypedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Shaped> Visitor<'de> for TypedVisitor<T> {
    type Value = Typed<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Typed::Wrong(Found::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        if T::SHAPE == Shape::Integer {
            T::deserialize(v.into_deserializer()).map(Typed::Ok)
        } else {
            Ok(Typed::Wrong(Found::Integer(v)))
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        // TOML integers are i64; a larger one is refused by the TOML parser already.
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Ok(Typed::Wrong(Found::Float(v as f64))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Typed::Wrong(Found::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if T::SHAPE == Shape::Text {
            T::deserialize(v.into_deserializer()).map(Typed::Ok)
        } else {
            Ok(Typed::Wrong(Found::Text(quote(v))))
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if T::SHAPE == Shape::Table {
            return T::deserialize(MapAccessDeserializer::new(map)).map(Typed::Ok);
        }
        let mut found = Found::Table;
        while let Some(key) = map.next_key::<String>()? {
            if key == TOML_DATETIME_KEY {
                found = Found::Datetime;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(Typed::Wrong(found))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if T::SHAPE == Shape::List {
            return T::deserialize(SeqAccessDeserializer::new(seq)).map(Typed::Ok);
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Typed::Wrong(Found::List))
    }
}
