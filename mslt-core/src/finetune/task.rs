//! Labelled tasks for fine-tuning: GLUE's own TSV layout (`train.tsv` / `dev.tsv`, as SST-2,
//! MRPC, CoLA, QNLI, RTE, QQP ship them) and a simple CSV layout (`label,text` or
//! `label,text_a,text_b`, RFC 4180 quoting, header optional).
//!
//! A task is a directory with a train and a dev split (`train.{tsv,csv}`, `dev.{tsv,csv}`; also
//! `validation.csv`, MNLI's `dev_matched.tsv`), or one CSV/TSV file whose every tenth row (by
//! position) is held out as dev. Labels are the strings of the train split, sorted (numerically
//! when they are all integers); a dev label the train split lacks is an error.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One example: text (and the second text of a pair) and its label string.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub a: String,
    pub b: Option<String>,
    pub label: String,
}

/// The metric a task is usually reported with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Accuracy,
    F1,
    Matthews,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    /// Label strings; the class index of a label is its position here.
    pub labels: Vec<String>,
    pub pair: bool,
    pub metric: Metric,
    /// The files read (train, dev).
    pub files: (PathBuf, PathBuf),
}

impl Task {
    pub fn label_index(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }
}

fn input_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {msg}", path.display()))
}

/// Loads a task from a directory or a single file.
pub fn load_task(path: &Path) -> Result<Task> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "task".into());
    let lname = name.to_lowercase();
    let (train, dev, files) = if path.is_dir() {
        let pick = |cands: &[&str]| cands.iter().map(|c| path.join(c)).find(|p| p.is_file());
        let tr = pick(&["train.tsv", "train.csv"]).ok_or_else(|| {
            input_err(path, "no train.tsv or train.csv (GLUE layout: train.tsv + dev.tsv; CSV layout: train.csv + dev.csv)")
        })?;
        let dv = pick(&[
            "dev.tsv",
            "dev.csv",
            "validation.csv",
            "validation.tsv",
            "dev_matched.tsv",
        ])
        .ok_or_else(|| input_err(path, "no dev.tsv, dev.csv or validation.csv"))?;
        let tr_rows = read_rows(&tr, &lname)?;
        let dv_rows = read_rows(&dv, &lname)?;
        (tr_rows, dv_rows, (tr, dv))
    } else if path.is_file() {
        let rows = read_rows(path, &lname)?;
        let (mut tr, mut dv) = (Vec::new(), Vec::new());
        for (i, r) in rows.into_iter().enumerate() {
            if i % 10 == 9 {
                dv.push(r);
            } else {
                tr.push(r);
            }
        }
        (tr, dv, (path.to_path_buf(), path.to_path_buf()))
    } else {
        return Err(input_err(path, "no such task file or directory"));
    };
    if train.is_empty() {
        return Err(input_err(&files.0, "the train split has no examples"));
    }
    if dev.is_empty() {
        return Err(input_err(&files.1, "the dev split has no examples"));
    }
    let mut labels: Vec<String> = train.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<i64>().expect("checked"));
    }
    if labels.len() < 2 {
        return Err(input_err(
            &files.0,
            format!("only one label ({:?}) in the train split", labels[0]),
        ));
    }
    for (i, e) in dev.iter().enumerate() {
        if !labels.contains(&e.label) {
            return Err(input_err(
                &files.1,
                format!(
                    "example {} has label {:?}, which the train split does not have (labels: {})",
                    i + 1,
                    e.label,
                    labels.join(", ")
                ),
            ));
        }
    }
    let pair = train.iter().any(|e| e.b.is_some());
    let metric = if lname.contains("cola") {
        Metric::Matthews
    } else if lname.contains("mrpc") || lname.contains("qqp") {
        Metric::F1
    } else {
        Metric::Accuracy
    };
    Ok(Task {
        name,
        train,
        dev,
        labels,
        pair,
        metric,
        files,
    })
}

fn read_rows(path: &Path, task_name: &str) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_lowercase();
    if ext == "tsv" {
        read_tsv(path, &text, task_name)
    } else {
        read_csv(path, &text)
    }
}

/// GLUE TSV: tab-separated, no quoting; a header names the columns, except CoLA (4 columns:
/// source, label, original label, sentence).
fn read_tsv(path: &Path, text: &str, task_name: &str) -> Result<Vec<Example>> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let Some(&(_, first)) = lines.first() else {
        return Ok(Vec::new());
    };
    let head: Vec<String> = first.split('\t').map(|s| s.trim().to_lowercase()).collect();
    let find = |names: &[&str], skip: Option<usize>| {
        names.iter().find_map(|n| {
            head.iter()
                .position(|h| h == n)
                .filter(|&i| Some(i) != skip)
        })
    };
    let label_col = find(&["label", "quality", "is_duplicate", "gold_label"], None);
    let (cols, ncols, body) = if let Some(l) = label_col {
        let a = find(
            &[
                "question",
                "question1",
                "sentence1",
                "sentence",
                "#1 string",
                "text",
                "text_a",
            ],
            None,
        )
        .ok_or_else(|| {
            input_err(
                path,
                format!("header {head:?} has no sentence / sentence1 / question / text column"),
            )
        })?;
        let b = if head[a] == "question" {
            find(
                &["sentence", "sentence2", "question2", "#2 string", "text_b"],
                Some(a),
            )
        } else {
            find(&["sentence2", "question2", "#2 string", "text_b"], Some(a))
        };
        ((l, a, b), head.len(), &lines[1..])
    } else if head.len() == 4 || task_name.contains("cola") {
        ((1, 3, None), 4, &lines[..])
    } else {
        return Err(input_err(
            path,
            format!("cannot tell the columns: the first line {head:?} is not a GLUE header with a label column, and the file does not have CoLA's 4 columns"),
        ));
    };
    let mut out = Vec::with_capacity(body.len());
    for &(n, line) in body {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != ncols {
            return Err(input_err(
                path,
                format!(
                    "line {n}: {} tab-separated fields, expected {ncols} (ragged row)",
                    f.len()
                ),
            ));
        }
        out.push(Example {
            a: f[cols.1].trim().to_string(),
            b: cols.2.map(|i| f[i].trim().to_string()),
            label: f[cols.0].trim().to_string(),
        });
    }
    Ok(out)
}

/// `label,text` or `label,text_a,text_b`, RFC 4180 quoting; a first row whose first field is
/// `label` is a header.
fn read_csv(path: &Path, text: &str) -> Result<Vec<Example>> {
    let rows =
        parse_csv(text).map_err(|(line, msg)| input_err(path, format!("line {line}: {msg}")))?;
    let mut it = rows.into_iter().peekable();
    if let Some((_, r)) = it.peek() {
        if r.first()
            .map(|s| s.trim().eq_ignore_ascii_case("label"))
            .unwrap_or(false)
        {
            it.next();
        }
    }
    let mut out = Vec::new();
    let mut width = None;
    for (line, r) in it {
        if r.len() == 1 && r[0].trim().is_empty() {
            continue;
        }
        if r.len() != 2 && r.len() != 3 {
            return Err(input_err(
                path,
                format!(
                    "line {line}: {} fields, expected 2 (label,text) or 3 (label,text_a,text_b)",
                    r.len()
                ),
            ));
        }
        match width {
            None => width = Some(r.len()),
            Some(w) if w != r.len() => {
                return Err(input_err(
                    path,
                    format!(
                        "line {line}: {} fields, expected {w} like the rows above (ragged row)",
                        r.len()
                    ),
                ))
            }
            _ => {}
        }
        let mut r = r.into_iter();
        let label = r.next().expect("len checked").trim().to_string();
        let a = r.next().expect("len checked");
        if label.is_empty() {
            return Err(input_err(path, format!("line {line}: empty label")));
        }
        out.push(Example {
            a,
            b: r.next(),
            label,
        });
    }
    Ok(out)
}

/// RFC 4180 CSV: returns (first line number of the record, fields).
/// CSV records: (first line number, fields).
type Records = Vec<(usize, Vec<String>)>;

fn parse_csv(text: &str) -> std::result::Result<Records, (usize, String)> {
    let mut rows = Vec::new();
    let mut field = String::new();
    let mut fields = Vec::new();
    let (mut line, mut start) = (1usize, 1usize);
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                rows.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
                at_field_start = true;
            }
            c => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err((start, "unterminated quoted field".into()));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        rows.push((start, fields));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let r = parse_csv("label,text\n1,\"a, \"\"b\"\"\nc\"\n0,plain\n").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1], (2, vec!["1".to_string(), "a, \"b\"\nc".to_string()]));
        assert_eq!(r[2], (4, vec!["0".to_string(), "plain".to_string()]));
        assert!(parse_csv("1,\"open\n").is_err());
    }
}
