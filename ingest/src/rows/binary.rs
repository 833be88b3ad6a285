//! ClickHouse's `RowBinary` format: each column's value in the table's column order,
//! with no names and no escaping. Strings are a LEB128 length and their bytes, so a
//! properties text goes in as it was written, where `JSONEachRow` escaped it into a
//! JSON string for ClickHouse to unescape again.
//!
//! The same bytes load into 18.16 and modern servers; only the time columns differ by
//! flavor (`DateTime` is seconds as `UInt32`, `DateTime64(6)` microseconds as `Int64`).

use serde_json::{Map, Value};
use sluice_schema::clickhouse::Flavor;
use time::OffsetDateTime;
use uuid::Uuid;

/// A column's type as `RowBinary` lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    String,
    Uuid,
    Int64,
    UInt64,
    UInt8,
    /// The flavor's time type: `DateTime` or `DateTime64(6, 'UTC')`.
    DateTime,
}

impl Column {
    /// Its type in the DDL for `flavor`.
    pub fn ddl(self, flavor: Flavor) -> &'static str {
        match self {
            Column::String => "String",
            Column::Uuid => "UUID",
            Column::Int64 => "Int64",
            Column::UInt64 => "UInt64",
            Column::UInt8 => "UInt8",
            Column::DateTime => flavor.datetime(),
        }
    }
}

/// Appends one row's values to a buffer. The caller writes them in its table's column
/// order; `decode` reads them back by that order, and the tests hold each row to it.
pub(super) struct RowWriter<'a> {
    out: &'a mut Vec<u8>,
    flavor: Flavor,
}

impl<'a> RowWriter<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>, flavor: Flavor) -> Self {
        RowWriter { out, flavor }
    }

    pub(super) fn string(&mut self, s: &str) -> &mut Self {
        push_length(self.out, s.len());
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    /// A map as JSON text in a `String` column, written in place: the text is written
    /// first and its length put before it, so no copy of it is made.
    pub(super) fn json(&mut self, map: &Map<String, Value>) -> &mut Self {
        let start = self.out.len();
        serde_json::to_writer(&mut *self.out, map).expect("a JSON map writes to memory");
        let mut length = Vec::with_capacity(10);
        push_length(&mut length, self.out.len() - start);
        self.out.splice(start..start, length);
        self
    }

    /// Two `UInt64` halves, each little-endian: the high half first.
    pub(super) fn uuid(&mut self, id: Uuid) -> &mut Self {
        let (high, low) = id.as_u64_pair();
        self.out.extend_from_slice(&high.to_le_bytes());
        self.out.extend_from_slice(&low.to_le_bytes());
        self
    }

    pub(super) fn int64(&mut self, n: i64) -> &mut Self {
        self.out.extend_from_slice(&n.to_le_bytes());
        self
    }

    pub(super) fn uint64(&mut self, n: u64) -> &mut Self {
        self.out.extend_from_slice(&n.to_le_bytes());
        self
    }

    pub(super) fn uint8(&mut self, n: u8) -> &mut Self {
        self.out.push(n);
        self
    }

    /// Legacy `DateTime` holds seconds 1970–2106 in a `UInt32`: a time outside is
    /// clamped to its ends (18.16 turned such a text into nonsense: 1969-12-31 23:59:59
    /// became 1970-01-01 23:59:59). `DateTime64(6)` holds any time `time` can.
    pub(super) fn datetime(&mut self, t: OffsetDateTime) -> &mut Self {
        match self.flavor {
            Flavor::Legacy => {
                let seconds = t.unix_timestamp().clamp(0, u32::MAX.into()) as u32;
                self.out.extend_from_slice(&seconds.to_le_bytes());
            }
            Flavor::Modern => {
                let micros = (t.unix_timestamp_nanos() / 1_000) as i64;
                self.out.extend_from_slice(&micros.to_le_bytes());
            }
        }
        self
    }
}

/// The header of `RowBinaryWithNamesAndTypes`: the columns' names, then their types.
/// A modern server checks the types against the table's before it reads a row, so
/// a column changed under ingest fails the insert instead of being misread.
pub(super) fn header(columns: &[(&str, Column)], flavor: Flavor, out: &mut Vec<u8>) {
    push_length(out, columns.len());
    let mut w = RowWriter::new(out, flavor);
    for (name, _) in columns {
        w.string(name);
    }
    for (_, column) in columns {
        w.string(column.ddl(flavor));
    }
}

/// ClickHouse's `VarUInt`: LEB128.
fn push_length(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("row bytes end early or run past their columns at byte {0}")]
pub struct Unreadable(usize);

/// One row's values read back by its columns, as `JSONEachRow` would have shown them:
/// uuids and times as text, numbers as numbers. For what reads rows after they are
/// written (the exports lane's events) and for the tests that hold writers to columns.
pub(super) fn decode(
    columns: &[(&str, Column)],
    flavor: Flavor,
    bytes: &[u8],
) -> Result<Map<String, Value>, Unreadable> {
    let mut r = Reader { bytes, at: 0 };
    let mut row = Map::new();
    for (name, column) in columns {
        let value = match column {
            Column::String => {
                let (mut length, mut shift) = (0usize, 0);
                loop {
                    let byte = r.take::<1>()?[0];
                    length |= usize::from(byte & 0x7f).checked_shl(shift).ok_or(Unreadable(r.at))?;
                    shift += 7;
                    if byte < 0x80 {
                        break;
                    }
                }
                Value::String(String::from_utf8_lossy(r.slice(length)?).into_owned())
            }
            Column::Uuid => {
                let high = u64::from_le_bytes(r.take()?);
                let low = u64::from_le_bytes(r.take()?);
                Value::String(Uuid::from_u64_pair(high, low).to_string())
            }
            Column::Int64 => i64::from_le_bytes(r.take()?).into(),
            Column::UInt64 => u64::from_le_bytes(r.take()?).into(),
            Column::UInt8 => r.take::<1>()?[0].into(),
            Column::DateTime => {
                let t = match flavor {
                    Flavor::Legacy => OffsetDateTime::from_unix_timestamp(u32::from_le_bytes(r.take()?).into())
                        .expect("u32 seconds are a time"),
                    Flavor::Modern => {
                        let micros = i64::from_le_bytes(r.take()?);
                        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
                            .map_err(|_| Unreadable(r.at))?
                    }
                };
                Value::String(flavor.format(t))
            }
        };
        row.insert(name.to_string(), value);
    }
    if r.at != bytes.len() {
        return Err(Unreadable(r.at));
    }
    Ok(row)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn slice(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        let slice = self.bytes.get(self.at..self.at.saturating_add(n)).ok_or(Unreadable(self.at))?;
        self.at += n;
        Ok(slice)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Unreadable> {
        Ok(self.slice(N)?.try_into().expect("a slice of N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const COLUMNS: [(&str, Column); 7] = [
        ("s", Column::String),
        ("u", Column::Uuid),
        ("i", Column::Int64),
        ("n", Column::UInt64),
        ("b", Column::UInt8),
        ("t", Column::DateTime),
        ("j", Column::String),
    ];

    #[test]
    fn every_column_reads_back_in_either_flavor() {
        let long = "x".repeat(300); // a two-byte length
        let id = Uuid::parse_str("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        let map: Map<String, Value> = serde_json::from_str(&format!(r#"{{"a":"{long}","q":"\"\n"}}"#)).unwrap();
        for flavor in [Flavor::Legacy, Flavor::Modern] {
            let mut out = Vec::new();
            let t = datetime!(2024-05-01 10:00:00.123456 UTC);
            RowWriter::new(&mut out, flavor)
                .string(&long)
                .uuid(id)
                .int64(-7)
                .uint64(u64::MAX)
                .uint8(1)
                .datetime(t)
                .json(&map);
            let row = decode(&COLUMNS, flavor, &out).unwrap();
            assert_eq!(row["s"], long.as_str());
            assert_eq!(row["u"], id.to_string());
            assert_eq!((row["i"].as_i64(), row["n"].as_u64(), row["b"].as_u64()), (Some(-7), Some(u64::MAX), Some(1)));
            assert_eq!(row["t"], flavor.format(t));
            assert_eq!(serde_json::from_str::<Map<String, Value>>(row["j"].as_str().unwrap()).unwrap(), map);
            assert!(decode(&COLUMNS, flavor, &out[..out.len() - 1]).is_err(), "a row cut short");
            assert!(decode(&COLUMNS[..6], flavor, &out).is_err(), "bytes past the columns");
        }
    }

    #[test]
    fn legacy_times_outside_uint32_are_clamped_and_modern_ones_kept() {
        let read = |flavor: Flavor, t: OffsetDateTime| {
            let mut out = Vec::new();
            RowWriter::new(&mut out, flavor).datetime(t);
            decode(&[("t", Column::DateTime)], flavor, &out).unwrap()["t"].as_str().unwrap().to_string()
        };
        assert_eq!(read(Flavor::Legacy, datetime!(1969-12-31 23:59:59 UTC)), "1970-01-01 00:00:00");
        assert_eq!(read(Flavor::Legacy, datetime!(2200-01-01 00:00:00 UTC)), "2106-02-07 06:28:15");
        assert_eq!(read(Flavor::Modern, datetime!(1900-01-01 00:00:00.5 UTC)), "1900-01-01 00:00:00.500000");
    }
}
