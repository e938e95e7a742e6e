//! Rendering API answers for the operator CLI: aligned tables (the
//! default) or the server's JSON pretty-printed.

use serde_json::Value;

/// How command results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for lists, `FIELD  VALUE` lines for single objects.
    #[default]
    Table,
    /// The server's JSON, pretty-printed.
    Json,
}

/// One table column: a header and the JSON pointer of its value in a row
/// (e.g. `/agent/id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Header text.
    pub header: &'static str,
    /// JSON pointer into the row object.
    pub pointer: &'static str,
}

/// Shorthand for a [`Column`].
pub const fn col(header: &'static str, pointer: &'static str) -> Column {
    Column { header, pointer }
}

/// A JSON value as one table cell: `-` for null or missing, timestamps as
/// `YYYY-MM-DD HH:MM:SS`, string arrays comma-joined, other compound values
/// as compact JSON; control characters become spaces.
pub fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => timestamp(s).unwrap_or_else(|| s.clone()),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(other @ (Value::Array(_) | Value::Object(_))) => other.to_string(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(Value::Number(n)) => n.to_string(),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An RFC 3339 timestamp shortened for tables (UTC, seconds).
fn timestamp(s: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
    )
}

/// Rows rendered under `columns`, padded to the widest cell of each column
/// (the last column is not padded). Ends with a newline.
pub fn table(columns: &[Column], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| cell(row.pointer(c.pointer)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.header.chars().count()).collect();
    for row in &cells {
        for (w, text) in widths.iter_mut().zip(row) {
            *w = (*w).max(text.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    for row in std::iter::once(&headers).chain(&cells) {
        let mut line = String::new();
        for (i, (text, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(text);
            } else {
                line.push_str(text);
                let pad = width - text.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A single object as `FIELD  VALUE` lines, in the server's field order,
/// with field names upper-cased (`not_after` → `NOT AFTER`). Fields in
/// `skip` are left out.
pub fn fields(object: &Value, skip: &[&str]) -> String {
    let Some(map) = object.as_object() else {
        return format!("{}\n", cell(Some(object)));
    };
    let rows: Vec<(String, String)> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.replace('_', " ").to_uppercase(), cell(Some(v))))
        .collect();
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

/// For a list answer (`{items, page, per_page, total}`): a line saying
/// which part of the whole is shown, when it is not all of it.
pub fn page_note(list: &Value) -> Option<String> {
    let total = list["total"].as_u64()?;
    let page = list["page"].as_u64()?;
    let per_page = list["per_page"].as_u64()?;
    let shown = list["items"].as_array().map_or(0, Vec::len) as u64;
    if page <= 1 && shown >= total {
        return None;
    }
    let first = (page.saturating_sub(1)) * per_page + 1;
    if shown == 0 {
        return Some(format!("page {page} is empty ({total} in total)"));
    }
    let last = first + shown - 1;
    let more = if last < total {
        format!("; --page {} for more", page + 1)
    } else {
        String::new()
    };
    Some(format!("{first}-{last} of {total}{more}"))
}

/// The JSON pretty-printed, with a trailing newline.
pub fn json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_render_values() {
        let rows = vec![
            json!({"id": "a", "name": "short", "n": {"x": 1}, "t": "2025-01-02T03:04:05.123Z"}),
            json!({"id": "bbbb", "name": null, "n": {"x": 22}, "t": ["x", "y"]}),
        ];
        let cols = [
            col("ID", "/id"),
            col("NAME", "/name"),
            col("X", "/n/x"),
            col("T", "/t"),
        ];
        assert_eq!(
            table(&cols, &rows),
            "ID    NAME   X   T\n\
             a     short  1   2025-01-02 03:04:05\n\
             bbbb  -      22  x,y\n"
        );
    }

    #[test]
    fn fields_and_page_notes() {
        let obj = json!({"id": "x", "not_after": null, "sentinel": true, "pem": "..."});
        assert_eq!(
            fields(&obj, &["pem"]),
            "ID         x\nNOT AFTER  -\nSENTINEL   yes\n"
        );
        let list = json!({"items": [1, 2], "page": 1, "per_page": 2, "total": 5});
        assert_eq!(
            page_note(&list).as_deref(),
            Some("1-2 of 5; --page 2 for more")
        );
        let all = json!({"items": [1, 2], "page": 1, "per_page": 20, "total": 2});
        assert_eq!(page_note(&all), None);
        assert_eq!(cell(Some(&json!("line\nbreak"))), "line break");
    }
}
