//! Templates × data: one batch request per row of a CSV file (a header line, then one row per request;
//! RFC 4180 quoting, so commas, quotes and line breaks inside a value work) or of a JSONL file (one object
//! per line). A `custom_id` column names a row's request; without one it is `row-N`. Every row is rendered
//! before anything runs: a row the template cannot use fails the whole file with its row number, so nobody
//! finds out after hours of generating that row 1,412 had no product name.

use std::io::{BufRead, Read, Write};

use serde_json::{json, Value};

use super::input::FileError;
use crate::routes::BatchEndpoint;
use crate::templates::{Template, Values};

/// One data row: its 1-based number among the rows, the line it starts on, its values.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub n: usize,
    pub line: usize,
    pub values: Values,
}

/// How a data file is read: by its name's extension, else by its first character (`{`: JSONL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn of(filename: &str, first_bytes: &[u8]) -> Format {
        let lower = filename.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            return Format::Csv;
        }
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
            return Format::Jsonl;
        }
        let text = first_bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(first_bytes);
        if text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            Format::Jsonl
        } else {
            Format::Csv
        }
    }
}

/// Most problems listed for one file.
const MAX_PROBLEMS: usize = 20;

/// The rows of a data file.
pub fn read_rows(input: impl Read, format: Format, max_rows: usize) -> Result<Vec<Row>, FileError> {
    match format {
        Format::Csv => csv_rows(input, max_rows),
        Format::Jsonl => jsonl_rows(std::io::BufReader::new(input), max_rows),
    }
}

fn csv_rows(input: impl Read, max_rows: usize) -> Result<Vec<Row>, FileError> {
    let mut r = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(input);
    let headers: Vec<String> = r
        .headers()
        .map_err(|e| FileError(format!("cannot read the CSV header: {e}")))?
        .iter()
        .enumerate()
        .map(|(i, h)| if i == 0 { h.trim_start_matches('\u{feff}') } else { h }.trim().to_string())
        .collect();
    if headers.iter().all(String::is_empty) {
        return Err(FileError("the CSV file has no header line naming its columns".into()));
    }
    if let Some(i) = headers.iter().position(String::is_empty) {
        return Err(FileError(format!("column {} of the CSV header has no name", i + 1)));
    }
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let at = e.position().map_or(String::new(), |p| format!(" (line {})", p.line()));
            let what = match e.kind() {
                csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                    format!(
                        "row {} has {len} values, the header names {expected_len} columns",
                        rows.len() + 1
                    )
                }
                _ => format!("row {}: {e}", rows.len() + 1),
            };
            FileError(format!("{what}{at}"))
        })?;
        if rec.iter().all(|v| v.trim().is_empty()) {
            continue;
        }
        if rows.len() >= max_rows {
            return Err(FileError(format!("the data file has more than {max_rows} rows")));
        }
        let values = headers.iter().cloned().zip(rec.iter().map(|v| json!(v))).collect();
        let line = rec.position().map_or(0, |p| p.line() as usize);
        rows.push(Row { n: rows.len() + 1, line, values });
    }
    Ok(rows)
}

fn jsonl_rows(input: impl BufRead, max_rows: usize) -> Result<Vec<Row>, FileError> {
    let mut rows = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| FileError(format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let n = rows.len() + 1;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| FileError(format!("row {n} (line {}) is not JSON: {e}", i + 1)))?;
        let Value::Object(values) = v else {
            return Err(FileError(format!("row {n} (line {}) is not a JSON object", i + 1)));
        };
        if rows.len() >= max_rows {
            return Err(FileError(format!("the data file has more than {max_rows} rows")));
        }
        rows.push(Row { n, line: i + 1, values });
    }
    Ok(rows)
}

/// Writes one batch request line per row (`quire: {template, row}` says where it came from) and returns how
/// many; a row the template cannot render, or a duplicate `custom_id`, fails the file naming the rows.
pub fn write_requests(template: &Template, rows: &[Row], mut out: impl Write) -> Result<usize, FileError> {
    if rows.is_empty() {
        return Err(FileError("the data file has no rows".into()));
    }
    // a field no row has: one message for the file, not one per row
    let absent: Vec<&str> = template
        .fields
        .iter()
        .filter(|f| !f.optional && !rows.iter().any(|r| r.values.contains_key(&f.key)))
        .map(|f| f.key.as_str())
        .collect();
    if !absent.is_empty() {
        let have: Vec<&str> = rows[0].values.keys().map(String::as_str).collect();
        return Err(FileError(format!(
            "template '{}' needs {} '{}', which the data does not have (it has: {})",
            template.id,
            if absent.len() == 1 { "the field" } else { "the fields" },
            absent.join("', '"),
            have.join(", ")
        )));
    }
    let mut problems = Vec::new();
    let mut lines = Vec::with_capacity(rows.len());
    let mut ids = std::collections::HashMap::new();
    for row in rows {
        let custom_id = match row.values.get("custom_id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("row-{}", row.n),
        };
        if let Some(first) = ids.insert(custom_id.clone(), row.n) {
            problems.push(format!(
                "row {} (line {}): custom_id '{custom_id}' is also row {first}'s",
                row.n, row.line
            ));
        }
        match template.render_body(&row.values) {
            Ok(body) => lines.push(json!({
                "custom_id": custom_id,
                "method": "POST",
                "url": BatchEndpoint::Chat.url(),
                "body": body,
                "quire": {"template": template.id, "row": row.n},
            })),
            Err(e) => problems.push(format!("row {} (line {}): {e}", row.n, row.line)),
        }
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
    }
    if !problems.is_empty() {
        return Err(FileError(format!("template '{}': {}", template.id, problems.join("; "))));
    }
    for l in &lines {
        serde_json::to_writer(&mut out, l).map_err(|e| FileError(e.to_string()))?;
        out.write_all(b"\n").map_err(|e| FileError(e.to_string()))?;
    }
    out.flush().map_err(|e| FileError(e.to_string()))?;
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str =
        "+++\nname = \"Product\"\n[request]\nmax_tokens = 50\n+++\nDescribe {{ product }}: {{ features }}\n";

    fn requests(data: &str, format: Format) -> Result<Vec<Value>, FileError> {
        let t = Template::parse("product", TEMPLATE).unwrap();
        let rows = read_rows(data.as_bytes(), format, 1000)?;
        let mut out = Vec::new();
        write_requests(&t, &rows, &mut out)?;
        Ok(String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect())
    }

    fn user(v: &Value) -> &str {
        v["body"]["messages"][0]["content"].as_str().unwrap()
    }

    #[test]
    fn csv_with_quotes_commas_line_breaks_and_chinese() {
        let data = "\u{feff}product,features\r\n\"Kettle, 1.5 L\",\"says \"\"done\"\" when it boils\"\r\n\
                    保温杯,\"316 不锈钢，\n12 小时保温\"\r\n\r\n";
        let r = requests(data, Format::Csv).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(user(&r[0]), "Describe Kettle, 1.5 L: says \"done\" when it boils");
        assert_eq!(user(&r[1]), "Describe 保温杯: 316 不锈钢，\n12 小时保温");
        assert_eq!(r[1]["custom_id"], "row-2");
        assert_eq!(r[1]["quire"], json!({"template": "product", "row": 2}));
        assert_eq!(r[0]["body"]["max_tokens"], 50);
        assert_eq!(r[0]["url"], "/v1/chat/completions");
        // every line is a valid batch line
        for (i, l) in r.iter().enumerate() {
            let text = serde_json::to_string(l).unwrap();
            assert!(matches!(
                super::super::input::parse(i + 1, &text, Some(BatchEndpoint::Chat)),
                Ok(super::super::input::Item::Run(_))
            ));
        }
    }

    #[test]
    fn a_missing_field_names_the_row() {
        let e = requests("product,features\nKettle,boils\nMug,\n", Format::Csv).unwrap_err().0;
        assert_eq!(e, "template 'product': row 2 (line 3): field 'features' is empty");
        let e = requests("product\nKettle\n", Format::Csv).unwrap_err().0;
        assert_eq!(
            e,
            "template 'product' needs the field 'features', which the data does not have (it has: product)"
        );
        let e =
            requests("{\"product\": \"a\", \"features\": \"b\"}\n\n{\"product\": \"c\"}\n", Format::Jsonl)
                .unwrap_err()
                .0;
        assert!(e.contains("row 2 (line 3): missing field 'features'"), "{e}");
        let e = requests("product,features\na,b,c\n", Format::Csv).unwrap_err().0;
        assert!(e.contains("row 1 has 3 values, the header names 2 columns"), "{e}");
        assert!(requests("product,features\n", Format::Csv).unwrap_err().0.contains("no rows"));
        assert!(requests("{\"product\": 1}\n[1]\n", Format::Jsonl)
            .unwrap_err()
            .0
            .contains("row 2 (line 2) is not a JSON object"));
    }

    #[test]
    fn custom_ids_from_a_column_and_jsonl_values() {
        let r = requests(
            "{\"custom_id\": \"sku-1\", \"product\": \"Mug\", \"features\": 350}\n{\"custom_id\": 7, \"product\": \"Cup\", \"features\": [\"tall\"]}\n",
            Format::Jsonl,
        )
        .unwrap();
        assert_eq!((r[0]["custom_id"].as_str(), r[1]["custom_id"].as_str()), (Some("sku-1"), Some("7")));
        assert_eq!(user(&r[0]), "Describe Mug: 350");
        let e = requests("custom_id,product,features\na,b,c\na,d,e\n", Format::Csv).unwrap_err().0;
        assert!(e.contains("row 2 (line 3): custom_id 'a' is also row 1's"), "{e}");
    }

    #[test]
    fn formats_by_name_then_content() {
        assert_eq!(Format::of("items.CSV", b"{"), Format::Csv);
        assert_eq!(Format::of("items.jsonl", b"a,b"), Format::Jsonl);
        assert_eq!(Format::of("upload", b"  {\"a\": 1}"), Format::Jsonl);
        assert_eq!(Format::of("upload", b"name,price"), Format::Csv);
    }
}
