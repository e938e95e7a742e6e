//! How Rust values are encoded in the database where the two backends differ.
//!
//! * Timestamps: PostgreSQL stores `TIMESTAMPTZ`; SQLite stores TEXT in one
//!   fixed format (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, six fraction digits) so that
//!   text comparison is time comparison. Every timestamp bound to a query goes
//!   through [`DbTime`]; binding a bare `DateTime<Utc>` on SQLite would write
//!   sqlx's variable-width format and break ordering.
//! * Enumerations are TEXT on both backends ([`text_enum!`]).

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo};
use sqlx::{Encode, Postgres, Sqlite, Type};

/// A timestamp as bound to a query (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbTime(pub DateTime<Utc>);

/// Wraps a timestamp for binding.
pub(crate) fn ts(t: DateTime<Utc>) -> DbTime {
    DbTime(t)
}

/// Wraps an optional timestamp for binding.
pub(crate) fn opt_ts(t: Option<DateTime<Utc>>) -> Option<DbTime> {
    t.map(DbTime)
}

/// The SQLite text form of a timestamp.
pub(crate) fn sqlite_time_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Text a connector (or a remote server through it) produced, made
/// storable: PostgreSQL refuses U+0000 in `TEXT` and `JSONB`, so a NUL in
/// an error message or order id would fail the write and leave the job to
/// its lease. The API refuses NULs in requests; this covers what enters
/// from connectors. Each NUL becomes U+FFFD.
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// [`storable`] applied to every string and key of a JSON value.
pub fn storable_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(storable(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (storable(&k).into_owned(), storable_json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The current time, truncated to microseconds (what PostgreSQL keeps), so a
/// value read back equals the value written on both backends.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for DbTime {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Sqlite>>::encode(sqlite_time_text(self.0), buf)
    }
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

/// Error returned when a text value is not a known variant of an enumeration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct ParseEnumError {
    /// Which enumeration was parsed (e.g. "job status").
    pub kind: &'static str,
    /// The text that did not match.
    pub value: String,
}

/// Declares a fieldless enum stored as TEXT on both backends, with
/// `as_str`/`Display`/`FromStr`, serde (same strings) and sqlx support.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database and used on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::store::codec::ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err($crate::store::codec::ParseEnumError {
                        kind: $kind,
                        value: s.to_owned(),
                    }),
                }
            }
        }

        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&'r str as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name
        where
            &'q str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let text: &'q str = self.as_str();
                <&'q str as sqlx::Encode<'q, DB>>::encode_by_ref(&text, buf)
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sqlite_text_is_fixed_width_and_ordered() {
        let a = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).single().unwrap();
        let b = a + chrono::Duration::microseconds(1);
        let c = a + chrono::Duration::milliseconds(500);
        let (ta, tb, tc) = (
            sqlite_time_text(a),
            sqlite_time_text(b),
            sqlite_time_text(c),
        );
        assert_eq!(ta, "2030-01-02T03:04:05.000000Z");
        assert_eq!(ta.len(), tb.len());
        assert!(ta < tb && tb < tc);
    }
}

#[cfg(test)]
mod storable_tests {
    use super::{storable, storable_json};
    use serde_json::json;

    #[test]
    fn nuls_from_connectors_become_replacement_characters() {
        assert_eq!(storable("plain"), "plain");
        assert_eq!(storable("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert_eq!(
            storable_json(json!({ "de\0tail": ["x\0", 1, { "k": "\0" }] })),
            json!({ "de\u{FFFD}tail": ["x\u{FFFD}", 1, { "k": "\u{FFFD}" }] })
        );
    }
}
